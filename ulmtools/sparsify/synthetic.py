"""Synthetic PSF-correlation movies with truth, for tests, benchmarks and demos.

Not a physics simulation (that is ``ulm simulate``): each bubble adds a
Gaussian-windowed complex blob (axial carrier phase, separable envelope) to
the correlation map at its position, bubbles move in straight lines at
random speeds and a bubble that leaves the field of view is replaced by a new
one at a random place, so the number in view stays at ``bubbles``. Complex
Gaussian noise is added on top. Peak amplitudes are drawn in
``[amplitude_min, 1]`` (out-of-plane bubbles are dimmer), so the map is a
normalized correlation like the network input.

The result is an ``image`` store with ``corr`` (movie, t, *space) complex64
and a ``truth/`` group (positions, frames, ids, fine-grid track maps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ulmtools.acquisition import PRESETS
from ulmtools.grid import Grid
from ulmtools.store import create_array, create_store, provenance_entry
from ulmtools.truth import TruthMovie, TruthWriter, render_tracks


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic correlation movies (pixels and frames)."""

    movies: int = 2
    frames: int = 64
    shape: tuple[int, ...] = (32, 32)
    bubbles: float = 5.0
    sigma: tuple[float, ...] = (1.3, 2.5)  # envelope std in pixels per spatial axis
    carrier: float = np.pi  # axial phase advance per pixel (radians)
    speed: tuple[float, float] = (0.05, 0.5)  # pixels per frame
    amplitude_min: float = 0.4
    noise: float = 0.03  # std of real and of imaginary noise
    seed: int = 0


def default_grid(shape: tuple[int, ...]) -> Grid:
    """The paper's beamforming grid for 2D or 3D, cut or extended to ``shape``."""
    preset = PRESETS["2d" if len(shape) == 2 else "3d"]
    return preset.grid(shape=shape)


def _tracks(cfg: SyntheticConfig, rng: np.random.Generator):
    """Per frame: arrays of (id, position in pixels, amplitude, phase) of bubbles in view."""
    shape = np.asarray(cfg.shape, dtype=np.float64)
    d = len(cfg.shape)
    n = max(round(cfg.bubbles), 0)
    next_id = 0

    def spawn(count: int):
        nonlocal next_id
        pos = rng.uniform(-0.5, shape - 0.5, size=(count, d))
        direction = rng.normal(size=(count, d))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
        vel = direction * rng.uniform(*cfg.speed, size=(count, 1))
        amp = rng.uniform(cfg.amplitude_min, 1.0, size=count)
        phase = rng.uniform(0, 2 * np.pi, size=count)
        ids = np.arange(next_id, next_id + count)
        next_id += count
        return ids, pos, vel, amp, phase

    ids, pos, vel, amp, phase = spawn(n)
    for _ in range(cfg.frames):
        yield ids.copy(), pos.copy(), amp.copy(), phase.copy()
        pos = pos + vel
        out = np.any((pos < -0.5) | (pos > shape - 0.5), axis=1)
        if out.any():
            new = spawn(int(out.sum()))
            for arr, fresh in zip((ids, pos, vel, amp, phase), new):
                arr[out] = fresh


def synthetic_movie(
    cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One movie: ``(corr (t, *space) complex64, pixel positions (n, D), frames, ids)``."""
    d = len(cfg.shape)
    if len(cfg.sigma) != d:
        raise ValueError(f"sigma needs {d} values, got {len(cfg.sigma)}")
    axes = [np.arange(n, dtype=np.float64) for n in cfg.shape]
    corr = np.zeros((cfg.frames, *cfg.shape), dtype=np.complex64)
    rows_pos, rows_t, rows_id = [], [], []
    letters = "zxy"[:d]
    spec = ",".join(f"b{c}" for c in letters) + "->" + letters
    for t, (ids, pos, amp, phase) in enumerate(_tracks(cfg, rng)):
        if not len(ids):
            continue
        factors = []
        for a in range(d):
            delta = axes[a][None, :] - pos[:, a : a + 1]
            f = np.exp(-0.5 * (delta / cfg.sigma[a]) ** 2).astype(np.complex128)
            if a == 0:
                f *= (amp * np.exp(1j * phase))[:, None] * np.exp(1j * cfg.carrier * delta)
            factors.append(f)
        corr[t] = np.einsum(spec, *factors)
        rows_pos.append(pos)
        rows_t.append(np.full(len(ids), t, dtype=np.int32))
        rows_id.append(ids)
    if cfg.noise > 0:
        corr += (
            rng.normal(scale=cfg.noise, size=corr.shape)
            + 1j * rng.normal(scale=cfg.noise, size=corr.shape)
        ).astype(np.complex64)
    if rows_pos:
        return corr, np.concatenate(rows_pos), np.concatenate(rows_t), np.concatenate(rows_id)
    return corr, np.zeros((0, d)), np.zeros(0, np.int32), np.zeros(0, np.int64)


def write_synthetic_store(
    path: str | os.PathLike[str],
    cfg: SyntheticConfig = SyntheticConfig(),
    *,
    grid: Grid | None = None,
    truth: bool = True,
    force: bool = False,
) -> Grid:
    """Write an ``image`` store of synthetic correlation movies (with truth by default)."""
    grid = grid or default_grid(tuple(cfg.shape))
    if tuple(grid.shape) != tuple(cfg.shape):
        raise ValueError(f"grid shape {grid.shape} differs from {cfg.shape}")
    rng = np.random.default_rng(cfg.seed)
    dims = ("movie", "t", *grid.axes)
    entry = provenance_entry("synthetic", cfg.__dict__, argv=["ulmtools.sparsify.synthetic"])
    with create_store(path, "image", provenance=[entry], grid=grid, axes=dims, force=force) as g:
        corr = create_array(
            g, "corr", shape=(cfg.movies, cfg.frames, *cfg.shape), dtype="complex64", dims=dims
        )
        writer = TruthWriter(g, grid.refined(8), cfg.movies) if truth else None
        id_base = 0
        for m in range(cfg.movies):
            movie, pix, frames, ids = synthetic_movie(cfg, rng)
            corr[m] = movie
            if writer is not None:
                positions = grid.to_position(pix)
                writer.write_movie(
                    m,
                    TruthMovie(
                        positions,
                        frames,
                        ids + id_base,
                        render_tracks(positions, writer.grid),
                    ),
                )
            id_base += int(ids.max()) + 1 if len(ids) else 0
        if writer is not None:
            writer.close()
    return grid


def write_image_store(
    path: str | os.PathLike[str],
    corr: np.ndarray,
    grid: Grid,
    *,
    truth: list[TruthMovie] | None = None,
    force: bool = False,
) -> None:
    """Write ``corr`` (movie, t, *space) as an ``image`` store, with optional truth movies.

    Truth positions are in metres on ``grid``; track maps are rendered on the
    x8 grid when a movie gives none.
    """
    corr = np.asarray(corr)
    dims = ("movie", "t", *grid.axes)
    entry = provenance_entry("synthetic", {"shape": list(corr.shape)}, argv=["write_image_store"])
    with create_store(path, "image", provenance=[entry], grid=grid, axes=dims, force=force) as g:
        arr = create_array(g, "corr", shape=corr.shape, dtype=corr.dtype, dims=dims)
        if corr.size:
            arr[...] = corr
        if truth is not None:
            writer = TruthWriter(g, grid.refined(8), corr.shape[0])
            for m, tm in enumerate(truth):
                tracks = tm.tracks
                if tracks is None:
                    tracks = render_tracks(np.asarray(tm.positions), writer.grid)
                writer.write_movie(m, TruthMovie(tm.positions, tm.frames, tm.ids, tracks))
            writer.close()
