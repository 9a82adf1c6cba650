"""Conventional ULM, store to store: detect, localize, link, render.

:func:`track_movie` runs one movie's envelope through detection
(:mod:`~ulmtools.track.detect`), sub-pixel localization
(:mod:`~ulmtools.track.localize`) and Hungarian linking with gap closing
(:mod:`~ulmtools.track.link`). :func:`track_store` streams an image store movie
by movie into a ``tracks`` store:

``localizations/``  one row per localization, movies one after another
    ``positions`` float64 (n, D) metres (grid axis order), ``frames`` int32 (n,),
    ``intensity`` float32 (n,) (envelope at the detected pixel), ``track`` int64
    (n,) (track id unique in the store, -1 when not in a kept track),
    ``velocity`` float32 (n, D) m/s (NaN when not in a track) and ``offsets``
    int64 (movies + 1);
``coords`` / ``feats`` / ``offsets``
    each movie's track map on the fine grid, in the layout of a prediction store
    (fine-grid indices, feature 1.0), so ``ulm score`` binarizes both alike;
``angiogram`` uint32  movies whose track map holds each fine pixel;
``density`` uint32    tracks crossing each fine pixel, all movies;
``speed``, ``velocity_z`` float32  mean speed and signed axial velocity (m/s, NaN
    where no track passed).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.runner import MovieStage
from ulmtools.sites import RaggedWriter, SiteWriter
from ulmtools.store import Store, create_array
from ulmtools.track.detect import Detection, detect
from ulmtools.track.link import Trajectory, kinematics, link
from ulmtools.track.localize import METHODS, localize
from ulmtools.track.render import Maps

ROWS_PER_CHUNK = 1 << 20
DEFAULT_LINK_PIXELS = 2.0
DEFAULT_DETECT = "peak:10"


@dataclass(frozen=True)
class TrackConfig:
    """Every parameter of ``ulm track``; ``None`` means "derived from the data"."""

    signal: str | None = None  # iq | corr; default iq when the store has it
    detect: str = DEFAULT_DETECT
    localize: str = "gaussian"
    max_speed: float | None = None  # m/s
    max_link_distance: float | None = None  # metres; default 2 image pixels
    max_gap: int = 2
    min_track_length: int = 10
    smooth: int = 3
    render_factor: int = 8
    window: tuple[int, ...] | None = None  # odd pixels per axis; default from the PSF
    workers: int = 1

    def __post_init__(self) -> None:
        Detection.parse(self.detect)
        if self.signal not in (None, "iq", "corr"):
            raise UsageError(f"--signal must be iq or corr, got {self.signal!r}")
        if self.localize not in METHODS:
            raise UsageError(
                f"--localize {self.localize!r} is not a method", f"use one of {', '.join(METHODS)}"
            )
        if self.max_speed is not None and self.max_link_distance is not None:
            raise UsageError("give --max-speed or --max-link-distance, not both")
        for name, v in (
            ("--max-speed", self.max_speed),
            ("--max-link-distance", self.max_link_distance),
        ):
            if v is not None and not (np.isfinite(v) and v > 0):
                raise UsageError(f"{name} must be a positive number, got {v}")
        if self.max_gap < 0:
            raise UsageError(f"--max-gap must be 0 or more frames, got {self.max_gap}")
        if self.min_track_length < 1:
            raise UsageError(f"--min-track-length must be at least 1, got {self.min_track_length}")
        if self.smooth < 1:
            raise UsageError(f"--smooth must be at least 1 frame, got {self.smooth}")
        if not 1 <= self.render_factor <= 32:
            raise UsageError(f"--render-factor must be 1 to 32, got {self.render_factor}")
        if self.window is not None and any(w < 1 or w % 2 == 0 or w > 15 for w in self.window):
            raise UsageError(f"--window sizes must be odd, 1 to 15 pixels, got {self.window}")
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}")

    @property
    def detection(self) -> Detection:
        return Detection.parse(self.detect)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Resolved:
    """What :class:`TrackConfig` leaves to the data, resolved for one store."""

    signal: str
    grid: Grid
    fine_grid: Grid
    frame_rate: float
    max_link_distance: float  # metres per frame
    window: tuple[int, ...]
    psf_width: tuple[float, ...]  # pixels per axis

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "frame_rate": self.frame_rate,
            "max_link_distance": self.max_link_distance,
            "max_speed": self.max_link_distance * self.frame_rate,
            "window": list(self.window),
            "psf_width_pixels": [round(w, 3) for w in self.psf_width],
        }


def psf_fwhm_pixels(store: Store, grid: Grid) -> tuple[float, ...] | None:
    """The full width at half maximum of the store's PSF along each axis, in grid pixels."""
    if "psf" not in store.group:
        return None
    psf = store.array("psf")
    spacing = Grid.from_attrs(psf.attrs["grid"]).spacing if "grid" in psf.attrs else grid.spacing
    return fwhm_pixels(np.asarray(psf[...]), spacing, grid.spacing)


def fwhm_pixels(
    psf: np.ndarray, psf_spacing: tuple[float, ...], grid_spacing: tuple[float, ...]
) -> tuple[float, ...] | None:
    """FWHM of ``abs(psf)`` through its peak along each axis, in pixels of ``grid_spacing``."""
    amp = np.abs(np.asarray(psf))
    if amp.ndim != len(grid_spacing) or amp.size == 0 or not np.isfinite(amp).all():
        return None
    if amp.max() <= 0:
        return None
    peak = np.unravel_index(np.argmax(amp), amp.shape)
    widths = []
    for ax in range(amp.ndim):
        line = amp[tuple(slice(None) if i == ax else peak[i] for i in range(amp.ndim))]
        widths.append(_fwhm(line, int(peak[ax])) * psf_spacing[ax] / grid_spacing[ax])
    return tuple(float(w) for w in widths)


def _fwhm(line: np.ndarray, peak: int) -> float:
    """Full width at half maximum of a 1-D profile, half-maximum crossings interpolated."""
    half = line[peak] / 2
    edges = []
    for step in (-1, 1):
        i = peak
        while 0 <= i + step < len(line) and line[i + step] >= half:
            i += step
        j = i + step
        if 0 <= j < len(line):  # the crossing lies between i and j
            frac = (line[i] - half) / (line[i] - line[j])
            edges.append(i + step * frac)
        else:
            edges.append(i + step * 0.5)
    return float(abs(edges[1] - edges[0]))


def default_window(method: str, fwhm: tuple[float, ...] | None, ndim: int) -> tuple[int, ...]:
    """Odd window per axis: the PSF's FWHM (at least 3), 2 pixels wider for radial symmetry.

    Radial symmetry needs the gradients of the PSF's flanks, beyond its half maximum
    (on our simulator's PSF its error fell from 0.044 to 0.022 wavelengths laterally
    in 2D with the wider window).
    """
    if fwhm is None:
        return (3,) * ndim
    extra = 2 if method == "radial-symmetry" else 0
    return tuple(int(min(11, max(3, 2 * round((w - 1) / 2) + 1 + extra))) for w in fwhm)


def resolve(config: TrackConfig, store: Store) -> Resolved:
    """Resolve the signal, link distance and window of ``config`` for ``store``."""
    grid = store.grid
    names = [n for n in ("iq", "corr") if n in store.group]
    signal = config.signal or ("iq" if "iq" in names else "corr")
    if signal not in names:
        have = " and ".join(names) if names else "neither iq nor corr"
        raise InputError(
            f"{store.path} has no {signal!r} array (it has {have})",
            f"use --signal {names[0]}" if names else "give an image store made by ulm beamform",
        )
    arr = store.array(signal)
    if arr.ndim != 2 + grid.ndim or tuple(arr.shape[2:]) != tuple(grid.shape):
        raise InputError(
            f"{store.path}/{signal} has shape {tuple(arr.shape)}; expected (movie, t, "
            f"{', '.join(str(n) for n in grid.shape)}) for its grid"
        )
    if not grid.frame_rate:
        raise InputError(
            f"{store.path} has no frame rate in its grid attribute",
            "add grid.frame_rate (Hz): tracking needs it for velocities",
        )
    frame_rate = float(grid.frame_rate)
    if config.max_link_distance is not None:
        max_link = float(config.max_link_distance)
    elif config.max_speed is not None:
        max_link = float(config.max_speed) / frame_rate
    else:
        max_link = DEFAULT_LINK_PIXELS * max(grid.spacing)
    fwhm = psf_fwhm_pixels(store, grid)
    if config.window is not None:
        if len(config.window) != grid.ndim:
            raise UsageError(
                f"--window has {len(config.window)} sizes for a {grid.ndim}D grid",
                "give one odd size per axis, e.g. 3x7",
            )
        window = tuple(config.window)
    else:
        window = default_window(config.localize, fwhm, grid.ndim)
    psf_width = fwhm if fwhm is not None else tuple(float(w) for w in window)
    return Resolved(
        signal=signal,
        grid=grid,
        fine_grid=grid.refined(config.render_factor),
        frame_rate=frame_rate,
        max_link_distance=max_link,
        window=window,
        psf_width=psf_width,
    )


@dataclass
class MovieTracks:
    """One movie's localizations, tracks and timings."""

    positions: np.ndarray  # (n, D) metres
    frames: np.ndarray  # (n,)
    intensity: np.ndarray  # (n,)
    labels: np.ndarray  # (n,) track within the movie, -1 dropped
    velocity: np.ndarray  # (n, D) m/s, NaN untracked
    trajectories: list[Trajectory]
    floor: float
    seconds_detect: float
    seconds_link: float
    n_frames: int = 0

    @property
    def n_tracks(self) -> int:
        return len(self.trajectories)


def track_movie(envelope: np.ndarray, config: TrackConfig, res: Resolved) -> MovieTracks:
    """Conventional ULM on one movie's envelope (t, *space)."""
    t0 = time.perf_counter()
    env = np.asarray(envelope, dtype=np.float32)
    idx, val, floor = detect(env, config.detection)
    frac = localize(env, idx, config.localize, window=res.window, psf_width=res.psf_width)
    positions = res.grid.to_position(frac)
    frames = idx[:, 0].astype(np.int64)
    t1 = time.perf_counter()
    labels = link(
        frames,
        positions,
        max_distance=res.max_link_distance,
        max_gap=config.max_gap,
        min_length=config.min_track_length,
    )
    trajectories = kinematics(
        frames, positions, labels, frame_rate=res.frame_rate, smooth=config.smooth
    )
    velocity = np.full(positions.shape, np.nan, dtype=np.float32)
    for tr in trajectories:
        rows = np.flatnonzero(labels == tr.label)
        velocity[rows] = tr.velocities[frames[rows] - tr.frames[0]]
    t2 = time.perf_counter()
    return MovieTracks(
        positions=positions,
        frames=frames.astype(np.int32),
        intensity=val.astype(np.float32),
        labels=labels,
        velocity=velocity,
        trajectories=trajectories,
        floor=floor,
        seconds_detect=t1 - t0,
        seconds_link=t2 - t1,
        n_frames=int(env.shape[0]),
    )


class LocalizationWriter:
    """Appends each movie's localization table to ``localizations/`` (bounded memory)."""

    def __init__(self, root: zarr.Group, grid: Grid) -> None:
        group = root.require_group("localizations")
        group.attrs.update({"columns": list(grid.axes), "unit": "metre"})
        d = grid.ndim
        xyz = {"dims": ("row", "coordinate")}
        self.table = RaggedWriter(
            group,
            {
                "positions": ("float64", d, xyz | {"unit": "metre", "axes_order": list(grid.axes)}),
                "frames": ("int32", None, {}),
                "intensity": ("float32", None, {"meaning": "envelope at the maximum"}),
                "track": ("int64", None, {"meaning": "track id; -1 not in a kept track"}),
                "velocity": ("float32", d, xyz | {"unit": "metre/second"}),
            },
            rows_per_chunk=ROWS_PER_CHUNK,
        )
        self._next_track = 0

    def write_movie(self, mt: MovieTracks) -> None:
        ids = np.where(mt.labels >= 0, mt.labels + self._next_track, -1)
        self.table.write_movie(
            positions=mt.positions,
            frames=mt.frames,
            intensity=mt.intensity,
            track=ids,
            velocity=mt.velocity,
        )
        self._next_track += mt.n_tracks

    def close(self) -> None:
        self.table.close()


@dataclass
class TrackStats:
    movies: int = 0
    localizations: list[int] = field(default_factory=list)
    tracked: list[int] = field(default_factory=list)
    tracks: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    seconds_detect: list[float] = field(default_factory=list)
    seconds_link: list[float] = field(default_factory=list)
    map_pixels: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def mean(x: list) -> float:
            return float(np.mean(x)) if x else 0.0

        loc = int(np.sum(self.localizations)) if self.localizations else 0
        frames = int(np.sum(self.frames)) if self.frames else 0
        return {
            "movies": self.movies,
            "localizations": loc,
            "localizations_per_frame": loc / frames if frames else 0.0,
            "tracked_fraction": float(np.sum(self.tracked)) / loc if loc else 0.0,
            "tracks": int(np.sum(self.tracks)) if self.tracks else 0,
            "mean_track_length": float(np.sum(self.tracked)) / max(1, int(np.sum(self.tracks))),
            "detection_level_mean": mean(self.floors),
            "seconds_detect_localize_per_movie": float(np.median(self.seconds_detect))
            if self.seconds_detect
            else 0.0,
            "seconds_link_per_movie": float(np.median(self.seconds_link))
            if self.seconds_link
            else 0.0,
            "map_pixels_mean": mean(self.map_pixels),
        }


def track_store(
    store: Store,
    out: zarr.Group,
    config: TrackConfig,
    res: Resolved,
    *,
    progress: ProgressCallback = no_progress,
) -> TrackStats:
    """Track every movie of an image store into the writable ``tracks`` group ``out``.

    ``config.workers`` movies are tracked at once in threads (0: every core).
    """
    from ulmtools.runner import fill, make_executor

    stage = TrackStage(store, config, res)
    fill(stage, out, executor=make_executor(config.workers, local="thread"), progress=progress)
    return stage.stats


@dataclass
class TrackTask:
    """Detects, localizes and links whole movies (picklable; reopens the input by path)."""

    source: str
    signal: str
    config: TrackConfig
    res: Resolved

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __call__(self, unit: list[int]) -> list[MovieTracks]:
        arr = self.__dict__.get("_array")
        if arr is None:
            from ulmtools.store import open_store

            arr = self.__dict__["_array"] = open_store(self.source, "image").array(self.signal)
        return [track_movie(np.abs(np.asarray(arr[m])), self.config, self.res) for m in unit]


class TrackStage(MovieStage):
    """``ulm track`` for the runner: tasks track movies; tables and maps are written in order."""

    name = "track"
    kind = "tracks"

    def __init__(self, store: Store, config: TrackConfig, res: Resolved) -> None:
        self.store = store
        self.config = config
        self.res = res
        self.inputs = [store]
        self.input_paths = [store.path]
        self.n_movies = int(store.array(res.signal).shape[0])
        self.units = [[m] for m in range(self.n_movies)]
        self.grid = res.fine_grid
        self.axes = tuple(res.fine_grid.axes)
        self.parameters = {}
        self.attrs = {}
        self.stats = TrackStats(movies=self.n_movies)

    def create(self, root: zarr.Group) -> None:
        fine = self.res.fine_grid
        self.locs = LocalizationWriter(root, self.res.grid)
        self.maps_writer = SiteWriter(root, fine.axes, ("track",), unit="fine-grid pixel index")
        self.maps = Maps.empty(fine)

    def task(self, root_path: str | None) -> TrackTask:
        source = str(Path(self.store.path).resolve())  # workers may run elsewhere
        t = TrackTask(source, self.res.signal, self.config, self.res)
        t._array = self.store.array(self.res.signal)  # in-process: the open array
        return t

    def collect(self, movie: int, mt: MovieTracks) -> str:
        self.locs.write_movie(mt)
        pixels = self.maps.add_movie(mt.trajectories)
        self.maps_writer.write_movie(pixels, np.ones(len(pixels), np.float32))
        stats = self.stats
        stats.localizations.append(len(mt.frames))
        stats.tracked.append(int((mt.labels >= 0).sum()))
        stats.tracks.append(mt.n_tracks)
        stats.frames.append(int(mt.n_frames))
        stats.floors.append(mt.floor)
        stats.seconds_detect.append(mt.seconds_detect)
        stats.seconds_link.append(mt.seconds_link)
        stats.map_pixels.append(len(pixels))
        return f"{mt.n_tracks} tracks"

    def finish(self, out: zarr.Group) -> dict[str, Any]:
        self.locs.close()
        self.maps_writer.close()
        fine, maps = self.res.fine_grid, self.maps
        rows = max(1, min(fine.shape[0], (1 << 23) // int(np.prod(fine.shape[1:]))))
        chunks = (rows, *fine.shape[1:])
        for name, data, attrs in (
            ("angiogram", maps.angiogram, {"meaning": "movies whose track map holds the pixel"}),
            ("density", maps.density, {"meaning": "tracks crossing the pixel, all movies"}),
            ("speed", maps.speed(), {"meaning": "mean speed", "unit": "metre/second"}),
            (
                "velocity_z",
                maps.velocity_z(),
                {
                    "meaning": "mean signed axial velocity, positive away from the probe",
                    "unit": "metre/second",
                },
            ),
        ):
            create_array(
                out,
                name,
                shape=data.shape,
                dtype=data.dtype,
                dims=fine.axes,
                chunks=chunks,
                attrs=attrs,
                fill_value=np.nan if data.dtype.kind == "f" else 0,
            )[...] = data
        return self.stats.summary()

    def result(self, summary: dict[str, Any], root: zarr.Group) -> dict[str, Any]:
        root.attrs["stats"] = {
            k: v for k, v in summary.items() if not k.startswith("_") and k != "truth"
        }
        return summary
