"""``ulm import``: a lab's file (MATLAB, HDF5, NumPy) to a channel or image store.

:func:`plan` reads only the file's header and parameter structs and resolves
every parameter (grid, frame rate, wavelength, acquisition, movies, block
size) so the CLI can refuse early and record them; :func:`run` streams the
array into an open store in blocks of frames, one block in memory at a time.

Layouts name the file's axes in the order MATLAB (or NumPy, for .npy/.npz and
plain HDF5) shows them: image data uses ``z``, ``x``, ``y``, ``t`` and
optionally ``movie``; channel data ``sample``, ``element``, ``transmit``,
``frame`` and optionally ``movie``. The defaults are PALA's and Verasonics':
``z,x,t`` (and ``z,x,y,t`` when PData says 3D) for images,
``sample,element,frame`` and ``sample,element,transmit,frame`` for channels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ulmtools.acquisition import SPEED_OF_SOUND, Acquisition
from ulmtools.errors import InputError, UsageError
from ulmtools.grid import SPACE_AXES, Grid
from ulmtools.io import lab
from ulmtools.io.sources import SourceArray, SourceFile, iter_blocks, open_source, scalar, sha256
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.store import CHUNK_TARGET_BYTES, check_finite, create_array

IMAGE_AXES = ("z", "x", "y", "t", "movie")
CHANNEL_AXES = ("sample", "element", "transmit", "frame", "movie")
PREFERRED_VARS = {
    "image": ("IQ", "iq", "IQ_filt", "bf", "data"),
    "channel": ("RcvData", "iq", "IQ", "RF", "rf", "data"),
}
TRUTH_FACTOR = 8


@dataclass(frozen=True)
class ImportConfig:
    """What ``ulm import`` can be told; ``None`` means "from the file"."""

    kind: str = "image"
    var: str | None = None
    layout: str | None = None
    frame_rate: float | None = None
    grid_step: str | None = None
    origin: str | None = None
    wavelength: float | None = None
    fc: float | None = None
    probe_file: str | None = None
    truth: str | None = None
    movie_frames: int | None = None
    block_frames: int | None = None


# ---------------------------------------------------------------------------
# Lengths with units
# ---------------------------------------------------------------------------

_LENGTH_RE = re.compile(
    r"^\s*(?P<num>[-+]?[0-9]*\.?[0-9]*(?:[eE][-+]?[0-9]+)?)\s*\*?\s*"
    r"(?P<unit>lambda|λ|wl|mm|um|µm|m)?\s*(?:/\s*(?P<den>[0-9.eE+-]+))?\s*$"
)
_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6}


def parse_length(text: str, wavelength: float | None, flag: str) -> float:
    """``50um``, ``0.05mm``, ``lambda/2``, ``0.5lambda``, ``-1.2e-3`` (metres)."""
    m = _LENGTH_RE.match(text)
    if not m or (m.group("num") in ("", "+", "-") and not m.group("unit")):
        raise UsageError(
            f"{flag}: cannot read the length {text!r}",
            "write e.g. 50um, 0.05mm, lambda/2 or 5e-5 (metres)",
        )
    num_text = m.group("num")
    num = float(num_text) if num_text not in ("", "+", "-") else (-1.0 if num_text == "-" else 1.0)
    den = float(m.group("den")) if m.group("den") else 1.0
    unit = m.group("unit") or "m"
    if unit in ("lambda", "λ", "wl"):
        if wavelength is None:
            raise UsageError(
                f"{flag} {text!r} is in wavelengths but no wavelength is known",
                "pass --wavelength (metres) or --fc (Hz), or give the length in um or mm",
            )
        scale = wavelength
    else:
        scale = _UNITS[unit]
    if den == 0:
        raise UsageError(f"{flag}: division by zero in {text!r}")
    return num / den * scale


def parse_lengths(
    text: str, dim: int, wavelength: float | None, flag: str, *, positive: bool
) -> tuple[float, ...]:
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) not in (1, dim):
        raise UsageError(f"{flag} needs 1 or {dim} values (z,x[,y]), got {len(parts)}")
    values = tuple(parse_length(p, wavelength, flag) for p in parts)
    values = values * dim if len(values) == 1 else values
    if positive and not all(v > 0 and math.isfinite(v) for v in values):
        raise UsageError(f"{flag} must be positive, got {text!r}")
    return values


def parse_layout(text: str, kind: str) -> tuple[str, ...]:
    allowed = IMAGE_AXES if kind == "image" else CHANNEL_AXES
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [n for n in names if n not in allowed]
    if bad or len(set(names)) != len(names):
        raise UsageError(
            f"--layout {text!r}: axes must be distinct names among {', '.join(allowed)}",
            "e.g. z,x,t (PALA) or t,z,x",
        )
    need = ("z", "x", "t") if kind == "image" else ("sample", "element", "frame")
    missing = [n for n in need if n not in names]
    if missing:
        raise UsageError(f"--layout {text!r} lacks the axis {', '.join(missing)}")
    return names


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


@dataclass
class ImportPlan:
    """Everything resolved before the data is read."""

    source: SourceFile
    array: SourceArray
    kind: str
    layout: tuple[str, ...]
    n_movies: int
    movie_frames: int
    dropped_frames: int
    block: int
    grid: Grid | None
    acquisition: Acquisition | None
    wavelength: float | None
    stacked_transmits: int | None  # channel: transmits stacked along the sample axis
    demodulate: bool  # channel: real RF to baseband IQ
    truth: dict[str, np.ndarray] | None
    sha256: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.kind == "image":
            assert self.grid is not None
            return (self.n_movies, self.movie_frames, *self.grid.shape)
        assert self.acquisition is not None
        a = self.acquisition
        return (self.n_movies, self.movie_frames, a.n_transmits, a.n_samples, a.n_elements)

    @property
    def dims(self) -> tuple[str, ...]:
        if self.kind == "image":
            assert self.grid is not None
            return ("movie", "t", *self.grid.axes)
        return ("movie", "frame", "transmit", "sample", "element")


def _default_layout(kind: str, ndim: int, pdata_dim: int | None, path: Path) -> tuple[str, ...]:
    if kind == "image":
        if ndim == 3 and pdata_dim != 3:
            return ("z", "x", "t")
        if ndim == 4 and pdata_dim == 3:
            return ("z", "x", "y", "t")
    else:
        if ndim == 3:
            return ("sample", "element", "frame")
        if ndim == 4:
            return ("sample", "element", "transmit", "frame")
    raise UsageError(
        f"{path}: cannot tell the axes of a {ndim}-D {kind} array",
        "name them with --layout, e.g. --layout z,x,t or --layout t,z,x,movie",
    )


def _structs(src: SourceFile, names: tuple[str, ...]) -> dict[str, Any]:
    if src.format in ("npy", "npz"):
        return {}
    out = {}
    for n in names:
        v = src.struct(n)
        if v is not None:
            out[n] = v
    return out


def plan(source_path: str | Path, config: ImportConfig) -> ImportPlan:
    """Open the file, check it against ``config`` and resolve every parameter."""
    if config.kind not in ("image", "channel"):
        raise UsageError(f"--kind must be image or channel, got {config.kind!r}")
    if config.wavelength is not None and config.fc is not None:
        raise UsageError("give --wavelength or --fc, not both")
    for name, v in (("--wavelength", config.wavelength), ("--fc", config.fc),
                    ("--frame-rate", config.frame_rate)):  # fmt: skip
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise UsageError(f"{name} must be positive, got {v}")
    for name, n in (("--movie-frames", config.movie_frames),
                    ("--block-frames", config.block_frames)):  # fmt: skip
        if n is not None and n < 1:
            raise UsageError(f"{name} must be at least 1, got {n}")
    src = open_source(source_path)
    var = src.choose(config.var, PREFERRED_VARS[config.kind])
    structs = _structs(src, ("PData", "UF", "P", "Trans", "TX", "Receive", "Resource"))
    arr = src.open(var)
    kind = config.kind
    pdim = lab.pdata_dim(structs.get("PData"))
    layout = (
        parse_layout(config.layout, kind)
        if config.layout
        else _default_layout(kind, len(arr.shape), pdim, src.path)
    )
    if len(layout) != len(arr.shape):
        raise UsageError(
            f"--layout names {len(layout)} axes but {src.path}:{var} has {len(arr.shape)} "
            f"(shape {'x'.join(map(str, arr.shape))})",
            "name one axis per array dimension",
        )
    if arr.nbytes == 0:
        raise InputError(f"{src.path}:{var} is empty (shape {arr.shape})")
    c = lab.speed_of_sound(structs.get("Resource")) or SPEED_OF_SOUND
    wavelength, wl_source = _wavelength(config, structs, c)
    frame_rate, fr_source = _frame_rate(config, structs, src, kind)
    dims = dict(zip(layout, arr.shape))
    time_axis = "t" if kind == "image" else "frame"
    frames = dims[time_axis]
    if "movie" in dims:
        if config.movie_frames is not None:
            raise UsageError("--movie-frames cuts one movie; this layout has a movie axis already")
        n_movies, movie_frames, dropped = dims["movie"], frames, 0
    else:
        movie_frames = min(config.movie_frames or frames, frames)
        n_movies = frames // movie_frames
        dropped = frames - n_movies * movie_frames
    grid = acq = None
    stacked = None
    demodulate = False
    resolved: dict[str, Any] = {"wavelength_source": wl_source, "frame_rate_source": fr_source}
    resolved["layout_source"] = "--layout" if config.layout else "default"
    if kind == "image":
        grid, how = _image_grid(config, structs, layout, dims, wavelength, frame_rate, src)
        resolved.update(how)
        frame_bytes = 8 * int(np.prod(grid.shape))
        if not arr.complex:
            resolved["real_data"] = "imported as complex with a zero imaginary part"
    else:
        acq, stacked, how = _channel_acquisition(config, structs, layout, dims, frame_rate, c, src)
        resolved.update(how)
        demodulate = not arr.complex
        if wavelength is None:
            wavelength = acq.wavelength
        frame_bytes = 8 * acq.n_transmits * acq.n_samples * acq.n_elements
        if "PData" in structs and wavelength is not None:
            spacing, origin, _ = lab.pdata_grid(structs["PData"], wavelength, acq.dim)
            shape = lab.vector(lab.field(lab.first(structs["PData"]), "Size"))
            if shape is not None:
                sz = ([int(n) for n in shape] + [1, 1])[: acq.dim]
                grid = Grid(SPACE_AXES[acq.dim], tuple(sz), origin, spacing, frame_rate)
    block = config.block_frames or max(1, CHUNK_TARGET_BYTES // max(frame_bytes, 1))
    block = min(block, movie_frames)
    truth = _read_truth(config.truth, grid, n_movies, movie_frames) if config.truth else None
    if truth is not None and kind != "image":
        raise UsageError("--truth needs --kind image (the truth is drawn on the image grid)")
    digest = sha256(src.path)
    p = ImportPlan(
        src,
        arr,
        kind,
        layout,
        n_movies,
        movie_frames,
        dropped,
        block,
        grid,
        acq,
        wavelength,
        stacked,
        demodulate,
        truth,
        digest,
    )
    p.parameters = {
        **asdict(config),
        "source": {
            "path": str(src.path.resolve()),
            "sha256": digest,
            "bytes": src.path.stat().st_size,
            "format": src.format,
            "variable": var,
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "streamed": arr.streamed,
        },
        "layout": list(layout),
        "movies": n_movies,
        "movie_frames": movie_frames,
        "dropped_frames": dropped,
        "block_frames": block,
        "frame_rate": frame_rate,
        "wavelength": wavelength,
        "grid": grid.to_attrs() if grid is not None else None,
        "resolved": resolved,
    }
    if truth is not None:
        p.parameters["truth_positions"] = len(truth["frames"])
    return p


def _wavelength(
    config: ImportConfig, structs: Mapping[str, Any], c: float
) -> tuple[float | None, str | None]:
    if config.wavelength is not None:
        return config.wavelength, "--wavelength"
    if config.fc is not None:
        return c / config.fc, f"--fc with c = {c:g} m/s"
    lam = lab.pala_wavelength(structs.get("UF"), structs.get("Trans"), c)
    if lam:
        return lam, "UF.Lambda or Trans.frequency"
    return None, None


def _frame_rate(
    config: ImportConfig, structs: Mapping[str, Any], src: SourceFile, kind: str
) -> tuple[float, str]:
    if config.frame_rate is not None:
        return config.frame_rate, "--frame-rate"
    for name in ("UF", "P"):
        fr = scalar(lab.first(structs.get(name)), "FrameRateUF", "FrameRate", "frameRate")
        if fr and fr > 0:
            return fr, f"{name} struct"
    raise InputError(
        f"{src.path} does not state the frame rate",
        "pass --frame-rate HZ",
    )


def _image_grid(
    config: ImportConfig,
    structs: Mapping[str, Any],
    layout: tuple[str, ...],
    dims: Mapping[str, int],
    wavelength: float | None,
    frame_rate: float,
    src: SourceFile,
) -> tuple[Grid, dict[str, Any]]:
    axes = tuple(a for a in ("z", "x", "y") if a in layout)
    dim = len(axes)
    if axes != SPACE_AXES.get(dim, ()):
        raise UsageError(f"--layout: the spatial axes must be z,x (2D) or z,x,y (3D), got {axes}")
    shape = tuple(int(dims[a]) for a in axes)
    how: dict[str, Any] = {}
    spacing = origin = None
    pdata = structs.get("PData")
    if pdata is not None:
        if wavelength is None:
            raise InputError(
                f"{src.path}: PData is in wavelengths but no wavelength is known",
                "pass --wavelength (metres) or --fc (Hz; c = 1540 m/s)",
            )
        spacing, origin, stated = lab.pdata_grid(pdata, wavelength, dim)
        if stated is not None and tuple(stated) != shape:
            raise InputError(
                f"{src.path}: PData.Size says {stated} but the data is {shape} ({','.join(axes)})",
                "check --layout",
            )
        how["grid_source"] = "PData"
    if config.grid_step is not None:
        spacing = parse_lengths(config.grid_step, dim, wavelength, "--grid-step", positive=True)
        how["grid_source"] = "--grid-step"
    if spacing is None:
        raise InputError(
            f"{src.path} does not state the pixel pitch: it has no PData",
            "pass --grid-step, e.g. 50um, or lambda/2 with --wavelength",
        )
    if config.origin is not None:
        origin = parse_lengths(config.origin, dim, wavelength, "--origin", positive=False)
        how["origin_source"] = "--origin"
    elif origin is None:
        origin = (0.0,) * dim
        how["origin_source"] = "default: the first pixel at 0"
    else:
        how["origin_source"] = "PData"
    return Grid(axes, shape, tuple(origin), tuple(spacing), frame_rate), how


def _channel_acquisition(
    config: ImportConfig,
    structs: Mapping[str, Any],
    layout: tuple[str, ...],
    dims: Mapping[str, int],
    frame_rate: float,
    c: float,
    src: SourceFile,
) -> tuple[Acquisition, int | None, dict[str, Any]]:
    n_elements = int(dims["element"])
    samples = int(dims["sample"])
    params: dict[str, Any] = dict(structs)
    how: dict[str, Any] = {}
    if config.probe_file is not None:
        probe = Path(config.probe_file)
        if probe.suffix.lower() == ".json":
            try:
                attrs = json.loads(probe.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read the probe file {probe}: {exc}") from None
            n_tx = len(attrs.get("transmit_delays", [[0]]))
            attrs.setdefault("frame_rate", frame_rate)
            attrs.setdefault("n_samples", samples if "transmit" in dims else samples // n_tx)
            acq = Acquisition.from_attrs(attrs)
            how["acquisition_source"] = f"{probe} (acquisition attribute JSON)"
            return _check_channel(acq, dims, how)
        psrc = open_source(probe)
        params = {**params, **_structs(psrc, ("Trans", "TX", "Receive", "Resource"))}
        how["acquisition_source"] = f"{probe} (Verasonics structs)"
    else:
        how["acquisition_source"] = f"{src.path} (Verasonics structs)"
    if "Trans" not in params:
        raise InputError(
            f"{src.path} has no Trans/TX/Receive structs to describe the probe and sequence",
            "pass --probe-file (a JSON acquisition attribute or a .mat with Trans, TX, Receive)",
        )
    tx = params.get("TX")
    n_tx = len(tx) if isinstance(tx, list) else 1
    per_tx = samples if "transmit" in dims else samples // n_tx
    acq = lab.verasonics_acquisition(
        params,
        n_samples=per_tx,
        n_elements=n_elements,
        frame_rate=frame_rate,
        center_frequency=config.fc,
        c=c,
    )
    return _check_channel(acq, dims, how)


def _check_channel(
    acq: Acquisition, dims: Mapping[str, int], how: dict[str, Any]
) -> tuple[Acquisition, int | None, dict[str, Any]]:
    if acq.n_elements != dims["element"]:
        raise InputError(
            f"the acquisition has {acq.n_elements} elements but the data {dims['element']}"
        )
    stacked = None
    if "transmit" in dims:
        if dims["transmit"] != acq.n_transmits or dims["sample"] != acq.n_samples:
            raise InputError(
                f"the data has {dims['transmit']} transmits of {dims['sample']} samples; the "
                f"acquisition describes {acq.n_transmits} of {acq.n_samples}"
            )
    else:
        if dims["sample"] != acq.n_transmits * acq.n_samples:
            raise InputError(
                f"the sample axis holds {dims['sample']} rows, not {acq.n_transmits} transmits "
                f"x {acq.n_samples} samples",
                "name a transmit axis with --layout, or fix the acquisition",
            )
        stacked = acq.n_transmits
        how["transmits"] = f"{stacked} stacked along the sample axis (Verasonics RcvData)"
    return acq, stacked, how


# ---------------------------------------------------------------------------
# Truth tables
# ---------------------------------------------------------------------------


def _read_truth(
    path_text: str, grid: Grid | None, n_movies: int, movie_frames: int
) -> dict[str, np.ndarray]:
    if grid is None:
        raise UsageError("--truth needs an image grid")
    path = Path(path_text)
    if not path.is_file():
        raise InputError(f"no such truth file: {path}", "check --truth")
    d = grid.ndim
    space = list(grid.axes)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            table = np.genfromtxt(path, delimiter=delim, names=True, dtype=np.float64)
        except ValueError as exc:
            raise InputError(f"cannot read the truth table {path}: {exc}") from None
        names = [n.lower() for n in (table.dtype.names or ())]
        missing = [n for n in ["frame", *space] if n not in names]
        if missing:
            raise InputError(
                f"the truth table {path} lacks the column(s) {', '.join(missing)}",
                f"its header must name frame, {', '.join(space)} (metres) and optionally id",
            )
        table = np.atleast_1d(table)
        col = {n.lower(): table[n] for n in table.dtype.names or ()}
        frames = col["frame"]
        pos = np.stack([col[a] for a in space], axis=1) if len(frames) else np.zeros((0, d))
        ids = col.get("id")
    elif path.suffix.lower() == ".npy":
        a = np.load(path, allow_pickle=False)
        if a.ndim != 2 or a.shape[1] not in (1 + d, 2 + d):
            raise InputError(
                f"the truth array {path} has shape {a.shape}",
                f"it must be (n, {1 + d}) or (n, {2 + d}): frame, {', '.join(space)}[, id]",
            )
        frames, pos = a[:, 0], a[:, 1 : 1 + d]
        ids = a[:, 1 + d] if a.shape[1] == 2 + d else None
    else:
        raise InputError(
            f"unknown truth file type {path.suffix!r}",
            "give a .csv (header frame,z,x[,y][,id]) or a .npy (n, columns in that order)",
        )
    frames = np.asarray(frames)
    if not np.all(np.isfinite(frames)) or not np.all(np.isfinite(pos)):
        raise InputError(f"the truth table {path} holds non-finite values")
    if np.any(frames != np.round(frames)) or np.any(frames < 0):
        raise InputError(f"the truth table {path} has frames that are not integers >= 0")
    frames = frames.astype(np.int64)
    ids = np.arange(len(frames), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    keep = frames < n_movies * movie_frames
    return {"frames": frames[keep], "positions": pos[keep], "ids": ids[keep]}


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------


def run(
    p: ImportPlan,
    out: zarr.Group,
    *,
    progress: ProgressCallback = no_progress,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Stream the file's array into ``out`` (``iq``), then the truth."""
    chunks = (1, p.block, *p.out_shape[2:])
    iq = create_array(out, "iq", shape=p.out_shape, dtype="complex64", dims=p.dims, chunks=chunks)
    time_axis = p.layout.index("t" if p.kind == "image" else "frame")
    movie_axis = p.layout.index("movie") if "movie" in p.layout else None
    total = p.n_movies * p.movie_frames
    what = f"{p.source.path}:{p.array.name}"
    if log is not None:
        how = "streamed" if p.array.streamed else "read whole (no partial reads of this format)"
        log(f"{what}: {p.block} frames per block, {how}")
    peak = 0.0
    for m in range(p.n_movies):
        base = 0 if movie_axis is not None else m * p.movie_frames
        for a, b in iter_blocks(p.movie_frames, p.block):
            index = [slice(None)] * len(p.layout)
            index[time_axis] = slice(base + a, base + b)
            if movie_axis is not None:
                index[movie_axis] = slice(m, m + 1)
            raw = p.array.read(tuple(index))
            check_finite(raw, what, movie=None)
            block = _to_store_layout(p, raw)
            del raw
            iq[m, a:b] = block
            peak = max(peak, float(np.abs(block).max()) if block.size else 0.0)
            del block
            progress(m * p.movie_frames + b, total, f"movie {m + 1}/{p.n_movies}")
    p.array.close()
    summary: dict[str, Any] = {"movies": p.n_movies, "frames": p.movie_frames}
    summary["dropped_frames"] = p.dropped_frames
    summary["peak_magnitude"] = peak
    summary["truth_positions"] = write_truth(p, out) if p.truth is not None else None
    return summary


def _to_store_layout(p: ImportPlan, raw: np.ndarray) -> np.ndarray:
    layout = list(p.layout)
    if "movie" in layout:
        raw = np.take(raw, 0, axis=layout.index("movie"))
        layout.remove("movie")
    if p.kind == "image":
        assert p.grid is not None
        order = [layout.index(a) for a in ("t", *p.grid.axes)]
        return np.ascontiguousarray(raw.transpose(order)).astype(np.complex64, copy=False)
    acq = p.acquisition
    assert acq is not None
    if "transmit" not in layout:  # Verasonics: transmits stacked along the samples
        s = layout.index("sample")
        shape = list(raw.shape)
        shape[s : s + 1] = [acq.n_transmits, acq.n_samples]
        raw = raw.reshape(shape)
        layout[s : s + 1] = ["transmit", "sample"]
    order = [layout.index(a) for a in ("frame", "transmit", "sample", "element")]
    data = np.ascontiguousarray(raw.transpose(order))
    if p.demodulate:
        data = _demodulate(data.astype(np.float32, copy=False), acq)
    return data.astype(np.complex64, copy=False)


def _demodulate(rf: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Real RF (frame, transmit, sample, element) to baseband IQ at the demodulation frequency."""
    import scipy.signal

    analytic = scipy.signal.hilbert(rf, axis=2).astype(np.complex64)
    t = acq.sample_times
    rot = np.exp(-2j * np.pi * acq.demodulation_frequency * t).astype(np.complex64)
    return analytic * rot[None, None, :, None]


def write_truth(p: ImportPlan, out: zarr.Group) -> int:
    """The truth table as ``truth/``, with each movie's tracks drawn on the x8 grid."""
    from ulmtools.truth import TruthMovie, TruthWriter, densify_tracks, render_tracks

    assert p.truth is not None and p.grid is not None
    fine = p.grid.refined(TRUTH_FACTOR)
    writer = TruthWriter(out, fine, p.n_movies, factor=TRUTH_FACTOR)
    frames, pos, ids = p.truth["frames"], p.truth["positions"], p.truth["ids"]
    movie = frames // p.movie_frames
    step = min(fine.spacing) / 2
    for m in range(p.n_movies):
        sel = movie == m
        f = (frames[sel] - m * p.movie_frames).astype(np.int32)
        dense = densify_tracks(pos[sel], f, ids[sel], step)
        writer.write_movie(m, TruthMovie(pos[sel], f, ids[sel], tracks=render_tracks(dense, fine)))
    writer.close()
    return len(frames)
