"""``ulm export``: maps and movies of a store as PNG, TIFF, NIfTI, .mat or .npy.

What can be exported (``--array``):

``angiogram``  prediction, tracks and angiogram stores: movies per pixel (uint32);
``density``, ``speed``, ``velocity_z``  tracks stores: tracks per pixel, mean
    speed and mean signed axial velocity (m/s, NaN where no track passed);
``tracks``     prediction and tracks stores: movie ``--movie``'s map on the fine
    grid (probability, or 1 where a rendered track passed);
``truth``      any store with ``truth/``: movie ``--movie``'s true track map;
``iq``, ``corr``  image stores: movie ``--movie`` (t, z, x[, y]), complex.

Formats, chosen by the output's suffix:

``.png``   a picture in millimetres with a colour bar and a scale bar (3D: the
    maximum-intensity projections along z, x and y side by side). A movie is
    shown as its mean power over frames in dB (``iq``) or mean ``|corr|``;
``.tif``   ImageJ TIFF (float32, uint16 or uint8) with the pixel size in um
    (resolution and ImageJ ``unit``), 3D as slices along y (``spacing``), a
    movie as frames (``finterval``); complex values as their magnitude;
``.nii.gz`` / ``.nii``  NIfTI-1, voxel axes (x, y, z) = (lateral, elevation,
    depth) and, for a movie, t; the affine maps them to millimetres (xyzt
    units mm and s); complex values as their magnitude;
``.mat``   MATLAB v5 (``load``): the array (maps (z, x[, y]), movies
    (z, x[, y], t) as PALA keeps IQ) and the axis vectors ``z``, ``x``[, ``y``]
    in metres[, ``t`` in seconds], ``frame_rate``, ``axes``, ``units``, ``source``;
``.npy``   the array in the store's axis order ((z, x[, y]) or (t, z, x[, y])).

Every file is written under a hidden temporary name beside the output and
renamed into place when complete.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ulmtools.errors import InputError, OutputError, UsageError
from ulmtools.grid import Grid
from ulmtools.store import Store

SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".nii": "nifti",
            ".nii.gz": "nifti", ".mat": "mat", ".npy": "npy"}  # fmt: skip
ARRAYS = ("angiogram", "density", "speed", "velocity_z", "tracks", "truth", "iq", "corr")
MAT_V5_LIMIT = 2**31 - 1
PANEL_INCHES = (5.0, 4.4)
DPI = 100


def output_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    raise UsageError(
        f"cannot tell the format of {path} from its suffix",
        "end the output with .png, .tif, .nii.gz, .nii, .mat or .npy",
    )


@dataclass
class Exported:
    """What was selected: values, their grid and what they mean."""

    name: str
    data: np.ndarray  # (*space) for a map, (t, *space) for a movie
    grid: Grid
    movie: bool
    frame_rate: float | None
    label: str  # what a value is, with its unit
    source: str


def default_array(store: Store) -> str:
    if store.kind == "image":
        return "iq" if "iq" in store.group else "corr"
    if store.kind in ("prediction", "tracks", "angiogram"):
        return "angiogram"
    raise InputError(
        f"{store.path} is a {store.kind} store; ulm export takes image, prediction, tracks "
        "or angiogram stores"
    )


def select(store: Store, array: str | None, movie: int | None) -> Exported:
    """Read the array to export (one movie of a movie array)."""
    name = array or default_array(store)
    if name not in ARRAYS:
        raise UsageError(f"unknown --array {name!r}", f"choose one of {', '.join(ARRAYS)}")
    src = str(store.path)
    if name in ("iq", "corr"):
        if store.kind != "image":
            raise InputError(f"--array {name} needs an image store; {src} is {store.kind}")
        arr = store.array(name)
        m = _movie(movie, int(arr.shape[0]), src)
        grid = store.grid
        data = np.asarray(arr[m])
        if data.shape[1:] != tuple(grid.shape):
            raise InputError(f"{src}/{name} has frames of {data.shape[1:]}, its grid {grid.shape}")
        label = "IQ" if name == "iq" else "correlation with the PSF"
        return Exported(name, data, grid, True, grid.frame_rate, label, src)
    if name == "truth":
        from ulmtools.truth import Truth

        truth = Truth(store)
        m = _movie(movie, truth.n_movies, src)
        data = np.asarray(truth.tracks[m])
        return Exported(name, data, truth.grid, False, None, "true track map", src)
    if store.kind not in ("prediction", "tracks", "angiogram"):
        raise InputError(
            f"--array {name} needs a prediction, tracks or angiogram store; {src} is {store.kind}"
        )
    grid = store.grid
    if name == "tracks":
        if "offsets" not in store.group:
            raise InputError(f"{src} has no per-movie maps (coords, feats, offsets)")
        offsets = np.asarray(store.array("offsets")[:], np.int64)
        m = _movie(movie, len(offsets) - 1, src)
        a, b = int(offsets[m]), int(offsets[m + 1])
        coords = np.asarray(store.array("coords")[a:b], np.int64)
        feats = np.asarray(store.array("feats")[a:b], np.float32).reshape(b - a, -1)[:, 0]
        data = np.zeros(grid.shape, np.float32)
        if len(coords):
            if (
                coords.shape[1] != grid.ndim
                or coords.min() < 0
                or np.any(coords.max(axis=0) >= np.asarray(grid.shape))
            ):
                raise InputError(f"{src}/coords does not fit its grid {grid.shape}")
            data[tuple(coords.T)] = feats
        label = "probability" if store.kind == "prediction" else "track map"
        return Exported(name, data, grid, False, None, label, src)
    if movie is not None:
        raise UsageError(f"--movie applies to tracks, truth, iq and corr, not to {name}")
    data = np.asarray(store.array(name)[...])
    if data.shape != tuple(grid.shape):
        raise InputError(f"{src}/{name} has shape {data.shape}, its grid {grid.shape}")
    labels = {
        "angiogram": "movies per pixel",
        "density": "tracks per pixel",
        "speed": "speed (mm/s)",
        "velocity_z": "axial velocity (mm/s, + away from the probe)",
    }
    return Exported(name, data, grid, False, None, labels[name], src)


def _movie(movie: int | None, n: int, src: str) -> int:
    m = 0 if movie is None else int(movie)
    if not 0 <= m < n:
        raise UsageError(f"--movie {m} is out of range: {src} has {n} movies (0 to {n - 1})")
    return m


# ---------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------


def check_target(path: Path, force: bool) -> None:
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputError(f"{path} exists", "use --force to overwrite it")
        if path.is_dir():
            raise OutputError(f"{path} is a directory", "choose another output path")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"the directory {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"the directory {parent} is not writable", "choose another output path")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def export(e: Exported, path: Path, *, force: bool = False) -> dict[str, Any]:
    """Write ``e`` to ``path`` in the format its suffix names; return what was written."""
    fmt = output_format(path)
    check_target(path, force)
    writer = {"png": write_png, "tiff": write_tiff, "nifti": write_nifti,
              "mat": write_mat, "npy": write_npy}[fmt]  # fmt: skip
    info = writer(e, path)
    return {"format": fmt, "bytes": path.stat().st_size, **info}


def _picture(e: Exported) -> tuple[np.ndarray, str]:
    """The 2D-or-3D map a PNG shows, and its colour-bar label."""
    if not e.movie:
        scale = 1e3 if e.name in ("speed", "velocity_z") else 1.0
        return np.asarray(e.data, np.float64) * scale, e.label
    if e.name == "iq":
        power = np.mean(np.abs(e.data.astype(np.complex64)) ** 2, axis=0)
        peak = power.max() if power.size and power.max() > 0 else 1.0
        with np.errstate(divide="ignore"):
            db = 10 * np.log10(np.maximum(power / peak, 1e-12))
        return db, "mean power (dB)"
    return np.mean(np.abs(e.data), axis=0), "mean |correlation|"


def write_png(e: Exported, path: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ulmtools.score.figure import _extent, _scale_bar

    image, label = _picture(e)
    views: list[int | None] = [None] if e.grid.ndim == 2 else list(range(e.grid.ndim))
    width, height = PANEL_INCHES[0] * len(views), PANEL_INCHES[1]
    fig, axes = plt.subplots(1, len(views), figsize=(width, height), dpi=DPI, squeeze=False)
    fig.set_layout_engine("constrained")
    finite = image[np.isfinite(image)]
    cmap, norm = _colours(e.name, finite)
    for ax, axis in zip(axes[0], views):
        shown = image if axis is None else _project(image, axis, e.name)
        extent, (ylab, xlab) = _extent(e.grid, axis)
        im = ax.imshow(
            shown,
            cmap=matplotlib.colormaps[cmap].with_extremes(bad="black"),
            norm=norm,
            extent=extent,
            interpolation="nearest",
        )
        along = "" if axis is None else f", MIP along {e.grid.axes[axis]}"
        ax.set_title(f"{Path(e.source).name}: {e.name}{along}", fontsize=9)
        ax.set_xlabel(f"{xlab} (mm)", fontsize=8)
        ax.set_ylabel(f"{ylab} (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
        _scale_bar(ax, extent)
        fig.colorbar(im, ax=ax, shrink=0.85, label=label)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)

    try:
        _atomic(path, write)
    finally:
        plt.close(fig)
    return {"width": round(width * DPI), "height": round(height * DPI), "colormap": cmap}


def _colours(name: str, finite: np.ndarray) -> tuple[str, Any]:
    from matplotlib import colors

    if name == "velocity_z":
        lim = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        return "RdBu_r", colors.Normalize(-lim, lim)
    if name == "speed":
        return "turbo", None
    if name == "iq":
        return "gray", colors.Normalize(-40.0, 0.0)
    if name == "corr":
        return "magma", colors.Normalize(0.0, 1.0)
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return "hot", colors.PowerNorm(0.5, vmin=0.0, vmax=top)


def _project(image: np.ndarray, axis: int, name: str) -> np.ndarray:
    import warnings

    if name == "velocity_z":  # the largest magnitude, with its sign
        a = np.where(np.isfinite(image), image, 0.0)
        idx = np.expand_dims(np.abs(a).argmax(axis=axis), axis)
        out = np.take_along_axis(image, idx, axis=axis).squeeze(axis)
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(image, axis=axis)


def _real_values(e: Exported) -> np.ndarray:
    """Values for TIFF/NIfTI: magnitudes of complex data, types ImageJ reads."""
    a = np.asarray(e.data)
    if a.dtype.kind == "c":
        return np.abs(a).astype(np.float32)
    if a.dtype == bool or a.dtype == np.uint8:
        return a.astype(np.uint8)
    if a.dtype.kind in "ui":
        if a.size and a.min() >= 0 and a.max() < 2**16:
            return a.astype(np.uint16)
        return a.astype(np.float32)
    return a.astype(np.float32)


def write_tiff(e: Exported, path: Path) -> dict[str, Any]:
    import tifffile

    a = _real_values(e)
    g = e.grid
    dz, dx = g.spacing[0] * 1e6, g.spacing[1] * 1e6  # rows are depth, columns lateral (um)
    metadata: dict[str, Any] = {"unit": "um"}
    if g.ndim == 3:  # slices along y: (.., y, z, x)
        a = np.moveaxis(a, -1, -3)
        metadata["spacing"] = g.spacing[2] * 1e6
    axes = ("T" if e.movie else "") + ("ZYX" if g.ndim == 3 else "YX")
    metadata["axes"] = axes
    if e.movie and e.frame_rate:
        metadata["finterval"] = 1.0 / e.frame_rate
    a = np.ascontiguousarray(a)

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, a, imagej=True, resolution=(1.0 / dx, 1.0 / dz), metadata=metadata)

    _atomic(path, write)
    return {"shape": list(a.shape), "axes": axes, "dtype": str(a.dtype),
            "pixel_size_um": [dx, dz]}  # fmt: skip


def write_nifti(e: Exported, path: Path) -> dict[str, Any]:
    import nibabel as nib

    a = _real_values(e)
    g = e.grid
    # voxel axes (x, y, z): lateral, elevation, depth
    if g.ndim == 2:
        space = np.moveaxis(a, -2, -1)[..., None, :]  # (.., x, 1, z)
        step = (g.spacing[1], g.spacing[1], g.spacing[0])
        origin = (g.origin[1], 0.0, g.origin[0])
    else:
        space = np.moveaxis(a, -3, -1)  # (.., x, y, z)
        step = (g.spacing[1], g.spacing[2], g.spacing[0])
        origin = (g.origin[1], g.origin[2], g.origin[0])
    data = np.moveaxis(space, 0, -1) if e.movie else space  # time last
    affine = np.diag([*(s * 1e3 for s in step), 1.0])
    affine[:3, 3] = [o * 1e3 for o in origin]
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    if e.movie and e.frame_rate:
        zooms = list(img.header.get_zooms())
        zooms[3] = 1.0 / e.frame_rate
        img.header.set_zooms(zooms)

    _atomic(path, lambda tmp: nib.save(img, str(tmp)))
    return {"shape": list(data.shape), "voxel_mm": [s * 1e3 for s in step],
            "dtype": str(data.dtype)}  # fmt: skip


def write_mat(e: Exported, path: Path) -> dict[str, Any]:
    import scipy.io

    g = e.grid
    data = np.moveaxis(e.data, 0, -1) if e.movie else np.asarray(e.data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.nbytes > MAT_V5_LIMIT:
        raise OutputError(
            f"{e.name} is {data.nbytes / 2**30:.1f} GiB, over the 2 GiB of a MATLAB v5 variable",
            "export it as .npy, or export one movie at a time",
        )
    variables: dict[str, Any] = {e.name: data}
    for i, axis in enumerate(g.axes):
        variables[axis] = g.coordinates(i)
    axes = list(g.axes) + (["t"] if e.movie else [])
    if e.movie:
        rate = e.frame_rate or 1.0
        variables["t"] = np.arange(data.shape[-1]) / rate
    if e.frame_rate:
        variables["frame_rate"] = float(e.frame_rate)
    variables["axes"] = ",".join(axes)
    variables["units"] = "positions metre, time second" + (
        ", velocity m/s" if e.name in ("speed", "velocity_z") else ""
    )
    variables["source"] = e.source

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            scipy.io.savemat(fh, variables, do_compression=True, oned_as="column")

    _atomic(path, write)
    return {"shape": list(data.shape), "axes": axes, "dtype": str(data.dtype)}


def write_npy(e: Exported, path: Path) -> dict[str, Any]:
    data = np.asarray(e.data)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, data, allow_pickle=False)

    _atomic(path, write)
    axes = (["t"] if e.movie else []) + list(e.grid.axes)
    return {"shape": list(data.shape), "axes": axes, "dtype": str(data.dtype)}
