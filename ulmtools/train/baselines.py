"""Training the dense baselines on ``image`` stores: dense Deep-stULM and mSPCN-ULM.

Both read the dense correlation (``corr``) of an image store with truth:

* ``deepstulm`` (:class:`ulmtools.models.dense_deepstulm.DenseDeepStulm`): whole
  movies in, the soft Dice (smoothing 1e-3) between the predicted map on the x8
  grid and the truth's track projection, Adam (the sparse network's loss);
* ``mspcn`` (:class:`ulmtools.models.mspcn.MSPCN`): random batches of frames, L1
  between the Gaussian-blurred prediction and the Gaussian-blurred target (the
  frame's truth positions, one fine pixel each), Adam.

The input may be masked by a dense-to-sparse rule (the paper's "dense model with
masked input"): ``input_threshold`` keeps the pixels with abs(corr)^2 above it,
``input_mask`` the active sites of a sparse store of the same movies.

Several image stores train as one set (:class:`ImageMovieSet`), and a validation
store gives, after every epoch, the angiogram Dice that ``ulm infer`` reports
(:func:`ulmtools.infer.dense.angiogram_dice`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.models.dense_deepstulm import FACTOR, DenseDeepStulm
from ulmtools.models.mask_cnn import as_input, soft_dice_loss
from ulmtools.models.mspcn import MSPCN, blurred_l1
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.store import Store, check_finite, open_store
from ulmtools.train.data import Concatenated, open_truth
from ulmtools.train.loop import memory_kind, peak_memory_mb

BASELINES = ("deepstulm", "mspcn")
#: movies are kept in memory after their first read when all of them fit in this
CACHE_BYTES = 1 << 29
#: Adam's learning rate by default; measured here, 1e-2 collapsed mSPCN to an all-zero output
DEFAULT_LR = {"deepstulm": 1e-2, "mspcn": 3e-3}

NO_3D = {
    "deepstulm": "a dense 3D+t Deep-stULM needs 4D convolutions, which PyTorch lacks, and "
    "hundreds of GB (the paper estimates ~694 GB)",
    "mspcn": "mSPCN-ULM's PixelShuffle upsampling has no 3D form in PyTorch (the paper "
    "extrapolated its 3D memory to ~366 GB)",
}


class ImageMovies:
    """Movies of an ``image`` store (complex ``corr``), optionally masked, with truth.

    ``input_threshold``: pixels with abs(corr)^2 at or below it are set to 0;
    ``input_mask``: a sparse store of the same movies whose active sites are kept.
    """

    def __init__(
        self,
        store: Store | str | Path,
        *,
        need_truth: bool = False,
        input_threshold: float | None = None,
        input_mask: Store | str | Path | None = None,
        arch: str = "deepstulm",
    ) -> None:
        from ulmtools.sparsify.core import check_image_store

        self.store = store if isinstance(store, Store) else open_store(store, ["image", "sparse"])
        if self.store.kind != "image":
            raise InputError(
                f"this {arch} model reads an image store (ulm beamform); "
                f"{self.store.path} is a {self.store.kind} store"
            )
        self.grid: Grid
        self.grid, shape = check_image_store(self.store)
        if self.grid.ndim != 2:
            raise UsageError(
                f"--arch {arch} is 2D only: {NO_3D.get(arch, 'no dense 3D form')}",
                "train the sparse model on 3D data: ulm sparsify, then ulm train "
                "--arch sparse-deepstulm",
            )
        self.n, self.frames = shape[0], shape[1]
        self.shape = tuple(shape[1:])  # (t, *space), as SparseMovies.shape
        self.space_ndim = 2
        self.corr = self.store.array("corr")
        self.fine_grid = self.grid.refined(FACTOR)
        if input_threshold is not None and not (
            math.isfinite(input_threshold) and input_threshold >= 0
        ):
            raise UsageError(f"--input-threshold must be >= 0, got {input_threshold}")
        self.input_threshold = input_threshold
        self.mask = None if input_mask is None else self._open_mask(input_mask)
        self.truth = open_truth(
            self.store,
            self.n,
            self.fine_grid,
            need_truth=need_truth,
            hint="train on an image store made from simulated data (ulm simulate)",
        )
        self._movies: dict[int, np.ndarray] = {}
        self._targets: dict[int, np.ndarray] = {}
        self._cache = self.movie_bytes <= CACHE_BYTES

    @property
    def movie_bytes(self) -> int:
        """Bytes of all the movies as complex64, the size of the movie cache when full."""
        return self.n * int(np.prod(self.shape)) * 8

    def _open_mask(self, path: Store | str | Path):
        from ulmtools.train.data import SparseMovies

        mask = SparseMovies(path)
        if len(mask) != self.n or tuple(mask.shape) != self.shape:
            raise InputError(
                f"the input mask {mask.store.path} has {len(mask)} movies of {mask.shape}; "
                f"{self.store.path} has {self.n} of {self.shape}",
                "give the sparse store made from this image store (ulm sparsify)",
            )
        return mask

    @property
    def masking(self) -> dict[str, Any] | None:
        """The input masking as recorded in models and predictions (None: unmasked)."""
        if self.mask is not None:
            return {"method": "sparse-store", "store": self.mask.store.describe()}
        if self.input_threshold is not None:
            return {"method": "threshold", "threshold": self.input_threshold}
        return None

    def __len__(self) -> int:
        return self.n

    def movie(self, m: int) -> np.ndarray:
        """Movie ``m``'s complex correlation (T, Z, X), masked as configured."""
        hit = self._movies.get(m)
        if hit is not None:
            return hit
        movie = np.asarray(self.corr[m])
        check_finite(movie, f"{self.store.path}/corr", movie=m)
        movie = movie.astype(np.complex64 if np.iscomplexobj(movie) else np.float32)
        if self.input_threshold is not None:
            movie = np.where(np.abs(movie) ** 2 > self.input_threshold, movie, 0)
        if self.mask is not None:
            coords, _ = self.mask.movie(m)
            keep = np.zeros(movie.shape, dtype=bool)
            keep[tuple(coords.T.astype(np.int64))] = True
            movie = np.where(keep, movie, 0)
        if self._cache:
            self._movies[m] = movie
        return movie

    def target(self, m: int) -> np.ndarray:
        """Movie ``m``'s track projection on the x8 grid (bool)."""
        if self.truth is None:
            raise InputError(f"{self.store.path} has no ground truth")
        if m not in self._targets:
            self._targets[m] = np.asarray(self.truth.tracks[m]) > 0
        return self._targets[m]

    def truth_angiogram(self, movies: Sequence[int] | None = None) -> np.ndarray:
        out = np.zeros(self.fine_grid.shape, dtype=bool)
        for m in range(self.n) if movies is None else movies:
            out |= self.target(m)
        return out

    def frame_targets(self, m: int) -> np.ndarray:
        """Per frame, the truth positions as fine pixels: bool (T, 8Z, 8X)."""
        if self.truth is None:
            raise InputError(f"{self.store.path} has no ground truth")
        t = self.truth.movie(m, with_tracks=False)
        out = np.zeros((self.frames, *self.fine_grid.shape), dtype=bool)
        if len(t.frames):
            idx = np.rint(self.fine_grid.to_index(t.positions)).astype(np.int64)
            fr = np.asarray(t.frames, np.int64)
            inside = np.all((idx >= 0) & (idx < np.asarray(self.fine_grid.shape)), axis=1)
            inside &= (fr >= 0) & (fr < self.frames)
            out[fr[inside], idx[inside, 0], idx[inside, 1]] = True
        return out


class ImageMovieSet(Concatenated):
    """Several :class:`ImageMovies` trained on as one set: their movies one after another.

    Every part must hold movies of the same shape (frames and grid) on the same pixel
    spacing; part ``i``'s movie ``j`` is movie ``sum(len(parts[:i])) + j``.  Gives what
    :func:`train_baseline` reads; ``store`` is the first part's, ``stores`` all of them.
    """

    def __init__(self, parts: Sequence[ImageMovies]) -> None:
        if not parts:
            raise InputError("no training store given")
        self.parts = list(parts)
        first = self.parts[0]
        for p in self.parts[1:]:
            _check_same_movies(first, p)
        self.store = first.store
        self.stores = [p.store for p in self.parts]
        self.grid, self.fine_grid = first.grid, first.fine_grid
        self.frames, self.shape, self.space_ndim = first.frames, first.shape, 2
        self.truth = first.truth
        self.mask = first.mask
        self._index()
        # one memory limit for the whole set, not one per store
        cache = sum(p.movie_bytes for p in self.parts) <= CACHE_BYTES
        for p in self.parts:
            p._cache = cache

    @property
    def masking(self) -> dict[str, Any] | None:
        return self.parts[0].masking

    def movie(self, m: int) -> np.ndarray:
        p, j = self._where(m)
        return p.movie(j)

    def target(self, m: int) -> np.ndarray:
        p, j = self._where(m)
        return p.target(j)

    def frame_targets(self, m: int) -> np.ndarray:
        p, j = self._where(m)
        return p.frame_targets(j)

    def truth_angiogram(self, movies: Sequence[int] | None = None) -> np.ndarray:
        out = np.zeros(self.fine_grid.shape, dtype=bool)
        for m in range(len(self)) if movies is None else movies:
            out |= self.target(m)
        return out


def _check_same_movies(first: ImageMovies, other: ImageMovies) -> None:
    """Refuse a store whose movies differ from ``first``'s in shape or pixel spacing."""
    differs = []
    if other.shape != first.shape:
        differs.append(
            f"movies of {other.frames} frames of {_dims(other.grid.shape)} pixels, not "
            f"{first.frames} of {_dims(first.grid.shape)}"
        )
    if not np.allclose(other.grid.spacing, first.grid.spacing, rtol=1e-6, atol=0):
        um = [round(v * 1e6, 3) for v in other.grid.spacing]
        first_um = [round(v * 1e6, 3) for v in first.grid.spacing]
        differs.append(f"pixels of {_dims(um)} um, not {_dims(first_um)} um")
    if differs:
        raise InputError(
            f"{other.store.path} does not match {first.store.path}: it has "
            + " and ".join(differs),
            "train on image stores beamformed on the same grid with as many frames per movie",
        )


def _dims(values: Sequence[Any]) -> str:
    return "x".join(str(v) for v in values)


@dataclass(frozen=True)
class BaselineTrainConfig:
    """Settings of :func:`train_baseline` (all recorded in the model store)."""

    arch: str = "deepstulm"
    epochs: int = 30
    batch: int = 2  # movies per step (deepstulm) or frames per step (mspcn: x8)
    lr: float | None = None  # DEFAULT_LR of the architecture
    channels: int = 16  # deepstulm's first level; mspcn uses 4x as many
    smooth: float = 1e-3  # soft Dice smoothing (deepstulm)
    sigma: float = 3.0  # Gaussian of the mSPCN loss, fine pixels
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in BASELINES:
            raise UsageError(f"unknown baseline {self.arch!r}; known: {', '.join(BASELINES)}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.arch])

    @property
    def frames_per_step(self) -> int:
        return 8 * self.batch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_baseline(config: BaselineTrainConfig) -> DenseDeepStulm | MSPCN:
    if config.arch == "deepstulm":
        return DenseDeepStulm(channels=config.channels)
    return MSPCN(channels=4 * config.channels, sigma=config.sigma)


def deepstulm_step(
    model: DenseDeepStulm,
    opt: torch.optim.Optimizer,
    data: ImageMovies,
    movies: Sequence[int],
    config: BaselineTrainConfig,
    device: torch.device,
) -> tuple[float, float, float]:
    """One Adam step on whole movies; (loss, hard intersection, hard total) at 0.5."""
    x = as_input(np.stack([data.movie(m) for m in movies])).to(device)
    y = torch.from_numpy(np.stack([data.target(m) for m in movies])).float().to(device)
    prob = model.probabilities(x)
    loss = soft_dice_loss(prob, y, config.smooth)
    _step(opt, loss)
    hard = (prob.detach() > 0.5).float()
    return float(loss.detach()), float((hard * y).sum()), float(hard.sum() + y.sum())


def mspcn_step(
    model: MSPCN,
    opt: torch.optim.Optimizer,
    frames: np.ndarray,
    targets: np.ndarray,
    config: BaselineTrainConfig,
    device: torch.device,
) -> float:
    """One Adam step on a batch of frames (N, Z, X) and their fine targets (N, 8Z, 8X)."""
    x = as_input(frames[:, None])[:, :, 0].to(device)
    y = torch.from_numpy(targets).float().to(device)
    loss = blurred_l1(model(x), y, config.sigma)
    _step(opt, loss)
    return float(loss.detach())


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise InputError(
            f"training diverged: the loss is {float(loss.detach())}; no model was written",
            "lower --lr, or check the training data",
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_baseline(
    data: ImageMovies | ImageMovieSet,
    config: BaselineTrainConfig,
    *,
    val: ImageMovies | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback = no_progress,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[DenseDeepStulm | MSPCN, list[dict[str, Any]]]:
    """Train ``config.arch`` on ``data`` (with truth); the model (eval mode) and history.

    An epoch is one pass over the movies (deepstulm, ``batch`` movies per step) or
    over every frame of every movie in random order (mspcn, ``8 * batch`` frames
    per step).  The history records, per epoch: mean loss, the training Dice at
    0.5 (deepstulm), learning rate, seconds, peak memory and ``val_dice``: with
    ``val`` (an image store with truth), the angiogram Dice of the epoch's model on
    it, as ``ulm infer`` computes it at its default threshold (else None).
    Validation draws no random numbers, so it leaves the training unchanged.
    ``on_epoch(record)`` runs after every epoch.
    """
    from ulmtools.infer.dense import angiogram_dice

    if data.truth is None:
        raise InputError(f"{data.store.path} has no ground truth (truth/ group) to train on")
    if val is not None and val.truth is None:
        raise InputError(f"the validation store {val.store.path} has no ground truth")
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model = build_baseline(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(config.lr or DEFAULT_LR[config.arch]))
    history: list[dict[str, Any]] = []
    if config.arch == "deepstulm":
        steps = math.ceil(len(data) / config.batch)
    else:
        per = [data.frame_targets(m) for m in range(len(data))]
        steps = math.ceil(len(data) * data.frames / config.frames_per_step)
    total = config.epochs * steps
    progress(0, total, "")
    for epoch in range(config.epochs):
        model.train()
        rng = np.random.default_rng([config.seed, epoch])
        start = time.perf_counter()
        losses: list[float] = []
        inter = denom = 0.0
        if config.arch == "deepstulm":
            order = rng.permutation(len(data)).tolist()
            for i in range(steps):
                batch = order[i * config.batch : (i + 1) * config.batch]
                loss, a, b = deepstulm_step(model, opt, data, batch, config, device)  # type: ignore[arg-type]
                losses.append(loss)
                inter, denom = inter + a, denom + b
                progress(epoch * steps + i + 1, total, f"loss {loss:.3f}")
        else:
            order = rng.permutation(len(data) * data.frames)
            for i in range(steps):
                pick = order[i * config.frames_per_step : (i + 1) * config.frames_per_step]
                ms, fs = np.divmod(pick, data.frames)
                frames = np.stack([data.movie(int(m))[f] for m, f in zip(ms, fs)])
                targets = np.stack([per[int(m)][f] for m, f in zip(ms, fs)])
                loss = mspcn_step(model, opt, frames, targets, config, device)  # type: ignore[arg-type]
                losses.append(loss)
                progress(epoch * steps + i + 1, total, f"loss {loss:.4f}")
        seconds = time.perf_counter() - start
        val_dice = None
        if val is not None:
            val_dice = angiogram_dice(model.eval(), val, device=device)
        record = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "dice": 2 * inter / denom if denom else None,
            "val_dice": val_dice,
            "lr": config.lr,
            "seconds": seconds,
            "steps": steps,
            "peak_memory_mb": peak_memory_mb(device),
            "memory": memory_kind(device),
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return model.eval(), history


__all__ = [
    "BASELINES",
    "NO_3D",
    "BaselineTrainConfig",
    "ImageMovieSet",
    "ImageMovies",
    "build_baseline",
    "train_baseline",
]
