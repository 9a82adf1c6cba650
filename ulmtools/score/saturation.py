"""Saturation: how fast the accumulated map fills as frames accumulate.

Two normalisations are given at each point: ``fraction_of_final``, the set
pixels over those of the final accumulated map (1 at the end: how much of the
final map was already there), and ``fraction_of_grid``, the set pixels over
the map's size (PALA's saturation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ulmtools.grid import Grid

SAMPLES = 20


def _curve(frames: Sequence[int], pixels: Sequence[int], grid_size: int) -> dict[str, Any]:
    final = int(pixels[-1]) if len(pixels) else 0
    return {
        "frames": [int(f) for f in frames],
        "pixels": [int(p) for p in pixels],
        "fraction_of_final": [p / final if final else 0.0 for p in pixels],
        "fraction_of_grid": [p / grid_size for p in pixels],
    }


def movie_saturation(
    pixels_after_movie: Sequence[int], frames_per_movie: Sequence[int], grid_size: int
) -> dict[str, Any]:
    """Saturation at movie granularity: set pixels after each accumulated movie."""
    frames = np.cumsum(np.asarray(frames_per_movie, np.int64)).tolist()
    out = _curve(frames, pixels_after_movie, grid_size)
    out["granularity"] = "movie"
    out["movies"] = list(range(1, len(frames) + 1))
    return out


def localization_saturation(
    positions: Sequence[np.ndarray],
    frames: Sequence[np.ndarray],
    frames_per_movie: Sequence[int],
    render_grid: Grid,
    *,
    reduce: int = 1,
    samples: int = SAMPLES,
) -> dict[str, Any]:
    """Saturation of the map rendered from localizations, frame by frame.

    Each localization sets its nearest pixel of ``render_grid`` (then the
    pixel of the grid ``reduce`` times coarser holding it); movies follow each
    other, so movie ``m``'s frame ``f`` is accumulated frame
    ``sum(frames_per_movie[:m]) + f``. The curve has ``samples`` points evenly
    spaced in accumulated frames, the last one at the total.
    """
    shape = np.asarray(render_grid.shape) // reduce
    starts = np.concatenate([[0], np.cumsum(np.asarray(frames_per_movie, np.int64))])
    total = int(starts[-1])
    lin_all: list[np.ndarray] = []
    when_all: list[np.ndarray] = []
    for m, (pos, fr) in enumerate(zip(positions, frames)):
        p = np.asarray(pos, np.float64).reshape(-1, render_grid.ndim)
        idx = np.rint(render_grid.to_index(p)).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.asarray(render_grid.shape)), axis=1)
        idx = idx[ok] // reduce
        lin_all.append(np.ravel_multi_index(tuple(idx.T), tuple(shape)))
        when_all.append(starts[m] + np.asarray(fr, np.int64)[ok])
    lin = np.concatenate(lin_all) if lin_all else np.zeros(0, np.int64)
    when = np.concatenate(when_all) if when_all else np.zeros(0, np.int64)
    # The accumulated frame at which each pixel is first reached.
    order = np.lexsort((when, lin))
    lin, when = lin[order], when[order]
    first = np.ones(len(lin), dtype=bool)
    first[1:] = lin[1:] != lin[:-1]
    first_hit = np.sort(when[first])
    n = max(1, min(int(samples), total)) if total else 1
    points = np.unique(np.ceil(np.linspace(total / n, total, n)).astype(np.int64))
    # A localization of frame f is there once f + 1 frames have accumulated.
    pixels = np.searchsorted(first_hit, points, side="left")
    out = _curve(points.tolist(), pixels.tolist(), int(np.prod(shape)))
    out["granularity"] = "frame"
    return out
