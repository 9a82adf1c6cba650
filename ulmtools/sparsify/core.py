"""Dense-to-sparse: which pixels of a correlation movie the sparse network sees.

Three rules, each giving a boolean mask over one movie ``(t, *space)``:

threshold
    keep sites whose power ``real**2 + imag**2`` (i.e. abs(corr)**2, computed
    in the input's precision) is strictly greater than ``T``. Defaults as in
    the paper: 0.10 for 2D grids, 0.25 for 3D grids.
topk
    keep the ``k`` sites of largest power in each movie (all of them when the
    movie has fewer than ``k`` sites). Ties at the k-th value are broken by
    position (earliest in (t, z, x[, y]) order first), so the result is
    deterministic.
mask
    a learned mask: a Mask CNN (:mod:`ulmtools.models.mask_cnn`) predicts the
    probability of a bubble at every site; keep sites whose probability is
    strictly greater than the cutoff (``threshold``, default 0.5).

What each site carries (``features``): ``corr``, the real and imaginary correlation
(the paper's input), or ``corr,iq``, the same sites with the beamformed IQ as two more
channels, divided by the root mean square of ``abs(iq)`` over the movie's kept sites so
that its scale does not depend on the acquisition's gain. The correlation is the matched
filter that finds bubbles; the IQ keeps the PSF's own profile, which is what sub-pixel
placement needs (``ulm track`` localizes on it; on the correlation its Dice falls from
0.37 to 0.11 on validation network 42 at 30 MB/FOV, issue 13).

The fraction of true bubble pixels kept is measured against the
low-resolution truth mask: for every truth row (position, frame) of a movie,
the site ``(frame, nearest pixel)`` where nearest pixel is
``rint(grid.to_index(position))`` — the pixel whose cell contains the
position. Positions outside the grid, and frames outside the movie, are left
out. The fraction is (truth sites that are active) / (truth sites), summed
over all movies; it is ``None`` when the input carries no truth or the truth
has no bubble inside the grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.runner import MovieStage
from ulmtools.sparsify.io import ROWS_PER_CHUNK, SparseWriter
from ulmtools.store import Store, check_finite, create_array
from ulmtools.truth import Truth

log = logging.getLogger(__name__)

METHODS = ("threshold", "topk", "mask")
#: the feature sets a site can carry, and each one's channel names (stored with feats)
FEATURES = {"corr": ("real", "imag"), "corr,iq": ("real", "imag", "iq_real", "iq_imag")}
DEFAULT_THRESHOLD = {2: 0.10, 3: 0.25}
DEFAULT_MASK_CUTOFF = 0.5
MAX_EMPTY_WARNINGS = 5


@dataclass(frozen=True)
class SparsifyConfig:
    """How to sparsify. ``threshold=None`` means the default for the method/grid."""

    method: str = "threshold"
    threshold: float | None = None
    k: int | None = None
    rows_per_chunk: int = ROWS_PER_CHUNK
    #: standard deviation of the complex Gaussian noise added to the real and to the
    #: imaginary part of corr before selection (the paper's robustness test; noisy
    #: training data); 0: none
    corr_noise: float = 0.0
    #: seed of that noise (movie m draws from ``default_rng([seed, m])``)
    seed: int | None = None
    #: what each site carries: "corr" or "corr,iq" (see the module docstring); "auto":
    #: what the shipped model of the store's dimension reads (api.sparsify resolves it)
    features: str = "corr"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.method == "topk":
            if self.k is None:
                raise UsageError(
                    "--method topk needs --k K, the number of sites kept per movie",
                    "the paper explored 5000 to 50000 per 512-frame 2D movie",
                )
            if self.k < 1:
                raise UsageError(f"--k must be at least 1, got {self.k}")
            if self.threshold is not None:
                raise UsageError("--threshold does not apply to --method topk", "give --k only")
        elif self.k is not None:
            raise UsageError(f"--k applies only to --method topk, not {self.method}")
        if self.features not in (*FEATURES, "auto"):
            raise UsageError(
                f"unknown --features {self.features!r}",
                f"use one of {', '.join(FEATURES)} or auto (the sites are chosen on corr "
                "either way)",
            )
        if not (np.isfinite(self.corr_noise) and self.corr_noise >= 0):
            raise UsageError(f"--corr-noise must be a finite number >= 0, got {self.corr_noise}")
        if self.threshold is not None:
            if not np.isfinite(self.threshold) or self.threshold < 0:
                raise UsageError(f"--threshold must be a finite number >= 0, got {self.threshold}")
            if self.method == "mask" and not 0 <= self.threshold < 1:
                raise UsageError(
                    f"with --method mask, --threshold is the probability cutoff in [0, 1); "
                    f"got {self.threshold}"
                )

    def resolved(self, space_ndim: int) -> SparsifyConfig:
        """The config with the default threshold filled in for a grid of ``space_ndim``."""
        if self.method == "threshold" and self.threshold is None:
            if space_ndim not in DEFAULT_THRESHOLD:
                raise InputError(f"the grid has {space_ndim} spatial axes; expected 2 or 3")
            return replace(self, threshold=DEFAULT_THRESHOLD[space_ndim])
        if self.method == "mask" and self.threshold is None:
            return replace(self, threshold=DEFAULT_MASK_CUTOFF)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------
# Selection rules on one movie
# ---------------------------------------------------------------------------


def power(corr: np.ndarray) -> np.ndarray:
    """``abs(corr)**2`` as ``real**2 + imag**2`` in the input's real precision."""
    corr = np.asarray(corr)
    if np.iscomplexobj(corr):
        re, im = corr.real, corr.imag
        out = re * re
        out += im * im
        return out
    return corr * corr


def threshold_mask(corr: np.ndarray, threshold: float) -> np.ndarray:
    """Sites whose power exceeds ``threshold`` (strictly)."""
    return power(corr) > threshold


def topk_mask(corr: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` sites of largest power (all when fewer); ties broken by position."""
    p = power(corr).ravel()
    out = np.zeros(p.shape, dtype=bool)
    if k >= p.size:
        out[:] = True
        return out.reshape(np.shape(corr))
    # The k-th largest value, then everything above it plus the first ties.
    kth = np.partition(p, p.size - k)[p.size - k]
    above = p > kth
    need = k - int(above.sum())
    out[above] = True
    if need > 0:
        ties = np.flatnonzero(p == kth)[:need]
        out[ties] = True
    return out.reshape(np.shape(corr))


def movie_to_sites(
    corr: np.ndarray, mask: np.ndarray, iq: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(coords int32 (n, ndim), feats float32 (n, 2))`` of the masked sites, in C order.

    With ``iq`` (the movie's beamformed IQ, same shape), feats has two more columns:
    its real and imaginary part at the same sites, divided by the root mean square of
    ``abs(iq)`` over them (1 when it is 0 or there is no site).
    """
    corr = np.asarray(corr)
    flat = np.flatnonzero(mask)  # flat indices + unravel beat argwhere by ~2x
    coords = np.empty((len(flat), corr.ndim), dtype=np.int32)
    for axis, idx in enumerate(np.unravel_index(flat, corr.shape)):
        coords[:, axis] = idx
    feats = np.empty((len(flat), 2 if iq is None else 4), dtype=np.float32)
    for col, array in ((0, corr), (2, iq)):
        if array is None:
            continue
        values = np.asarray(array).ravel()[flat]
        scale = 1.0
        if col == 2 and len(values):
            rms = float(np.sqrt(np.mean(power(values), dtype=np.float64)))
            scale = rms if rms > 0 else 1.0
        feats[:, col] = values.real / scale
        feats[:, col + 1] = values.imag / scale if np.iscomplexobj(values) else 0.0
    return coords, feats


def truth_sites(positions: np.ndarray, frames: np.ndarray, grid: Grid, n_frames: int) -> np.ndarray:
    """Flat indices into ``(n_frames, *grid.shape)`` of the low-resolution truth mask.

    Nearest pixel: ``rint(grid.to_index(position))``; rows outside the grid or
    the movie are dropped; duplicates (two bubbles in one pixel) count once.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, grid.ndim)
    frames = np.asarray(frames, dtype=np.int64).ravel()
    if len(frames) == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.rint(grid.to_index(positions)).astype(np.int64)
    shape = np.asarray(grid.shape)
    inside = np.all((idx >= 0) & (idx < shape), axis=1) & (frames >= 0) & (frames < n_frames)
    full = np.column_stack([frames[inside], idx[inside]])
    if not len(full):
        return np.zeros(0, dtype=np.int64)
    flat = np.ravel_multi_index(tuple(full.T), (int(n_frames), *grid.shape))
    return np.unique(flat)


def truth_mask(positions: np.ndarray, frames: np.ndarray, grid: Grid, n_frames: int) -> np.ndarray:
    """The low-resolution truth mask ``(n_frames, *grid.shape)`` (see :func:`truth_sites`)."""
    out = np.zeros((int(n_frames), *grid.shape), dtype=bool)
    out.ravel()[truth_sites(positions, frames, grid, n_frames)] = True
    return out


# ---------------------------------------------------------------------------
# A whole store
# ---------------------------------------------------------------------------

MaskPredictor = Callable[[np.ndarray], np.ndarray]
"""Maps one movie's correlation ``(t, *space)`` to per-site probabilities, same shape."""


@dataclass
class SparsifyStats:
    """What sparsify did, for the ``stats`` attribute and ``--json``."""

    method: str
    threshold: float | None
    k: int | None
    movies: int
    sites_per_movie: int
    active_sites: list[int] = field(default_factory=list)
    truth_sites: list[int] | None = None
    truth_sites_kept: list[int] | None = None

    @property
    def empty_movies(self) -> int:
        return sum(1 for n in self.active_sites if n == 0)

    def summary(self) -> dict[str, Any]:
        a = np.asarray(self.active_sites, dtype=np.float64)
        mean = float(a.mean()) if a.size else 0.0
        kept = None
        total_truth = 0
        if self.truth_sites is not None and self.truth_sites_kept is not None:
            total_truth = int(sum(self.truth_sites))
            if total_truth:
                kept = float(sum(self.truth_sites_kept)) / total_truth
        return {
            "method": self.method,
            "threshold": self.threshold,
            "k": self.k,
            "movies": self.movies,
            "sites_per_movie": self.sites_per_movie,
            "active_sites_total": int(a.sum()),
            "active_sites_mean": mean,
            "active_sites_min": int(a.min()) if a.size else 0,
            "active_sites_max": int(a.max()) if a.size else 0,
            "active_fraction": mean / self.sites_per_movie if self.sites_per_movie else 0.0,
            "empty_movies": self.empty_movies,
            "truth_sites": total_truth if self.truth_sites is not None else None,
            "kept_bubble_fraction": kept,
        }


def check_image_store(store: Store, features: str = "corr") -> tuple[Grid, tuple[int, ...]]:
    """The grid and ``corr`` shape of an image store, refused when inconsistent.

    With ``features="corr,iq"`` the store must also hold ``iq`` of the same shape.
    """
    if "corr" not in store.group:
        raise InputError(
            f"{store.path} has no 'corr' array (the PSF correlation maps sparsify reads)",
            "beamform with the PSF correlation step, or add a corr array (movie, t, *space)",
        )
    corr = store.array("corr")
    grid = store.grid
    if grid.ndim not in DEFAULT_THRESHOLD:
        raise InputError(f"{store.path}: the grid has {grid.ndim} spatial axes; expected 2 or 3")
    if corr.ndim != 2 + grid.ndim or tuple(corr.shape[2:]) != tuple(grid.shape):
        raise InputError(
            f"{store.path}: corr has shape {list(corr.shape)} but the grid is "
            f"{list(grid.shape)}; expected (movie, t, {', '.join(grid.axes)})",
        )
    kind = np.dtype(corr.dtype).kind
    if kind not in "cf":
        raise InputError(
            f"{store.path}: corr has dtype {corr.dtype}; expected complex (or real floating)"
        )
    if "iq" in features.split(","):
        if "iq" not in store.group:
            raise InputError(
                f"{store.path} has no 'iq' array, which --features {features} reads",
                "beamform keeping the IQ (ulm beamform writes it by default), or use "
                "--features corr",
            )
        iq = store.array("iq")
        if tuple(iq.shape) != tuple(corr.shape) or np.dtype(iq.dtype).kind not in "cf":
            raise InputError(
                f"{store.path}: iq has shape {list(iq.shape)} and dtype {iq.dtype}; expected "
                f"the shape of corr, {list(corr.shape)}, and a complex (or real) dtype"
            )
    return grid, tuple(int(n) for n in corr.shape)


def sparsify_store(
    store: Store,
    out: Any,
    config: SparsifyConfig,
    *,
    predictor: MaskPredictor | None = None,
    movies: Sequence[int] | None = None,
    progress: ProgressCallback = no_progress,
) -> SparsifyStats:
    """Sparsify every movie of image ``store`` into the writable group ``out``.

    Writes ``coords``, ``feats``, ``offsets`` (and, with truth, the per-movie
    arrays ``truth_sites`` and ``truth_sites_kept``) and returns the
    statistics. Reads and writes one movie at a time. ``config`` must be
    resolved (see :meth:`SparsifyConfig.resolved`); ``--method mask`` needs
    ``predictor``.
    """
    from ulmtools.runner import fill

    stage = SparsifyStage(store, config, predictor=predictor, movies=movies)
    fill(stage, out, progress=progress)
    return stage.stats


class SparsifyStage(MovieStage):
    """``ulm sparsify`` for the runner: tasks read and select; sites are written in order.

    ``mask_model``/``device`` let a worker process load the Mask CNN itself (the
    in-process ``predictor`` is not sent to workers).
    """

    name = "sparsify"
    kind = "sparse"

    def __init__(
        self,
        store: Store,
        config: SparsifyConfig,
        *,
        predictor: MaskPredictor | None = None,
        movies: Sequence[int] | None = None,
        mask_model: str | None = None,
        device: str = "cpu",
    ) -> None:
        grid, shape = check_image_store(store, config.features)
        if config.method == "mask" and predictor is None and mask_model is None:
            raise UsageError("--method mask needs a mask model", "give --mask-model MODEL.zarr")
        if config.method != "topk" and config.threshold is None:
            raise ValueError("sparsify_store needs a resolved config (threshold filled in)")
        truth = Truth(store) if store.has_truth else None
        if truth is not None and truth.n_movies != shape[0]:
            raise InputError(
                f"{store.path}: truth has {truth.n_movies} movies but corr has {shape[0]}"
            )
        movie_ids = list(range(shape[0])) if movies is None else [int(m) for m in movies]
        self.store = store
        self.config = config
        self.grid = grid
        self.shape = shape
        self.inputs = [store]
        self.input_paths = [store.path]
        self.axes = ("movie", "t", *grid.axes)
        self.units = [[m] for m in movie_ids]
        self.has_truth = truth is not None
        self.predictor = predictor
        self.mask_model = mask_model
        self.device = device
        self.parameters = {}
        self.attrs = {}
        self.stats = SparsifyStats(
            method=config.method,
            threshold=config.threshold,
            k=config.k,
            movies=len(movie_ids),
            sites_per_movie=int(np.prod(shape[1:])),
            truth_sites=[] if truth is not None else None,
            truth_sites_kept=[] if truth is not None else None,
        )

    def create(self, root: Any) -> None:
        self.writer = SparseWriter(
            root,
            self.grid.axes,
            features=FEATURES[self.config.features],
            rows_per_chunk=self.config.rows_per_chunk,
        )

    def task(self, root_path: str | None) -> SparsifyTask:
        t = SparsifyTask(
            str(Path(self.store.path).resolve()),  # workers may run elsewhere
            self.config,
            self.has_truth,
            self.mask_model,
            self.device,
        )
        t._store, t._predictor = self.store, self.predictor  # in-process: reuse them
        return t

    def collect(self, movie: int, result: tuple[Any, ...]) -> str:
        coords, feats, n_truth, kept = result
        self.writer.write_movie(coords, feats)
        stats = self.stats
        stats.active_sites.append(len(coords))
        if not len(coords) and stats.empty_movies <= MAX_EMPTY_WARNINGS:
            log.warning(
                "movie %d has no active site (%s); its entry is empty", movie, _rule(self.config)
            )
        if stats.truth_sites is not None and stats.truth_sites_kept is not None:
            stats.truth_sites.append(n_truth)
            stats.truth_sites_kept.append(kept)
        return f"{len(coords)} sites"

    def finish(self, root: Any) -> dict[str, Any]:
        self.writer.close()
        stats = self.stats
        if stats.empty_movies > MAX_EMPTY_WARNINGS:
            log.warning("%d of %d movies have no active site", stats.empty_movies, stats.movies)
        if stats.truth_sites is not None and stats.truth_sites_kept is not None:
            for name, values in (
                ("truth_sites", stats.truth_sites),
                ("truth_sites_kept", stats.truth_sites_kept),
            ):
                arr = np.asarray(values, dtype=np.int64)
                a = create_array(
                    root,
                    name,
                    shape=arr.shape,
                    dtype="int64",
                    dims=("movie",),
                    chunks=(max(len(arr), 1),),
                )
                if arr.size:
                    a[:] = arr
        return stats.summary() | {
            "features": self.config.features,
            "corr_noise": self.config.corr_noise,
            "corr_noise_seed": self.config.seed,
        }

    def result(self, summary: dict[str, Any], root: Any) -> dict[str, Any]:
        root.attrs["stats"] = {
            k: v for k, v in summary.items() if not k.startswith("_") and k != "truth"
        }
        return summary


@dataclass
class SparsifyTask:
    """Selects the sites of whole movies (picklable; reopens the input by path)."""

    source: str
    config: SparsifyConfig
    has_truth: bool
    mask_model: str | None
    device: str

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def _open(self) -> tuple[Store, MaskPredictor | None, _TruthRows | None]:
        store = self.__dict__.get("_store")
        if store is None:
            from ulmtools.store import open_store

            store = self.__dict__["_store"] = open_store(self.source, "image")
        predictor = self.__dict__.get("_predictor")
        if predictor is None and self.config.method == "mask":
            from ulmtools.device import resolve_device
            from ulmtools.models.mask_cnn import predictor_from_model
            from ulmtools.models.store import load

            device = resolve_device(self.device)
            model, _ = load(self.mask_model, device=device)  # type: ignore[arg-type]
            predictor = predictor_from_model(model, store.grid.ndim, device)
            self.__dict__["_predictor"] = predictor
        rows = self.__dict__.get("_rows")
        if rows is None and self.has_truth:
            rows = self.__dict__["_rows"] = _TruthRows(Truth(store))
        return store, predictor, rows

    def __call__(self, unit: Sequence[int]) -> list[tuple[Any, ...]]:
        store, predictor, truth_rows = self._open()
        corr = store.array("corr")
        with_iq = "iq" in self.config.features.split(",")
        grid = store.grid
        out = []
        for m in unit:
            movie = np.asarray(corr[m])
            check_finite(movie, f"{store.path}/corr", movie=m)
            movie = add_corr_noise(movie, self.config.corr_noise, self.config.seed, m)
            mask = select(movie, self.config, predictor)
            iq = None
            if with_iq:
                iq = np.asarray(store.array("iq")[m])
                check_finite(iq, f"{store.path}/iq", movie=m)
            coords, feats = movie_to_sites(movie, mask, iq)
            n_truth = kept = 0
            if truth_rows is not None:
                positions, frames = truth_rows(m)
                sites = truth_sites(positions, frames, grid, movie.shape[0])
                n_truth, kept = len(sites), int(mask.ravel()[sites].sum())
            out.append((coords, feats, n_truth, kept))
        return out


class _TruthRows:
    """Truth positions and frames of one movie, read a block of movies at a time.

    Truth rows of all movies share large chunks; reading them block by block
    (up to ``rows`` rows) decodes each chunk about once instead of once per movie.
    """

    def __init__(self, truth: Truth, rows: int = 1 << 20) -> None:
        self.truth = truth
        self.rows = rows
        self.first = self.last = -1
        self.base = 0
        self.positions = np.zeros((0, truth.grid.ndim))
        self.frames = np.zeros(0, np.int32)

    def __call__(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        off = self.truth.offsets
        if not self.first <= m < self.last:
            last = m + 1
            while last < len(off) - 1 and off[last + 1] - off[m] <= self.rows:
                last += 1
            a, b = int(off[m]), int(off[last])
            self.positions = np.asarray(self.truth.group["positions"][a:b])
            self.frames = np.asarray(self.truth.group["frames"][a:b])
            self.first, self.last, self.base = m, last, a
        a, b = int(off[m]) - self.base, int(off[m + 1]) - self.base
        return self.positions[a:b], self.frames[a:b]


def add_corr_noise(movie: np.ndarray, sigma: float, seed: int | None, m: int) -> np.ndarray:
    """``movie + sigma * (n_re + 1j n_im)``, n ~ N(0, 1), drawn for movie ``m`` from
    ``default_rng([seed, m])`` (so a movie's noise does not depend on which worker
    draws it); ``movie`` itself when ``sigma`` is 0."""
    if not sigma:
        return movie
    if seed is None:
        raise ValueError("corr noise needs a seed (SparsifyConfig.seed)")
    rng = np.random.default_rng([seed, m])
    real = np.float32 if movie.dtype == np.complex64 else np.float64
    noise = rng.standard_normal(movie.shape, real) + 1j * rng.standard_normal(movie.shape, real)
    return (movie + real(sigma) * noise).astype(movie.dtype, copy=False)


def select(
    movie: np.ndarray, config: SparsifyConfig, predictor: MaskPredictor | None = None
) -> np.ndarray:
    """The boolean site mask of one movie under ``config`` (resolved)."""
    if config.method == "threshold":
        return threshold_mask(movie, float(config.threshold))  # type: ignore[arg-type]
    if config.method == "topk":
        return topk_mask(movie, int(config.k))  # type: ignore[arg-type]
    if predictor is None:
        raise UsageError("--method mask needs a mask model", "give --mask-model MODEL.zarr")
    prob = np.asarray(predictor(movie))
    if prob.shape != movie.shape:
        raise ValueError(f"mask model gave shape {prob.shape} for a movie of {movie.shape}")
    return prob > float(config.threshold)  # type: ignore[arg-type]


def _rule(config: SparsifyConfig) -> str:
    if config.method == "threshold":
        return f"no abs(corr)^2 above {config.threshold:g}"
    if config.method == "mask":
        return f"no mask probability above {config.threshold:g}"
    return "top-k of an empty movie"
