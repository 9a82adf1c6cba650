"""The scoring figure: truth, each reconstruction and their overlay, in millimetres.

One row per reconstruction (in 3D, three rows per reconstruction: the
maximum-intensity projections along z, x and y). Columns: the accumulated
truth, the accumulated reconstruction, the overlay (true positive white,
false positive red, false negative blue) and, when any reconstruction is a
tracks store with a ``speed`` map, that speed map. Each panel is
``PANEL_WIDTH_INCHES`` by ``PANEL_HEIGHT_INCHES`` at ``DPI`` (320 x 360 px),
so the PNG is ``columns * 320`` by ``rows * 360`` pixels. Rendering is headless (the Agg backend).
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ulmtools.grid import Grid
from ulmtools.score.core import MethodScore
from ulmtools.score.grids import extent_mm

PANEL_WIDTH_INCHES, PANEL_HEIGHT_INCHES = 3.2, 3.6
DPI = 100
PANEL_WIDTH_PX, PANEL_HEIGHT_PX = round(PANEL_WIDTH_INCHES * DPI), round(PANEL_HEIGHT_INCHES * DPI)
TP_RGB, FP_RGB, FN_RGB = (1.0, 1.0, 1.0), (0.9, 0.1, 0.1), (0.2, 0.4, 1.0)


def figure_size(methods: Sequence[MethodScore]) -> tuple[int, int]:
    """Width and height in pixels of the figure :func:`write_figure` makes."""
    cols, rows = _layout(methods)
    return cols * PANEL_WIDTH_PX, rows * PANEL_HEIGHT_PX


def _layout(methods: Sequence[MethodScore]) -> tuple[int, int]:
    cols = 4 if any(m.speed is not None for m in methods) else 3
    rows = sum(len(_views(m.grid)) for m in methods)
    return cols, rows


def _views(grid: Grid) -> list[int | None]:
    """None: the 2D map itself; an axis index: the projection along that axis (3D)."""
    return [None] if grid.ndim == 2 else list(range(grid.ndim))


def _view(a: np.ndarray, axis: int | None, *, speed: bool = False) -> np.ndarray:
    if axis is None:
        return a
    if not speed:
        return np.asarray(a, bool).any(axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(a, axis=axis)


def _extent(grid: Grid, axis: int | None) -> tuple[list[float], tuple[str, str]]:
    shown = [i for i in range(grid.ndim) if i != axis]
    row, col = shown[0], shown[1]
    r0, r1 = extent_mm(grid, row)
    c0, c1 = extent_mm(grid, col)
    return [c0, c1, r1, r0], (grid.axes[row], grid.axes[col])


def _nice_length(span: float) -> float:
    target = span / 4
    p = 10 ** math.floor(math.log10(target))
    return max(m * p for m in (1, 2, 5) if m * p <= target)


def _scale_bar(ax, extent: list[float]) -> None:  # type: ignore[no-untyped-def]
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    span = abs(extent[1] - extent[0])
    length = _nice_length(span)
    label = f"{length:g} mm" if length >= 1 else f"{length * 1e3:g} um"
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        label,
        "lower right",
        pad=0.4,
        color="yellow",
        frameon=False,
        size_vertical=abs(extent[2] - extent[3]) / 100,
    )
    ax.add_artist(bar)


def overlay(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB image: true positive white, false positive red, false negative blue."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    rgb = np.zeros((*p.shape, 3), dtype=np.float32)
    rgb[p & t] = TP_RGB
    rgb[p & ~t] = FP_RGB
    rgb[~p & t] = FN_RGB
    return rgb


def write_figure(methods: Sequence[MethodScore], path: str | os.PathLike[str]) -> tuple[int, int]:
    """Draw the figure and write it atomically as PNG; return its size in pixels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols, rows = _layout(methods)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * PANEL_WIDTH_INCHES, rows * PANEL_HEIGHT_INCHES),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
    )
    r = 0
    for m in methods:
        for axis in _views(m.grid):
            extent, (ylab, xlab) = _extent(m.grid, axis)
            along = "" if axis is None else f", MIP along {m.grid.axes[axis]}"
            t_img, p_img = _view(m.truth, axis), _view(m.pred, axis)
            panels = [
                (t_img, f"truth{along}"),
                (p_img, f"{Path(m.name).name}{along}"),
                (overlay(p_img, t_img), f"overlay: Dice {_dice_text(m, axis)}"),
            ]
            for c, (img, title) in enumerate(panels):
                ax = axes[r, c]
                if img.ndim == 2:
                    ax.imshow(img, cmap="gray", extent=extent, interpolation="nearest")
                else:
                    ax.imshow(img, extent=extent, interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.set_xlabel(f"{xlab} (mm)", fontsize=7)
                ax.set_ylabel(f"{ylab} (mm)", fontsize=7)
                ax.tick_params(labelsize=6)
                _scale_bar(ax, extent)
            axes[r, 2].legend(
                handles=[
                    Patch(color=TP_RGB, label="TP"),
                    Patch(color=FP_RGB, label="FP"),
                    Patch(color=FN_RGB, label="FN"),
                ],
                loc="upper right",
                fontsize=6,
                framealpha=0.6,
            )
            if cols == 4:
                ax = axes[r, 3]
                if m.speed is not None and m.speed_grid is not None:
                    sext, (sy, sx) = _extent(m.speed_grid, axis)
                    im = ax.imshow(
                        _view(m.speed, axis, speed=True) * 1e3,
                        cmap=matplotlib.colormaps["turbo"].with_extremes(bad="black"),
                        extent=sext,
                        interpolation="nearest",
                    )
                    fig.colorbar(im, ax=ax, shrink=0.8, label="speed (mm/s)")
                    ax.set_title(f"speed{along}", fontsize=8)
                    ax.set_xlabel(f"{sx} (mm)", fontsize=7)
                    ax.set_ylabel(f"{sy} (mm)", fontsize=7)
                    ax.tick_params(labelsize=6)
                    _scale_bar(ax, sext)
                else:
                    ax.axis("off")
            r += 1
    out = Path(path)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return cols * PANEL_WIDTH_PX, rows * PANEL_HEIGHT_PX


def _dice_text(m: MethodScore, axis: int | None) -> str:
    if axis is None:
        return f"{m.result['dice']:.3f}"
    return f"{m.result['projected_dice'][m.grid.axes[axis]]:.3f}"
