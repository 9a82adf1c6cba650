"""What a finished store carries for other tools: coordinates, consolidated metadata, OME-Zarr.

:func:`finish` runs on every store just before it is renamed into place, so
every stage's output opens in the scientific-Python ecosystem without options:

- **Coordinate variables** (CF conventions, as xarray reads them): for every
  dimension an array uses that names an axis of a grid, a 1-D array of the same
  name holding the pixel centres in metres (``units: "m"``), or the frame times in
  seconds for ``t``, with a ``long_name``. The grid of a group's arrays is the
  group's ``grid`` attribute (the root's, or ``truth/``'s whose dimensions are
  ``truth_z, truth_x[, truth_y]``), or an array's own ``grid`` attribute (the PSF,
  ``psf_z, psf_x[, psf_y]``), so distinct grids have distinct dimension names.
- **Consolidated metadata**, so a reader gets every node's metadata in one read
  (and xarray does not warn).
- **OME-Zarr 0.5 images** of the derived maps (``angiogram``, ``density``,
  ``speed``, ``velocity_z``): group ``ome/NAME`` with one scale level ``0`` and
  axes in metres with the grid's scale and translation, which napari and the
  ome-zarr tools open at physical size (``napari STORE/ome/angiogram``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr

from ulmtools.grid import Grid

LONG_NAMES = {
    "z": "depth (axial position)",
    "x": "lateral position",
    "y": "elevational position",
}
OME_PRODUCTS = ("angiogram", "density", "speed", "velocity_z")
OME_VERSION = "0.5"


def _groups(group: zarr.Group, path: str = "") -> Iterator[tuple[str, zarr.Group]]:
    yield path, group
    for name, child in group.groups():
        if name == "ome":
            continue
        yield from _groups(child, f"{path}/{name}" if path else name)


def _dims(array: zarr.Array) -> tuple[str, ...]:
    names = array.metadata.dimension_names  # type: ignore[union-attr]
    return tuple(str(n) for n in names) if names else ()


def _grid_of(attrs: Any) -> Grid | None:
    if not isinstance(attrs, dict) or "grid" not in attrs:
        return None
    try:
        return Grid.from_attrs(attrs["grid"])
    except Exception:
        return None


def _coordinate_values(
    name: str, size: int, grid: Grid | None, prefix: str
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Values and attributes of the coordinate variable for dimension ``name``."""
    if grid is None or not name.startswith(prefix):
        return None
    axis = name[len(prefix) :]
    if axis in grid.axes:
        i = grid.axes.index(axis)
        if grid.shape[i] != size:
            return None
        label = LONG_NAMES.get(axis, axis)
        where = {"": "", "truth_": " of the truth grid", "psf_": " of the PSF"}.get(prefix, "")
        return grid.coordinates(i), {"units": "m", "long_name": f"{label}{where}"}
    if axis == "t" and grid.frame_rate:
        return np.arange(size) / grid.frame_rate, {
            "units": "s",
            "long_name": "time since the movie's first frame",
        }
    return None


def write_coordinates(root: zarr.Group) -> None:
    """Add the coordinate variable of every grid dimension used in ``root``'s tree."""
    from ulmtools.store import create_array

    root_grid = _grid_of(dict(root.attrs))
    for path, group in _groups(root):
        own = _grid_of(dict(group.attrs))
        grid, prefix = (root_grid, "") if not path else (own, f"{path.split('/')[-1]}_")
        if path and own is None:
            continue
        wanted: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        for _, array in group.arrays():
            arr_grid = _grid_of(dict(array.attrs))
            for dim, size in zip(_dims(array), array.shape):
                if dim in wanted or dim in group:
                    continue
                found = _coordinate_values(dim, size, grid, prefix)
                if found is None and arr_grid is not None:
                    found = _coordinate_values(dim, size, arr_grid, f"{array.basename}_")
                if found is not None:
                    wanted[dim] = found
        for dim, (values, attrs) in wanted.items():
            create_array(
                group,
                dim,
                shape=values.shape,
                dtype="float64",
                dims=(dim,),
                chunks=values.shape,
                attrs=attrs,
            )[:] = values
            group[dim].attrs.pop("axes", None)


def ome_axes(grid: Grid) -> list[dict[str, str]]:
    return [{"name": a, "type": "space", "unit": "meter"} for a in grid.axes]


def write_ome_images(root: zarr.Group) -> None:
    """OME-Zarr 0.5 single-scale images of the root's derived maps, under ``ome/``."""
    from ulmtools.store import create_array

    grid = _grid_of(dict(root.attrs))
    if grid is None:
        return
    names = [
        n
        for n in OME_PRODUCTS
        if n in root
        and isinstance(root[n], zarr.Array)
        and tuple(root[n].shape) == tuple(grid.shape)
        and _dims(root[n]) == tuple(grid.axes)
    ]
    if not names:
        return
    ome = root.require_group("ome")
    for name in names:
        src = root[name]
        image = ome.require_group(name)
        image.attrs["ome"] = {
            "version": OME_VERSION,
            "multiscales": [
                {
                    "name": name,
                    "axes": ome_axes(grid),
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": list(grid.spacing)},
                                {"type": "translation", "translation": list(grid.origin)},
                            ],
                        }
                    ],
                }
            ],
        }
        create_array(
            image,
            "0",
            shape=src.shape,
            dtype=src.dtype,
            dims=tuple(grid.axes),
            chunks=src.chunks,
            fill_value=src.fill_value,
            attrs={k: v for k, v in src.attrs.items() if k != "axes"},
        )[...] = src[...]
        image["0"].attrs.pop("axes", None)


def consolidate(path: str) -> None:
    """Write the store's consolidated metadata (zarr-python's, in the root zarr.json)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(path, zarr_format=3)


def finish(group: zarr.Group, path: str) -> None:
    """Everything a store gets once its stage has written it (see the module notes)."""
    write_coordinates(group)
    write_ome_images(group)
    consolidate(path)
