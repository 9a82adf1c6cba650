"""Matching a reconstruction's grid to the truth's by physical coordinates.

Two grids are compared by their axes, shape, origin and spacing (metres),
never by array shape alone. A grid that is an integer refinement of the other
(:meth:`ulmtools.grid.Grid.refined`: same field-of-view edges, ``k`` times
finer on every axis) is accepted: scoring happens on the coarser grid, and the
finer binary maps are reduced by a block OR (a coarse pixel is set when any of
its ``k**D`` fine pixels is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ulmtools.errors import InputError
from ulmtools.grid import Grid

RTOL = 1e-9


@dataclass(frozen=True)
class GridMatch:
    """The grid metrics are computed on, and the block size that takes each map there."""

    grid: Grid
    pred_factor: int = 1
    truth_factor: int = 1


def same_grid(a: Grid, b: Grid, rtol: float = RTOL) -> bool:
    """Same axes, shape, origin and spacing, within ``rtol`` of the field of view's size."""
    if tuple(a.axes) != tuple(b.axes) or tuple(a.shape) != tuple(b.shape):
        return False
    extent = max(max(abs(o) for o in a.origin), max(s * n for s, n in zip(a.spacing, a.shape)))
    origins = all(abs(x - y) <= rtol * extent for x, y in zip(a.origin, b.origin))
    spacings = all(abs(x - y) <= rtol * max(x, y) for x, y in zip(a.spacing, b.spacing))
    return origins and spacings


def refinement_factor(coarse: Grid, fine: Grid) -> int | None:
    """``k`` when ``fine`` equals ``coarse.refined(k)`` for an integer k >= 2, else None."""
    if tuple(coarse.axes) != tuple(fine.axes):
        return None
    k = fine.shape[0] // coarse.shape[0]
    if k < 2 or any(f != c * k for c, f in zip(coarse.shape, fine.shape)):
        return None
    return k if same_grid(coarse.refined(k), fine) else None


def describe_grid(g: Grid) -> str:
    """One-line description: shape, axes, first pixel centre and pitch."""
    shape = "x".join(str(n) for n in g.shape)
    origin = ", ".join(f"{o * 1e3:.6g}" for o in g.origin)
    spacing = ", ".join(f"{s * 1e6:.6g}" for s in g.spacing)
    return f"{shape} ({', '.join(g.axes)}) from ({origin}) mm at ({spacing}) um"


def match_grids(pred: Grid, truth: Grid, *, pred_name: str, truth_name: str) -> GridMatch:
    """How to bring ``pred``'s and ``truth``'s maps onto one grid, or an InputError."""
    if same_grid(pred, truth):
        return GridMatch(truth)
    k = refinement_factor(truth, pred)
    if k is not None:
        return GridMatch(truth, pred_factor=k)
    k = refinement_factor(pred, truth)
    if k is not None:
        return GridMatch(pred, truth_factor=k)
    raise InputError(
        f"the grid of {pred_name}, {describe_grid(pred)}, is neither the truth grid of "
        f"{truth_name}, {describe_grid(truth)}, nor an integer refinement of it or by it",
        "score maps on the truth's grid or one a whole factor finer or coarser over the "
        "same field of view",
    )


def block_or(mask: np.ndarray, k: int) -> np.ndarray:
    """Reduce a binary map by ``k`` per axis: a coarse pixel is set when any fine one is."""
    m = np.asarray(mask).astype(bool, copy=False)
    if k == 1:
        return m
    if any(n % k for n in m.shape):
        raise ValueError(f"shape {m.shape} is not a multiple of {k}")
    split: list[int] = []
    for n in m.shape:
        split += [n // k, k]
    return m.reshape(split).any(axis=tuple(range(1, 2 * m.ndim, 2)))


def field_of_view(g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper edges (metres) of ``g``: pixel-centre extent +- half a pixel."""
    origin, spacing = np.asarray(g.origin), np.asarray(g.spacing)
    lo = origin - spacing / 2
    hi = origin + (np.asarray(g.shape) - 1) * spacing + spacing / 2
    return lo, hi


def extent_mm(g: Grid, axis: int) -> tuple[float, float]:
    """The edges of one axis in millimetres (for plotting)."""
    lo, hi = field_of_view(g)
    return float(lo[axis] * 1e3), float(hi[axis] * 1e3)
