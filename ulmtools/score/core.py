"""Scoring reconstructions against ground truth: read the stores, compute every metric.

A reconstruction is a ``prediction`` store (``ulm infer``), a ``tracks`` store
(``ulm track``) or an ``angiogram`` store. The truth is the ``truth/`` group of
any store (simulate, beamform, sparsify, infer and track copy it through).

* Per-movie maps: a prediction's sites with probability > 0.5; a tracks
  store's per-movie track maps (the same ``coords``/``feats``/``offsets``
  layout, feats 1.0). The truth's are ``truth/tracks[m] > 0``.
* An angiogram store has no per-movie maps: only its accumulated map
  (``angiogram > 0``) is scored, against the truth accumulated over the same
  number of movies.
* Localization metrics need positions: a tracks store's ``localizations/``
  group (or an mSPCN prediction's, the same table), compared to
  ``truth/positions`` frame by frame on the image grid (the store's
  ``input_grid`` attribute).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.score.grids import GridMatch, block_or, describe_grid, match_grids
from ulmtools.score.localization import PAIRINGS, LocalizationScore, score_localizations
from ulmtools.score.maps import AccumulatedScore, PixelCounts, accumulate_and_score, dice
from ulmtools.score.maps import projected_dice as _projected
from ulmtools.score.saturation import localization_saturation, movie_saturation
from ulmtools.store import Store, open_store
from ulmtools.truth import Truth

KINDS = ("prediction", "tracks", "angiogram")
MAP_THRESHOLD = 0.5  # the paper's per-movie threshold on a probability map


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """An opened prediction, tracks or angiogram store."""

    store: Store
    grid: Grid

    @property
    def kind(self) -> str:
        return self.store.kind

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def n_movies(self) -> int | None:
        """Movies with per-movie maps; for an angiogram store, its ``movies`` attribute."""
        if self.kind == "angiogram":
            m = self.store.attrs.get("movies")
            return int(m) if m is not None else None
        return len(self._offsets()) - 1

    @property
    def map_threshold(self) -> float:
        """A movie's map is its values above this: a prediction's own ``threshold`` (the
        one ``ulm infer`` used), else the paper's 0.5."""
        t = self.store.attrs.get("threshold") if self.kind == "prediction" else None
        return float(t) if isinstance(t, (int, float)) else MAP_THRESHOLD

    def _offsets(self) -> np.ndarray:
        return np.asarray(self.store.array("offsets")[:], np.int64)

    def movie_map(self, m: int) -> np.ndarray:
        """Movie ``m``'s binary map on :attr:`grid` (map value > :attr:`map_threshold`)."""
        offsets = self._offsets()
        a, b = int(offsets[m]), int(offsets[m + 1])
        coords = np.asarray(self.store.array("coords")[a:b], np.int64)
        feats = np.asarray(self.store.array("feats")[a:b], np.float32)
        out = np.zeros(self.grid.shape, dtype=bool)
        if coords.shape[1:] != (self.grid.ndim,):
            raise InputError(
                f"{self.path}/coords has {coords.shape[1]} columns for a {self.grid.ndim}-D grid"
            )
        if len(feats) == 0:  # an empty movie (e.g. a model that found nothing): an empty map
            return out
        hit = coords[feats.reshape(len(feats), -1)[:, 0] > self.map_threshold]
        if len(hit) and (hit.min() < 0 or np.any(hit.max(axis=0) >= np.asarray(self.grid.shape))):
            raise InputError(f"{self.path}/coords holds indices outside its grid {self.grid.shape}")
        out[tuple(hit.T)] = True
        return out

    def angiogram_map(self) -> np.ndarray:
        a = self.store.array("angiogram")
        if tuple(a.shape) != tuple(self.grid.shape):
            raise InputError(
                f"{self.path}/angiogram has shape {tuple(a.shape)} "
                f"but its grid is {self.grid.shape}"
            )
        return np.asarray(a[...]) > 0

    @property
    def has_localizations(self) -> bool:
        g = self.store.group
        return "localizations" in g and isinstance(g["localizations"], zarr.Group)

    def localizations(self) -> tuple[zarr.Group, np.ndarray]:
        group: zarr.Group = self.store.group["localizations"]  # type: ignore[assignment]
        for name in ("positions", "frames", "offsets"):
            if name not in group:
                raise InputError(f"{self.path}/localizations lacks the array {name!r}")
        return group, np.asarray(group["offsets"][:], np.int64)

    @property
    def image_grid(self) -> Grid:
        if "input_grid" not in self.store.attrs:
            raise InputError(
                f"{self.path} has no input_grid attribute",
                "localization metrics need the image grid the positions were found on",
            )
        return Grid.from_attrs(self.store.attrs["input_grid"])


def open_reconstruction(path: str | Path) -> Reconstruction:
    store = open_store(path, list(KINDS))
    if store.kind != "angiogram":
        for name in ("coords", "feats", "offsets"):
            store.array(name)
    return Reconstruction(store, store.grid)


def find_truth(recs: Sequence[Reconstruction], truth: str | Path | None) -> Store:
    """The store whose ``truth/`` is scored against: ``truth``, else the first reconstruction's."""
    if truth is not None:
        store = open_store(truth)
        if not store.has_truth:
            raise InputError(
                f"{store.path} has no ground truth (no truth/ group)",
                "give --truth a store made by ulm simulate or one of its descendants",
            )
        return store
    for r in recs:
        if r.store.has_truth:
            return r.store
    names = ", ".join(str(r.path) for r in recs)
    raise InputError(
        f"no ground truth: {names} has no truth/ group and no --truth was given",
        "give --truth TRUTH.zarr, a store made by ulm simulate or one of its descendants",
    )


def resolve_movies(recs: Sequence[Reconstruction], truth: Truth, movies: int | None) -> int:
    """How many movies to score: all (equal counts required) or the first ``movies``."""
    counts = {str(r.path): r.n_movies for r in recs}
    if movies is not None:
        if movies < 1:
            raise UsageError(f"--movies must be at least 1, got {movies}")
        too_few = {p: n for p, n in counts.items() if n is not None and n < movies}
        if truth.n_movies < movies:
            too_few["the truth"] = truth.n_movies
        if too_few:
            which = ", ".join(f"{p} has {n}" for p, n in too_few.items())
            raise UsageError(f"--movies {movies} is more than the stores hold ({which})")
        for r in recs:
            if r.kind == "angiogram" and r.n_movies is not None and r.n_movies != movies:
                raise UsageError(
                    f"{r.path} is an angiogram of {r.n_movies} movies; it cannot be cut to "
                    f"--movies {movies}"
                )
        return movies
    for p, n in counts.items():
        if n is not None and n != truth.n_movies:
            raise InputError(
                f"{p} has {n} movies but the truth has {truth.n_movies}",
                f"use --movies N (N <= {min(n, truth.n_movies)}) to score the first N of both",
            )
    return truth.n_movies


def random_trajectories(store: Store) -> bool | None:
    """Whether the truth's vessels were random trajectories (None: not recorded)."""
    sim = store.attrs.get("simulation")
    if isinstance(sim, dict) and "vessels" in sim:
        return sim["vessels"] == "random"
    for entry in reversed(store.provenance):
        if entry.get("stage") == "simulate":
            vessels = (entry.get("parameters") or {}).get("vessels")
            if vessels is not None:
                return vessels == "random"
    return None


def _acquisition_wavelength(attrs: Any) -> float | None:
    acq = attrs.get("acquisition") if hasattr(attrs, "get") else None
    if not isinstance(acq, dict) or not acq.get("center_frequency"):
        return None
    c = float(acq.get("speed_of_sound", 1540.0))
    return c / float(acq["center_frequency"])


def resolve_wavelength(
    rec: Reconstruction, truth_store: Store, given: float | None
) -> tuple[float, str]:
    """The wavelength (metres) and where it came from.

    ``--wavelength`` when given, else the reconstruction's ``wavelength``
    attribute, else speed_of_sound / center_frequency of an ``acquisition``
    attribute (reconstruction, then truth store); else a usage error.
    """
    if given is not None:
        if not given > 0:
            raise UsageError(f"--wavelength must be positive (metres), got {given}")
        return float(given), "--wavelength"
    w = rec.store.attrs.get("wavelength")
    if w:
        return float(w), f"{rec.path} wavelength attribute"
    for store in (rec.store, truth_store):
        w = _acquisition_wavelength(store.attrs)
        if w:
            return w, f"{store.path} acquisition attribute"
    raise UsageError(
        f"no wavelength known for the localization metrics of {rec.path}",
        "give --wavelength in metres (c / f, e.g. 9.856e-5 for 15.625 MHz at 1540 m/s)",
    )


def frames_per_movie(
    rec: Reconstruction, truth_store: Store, truth: Truth, n_movies: int
) -> list[int]:
    """Frames of each movie: a ``frames`` attribute, the simulation's, else the last frame seen."""
    for attrs in (rec.store.attrs, truth_store.attrs):
        f = attrs.get("frames")
        if isinstance(f, int) and f > 0:
            return [f] * n_movies
    for entry in truth_store.provenance:
        if entry.get("stage") == "simulate":
            f = (entry.get("parameters") or {}).get("frames")
            if isinstance(f, int) and f > 0:
                return [f] * n_movies
    frames = np.asarray(truth.group["frames"][:], np.int64)
    out = []
    for m in range(n_movies):
        fr = frames[truth.offsets[m] : truth.offsets[m + 1]]
        out.append(int(fr.max()) + 1 if len(fr) else 0)
    return out


# ---------------------------------------------------------------------------
# Scoring one reconstruction
# ---------------------------------------------------------------------------


@dataclass
class MethodScore:
    """The scores of one reconstruction, and the maps a figure shows."""

    name: str
    kind: str
    result: dict[str, Any]
    pred: np.ndarray = field(repr=False)  # accumulated binary map on the scoring grid
    truth: np.ndarray = field(repr=False)
    grid: Grid = field(repr=False)
    speed: np.ndarray | None = field(default=None, repr=False)  # tracks: on the store's own grid
    speed_grid: Grid | None = field(default=None, repr=False)


def score_reconstruction(
    rec: Reconstruction,
    truth_store: Store,
    n_movies: int,
    *,
    pairing: str = "greedy",
    wavelength: float | None = None,
    progress: ProgressCallback = no_progress,
) -> MethodScore:
    """Every metric :mod:`ulmtools.score` defines for one reconstruction."""
    if pairing not in PAIRINGS:
        raise UsageError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    truth = Truth(truth_store)
    match = match_grids(
        rec.grid, truth.grid, pred_name=str(rec.path), truth_name=f"{truth_store.path}/truth"
    )
    result: dict[str, Any] = {
        "path": str(rec.path),
        "kind": rec.kind,
        "movies": n_movies,
        "grid": describe_grid(rec.grid),
        "scoring_grid": match.grid.to_attrs(),
        "block_reduction": {"prediction": match.pred_factor, "truth": match.truth_factor},
    }
    if rec.kind == "angiogram":
        acc = _score_angiogram(rec, truth, n_movies, match)
        pred_acc, truth_acc = acc
        result["dice"] = dice(pred_acc, truth_acc)
        result["pixels"] = PixelCounts.of(pred_acc, truth_acc).to_dict()
        result["per_movie_dice"] = None
        result["per_movie_dice_mean"] = None
        result["dice_after_movies"] = None
    else:
        scored = _score_movies(rec, truth, n_movies, match, progress)
        pred_acc, truth_acc = scored.pred, scored.truth
        result.update(scored.to_dict())
        random = random_trajectories(truth_store)
        result["random_trajectories"] = random
        if random:
            result["trajectory_dice"] = scored.per_movie_dice_mean
    if match.grid.ndim == 3:
        result["projected_dice"] = _projected(pred_acc, truth_acc, match.grid.axes)
    result["localization"] = None
    if rec.kind in ("tracks", "prediction") and rec.has_localizations:
        result["localization"], sat = _score_localizations(
            rec, truth_store, truth, n_movies, match, pairing, wavelength
        )
        result["saturation"] = sat
    elif rec.kind != "angiogram":
        fpm = frames_per_movie(rec, truth_store, truth, n_movies)
        result["saturation"] = movie_saturation(
            scored.pixels_after_movie, fpm, int(np.prod(match.grid.shape))
        )
    else:
        result["saturation"] = None
    speed = speed_grid = None
    if rec.kind == "tracks" and "speed" in rec.store.group:
        speed = np.asarray(rec.store.array("speed")[...], np.float32)
        speed_grid = rec.grid
    return MethodScore(
        name=str(rec.path),
        kind=rec.kind,
        result=result,
        pred=pred_acc,
        truth=truth_acc,
        grid=match.grid,
        speed=speed,
        speed_grid=speed_grid,
    )


def _truth_map(truth: Truth, m: int, match: GridMatch) -> np.ndarray:
    return block_or(np.asarray(truth.tracks[m]) > 0, match.truth_factor)


def _score_movies(
    rec: Reconstruction,
    truth: Truth,
    n_movies: int,
    match: GridMatch,
    progress: ProgressCallback,
) -> AccumulatedScore:
    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for m in range(n_movies):
            progress(m, n_movies, rec.path.name)
            yield block_or(rec.movie_map(m), match.pred_factor), _truth_map(truth, m, match)
        progress(n_movies, n_movies, rec.path.name)

    return accumulate_and_score(pairs(), match.grid.shape, n_movies)


def _score_angiogram(
    rec: Reconstruction, truth: Truth, n_movies: int, match: GridMatch
) -> tuple[np.ndarray, np.ndarray]:
    pred = block_or(rec.angiogram_map(), match.pred_factor)
    acc = np.zeros(match.grid.shape, dtype=bool)
    for m in range(n_movies):
        acc |= _truth_map(truth, m, match)
    return pred, acc


def _score_localizations(
    rec: Reconstruction,
    truth_store: Store,
    truth: Truth,
    n_movies: int,
    match: GridMatch,
    pairing: str,
    wavelength: float | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    lam, source = resolve_wavelength(rec, truth_store, wavelength)
    image_grid = rec.image_grid
    group, offsets = rec.localizations()
    if len(offsets) - 1 < n_movies:
        raise InputError(
            f"{rec.path}/localizations has {len(offsets) - 1} movies, fewer than {n_movies}"
        )
    fpm = frames_per_movie(rec, truth_store, truth, n_movies)
    det_pos, det_frames = [], []
    movies = []
    for m in range(n_movies):
        a, b = int(offsets[m]), int(offsets[m + 1])
        pos = np.asarray(group["positions"][a:b], np.float64).reshape(-1, image_grid.ndim)
        fr = np.asarray(group["frames"][a:b], np.int64)
        t = truth.movie(m, with_tracks=False)
        det_pos.append(pos)
        det_frames.append(fr)
        movies.append((pos, fr, t.positions, t.frames, fpm[m]))
    loc: LocalizationScore = score_localizations(
        movies, image_grid, wavelength=lam, pairing=pairing
    )
    out = loc.to_dict()
    out["wavelength_source"] = source
    sat = localization_saturation(det_pos, det_frames, fpm, rec.grid, reduce=match.pred_factor)
    return out, sat


# ---------------------------------------------------------------------------
# Scoring several
# ---------------------------------------------------------------------------


@dataclass
class Report:
    """The JSON document of a scoring run, and the per-method maps for figures."""

    document: dict[str, Any]
    methods: list[MethodScore]


def score(
    preds: Sequence[str | Path],
    truth: str | Path | None = None,
    *,
    movies: int | None = None,
    pairing: str = "greedy",
    wavelength: float | None = None,
    progress: ProgressCallback = no_progress,
    log: Callable[[str], None] = lambda message: None,
) -> Report:
    """Score every reconstruction in ``preds`` against one truth."""
    if not preds:
        raise UsageError("give at least one reconstruction to score")
    if pairing not in PAIRINGS:
        raise UsageError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    recs = [open_reconstruction(p) for p in preds]
    for r in recs:
        floor = r.store.attrs.get("min_probability")
        if r.kind == "prediction" and floor is not None and float(floor) > r.map_threshold:
            log(
                f"warning: {r.path} left out sites below probability {floor}, above the "
                f"{r.map_threshold:g} threshold; its maps miss the pixels in between"
            )
    truth_store = find_truth(recs, truth)
    if truth is None:
        log(f"truth: the truth/ group of {truth_store.path}")
    t = Truth(truth_store)
    n = resolve_movies(recs, t, movies)
    methods = [
        score_reconstruction(
            r, truth_store, n, pairing=pairing, wavelength=wavelength, progress=progress
        )
        for r in recs
    ]
    doc = {
        "truth": {
            "path": str(truth_store.path),
            "movies": t.n_movies,
            "grid": t.grid.to_attrs(),
            "random_trajectories": random_trajectories(truth_store),
        },
        "movies": n,
        "pairing": pairing,
        "methods": [m.result for m in methods],
    }
    return Report(doc, methods)
