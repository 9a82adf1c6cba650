"""The ``ulm beamform`` stage: channel (or image) store in, image store out.

Per movie, in order, with bounded memory (one movie of images plus one block
of channel frames, whatever the number of movies):

1. delay-and-sum + coherent compounding of blocks of channel frames with the
   cached :class:`~ulmtools.beamform.das.DASOperator` (skipped when the input
   is already beamformed IQ);
2. SVD clutter filter over the movie's frames (``clutter=K`` removes the K
   largest singular components; 0 keeps the data as it is);
3. local normalised correlation with the system PSF
   (:mod:`ulmtools.beamform.correlation`).

:func:`resolve_grid` and :func:`plan` resolve every parameter up front so the
CLI can record them; :func:`run` does the work into an open output group.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import zarr

from ulmtools.acquisition import Acquisition
from ulmtools.beamform import psf_source as psf_source_mod
from ulmtools.beamform.clutter import svd_filter
from ulmtools.beamform.correlation import echo_model, psf_correlation, psf_window, system_psf
from ulmtools.beamform.das import DASOperator
from ulmtools.errors import InputError, UsageError
from ulmtools.grid import SPACE_AXES, Grid
from ulmtools.limits import check_memory
from ulmtools.memory import return_large_buffers_to_os
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.runner import MovieStage
from ulmtools.store import Store, check_finite, create_array, default_chunks

__all__ = [
    "BeamformConfig",
    "BeamformStage",
    "BeamformTask",
    "Plan",
    "parse_clutter",
    "parse_grid_size",
    "parse_grid_step",
    "plan",
    "resolve_grid",
    "return_large_buffers_to_os",
    "run",
]

DEFAULT_SIZE = {2: 32, 3: 32}
DEFAULT_STEP_WAVELENGTHS = {2: 0.25, 3: 0.5}
READ_BYTES = 256 * 2**20  # channel frames read at a time (plus one block prefetched)


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BeamformConfig:
    """Everything ``ulm beamform`` can be told; ``None`` means "from the input"."""

    grid_step: str | None = None  # e.g. "lambda/4", "0.25lambda", "25um", "2.5e-5"
    grid_size: str | None = None  # e.g. "32", "32x32", "32,32,32"
    depth: float | None = None  # metres, centre of the grid
    clutter: int = 0  # singular components removed
    correlate: bool = True
    frames_per_chunk: int | None = None
    interp: str = "linear"
    fnumber: str = "auto"  # "auto" or a number (0 = full aperture)
    psf_model: str = "auto"  # point-echo model of the PSF: auto, simulate or analytic
    workers: int = 0  # 0: every core
    psf: str | None = None  # FILE, gaussian:FWHM_Z,FWHM_X[,FWHM_Y] or estimate (psf_source)


_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6}
_STEP_RE = re.compile(
    r"^\s*(?P<num>[0-9.eE+-]+)?\s*\*?\s*(?P<unit>lambda|λ|wl|m|mm|um|µm|micron)?"
    r"\s*(?:/\s*(?P<den>[0-9.eE+-]+))?\s*$"
)


def _parse_length(text: str, wavelength: float) -> float:
    m = _STEP_RE.match(text)
    if not m or (m.group("num") is None and m.group("unit") is None):
        raise UsageError(
            f"cannot read the grid step {text!r}",
            "write e.g. lambda/4, 0.25lambda, 25um, 0.025mm or 2.5e-5 (metres)",
        )
    try:
        num = float(m.group("num")) if m.group("num") else 1.0
        den = float(m.group("den")) if m.group("den") else 1.0
    except ValueError:
        raise UsageError(f"cannot read the grid step {text!r}") from None
    unit = m.group("unit") or "m"
    scale = wavelength if unit in ("lambda", "λ", "wl") else _UNITS[unit]
    value = num / den * scale if den else math.inf
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"the grid step must be positive, got {text!r}")
    return value


def parse_grid_step(text: str, dim: int, wavelength: float) -> tuple[float, ...]:
    """One step for every axis, or one per axis separated by commas (z, x[, y])."""
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) not in (1, dim):
        raise UsageError(f"--grid-step needs 1 or {dim} values, got {len(parts)}")
    steps = tuple(_parse_length(p, wavelength) for p in parts)
    return steps * dim if len(steps) == 1 else steps


def parse_grid_size(text: str, dim: int) -> tuple[int, ...]:
    """``32``, ``32x32`` or ``32,32,32``: pixels per axis (z, x[, y])."""
    parts = [p for p in re.split(r"[x,X*]", text.strip()) if p.strip()]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"cannot read the grid size {text!r}", "write e.g. 32, 32x32 or 32x32x32"
        ) from None
    if len(sizes) not in (1, dim) or any(n < 1 for n in sizes):
        raise UsageError(
            f"--grid-size needs 1 or {dim} positive integers, got {text!r}",
            "write e.g. 32, 32x32 or 32x32x32",
        )
    return sizes * dim if len(sizes) == 1 else sizes


def parse_clutter(text: str) -> int:
    """``none`` -> 0, ``svd:K`` -> K."""
    t = text.strip().lower()
    if t in ("none", "0", "svd:0"):
        return 0
    m = re.fullmatch(r"svd:(\d+)", t)
    if not m:
        raise UsageError(
            f"unknown clutter filter {text!r}", "use none or svd:K (K an integer >= 0)"
        )
    return int(m.group(1))


def _sample_window_depth(acq: Acquisition) -> float:
    """Depth whose round trip (straight down and back) lands mid sample window."""
    t_mid = acq.t0 + (acq.n_samples - 1) / 2 / acq.sampling_frequency
    return max(t_mid * acq.speed_of_sound / 2, 0.0)


def resolve_grid(
    acq: Acquisition | None,
    stored: Grid | None,
    *,
    step: str | None = None,
    size: str | None = None,
    depth: float | None = None,
) -> Grid:
    """The imaging grid: the stored one unless step, size or depth say otherwise.

    Without a stored grid: lambda/4 and 32x32 in 2D, lambda/2 and 32^3 in 3D,
    centred laterally on the array and in depth on ``depth`` or the middle of
    the sample window.
    """
    if acq is None and stored is None:
        raise InputError("the input has neither an acquisition nor a grid attribute")
    dim = acq.dim if acq is not None else stored.ndim  # type: ignore[union-attr]
    if stored is not None and stored.ndim != dim:
        raise InputError(
            f"the stored grid is {stored.ndim}D but the acquisition is {dim}D",
            "fix the grid attribute or pass --grid-step and --grid-size",
        )
    frame_rate = acq.frame_rate if acq is not None else stored.frame_rate  # type: ignore[union-attr]
    if stored is not None and step is None and size is None and depth is None:
        return Grid(stored.axes, stored.shape, stored.origin, stored.spacing, frame_rate)
    axes = stored.axes if stored is not None else SPACE_AXES[dim]
    # without an acquisition (an image store), steps in wavelengths are meaningless
    wavelength = acq.wavelength if acq is not None else math.nan
    if step is not None:
        spacing = parse_grid_step(step, dim, wavelength)
        if any(math.isnan(s) for s in spacing):
            raise UsageError("a grid step in wavelengths needs the acquisition attribute")
    elif stored is not None:
        spacing = stored.spacing
    else:
        spacing = (DEFAULT_STEP_WAVELENGTHS[dim] * wavelength,) * dim
    if size is not None:
        shape = parse_grid_size(size, dim)
    elif stored is not None:
        shape = stored.shape
    else:
        shape = (DEFAULT_SIZE[dim],) * dim
    if stored is not None:
        centre = [
            o + (n - 1) / 2 * s for o, n, s in zip(stored.origin, stored.shape, stored.spacing)
        ]
    else:
        assert acq is not None
        lateral = acq.element_positions.mean(axis=0)  # (z, x, y)
        centre = [_sample_window_depth(acq)] + [lateral["zxy".index(a)] for a in axes[1:]]
    if depth is not None:
        if not depth > 0:
            raise UsageError(f"--depth must be positive, got {depth}")
        centre[axes.index("z")] = depth
    origin = tuple(c - (n - 1) / 2 * s for c, n, s in zip(centre, shape, spacing))
    return Grid(tuple(axes), tuple(shape), origin, tuple(spacing), frame_rate)


def _fnumber(text: str) -> str | float:
    t = str(text).strip().lower()
    if t == "auto":
        return "auto"
    try:
        f = float(t)
    except ValueError:
        raise UsageError(f"--fnumber must be auto or a number, got {text!r}") from None
    if not (f >= 0 and math.isfinite(f)):
        raise UsageError(f"--fnumber must be >= 0 (0: full aperture), got {text!r}")
    return f


# ---------------------------------------------------------------------------
# The plan: what will be done, decided before any heavy work
# ---------------------------------------------------------------------------


@dataclass
class Plan:
    """The resolved work: input arrays, grid, shapes and parameters."""

    source: Store
    mode: str  # "channel" (DAS first) or "image" (already beamformed)
    acquisition: Acquisition | None
    grid: Grid
    n_movies: int
    n_frames: int
    clutter: int
    correlate: bool
    frames_per_chunk: int
    interp: str
    fnumber: str | float
    workers: int
    psf_source: str | None  # "computed", "input", "gaussian", "file", "estimated" or None
    psf_model: str | None  # qualified name of the echo model, when computed
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.n_movies, self.n_frames, *self.grid.shape)

    @property
    def dims(self) -> tuple[str, ...]:
        return ("movie", "t", *self.grid.axes)


def plan(source: Store, config: BeamformConfig) -> Plan:
    """Check the input against the config and resolve every parameter (cheap)."""
    if config.interp not in ("linear", "nearest"):
        raise UsageError(f"unknown interpolation {config.interp!r}", "use linear or nearest")
    if config.frames_per_chunk is not None and config.frames_per_chunk < 1:
        raise UsageError("--frames-per-chunk must be at least 1")
    if config.clutter < 0:
        raise UsageError("the SVD cut-off must be >= 0")
    fnumber = _fnumber(config.fnumber)
    attrs = source.attrs
    acq = Acquisition.from_attrs(attrs["acquisition"]) if "acquisition" in attrs else None
    stored = Grid.from_attrs(attrs["grid"]) if "grid" in attrs else None
    if source.kind == "channel":
        mode = "channel"
        iq = source.array("iq")
        _check_complex(iq, source, "(movie, frame, transmit, sample, element)")
        assert acq is not None  # required attribute of channel stores
        expect = (acq.n_transmits, acq.n_samples, acq.n_elements)
        if iq.ndim != 5 or tuple(iq.shape[2:]) != expect:
            raise InputError(
                f"{source.path}/iq has shape {tuple(iq.shape)} but the acquisition describes "
                f"(movie, frame, {expect[0]} transmits, {expect[1]} samples, {expect[2]} elements)",
                "fix the acquisition attribute (n_samples, transmit_delays, element_positions)",
            )
        grid = resolve_grid(
            acq, stored, step=config.grid_step, size=config.grid_size, depth=config.depth
        )
    else:
        mode = "image"
        if "corr" in source.group:
            raise InputError(
                f"{source.path} already holds a correlation ('corr')",
                "ulm beamform takes channel data or beamformed IQ without a correlation",
            )
        iq = source.array("iq")
        _check_complex(iq, source, "(movie, t, z, x[, y])")
        if stored is None:
            raise InputError(f"{source.path} has no grid attribute")
        if config.grid_step or config.grid_size or config.depth:
            raise UsageError(
                "--grid-step, --grid-size and --depth apply to channel data only",
                "beamformed IQ keeps its own grid",
            )
        grid = stored
        if grid.frame_rate is None and acq is not None:
            grid = Grid(grid.axes, grid.shape, grid.origin, grid.spacing, acq.frame_rate)
        if iq.ndim != 2 + grid.ndim or tuple(iq.shape[2:]) != tuple(grid.shape):
            raise InputError(
                f"{source.path}/iq has shape {tuple(iq.shape)} but its grid is "
                f"{tuple(grid.shape)}; expected (movie, t, {', '.join(map(str, grid.shape))})"
            )
        if acq is not None and acq.dim != grid.ndim:
            raise InputError(f"{source.path}: a {grid.ndim}D grid with a {acq.dim}D acquisition")
    n_movies, n_frames = int(iq.shape[0]), int(iq.shape[1])
    if n_movies == 0 or n_frames == 0:
        raise InputError(f"{source.path}/iq is empty (shape {tuple(iq.shape)})")
    if config.clutter and config.clutter >= min(n_frames, int(np.prod(grid.shape))):
        raise UsageError(
            f"--clutter svd:{config.clutter} would remove every component of "
            f"{n_frames}-frame movies",
            f"use K < {min(n_frames, int(np.prod(grid.shape)))}",
        )
    _check_memory(mode, acq, grid, n_frames, config)
    psf_source = psf_model = None
    psf_spec: dict[str, Any] = {}
    if config.correlate:
        spec_kind, spec = psf_source_mod.parse_spec(config.psf)
        if config.psf is not None and spec_kind != "estimate":
            psf_source = spec_kind
            if spec_kind == "gaussian":
                wl = acq.wavelength if acq is not None else attrs.get("wavelength")
                fwhm = psf_source_mod.gaussian_fwhm(spec, grid.ndim, wl)
                psf_spec = {"fwhm": list(fwhm)}
            else:
                psf_spec = {"file": str(spec)}
        elif config.psf is not None and mode == "channel":
            raise UsageError("--psf estimate applies to beamformed IQ (an image store)")
        elif mode == "image" and "psf" in source.group and config.psf is None:
            psf_source = "input"
        elif acq is not None and config.psf is None:
            psf_source = "computed"
            psf_model = echo_model(config.psf_model)[1]
        else:
            psf_source = "estimated"
    fpc = config.frames_per_chunk
    if fpc is None:
        fpc = default_chunks((n_movies, n_frames, *grid.shape), np.complex64)[1]
    fpc = min(fpc, n_frames)
    workers = config.workers if config.workers > 0 else numba.config.NUMBA_NUM_THREADS
    p = Plan(
        source,
        mode,
        acq,
        grid,
        n_movies,
        n_frames,
        config.clutter,
        config.correlate,
        fpc,
        config.interp,
        fnumber,
        workers,
        psf_source,
        psf_model,
    )
    p.parameters = {
        **asdict(config),
        "mode": mode,
        "grid": grid.to_attrs(),
        "frames_per_chunk": fpc,
        "workers": workers,
        "fnumber": fnumber,
        "psf_source": psf_source,
        "psf_model": psf_model,
        "psf_model_choice": config.psf_model,
        "psf_spec": psf_spec,
    }
    return p


def _check_memory(
    mode: str, acq: Acquisition | None, grid: Grid, n_frames: int, config: BeamformConfig
) -> None:
    """Refuse a grid whose movies (or DAS matrix) cannot be held in memory."""
    pixels = float(np.prod([float(n) for n in grid.shape]))
    # a movie, its clutter-filtered copy and its correlation are held at once (complex64)
    need = 8.0 * n_frames * pixels * (3 if config.correlate or config.clutter else 1)
    if mode == "channel" and acq is not None:
        # DAS weights: about one (complex64 value, int32 index) per pixel, element and
        # transmit (measured: 0.98 per triple for a 32x32 grid of the 2D preset)
        need += 12.0 * pixels * acq.n_elements * acq.n_transmits
    shape = "x".join(str(n) for n in grid.shape)
    check_memory(
        need,
        f"a {shape} grid with {n_frames}-frame movies",
        "use a smaller --grid-size or a coarser --grid-step",
    )


def _check_complex(arr: zarr.Array, source: Store, layout: str) -> None:
    if not np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(
            f"{source.path}/iq is {arr.dtype}, not complex IQ {layout}",
            "demodulate RF to IQ first (complex64)",
        )


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------


@dataclass
class Timings:
    read: float = 0.0
    das: float = 0.0
    clutter: float = 0.0
    correlate: float = 0.0
    write: float = 0.0
    build: float = 0.0
    psf: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def _read_blocks(pool: ThreadPoolExecutor, arr: zarr.Array, movie: int, n_frames: int, block: int):
    """Yield (f0, frames) while the next block is read in the background.

    At most two blocks are alive at once (the one yielded and the one being
    read); the caller must drop its reference before asking for the next. One
    reader thread serves the whole run: a new thread per movie would get a
    fresh malloc arena each time and the process would grow with the movies.
    """

    def read(start: int) -> np.ndarray:
        return np.asarray(arr[movie, start : start + block])

    starts = list(range(0, n_frames, block))
    pending = pool.submit(read, starts[0])
    for i, start in enumerate(starts):
        data = pending.result()
        pending = pool.submit(read, starts[i + 1]) if i + 1 < len(starts) else None
        yield start, data
        del data


def _read_block_frames(arr: zarr.Array, n_frames: int) -> int:
    """Frames per read: about READ_BYTES, whole input chunks when possible, and
    at least 32 per compute thread (the DAS kernel's block) unless that would
    double the budget."""
    frame_bytes = int(np.prod(arr.shape[2:])) * arr.dtype.itemsize
    n = max(1, READ_BYTES // max(frame_bytes, 1))
    want = 32 * numba.get_num_threads()
    if n < want and want * frame_bytes <= 2 * READ_BYTES:
        n = want
    n = min(n, n_frames)
    chunk = int(arr.chunks[1])
    if n >= chunk and n < n_frames:
        n = n // chunk * chunk  # whole input chunks
    return n


def run(
    p: Plan,
    out: zarr.Group,
    *,
    progress: ProgressCallback = no_progress,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Beamform, filter and correlate every movie of ``p`` into ``out`` (in-process)."""
    from ulmtools.runner import fill

    return fill(BeamformStage(p, log=log), out, progress=progress)


class BeamformStage(MovieStage):
    """``ulm beamform`` for the runner: one task per movie, writing its ``iq`` and ``corr``."""

    name = "beamform"
    kind = "image"

    def __init__(self, p: Plan, *, log: Callable[[str], None] | None = None) -> None:
        self.plan = p
        self.log = log
        src = p.source
        self.inputs = [src]
        self.input_paths = [src.path]
        self.parameters = p.parameters
        self.grid = p.grid
        self.axes = p.dims
        self.attrs = {"beamform": p.parameters}
        if "acquisition" in src.attrs:
            self.attrs["acquisition"] = dict(src.attrs["acquisition"])
        if "wavelength" in src.attrs:
            self.attrs["wavelength"] = src.attrs["wavelength"]
        self.units = [[m] for m in range(p.n_movies)]
        self.truth = src
        self.truth_grid = p.grid
        self.timings = Timings()
        self.summary: dict[str, Any] = {}
        self.psf: np.ndarray | None = None
        self._task: BeamformTask | None = None

    def create(self, root: zarr.Group) -> None:
        p = self.plan
        grid = p.grid
        chunks = (1, p.frames_per_chunk, *grid.shape)
        create_array(root, "iq", shape=p.out_shape, dtype="complex64", dims=p.dims, chunks=chunks)
        if p.correlate:
            t = time.perf_counter()
            psf, psf_grid_attrs = _psf(p, self.summary)
            self.timings.psf = time.perf_counter() - t
            arr = create_array(
                root,
                "psf",
                shape=psf.shape,
                dtype="complex64",
                dims=tuple(f"psf_{a}" for a in grid.axes),
                chunks=psf.shape,
            )
            arr[...] = psf
            arr.attrs.update(
                {"grid": psf_grid_attrs, "source": p.psf_source, "echo_model": p.psf_model}
            )
            create_array(
                root, "corr", shape=p.out_shape, dtype="complex64", dims=p.dims, chunks=chunks
            )
            self.summary["psf_shape"] = list(psf.shape)
            self.psf = psf
        if p.mode == "channel":
            assert p.acquisition is not None
            t = time.perf_counter()
            op = DASOperator(p.acquisition, grid, interp=p.interp, fnumber=p.fnumber)
            self.timings.build = time.perf_counter() - t
            self.summary["das"] = {**op.describe(), "from_cache": op.from_cache}
            if self.log:
                self.log(
                    f"DAS matrix: {op.nnz:,} weights, {op.nbytes / 2**20:.0f} MiB, "
                    f"built in {self.timings.build:.2f} s"
                )
        self._start = time.perf_counter()

    def task(self, root_path: str) -> BeamformTask:
        p = self.plan
        src = p.source.array("iq")
        block = _read_block_frames(src, p.n_frames) if p.mode == "channel" else p.n_frames
        self._task = BeamformTask(
            source=str(Path(p.source.path).resolve()),  # workers may run elsewhere
            name=str(p.source.path),
            root=root_path,
            mode=p.mode,
            acquisition=p.acquisition,
            grid=p.grid,
            n_frames=p.n_frames,
            block=block,
            clutter=p.clutter,
            correlate=p.correlate,
            interp=p.interp,
            fnumber=p.fnumber,
            workers=p.workers,
            psf=self.psf,
        )
        return self._task

    def collect(self, movie: int, result: dict[str, float]) -> str:
        for name, seconds in result.items():
            setattr(self.timings, name, getattr(self.timings, name) + seconds)
        return f"movie {movie + 1}/{self.plan.n_movies}"

    def finish(self, root: zarr.Group) -> dict[str, Any]:
        if self._task is not None:
            self._task.close()
        p = self.plan
        elapsed = time.perf_counter() - self._start
        total = p.n_movies * p.n_frames
        return {
            **self.summary,
            "movies": p.n_movies,
            "frames": p.n_frames,
            "grid_shape": list(p.grid.shape),
            "grid_spacing": list(p.grid.spacing),
            "seconds": round(elapsed, 3),
            "frames_per_second": round(total / elapsed, 1) if elapsed > 0 else None,
            "timings": self.timings.as_dict(),
        }

    def result(self, summary: dict[str, Any], root: zarr.Group) -> dict[str, Any]:
        summary.pop("_seconds", None)
        root.attrs["beamform"] = {**self.plan.parameters, "result": summary}
        return summary


def _psf(p: Plan, summary: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The system PSF the correlation uses, and the attributes of its grid."""
    grid = p.grid
    if p.psf_source == "input":
        psf = np.asarray(p.source.array("psf")[...]).astype(np.complex64)
        check_finite(psf, f"{p.source.path}/psf")
        if psf.ndim != grid.ndim or any(n % 2 == 0 for n in psf.shape):
            raise InputError(
                f"{p.source.path}/psf has shape {psf.shape}; a {grid.ndim}D PSF of odd "
                "sizes centred on its middle pixel is needed"
            )
        return psf, dict(p.source.array("psf").attrs.get("grid", {}))
    if p.psf_source in ("gaussian", "file", "estimated"):
        psf = _psf_without_acquisition(p, summary)
        return psf, psf_window(grid, psf.shape).to_attrs()
    assert p.acquisition is not None
    psf, psf_grid = system_psf(
        p.acquisition,
        grid,
        interp=p.interp,
        fnumber=p.fnumber,
        model=p.parameters.get("psf_model_choice", "auto"),
    )
    return psf, psf_grid.to_attrs()


def _psf_without_acquisition(p: Plan, summary: dict[str, Any]) -> np.ndarray:
    """The PSF of ``--psf`` (a Gaussian, a file) or estimated from the data's bubbles."""
    from pathlib import Path

    if p.psf_source == "gaussian":
        return psf_source_mod.gaussian_psf(tuple(p.parameters["psf_spec"]["fwhm"]), p.grid)
    if p.psf_source == "file":
        return psf_source_mod.load_psf(Path(p.parameters["psf_spec"]["file"]), p.grid)
    src = p.source.array("iq")

    def movies():  # clutter-filtered, as the correlation will see them
        for m in range(min(p.n_movies, psf_source_mod.MAX_MOVIES)):
            movie = np.asarray(src[m]).astype(np.complex64, copy=False)
            check_finite(movie, f"{p.source.path}/iq", movie=m)
            yield svd_filter(movie, p.clutter) if p.clutter else movie

    psf, info = psf_source_mod.estimate_psf(movies(), p.grid)
    summary["psf_estimate"] = info
    return psf


@dataclass
class BeamformTask:
    """Beamforms whole movies into the output store at ``root`` (picklable: one per worker).

    Reopens the input and the output by path, so it runs in this process, a worker
    process or on a Dask worker alike; the DAS matrix is built once per process.
    """

    source: str
    name: str  # the input as the user named it, for messages
    root: str
    mode: str
    acquisition: Acquisition | None
    grid: Grid
    n_frames: int
    block: int
    clutter: int
    correlate: bool
    interp: str
    fnumber: str | float
    workers: int
    psf: np.ndarray | None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def _open(self) -> tuple[Any, Any, Any, Any, ThreadPoolExecutor]:
        cached = self.__dict__.get("_opened")
        if cached is None:
            from ulmtools.store import open_store

            src = open_store(self.source, ["channel", "image"]).array("iq")
            iq_out = zarr.open_array(f"{self.root}/iq", mode="r+")
            corr_out = zarr.open_array(f"{self.root}/corr", mode="r+") if self.correlate else None
            op = None
            if self.mode == "channel":
                assert self.acquisition is not None
                op = DASOperator(
                    self.acquisition, self.grid, interp=self.interp, fnumber=self.fnumber
                )
            # one reader thread for the whole run: a new thread per movie would get a
            # fresh malloc arena each time and the process would grow with the movies
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ulm-read")
            cached = self.__dict__["_opened"] = (src, iq_out, corr_out, op, pool)
        return cached

    def close(self) -> None:
        cached = self.__dict__.pop("_opened", None)
        if cached is not None:
            cached[-1].shutdown(wait=True, cancel_futures=True)

    def __call__(self, unit: list[int]) -> list[dict[str, float]]:
        numba.set_num_threads(max(1, min(self.workers, numba.config.NUMBA_NUM_THREADS)))
        src, iq_out, corr_out, op, pool = self._open()
        return [self.movie(m, src, iq_out, corr_out, op, pool) for m in unit]

    def movie(self, m, src, iq_out, corr_out, op, pool) -> dict[str, float]:  # type: ignore[no-untyped-def]
        t_ = {"read": 0.0, "das": 0.0, "clutter": 0.0, "correlate": 0.0, "write": 0.0}
        movie = np.empty((self.n_frames, *self.grid.shape), dtype=np.complex64)
        t_read = time.perf_counter()
        for f0, data in _read_blocks(pool, src, m, self.n_frames, self.block):
            t = time.perf_counter()
            t_["read"] += t - t_read
            check_finite(data, f"{self.name}/iq", movie=m, first_frame=f0)
            movie[f0 : f0 + len(data)] = op.apply(data) if op is not None else data
            del data
            t_read = time.perf_counter()
            t_["das"] += t_read - t
        if self.clutter:
            t = time.perf_counter()
            movie = svd_filter(movie, self.clutter)
            t_["clutter"] += time.perf_counter() - t
        t = time.perf_counter()
        iq_out[m] = movie
        t_["write"] += time.perf_counter() - t
        if corr_out is not None:
            t = time.perf_counter()
            corr = psf_correlation(movie, self.psf, workers=self.workers)
            t_["correlate"] += time.perf_counter() - t
            t = time.perf_counter()
            corr_out[m] = corr
            t_["write"] += time.perf_counter() - t
        return t_
