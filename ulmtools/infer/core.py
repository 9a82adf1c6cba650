"""Inference: per-movie probability maps on the x8 grid and the accumulated angiogram.

A ``prediction`` store (kind ``prediction``) holds:

``coords``   int32 (n, S)
    fine-grid pixel indices ``(z, x[, y])`` of each movie's kept output sites
    (probability >= ``min_probability``), movies one after another;
``feats``    float32 (n, 1)  the predicted probability at each site;
``offsets``  int64 (movies + 1,)  movie ``m`` owns rows ``offsets[m]:offsets[m+1]``;
``angiogram`` uint32 (z, x[, y])
    per fine pixel, the number of movies whose probability exceeds
    ``threshold`` (the paper's accumulation; binarize it for Dice);

root attributes ``grid`` (the fine grid, metres), ``input_grid``, ``factor``
(8), ``threshold``, ``min_probability``, ``model`` (the model store's id and
architecture) and, when the input had truth, ``truth/`` copied through and
``dice`` (the angiogram Dice against it).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import zarr

from ulmtools.errors import UsageError, whole_numbers
from ulmtools.models.deepstulm import FACTOR, SparseDeepStulm
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.score.maps import dice
from ulmtools.store import create_array
from ulmtools.train.data import SparseMovies


@dataclass(frozen=True)
class InferConfig:
    threshold: float = 0.5
    min_probability: float = 0.01
    batch_size: int = 1
    backend: str = "builtin"
    #: lateral axes ("x", "y"): each movie's map is the mean of the maps of its mirror
    #: images along them (test-time mirroring, 2^k forward passes)
    mirror: tuple[str, ...] = ()
    #: frames by which each movie (and each mirror image) is also delayed, the map being
    #: the mean over every copy (test-time delays; () is the movie alone, as (0,))
    delays: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise UsageError(f"--threshold must be in [0, 1), got {self.threshold}")
        if not 0 <= self.min_probability <= self.threshold:
            raise UsageError(
                f"--min-probability must be in [0, threshold={self.threshold}], "
                f"got {self.min_probability}"
            )
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_delays(self.delays)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The longest test-time delay, in frames: the network pools time 1024 frames deep
#: (4 * 4 * 8 * 8); a delay of a whole pooling period bins the frames as no delay does.
MAX_DELAY = 1024


def check_delays(delays: Sequence[int]) -> None:
    """Refuse test-time delays that are not frame counts in [0, MAX_DELAY)."""
    for d in delays:
        if isinstance(d, bool) or int(d) != d or not 0 <= d < MAX_DELAY:
            raise UsageError(
                f"--delays {d}: a delay is a number of frames in [0, {MAX_DELAY})",
                "give e.g. --delays 0,8 (0 is the movie as it is)",
            )
    if len(set(delays)) != len(delays):
        raise UsageError(f"--delays {','.join(map(str, delays))} repeats a delay")


def delay_list(spec: str | Sequence[int] | None) -> tuple[int, ...]:
    """``--delays``' frame counts from "0,8" or a sequence, in order, without repeats."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return ()
    frames = whole_numbers(spec, "--delays", "give e.g. --delays 0,8 (0 is the movie as it is)")
    out = tuple(dict.fromkeys(frames))
    check_delays(out)
    return out


def predict(
    model: SparseDeepStulm,
    movies: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    device: torch.device | str = "cpu",
    backend: str | None = None,
    mirror: Sequence[int] = (),
    shape: Sequence[int] | None = None,
    delays: Sequence[int] = (),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Probability maps of a batch of movies.

    Each movie is ``(coords (n, 1 + S) = (t, *space) input pixels, feats (n, 2))``;
    each result is ``(fine coords (k, S) int32, probabilities (k,) float32)``
    sorted by coordinate.  A movie without sites gives an empty map (and is
    not run through the network).

    ``mirror`` (spatial axis indices, lateral ones; ``shape`` the input's spatial
    grid) averages the maps of the movie's 2^k mirror images along those axes, each
    mirrored back; ``delays`` (frames) also runs each image delayed by each of them
    (the network pools time in fixed bins, so a delay that is not a multiple of its
    pooling bins the frames differently) and averages over every copy. A site missing
    from one copy's map counts as probability 0 there.
    """
    delays = tuple(int(d) for d in delays) or (0,)
    if not mirror and delays == (0,):
        return _predict(model, movies, device=device, backend=backend)
    if mirror and shape is None:
        raise ValueError("mirrored prediction needs the input grid's shape")
    fine = [FACTOR * n for n in shape] if shape is not None else None
    flip_sets = [
        tuple(a for a, on in zip(mirror, bits) if on)
        for bits in itertools.product((0, 1), repeat=len(mirror))
    ]
    images = list(itertools.product(flip_sets, delays))
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in movies]
    for flips, delay in images:
        copies = []
        for c, f in movies:
            c = c.copy()
            for a in flips:
                c[:, 1 + a] = shape[a] - 1 - c[:, 1 + a]
            c[:, 0] += delay
            copies.append((c, f))
        for i, (c, p) in enumerate(_predict(model, copies, device=device, backend=backend)):
            for a in flips:
                c[:, a] = fine[a] - 1 - c[:, a]
            parts[i].append((c, p))
    results = []
    for per in parts:
        c = np.concatenate([c for c, _ in per])
        p = np.concatenate([p for _, p in per]).astype(np.float64)
        if not len(c):
            results.append((c.astype(np.int32), p.astype(np.float32)))
            continue
        # flat indices sort as the coordinates do (C order): one 1-D unique
        dims = fine if fine is not None else tuple(int(n) + 1 for n in c.max(0))
        flat, which = np.unique(
            np.ravel_multi_index(tuple(c.T.astype(np.int64)), dims), return_inverse=True
        )
        mean = np.bincount(which.ravel(), weights=p, minlength=len(flat)) / len(images)
        sites = np.stack(np.unravel_index(flat, dims), axis=1)
        results.append((sites.astype(np.int32), mean.astype(np.float32)))
    return results


@torch.no_grad()
def _predict(
    model: SparseDeepStulm,
    movies: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    device: torch.device | str = "cpu",
    backend: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`predict` of the movies as they are."""
    s = model.dimension - 1
    results: list[tuple[np.ndarray, np.ndarray]] = [
        (np.zeros((0, s), np.int32), np.zeros(0, np.float32)) for _ in movies
    ]
    live = [i for i, (c, _) in enumerate(movies) if len(c)]
    if not live:
        return results
    was_training = model.training
    model.eval()
    try:
        x = model.make_input(
            [movies[i][0] for i in live],
            [movies[i][1] for i in live],
            device=device,
            backend=backend,
        )
        out = model(x)
    finally:
        model.train(was_training)
    assert out.final is not None
    coords = out.final.coords.long().cpu()
    prob = torch.sigmoid(out.final.feats[:, 0]).float().cpu()
    for j, i in enumerate(live):
        sel = coords[:, 0] == j
        c = coords[sel][:, 2:]
        p = prob[sel]
        order = np.lexsort(c.numpy().T[::-1]) if len(c) else np.zeros(0, np.int64)
        results[i] = (c.numpy()[order].astype(np.int32), p.numpy()[order].astype(np.float32))
    return results


def accumulate(
    angiogram: np.ndarray, coords: np.ndarray, prob: np.ndarray, threshold: float
) -> None:
    """Add one movie's thresholded map to a dense angiogram, in place."""
    hit = coords[prob > threshold]
    if len(hit):
        angiogram[tuple(hit.T.astype(np.int64))] += 1


def training_threshold(provenance: Sequence[dict[str, Any]]) -> float | None:
    """The abs(corr)^2 threshold of a model's training inputs, from its provenance:
    the value shared by every ``sparsify`` stage with ``method`` threshold (None
    when there is none, or they differ or used another method)."""
    values = set()
    for e in provenance:
        if e.get("stage") != "sparsify":
            continue
        p = e.get("parameters") or {}
        if p.get("method") != "threshold" or p.get("threshold") is None:
            return None
        values.add(float(p["threshold"]))
    return values.pop() if len(values) == 1 else None


def input_threshold(
    spec: str | float | None, model_threshold: float | None, input_rule: tuple[Any, Any]
) -> float | None:
    """The ``min_power`` to apply to an input store for ``ulm infer --input-threshold``.

    ``auto``: the model's training threshold when the input was thresholded at a
    lower value (the network then sees the sites it was trained on); ``none``: every
    stored site; a number: that threshold.
    """
    if spec is None or str(spec).lower() == "none":
        return None
    if str(spec).lower() == "auto":
        method, t_in = input_rule
        if model_threshold is None or method != "threshold" or t_in is None:
            return None
        return model_threshold if t_in < model_threshold else None
    try:
        value = float(spec)
    except ValueError:
        raise UsageError(
            f"--input-threshold must be auto, none or a number, got {spec!r}"
        ) from None
    if not (np.isfinite(value) and value >= 0):
        raise UsageError(f"--input-threshold must be >= 0, got {spec!r}")
    return value


def angiogram_dice(
    model: SparseDeepStulm,
    data: SparseMovies,
    *,
    threshold: float = 0.5,
    device: torch.device | str = "cpu",
    backend: str | None = None,
    batch_size: int = 1,
    movies: Sequence[int] | None = None,
) -> float:
    """The paper's Dice: movies thresholded, summed, binarized, against the truth's."""
    ids = list(range(len(data))) if movies is None else list(movies)
    acc = np.zeros(data.fine_grid.shape, dtype=np.uint32)
    for b0 in range(0, len(ids), batch_size):
        batch = ids[b0 : b0 + batch_size]
        for c, p in predict(model, [data.movie(m) for m in batch], device=device, backend=backend):
            accumulate(acc, c, p, threshold)
    return dice(acc > 0, data.truth_angiogram(ids))


@dataclass
class InferStats:
    movies: int = 0
    input_sites: list[int] = field(default_factory=list)
    output_sites: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    dice: float | None = None

    def summary(self) -> dict[str, Any]:
        secs = np.asarray(self.seconds) if self.seconds else np.zeros(1)
        return {
            "movies": self.movies,
            "input_sites_mean": float(np.mean(self.input_sites)) if self.input_sites else 0.0,
            "output_sites_mean": float(np.mean(self.output_sites)) if self.output_sites else 0.0,
            "seconds_per_movie": float(np.median(secs)),
            "dice": self.dice,
        }


def infer_store(
    model: SparseDeepStulm,
    data: SparseMovies,
    out: zarr.Group,
    config: InferConfig,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback = no_progress,
) -> InferStats:
    """Predict every movie of ``data`` into the writable group ``out`` (one batch at a time)."""
    from ulmtools.infer.stage import InferStage, InferTask
    from ulmtools.runner import fill

    task = InferTask(
        model="",
        input=str(data.store.path),
        device=str(device),
        config=config,
        dense=False,
        arch="sparse-deepstulm",
        min_power=data.min_power,
    )
    stage = InferStage(task, model, data, device)
    fill(stage, out, progress=progress)
    return stage.stats


def finish_prediction(
    out: zarr.Group, angiogram: np.ndarray, data: Any, config: InferConfig, stats: InferStats
) -> None:
    """Write the accumulated ``angiogram`` and, with truth, its Dice into ``stats``.

    ``data`` is any movie reader with ``fine_grid``, ``truth`` and ``truth_angiogram()``
    (the sparse and the image-store readers alike).
    """
    rows = max(1, min(angiogram.shape[0], (1 << 23) // int(np.prod(angiogram.shape[1:]))))
    create_array(
        out,
        "angiogram",
        shape=angiogram.shape,
        dtype="uint32",
        dims=data.fine_grid.axes,
        chunks=(rows, *angiogram.shape[1:]),
        attrs={"threshold": config.threshold, "meaning": "movies above threshold per pixel"},
    )[...] = angiogram
    if data.truth is not None:
        stats.dice = dice(angiogram > 0, data.truth_angiogram())


def dice_by_threshold(prediction: Any, thresholds: Sequence[float]) -> dict[float, float]:
    """The angiogram Dice a prediction store (with truth) would have at each of
    ``thresholds``, from its stored per-movie maps: what ``ulm infer --threshold T``
    gives, for T >= the store's ``min_probability`` (lower ones lack sites)."""
    from ulmtools.store import open_store
    from ulmtools.truth import Truth

    store = prediction if hasattr(prediction, "array") else open_store(prediction, "prediction")
    if not store.has_truth:
        raise UsageError(f"{store.path} has no truth to score thresholds against")
    floor = float(store.attrs.get("min_probability", 0.0))
    low = [t for t in thresholds if t < floor]
    if low:
        raise UsageError(
            f"threshold {low[0]:g} is below the stored maps' min_probability {floor:g}",
            "predict again with a lower --min-probability",
        )
    truth = Truth(store).tracks
    shape = tuple(truth.shape[1:])
    reference = np.zeros(shape, dtype=bool)
    for m in range(truth.shape[0]):
        reference |= np.asarray(truth[m]) > 0
    offsets = np.asarray(store.array("offsets")[:], dtype=np.int64)
    coords = np.asarray(store.array("coords")[:], dtype=np.int64)
    prob = np.asarray(store.array("feats")[:, 0])
    out = {}
    for t in thresholds:
        acc = np.zeros(shape, dtype=bool)
        for m in range(len(offsets) - 1):
            a, b = offsets[m], offsets[m + 1]
            hit = coords[a:b][prob[a:b] > t]
            acc[tuple(hit.T)] = True
        out[float(t)] = dice(acc, reference)
    return out
