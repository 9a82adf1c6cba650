"""Synthetic sparse movies for engine tests and benchmarks.

Bubbles move on straight tracks through a grid; each frame's PSF-correlation
map is a sum of complex Gaussian spots, thresholded on ``|corr|^2`` as the
paper's dense-to-sparse step does.  This reproduces the *sparsity pattern* of
real inputs (blobs a few pixels wide, persisting over consecutive frames), which
is what the engine's cost depends on; it is not a physics simulation (that is
``ulmtools.simulate``).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

__all__ = ["synthetic_movie"]


def synthetic_movie(
    grid: tuple[int, ...],
    frames: int,
    bubbles: float,
    *,
    sigma: float = 1.0,
    threshold: float = 0.1,
    scale: int = 8,
    batch: int = 1,
    seed: int = 0,
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Coordinates (N, 1 + D), features (N, 2) and tensor stride of a sparse movie.

    ``grid`` is the spatial shape in pixels (2 or 3 axes), ``bubbles`` the mean
    number in the field of view per frame.  Spatial coordinates are multiplied by
    ``scale`` (the network's output factor) and the tensor stride is ``scale`` in
    space and 1 in time, as the network expects.
    """
    rng = np.random.default_rng(seed)
    ds = len(grid)
    g = np.asarray(grid, dtype=np.float64)
    radius = int(np.ceil(sigma * np.sqrt(2.0 * np.log(1.0 / threshold) / 2.0) + 1))
    offs = np.array(list(itertools.product(range(-radius, radius + 1), repeat=ds)), dtype=np.int64)
    coords_all, feats_all = [], []
    for b in range(batch):
        # Lifetimes of 30-200 frames; spawn enough tracks that on average ``bubbles`` are alive.
        mean_life = 115.0
        n_tracks = max(1, rng.poisson(bubbles * (frames + mean_life) / mean_life))
        start = rng.integers(-int(mean_life), frames, n_tracks)
        life = rng.integers(30, 200, n_tracks)
        pos0 = rng.uniform(0, g, (n_tracks, ds))
        direction = rng.normal(size=(n_tracks, ds))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        speed = rng.uniform(0.02, 0.3, (n_tracks, 1))
        phase0 = rng.uniform(0, 2 * np.pi, n_tracks)
        t_idx, k_idx = [], []
        for k in range(n_tracks):
            t = np.arange(max(start[k], 0), min(start[k] + life[k], frames))
            t_idx.append(t)
            k_idx.append(np.full(t.shape, k))
        t = np.concatenate(t_idx)
        k = np.concatenate(k_idx)
        # pos0 is where a track is when it first shows up in the movie
        pos = pos0[k] + direction[k] * speed[k] * (t - np.maximum(start[k], 0))[:, None]
        inside = np.all((pos >= 0) & (pos < g), axis=1)
        t, k, pos = t[inside], k[inside], pos[inside]
        pix = np.floor(pos).astype(np.int64)[:, None, :] + offs[None]  # (M, P, ds)
        r2 = ((pix + 0.5 - pos[:, None, :]) ** 2).sum(-1)
        amp = np.exp(-r2 / (2 * sigma**2))
        phase = phase0[k][:, None] + 0.3 * np.sqrt(r2)
        ok = np.all((pix >= 0) & (pix < np.asarray(grid)), axis=-1)
        flat_t = np.broadcast_to(t[:, None], amp.shape)[ok]
        pts = np.concatenate([pix[ok], flat_t[:, None]], axis=1)
        vals = (amp * np.exp(1j * phase))[ok]
        # merge overlapping spots, then threshold |corr|^2
        shape = (*grid, frames)
        lin = np.ravel_multi_index(tuple(pts.T), shape)
        uniq, inv = np.unique(lin, return_inverse=True)
        summed = np.zeros(uniq.shape, dtype=np.complex128)
        np.add.at(summed, inv, vals)
        keep = np.abs(summed) ** 2 >= threshold
        cells = np.stack(np.unravel_index(uniq[keep], shape), axis=1)
        cells[:, :ds] *= scale
        coords_all.append(np.concatenate([np.full((len(cells), 1), b), cells], axis=1))
        feats_all.append(np.stack([summed[keep].real, summed[keep].imag], axis=1))
    coords = torch.from_numpy(np.concatenate(coords_all).astype(np.int32))
    feats = torch.from_numpy(np.concatenate(feats_all).astype(np.float32))
    return coords, feats, (scale,) * ds + (1,)
