"""Mask CNN: a learned dense-to-sparse rule (``ulm sparsify --method mask``).

A small fully-convolutional (2+1)D network at the input resolution: every
layer is a spatial convolution (2D, or 3D for volumes) followed by a temporal
convolution, so one definition serves 2D+t and 3D+t without 4D convolutions.
As in the paper, the first temporal convolution halves the time axis
(``time_stride``) and the output logits are interpolated back (linearly) to
every frame. The output is the probability that a bubble sits in each pixel
of each frame.

Input: the complex correlation movie as channels (real, imaginary) and, by
default, its magnitude as a third channel (``magnitude=True``; the paper gave
only real and imaginary — the magnitude makes the tiny network learn the
envelope much faster, and costs nothing).

Training (:func:`train_mask_cnn`): soft Dice loss (smoothing 1e-3) against
the low-resolution truth mask of :func:`ulmtools.sparsify.truth_mask` (a
truth position marks its nearest pixel in its frame), Adam, random time crops
of random movies of an ``image`` store with truth. Save the result with
:func:`ulmtools.models.store.save_model`; ``ulm train --arch mask-cnn`` will
wrap this once the training command exists.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ulmtools.errors import InputError
from ulmtools.models.store import register_architecture
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.store import Store, check_finite, open_store

ARCHITECTURE = "mask-cnn"


class _SpatialConv(nn.Module):
    """A convolution over the spatial axes of (B, C, T, *S).

    2D: a Conv3d with a (1, k, k) kernel straight on (B, C, T, Z, X). 3D (no
    Conv4d in torch): frames folded into the batch, then a Conv3d.
    """

    def __init__(self, dims: int, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.dims = dims
        pad = kernel // 2
        if dims == 2:
            self.conv = nn.Conv3d(cin, cout, (1, kernel, kernel), padding=(0, pad, pad))
        else:
            self.conv = nn.Conv3d(cin, cout, kernel, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 2:
            return self.conv(x)
        b, c, t, *s = x.shape
        y = self.conv(x.transpose(1, 2).reshape(b * t, c, *s))
        return y.reshape(b, t, -1, *s).transpose(1, 2)


class _TemporalConv(nn.Module):
    """A convolution over time of (B, C, T, *S): a (k, 1) Conv2d on (B, C, T, pixels)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, (kernel, 1), stride=(stride, 1), padding=(kernel // 2, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, *s = x.shape
        y = self.conv(x.reshape(b, c, t, -1))
        return y.reshape(b, y.shape[1], y.shape[2], *s)


class _Norm(nn.Module):
    """Batch norm over channels of (B, C, T, *S)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return self.bn(x.reshape(b, c, -1)).reshape(x.shape)


class _Block(nn.Module):
    """Residual (2+1)D block: spatial conv, norm, ELU, temporal conv, norm, + input, ELU."""

    def __init__(self, dims: int, channels: int, kernel: int, temporal_kernel: int) -> None:
        super().__init__()
        self.spatial = _SpatialConv(dims, channels, channels, kernel)
        self.n1 = _Norm(channels)
        self.temporal = _TemporalConv(channels, channels, temporal_kernel)
        self.n2 = _Norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.elu(self.n1(self.spatial(x)))
        y = self.n2(self.temporal(y))
        return F.elu(x + y)


@register_architecture(ARCHITECTURE)
class MaskCNN(nn.Module):
    """Predicts, per pixel and frame, whether a bubble is there.

    ``forward`` takes (B, 2, T, *S) real/imaginary correlation and returns
    logits (B, T, *S); :meth:`probabilities` applies the sigmoid.
    """

    architecture_name = ARCHITECTURE

    def __init__(
        self,
        spatial_dims: int = 2,
        channels: int = 16,
        blocks: int = 2,
        kernel: int = 3,
        temporal_kernel: int = 3,
        time_stride: int = 2,
        magnitude: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if kernel % 2 == 0 or temporal_kernel % 2 == 0:
            raise ValueError("kernel sizes must be odd")
        if time_stride < 1 or channels < 1 or blocks < 0:
            raise ValueError("time_stride and channels must be >= 1, blocks >= 0")
        self.architecture_kwargs: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "channels": channels,
            "blocks": blocks,
            "kernel": kernel,
            "temporal_kernel": temporal_kernel,
            "time_stride": time_stride,
            "magnitude": magnitude,
        }
        self.spatial_dims = spatial_dims
        self.time_stride = time_stride
        self.magnitude = magnitude
        cin = 3 if magnitude else 2
        self.stem_spatial = _SpatialConv(spatial_dims, cin, channels, kernel)
        self.stem_temporal = _TemporalConv(channels, channels, temporal_kernel, stride=time_stride)
        self.stem_norm = _Norm(channels)
        self.blocks = nn.ModuleList(
            _Block(spatial_dims, channels, kernel, temporal_kernel) for _ in range(blocks)
        )
        self.head = _SpatialConv(spatial_dims, channels, 1, 1)

    @property
    def temporal_reach(self) -> int:
        """Frames on each side that influence one output frame (a safe upper bound)."""
        k = self.architecture_kwargs["temporal_kernel"] // 2
        return k * self.time_stride * (1 + len(self.blocks)) + 2 * self.time_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 + self.spatial_dims or x.shape[1] != 2:
            raise ValueError(
                f"expected (B, 2, T, {self.spatial_dims} spatial axes), got {tuple(x.shape)}"
            )
        t = x.shape[2]
        if self.magnitude:
            x = torch.cat([x, torch.sqrt(x[:, :1] ** 2 + x[:, 1:2] ** 2)], dim=1)
        y = F.elu(self.stem_spatial(x))
        y = F.elu(self.stem_norm(self.stem_temporal(y)))
        for block in self.blocks:
            y = block(y)
        y = self.head(y)[:, 0]  # (B, T', *S)
        if y.shape[1] != t:
            b, t2, *s = y.shape
            z = y.reshape(b, t2, -1).transpose(1, 2)  # (B, P, T')
            z = F.interpolate(z, size=t, mode="linear", align_corners=False)
            y = z.transpose(1, 2).reshape(b, t, *s)
        return y

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))


def as_input(corr: np.ndarray) -> torch.Tensor:
    """A complex batch ``(B, T, *S)`` as a float32 tensor ``(B, 2, T, *S)`` (real, imag)."""
    corr = np.asarray(corr)
    re = np.asarray(corr.real, dtype=np.float32)
    im = np.asarray(corr.imag, dtype=np.float32) if np.iscomplexobj(corr) else np.zeros_like(re)
    return torch.from_numpy(np.stack([re, im], axis=1))


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1e-3) -> torch.Tensor:
    """1 - soft Dice over the whole batch."""
    inter = (prob * target).sum()
    return 1 - (2 * inter + smooth) / (prob.sum() + target.sum() + smooth)


# ---------------------------------------------------------------------------
# Inference over whole movies, window by window
# ---------------------------------------------------------------------------


class MaskPredictor:
    """Callable: one movie's complex correlation (T, *S) -> probabilities (T, *S) float32.

    Runs the network on time windows with a halo of context frames so memory
    stays bounded (about ``budget_bytes`` per feature map) for long 3D movies;
    windows start on multiples of the time stride so results match a
    whole-movie pass up to the network's temporal reach.
    """

    def __init__(
        self,
        model: MaskCNN,
        device: torch.device | str = "cpu",
        *,
        budget_bytes: int = 256 * 2**20,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.budget_bytes = int(budget_bytes)

    def window(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(window frames, halo frames) for a movie of ``shape`` (T, *S)."""
        stride = self.model.time_stride
        channels = self.model.architecture_kwargs["channels"]
        per_frame = int(np.prod(shape[1:])) * channels * 4
        frames = max(stride, self.budget_bytes // max(per_frame, 1))
        frames -= frames % stride
        halo = self.model.temporal_reach
        halo += (-halo) % stride
        return max(frames, stride), halo

    @torch.no_grad()
    def __call__(self, movie: np.ndarray) -> np.ndarray:
        movie = np.asarray(movie)
        if movie.ndim != 1 + self.model.spatial_dims:
            raise ValueError(f"expected a (T, *S) movie, got shape {movie.shape}")
        t = movie.shape[0]
        win, halo = self.window(movie.shape)
        out = np.empty(movie.shape, dtype=np.float32)
        for a in range(0, t, win):
            b = min(a + win, t)
            lo, hi = max(0, a - halo), min(t, b + halo)
            x = as_input(movie[None, lo:hi]).to(self.device)
            p = self.model.probabilities(x)[0, a - lo : b - lo]
            out[a:b] = p.float().cpu().numpy()
        return out


def predictor_from_model(
    model: torch.nn.Module, space_ndim: int, device: torch.device | str = "cpu"
) -> Callable[[np.ndarray], np.ndarray]:
    """A :class:`MaskPredictor`, refusing models that are not a fitting Mask CNN."""
    if not isinstance(model, MaskCNN):
        name = getattr(model, "architecture_name", type(model).__name__)
        raise InputError(
            f"the mask model is a {name!r} network, not a {ARCHITECTURE!r}",
            "give a model made with ulm train --arch mask-cnn (or train_mask_cnn)",
        )
    if model.spatial_dims != space_ndim:
        raise InputError(
            f"the mask model works on {model.spatial_dims}D images but the input grid is "
            f"{space_ndim}D",
            f"train a mask model on {space_ndim}D data",
        )
    return MaskPredictor(model, device)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskTrainConfig:
    """Training settings of :func:`train_mask_cnn` (all recorded in the model store)."""

    epochs: int = 20
    steps_per_epoch: int = 20
    batch: int = 4
    crop_frames: int = 64
    lr: float = 1e-2
    smooth: float = 1e-3
    channels: int = 16
    blocks: int = 2
    time_stride: int = 2
    magnitude: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _truth_cache(store: Store, n_frames: int):
    from ulmtools.sparsify.core import truth_sites
    from ulmtools.truth import Truth

    if not store.has_truth:
        raise InputError(
            f"{store.path} has no ground truth (truth/ group); a mask model learns from it",
            "train on a store made by ulm simulate",
        )
    truth = Truth(store)
    grid = store.grid
    return [
        truth_sites(tm.positions, tm.frames, grid, n_frames)
        for tm in (truth.movie(m, with_tracks=False) for m in range(truth.n_movies))
    ]


def train_mask_cnn(
    store: Store | str,
    config: MaskTrainConfig = MaskTrainConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback = no_progress,
) -> tuple[MaskCNN, list[dict[str, Any]]]:
    """Train a Mask CNN on an ``image`` store with ``corr`` and truth.

    Each step draws ``batch`` random (movie, time crop) samples; the target is
    the low-resolution truth mask. Returns the trained model (eval mode) and
    the per-epoch history (mean loss, hard Dice at 0.5, learning rate, seconds).
    """
    from ulmtools.sparsify.core import check_image_store

    store = store if isinstance(store, Store) else open_store(store, "image")
    grid, shape = check_image_store(store)
    n_movies, n_frames = shape[0], shape[1]
    sites = _truth_cache(store, n_frames)
    corr = store.array("corr")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(device)
    model = MaskCNN(
        spatial_dims=grid.ndim,
        channels=config.channels,
        blocks=config.blocks,
        time_stride=config.time_stride,
        magnitude=config.magnitude,
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    crop = min(config.crop_frames, n_frames)
    full = (n_frames, *grid.shape)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def sample(m: int) -> tuple[np.ndarray, np.ndarray]:
        if m not in cache:
            if len(cache) > 64:  # bounded memory on big training sets
                cache.pop(next(iter(cache)))
            target = np.zeros(int(np.prod(full)), dtype=np.float32)
            target[sites[m]] = 1
            movie = np.asarray(corr[m])
            check_finite(movie, f"{store.path}/corr", movie=m)
            cache[m] = (movie, target.reshape(full))
        movie, target = cache[m]
        t0 = int(rng.integers(0, n_frames - crop + 1))
        t0 -= t0 % config.time_stride
        return movie[t0 : t0 + crop], target[t0 : t0 + crop]

    history: list[dict[str, Any]] = []
    total = config.epochs * config.steps_per_epoch
    progress(0, total, "")
    for epoch in range(config.epochs):
        model.train()
        start = time.perf_counter()
        losses, inter, denom = [], 0.0, 0.0
        for step in range(config.steps_per_epoch):
            pairs = [sample(int(rng.integers(0, n_movies))) for _ in range(config.batch)]
            x = as_input(np.stack([p[0] for p in pairs])).to(device)
            y = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)
            prob = model.probabilities(x)
            loss = soft_dice_loss(prob, y, config.smooth)
            if not torch.isfinite(loss):
                raise InputError(
                    f"training diverged: the loss of epoch {epoch + 1}, step {step + 1} is "
                    f"{float(loss.detach())}; no model was written",
                    "lower --lr, or check the training data",
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            hard = (prob.detach() > 0.5).float()
            inter += float((hard * y).sum())
            denom += float(hard.sum() + y.sum())
            progress(epoch * config.steps_per_epoch + step + 1, total, f"loss {losses[-1]:.3f}")
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "dice": 2 * inter / denom if denom else math.nan,
                "lr": config.lr,
                "seconds": time.perf_counter() - start,
            }
        )
    return model.eval(), history


__all__ = [
    "ARCHITECTURE",
    "MaskCNN",
    "MaskPredictor",
    "MaskTrainConfig",
    "as_input",
    "predictor_from_model",
    "soft_dice_loss",
    "train_mask_cnn",
]
