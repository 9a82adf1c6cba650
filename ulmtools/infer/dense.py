"""Inference of the dense baselines (``deepstulm``, ``mspcn``) on ``image`` stores.

The prediction store has the layout of :mod:`ulmtools.infer.core` for every
architecture, so ``ulm score`` treats every method alike:

* ``deepstulm``: each movie's probability map on the x8 grid, sites with
  probability >= ``min_probability`` kept (``coords``/``feats``/``offsets``);
* ``mspcn``: ``localizations/`` holds the per-frame detections (3x3 local maxima
  of the calibrated per-frame map above ``threshold``, refined to the centroid
  of their neighbourhood), and each movie's map is the union over its frames of
  those detections on the x8 grid (binary: feature 1.0, as a tracks store's):
  ``positions`` float64 (n, D) metres, ``frames`` int32, ``intensity`` float32
  (the map's peak) and ``offsets``, so ``ulm score`` gives PALA's localization
  metrics too.

The ``angiogram`` counts, per fine pixel, the movies whose map exceeds
``threshold``; with truth, the angiogram Dice is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import zarr

from ulmtools.infer.core import InferConfig, InferStats, accumulate
from ulmtools.models.dense_deepstulm import DenseDeepStulm
from ulmtools.models.mask_cnn import as_input
from ulmtools.models.mspcn import MSPCN, local_maxima, refine
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.score.maps import dice
from ulmtools.train.baselines import ImageMovies

#: frames per mSPCN forward pass
MSPCN_FRAMES = 32


@dataclass
class MovieMap:
    """One movie's prediction: fine-grid sites and, for mSPCN, its detections."""

    coords: np.ndarray  # (k, 2) int32 fine-grid indices, sorted
    feats: np.ndarray  # (k,) float32 probability (or 1.0)
    positions: np.ndarray | None = None  # (n, 2) fine-grid fractional indices
    frames: np.ndarray | None = None  # (n,)
    intensity: np.ndarray | None = None  # (n,)


@torch.no_grad()
def predict_deepstulm(
    model: DenseDeepStulm, movies: Sequence[np.ndarray], device: torch.device | str = "cpu"
) -> np.ndarray:
    """Probability maps (B, 8Z, 8X) of complex movies (T, Z, X)."""
    model.eval()
    x = as_input(np.stack(movies)).to(device)
    return model.probabilities(x).float().cpu().numpy()


@torch.no_grad()
def predict_mspcn(
    model: MSPCN, movie: np.ndarray, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Calibrated per-frame maps (T, 8Z, 8X) of one complex movie (T, Z, X)."""
    model.eval()
    out = []
    for a in range(0, len(movie), MSPCN_FRAMES):
        x = as_input(movie[a : a + MSPCN_FRAMES, None])[:, :, 0].to(device)
        out.append(model.maps(x).float().cpu())
    return torch.cat(out).numpy()


def sites_of(prob: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Fine-grid sites of a map with value >= ``floor`` (row-major order) and values."""
    idx = np.argwhere(prob >= floor) if floor > 0 else np.argwhere(np.ones(prob.shape, bool))
    return idx.astype(np.int32), prob[tuple(idx.T)].astype(np.float32)


def mspcn_movie(maps: np.ndarray, threshold: float) -> MovieMap:
    """A movie's detections from its per-frame maps, and their union on the fine grid."""
    t = torch.from_numpy(maps)
    peaks = local_maxima(t, threshold)
    sub = refine(t, peaks).numpy()
    union = np.zeros(maps.shape[1:], dtype=bool)
    if len(sub):
        idx = np.clip(np.rint(sub).astype(np.int64), 0, np.asarray(maps.shape[1:]) - 1)
        union[tuple(idx.T)] = True
    coords = np.argwhere(union).astype(np.int32)
    return MovieMap(
        coords=coords,
        feats=np.ones(len(coords), np.float32),
        positions=sub,
        frames=peaks[:, 0].numpy().astype(np.int32),
        intensity=maps[tuple(peaks.numpy().T)].astype(np.float32),
    )


def predict_movies(
    model: DenseDeepStulm | MSPCN,
    data: ImageMovies,
    movies: Sequence[int],
    config: InferConfig,
    device: torch.device | str = "cpu",
) -> list[MovieMap]:
    """Predict ``movies`` of ``data`` (one forward pass of all of them for deepstulm)."""
    if isinstance(model, MSPCN):
        return [
            mspcn_movie(predict_mspcn(model, data.movie(m), device), config.threshold)
            for m in movies
        ]
    probs = predict_deepstulm(model, [data.movie(m) for m in movies], device)
    return [MovieMap(*sites_of(p, config.min_probability)) for p in probs]


def angiogram_dice(
    model: DenseDeepStulm | MSPCN,
    data: ImageMovies,
    *,
    threshold: float = 0.5,
    device: torch.device | str = "cpu",
    movies: Sequence[int] | None = None,
) -> float:
    """The paper's Dice of the movies' maps accumulated, against the truth's."""
    ids = list(range(len(data))) if movies is None else list(movies)
    config = InferConfig(threshold=threshold, min_probability=min(threshold, 0.01))
    acc = np.zeros(data.fine_grid.shape, dtype=np.uint32)
    for m in ids:
        (mm,) = predict_movies(model, data, [m], config, device)
        accumulate(acc, mm.coords, mm.feats, threshold if isinstance(model, DenseDeepStulm) else 0)
    return dice(acc > 0, data.truth_angiogram(ids))


def infer_image_store(
    model: DenseDeepStulm | MSPCN,
    data: ImageMovies,
    out: zarr.Group,
    config: InferConfig,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback = no_progress,
) -> InferStats:
    """Predict every movie of ``data`` into the writable group ``out``."""
    from ulmtools.infer.stage import InferStage, InferTask
    from ulmtools.runner import fill

    task = InferTask(
        model="",
        input=str(data.store.path),
        device=str(device),
        config=config,
        dense=True,
        arch="mspcn" if isinstance(model, MSPCN) else "deepstulm",
    )
    stage = InferStage(task, model, data, device)
    fill(stage, out, progress=progress)
    return stage.stats


__all__ = [
    "MSPCN_FRAMES",
    "MovieMap",
    "angiogram_dice",
    "infer_image_store",
    "mspcn_movie",
    "predict_deepstulm",
    "predict_movies",
    "predict_mspcn",
]
