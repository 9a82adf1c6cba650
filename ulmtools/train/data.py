"""Training data: movies of a ``sparse`` store and their fine-grid track targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.models.deepstulm import FACTOR
from ulmtools.sparsify.io import movie_shape, n_movies, open_sparse
from ulmtools.store import Store, check_finite
from ulmtools.truth import Truth

#: Below this many bytes the whole store's coords/feats are read once and kept; the
#: target cache (voxel indices) stops growing past it too.
CACHE_BYTES = 1 << 29


#: the first two channels of every sparse store: the real and imaginary correlation
CORR = ("real", "imag")


def store_channels(store: Store) -> tuple[str, ...]:
    """The feature channel names of a sparse store (stores before they were named: 2)."""
    names = store.array("feats").attrs.get("channels") or store.attrs.get("features")
    if names:
        return tuple(str(n) for n in names)
    width = store.array("feats").shape[1] if store.array("feats").ndim == 2 else 0
    return CORR if width == 2 else tuple(f"channel_{i}" for i in range(width))


def features_name(channels: Sequence[str]) -> str:
    """``ulm sparsify --features`` value that writes ``channels`` (their names otherwise)."""
    from ulmtools.sparsify.core import FEATURES

    for name, chans in FEATURES.items():
        if tuple(chans) == tuple(channels):
            return name
    return ",".join(channels)


def model_channels(meta: Any) -> tuple[str, ...]:
    """The feature channels a trained model takes (``meta``: its ``ModelInfo``).

    Its training configuration names them; models made before that take the
    correlation's two.
    """
    from ulmtools.sparsify.core import FEATURES

    features = ((getattr(meta, "training", None) or {}).get("config") or {}).get("features")
    if features:
        return tuple(str(n) for n in features)
    n = int((getattr(meta, "kwargs", None) or {}).get("in_channels", 2))
    for chans in FEATURES.values():
        if len(chans) == n:
            return tuple(chans)
    return tuple(f"channel_{i}" for i in range(n))


def ball(radius: int, ndim: int) -> np.ndarray:
    """A binary ball (Euclidean distance <= radius) structuring element."""
    r = int(radius)
    axes = np.meshgrid(*([np.arange(-r, r + 1)] * ndim), indexing="ij")
    return sum(a * a for a in axes) <= r * r


def dilate(tracks: np.ndarray, radius: int) -> np.ndarray:
    """``tracks`` (bool, fine grid) dilated by a ball of ``radius`` fine pixels."""
    if radius <= 0 or not tracks.any():
        return tracks.astype(bool, copy=False)
    return ndimage.binary_dilation(tracks, structure=ball(radius, tracks.ndim))


def open_truth(
    store: Store, n: int, fine_grid: Grid, *, need_truth: bool, hint: str, purpose: str = "train on"
) -> Truth | None:
    """The store's truth, checked against its ``n`` movies and the x8 ``fine_grid``;
    ``purpose`` ("train on", "validate on") words the error when it is needed and missing."""
    truth = Truth(store) if store.has_truth else None
    if need_truth and truth is None:
        raise InputError(f"{store.path} has no ground truth (truth/ group) to {purpose}", hint)
    if truth is not None:
        if truth.n_movies != n:
            raise InputError(f"{store.path}: truth has {truth.n_movies} movies, the data {n}")
        if tuple(truth.tracks.shape[1:]) != tuple(fine_grid.shape):
            raise InputError(
                f"{store.path}: truth tracks of shape {truth.tracks.shape[1:]} "
                f"are not the x{FACTOR} grid {fine_grid.shape}",
                f"the networks predict on the x{FACTOR} grid of the input",
            )
    return truth


class SparseMovies:
    """Random access to the movies of a sparse store (and, if present, their truth).

    Movies are read one at a time from the store, or from memory when the whole
    store is small (``CACHE_BYTES``).  Targets are the truth's ``tracks``
    (binary, x8 grid), optionally dilated, cached when small.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        need_truth: bool = False,
        min_power: float | None = None,
        purpose: str = "train on",
    ) -> None:
        #: when set, a movie's sites with real**2 + imag**2 <= min_power are left out
        #: (the stricter threshold a model was trained with, on a store sparsified lower)
        self.min_power = min_power
        self.store = open_sparse(store)
        self.grid: Grid = self.store.grid
        self.shape = movie_shape(self.store)
        self.space_ndim = len(self.shape) - 1
        if self.space_ndim not in (2, 3):
            raise InputError(
                f"{self.store.path}: movies of shape {self.shape}; expected (t, z, x[, y])"
            )
        if tuple(self.shape[1:]) != tuple(self.grid.shape):
            raise InputError(
                f"{self.store.path}: movie shape {self.shape} does not match grid {self.grid.shape}"
            )
        coords = self.store.array("coords")
        if coords.shape[1] != 1 + self.space_ndim:
            raise InputError(
                f"{self.store.path}: coords have {coords.shape[1]} columns; "
                f"expected {1 + self.space_ndim} (t, z, x[, y])"
            )
        feats = self.store.array("feats")
        #: the feature channels of every site (``ulm sparsify --features``): the real and
        #: imaginary correlation, then optionally the normalised IQ
        self.channels: tuple[str, ...] = store_channels(self.store)
        if feats.ndim != 2 or feats.shape[1] != len(self.channels) or self.channels[:2] != CORR:
            raise InputError(
                f"{self.store.path}: feats have shape {feats.shape} and channels "
                f"{', '.join(self.channels)}; the networks take the real and imaginary "
                "correlation first (ulm sparsify writes them)",
                "sparsify the image store again with ulm sparsify",
            )
        #: channels given to the network (a prefix of ``channels``; see use_channels)
        self.in_channels = len(self.channels)
        if np.dtype(coords.dtype).kind not in "iu":
            raise InputError(
                f"{self.store.path}/coords has dtype {coords.dtype}; coordinates are integer "
                "pixel indices (int32)"
            )
        if np.dtype(feats.dtype).kind != "f":
            raise InputError(
                f"{self.store.path}/feats has dtype {feats.dtype}; features are real floating "
                "point (float32: the real and imaginary parts as two columns)"
            )
        self.offsets = np.asarray(self.store.array("offsets")[:], dtype=np.int64)
        if len(self.offsets) < 1 or self.offsets[0] != 0 or (np.diff(self.offsets) < 0).any():
            raise InputError(f"{self.store.path}: offsets must start at 0 and never decrease")
        if int(self.offsets[-1]) != coords.shape[0]:
            raise InputError(
                f"{self.store.path}: offsets end at {self.offsets[-1]} but coords has "
                f"{coords.shape[0]} rows"
            )
        self.n = n_movies(self.store)
        self.fine_grid = self.grid.refined(FACTOR)
        self.truth = open_truth(
            self.store,
            self.n,
            self.fine_grid,
            need_truth=need_truth,
            hint=f"{purpose} a sparse store made from simulated data (ulm simulate, ulm sparsify)",
            purpose=purpose,
        )
        total = int(self.offsets[-1]) * 4 * (coords.shape[1] + 2)
        self._all: tuple[np.ndarray, np.ndarray] | None = None
        if total <= CACHE_BYTES:
            self._all = (
                np.asarray(coords[:], dtype=np.int32),
                np.asarray(self.store.array("feats")[:], dtype=np.float32),
            )
        self._check_finite()
        #: targets kept as the flat indices of their voxels: a dense 3D target is
        #: 256^3 bytes (16.8 MB) where its tracks are ~0.1 % of it, so dense copies of
        #: 128 movies, plain and dilated, were 4.3 GB of a training run's peak
        self._targets: dict[tuple[int, int], np.ndarray] = {}
        self._cached_bytes = 0

    def _check_finite(self) -> None:
        """Refuse NaN or infinite features up front, naming the first bad movie."""
        what = f"{self.store.path}/feats"
        if self._all is not None:
            blocks = [(0, self._all[1])]
        else:
            feats = self.store.array("feats")
            step = max(1, CACHE_BYTES // (4 * len(self.channels)))
            blocks = (
                (a, np.asarray(feats[a : a + step])) for a in range(0, int(self.offsets[-1]), step)
            )
        for a, block in blocks:
            try:
                check_finite(block, what)
            except InputError as exc:
                row = a + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                movie = int(np.searchsorted(self.offsets, row, side="right")) - 1
                raise InputError(f"{exc.message} (first in movie {movie})", exc.hint) from None

    @property
    def dimension(self) -> int:
        """Coordinate axes of the network input: time plus space."""
        return 1 + self.space_ndim

    def __len__(self) -> int:
        return self.n

    def sites(self, m: int) -> int:
        """Movie ``m``'s stored sites (before any ``min_power``)."""
        return int(self.offsets[m + 1] - self.offsets[m])

    @property
    def input_rule(self) -> tuple[str | None, float | None]:
        """How the store was sparsified: (method, threshold) from its stats, else its
        last ``sparsify`` provenance entry; (None, None) when neither says."""
        st = self.store.attrs.get("stats") or {}
        if "method" not in st:
            runs = [e for e in self.store.provenance if e.get("stage") == "sparsify"]
            st = (runs[-1].get("parameters") or {}) if runs else {}
        t = st.get("threshold")
        return st.get("method"), (float(t) if t is not None else None)

    def use_channels(self, channels: Sequence[str], *, what: str) -> None:
        """Give the network only ``channels``, which must begin this store's channels.

        A store sparsified with ``--features corr,iq`` serves a model trained on the
        correlation alone (its first two channels); the reverse is refused.
        """
        channels = tuple(channels)
        if self.channels[: len(channels)] != channels:
            raise InputError(
                f"{self.store.path} has the site features {features_name(self.channels)} but "
                f"{what} takes {features_name(channels)}",
                f"sparsify the image store with ulm sparsify --features {features_name(channels)}",
            )
        self.in_channels = len(channels)

    def movie(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Movie ``m``'s pixel coordinates (n, 1 + S) = (t, *space) and features (n, C)."""
        a, b = int(self.offsets[m]), int(self.offsets[m + 1])
        if self._all is not None:
            coords, feats = self._all[0][a:b], self._all[1][a:b]
        elif a == b:
            coords = np.zeros((0, 1 + self.space_ndim), np.int32)
            feats = np.zeros((0, len(self.channels)), np.float32)
        else:
            coords = np.asarray(self.store.array("coords")[a:b], dtype=np.int32)
            feats = np.asarray(self.store.array("feats")[a:b], dtype=np.float32)
        if self.in_channels < feats.shape[1]:
            feats = np.ascontiguousarray(feats[:, : self.in_channels])
        if self.min_power is not None and len(feats):
            keep = (feats[:, 0] ** 2 + feats[:, 1] ** 2) > self.min_power
            coords, feats = coords[keep], feats[keep]
        if len(coords) and (coords.min() < 0 or (coords.max(0) >= np.asarray(self.shape)).any()):
            raise InputError(
                f"{self.store.path}: movie {m} has coordinates outside its (t, *space) shape "
                f"{self.shape}"
            )
        return coords, feats

    def target(self, m: int, dilation: int = 0) -> np.ndarray:
        """Movie ``m``'s track projection on the x8 grid (bool), dilated by ``dilation``."""
        if self.truth is None:
            raise InputError(f"{self.store.path} has no ground truth")
        key = (m, int(dilation))
        hit = self._targets.get(key)
        if hit is not None:
            t = np.zeros(self.fine_grid.shape, dtype=bool)
            t.flat[hit] = True
            return t
        t = dilate(np.asarray(self.truth.tracks[m]) > 0, dilation)
        if self._cached_bytes <= CACHE_BYTES:
            where = np.flatnonzero(t)
            self._targets[key] = where
            self._cached_bytes += where.nbytes
        return t

    @property
    def cached_target_bytes(self) -> int:
        """Bytes held by the target cache (voxel indices of the targets read so far)."""
        return self._cached_bytes

    def targets(self, movies: Sequence[int], dilation: int = 0) -> np.ndarray:
        return np.stack([self.target(m, dilation) for m in movies])

    def truth_angiogram(self, movies: Sequence[int] | None = None) -> np.ndarray:
        """The binarized sum of the movies' track projections (the Dice reference)."""
        out = np.zeros(self.fine_grid.shape, dtype=bool)
        for m in range(self.n) if movies is None else movies:
            out |= self.target(m)
        return out


class Concatenated:
    """Movie ``m`` of parts laid one after another: the index arithmetic of a set."""

    parts: list[Any]
    _start: np.ndarray

    def _index(self) -> None:
        self._start = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._start[-1])

    def _where(self, m: int) -> tuple[Any, int]:
        """The part holding movie ``m`` and its index there."""
        if not 0 <= m < len(self):
            raise IndexError(m)
        i = int(np.searchsorted(self._start, m, side="right")) - 1
        return self.parts[i], m - int(self._start[i])


class MovieSet(Concatenated):
    """Several sparse stores trained on as one set: their movies one after another.

    Every part must be of the same dimension and grid (the network's input and x8
    output grids); part ``i``'s movie ``j`` is movie ``sum(len(parts[:i])) + j``.
    Gives what the training loop reads: ``movie``, ``target(s)``, ``sites``,
    ``truth_angiogram``, ``dimension``, ``grid``, ``fine_grid``; ``store`` is the
    first part's (its provenance), ``stores`` all of them.
    """

    def __init__(self, parts: Sequence[SparseMovies]) -> None:
        if not parts:
            raise InputError("no training store given")
        self.parts = list(parts)
        first = self.parts[0]
        for p in self.parts[1:]:
            if p.dimension != first.dimension or tuple(p.fine_grid.shape) != tuple(
                first.fine_grid.shape
            ):
                raise InputError(
                    f"{p.store.path}: movies of shape {p.shape} on grid {p.grid.shape} do not "
                    f"match {first.store.path} ({first.shape} on {first.grid.shape})",
                    "train on stores of the same dimension and grid",
                )
            if p.channels != first.channels:
                raise InputError(
                    f"{p.store.path} has the site features {features_name(p.channels)} but "
                    f"{first.store.path} has {features_name(first.channels)}",
                    "sparsify every training store with the same ulm sparsify --features",
                )
        self.store = first.store
        self.stores = [p.store for p in self.parts]
        self.channels = first.channels
        self.in_channels = first.in_channels
        self.grid = first.grid
        self.fine_grid = first.fine_grid
        self.space_ndim = first.space_ndim
        self.shape = first.shape
        self.truth = first.truth
        self._index()

    @property
    def dimension(self) -> int:
        return self.parts[0].dimension

    def sites(self, m: int) -> int:
        p, j = self._where(m)
        return p.sites(j)

    def movie(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        p, j = self._where(m)
        return p.movie(j)

    def target(self, m: int, dilation: int = 0) -> np.ndarray:
        p, j = self._where(m)
        return p.target(j, dilation)

    def targets(self, movies: Sequence[int], dilation: int = 0) -> np.ndarray:
        return np.stack([self.target(m, dilation) for m in movies])

    def truth_angiogram(self, movies: Sequence[int] | None = None) -> np.ndarray:
        out = np.zeros(self.fine_grid.shape, dtype=bool)
        for m in range(len(self)) if movies is None else movies:
            out |= self.target(m)
        return out


def mirror_names(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--mirror``'s axis names from "x,y" or a sequence, in order, without repeats."""
    if not spec:
        return ()
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for p in (str(p).strip() for p in parts):
        if not p:
            raise UsageError(f"--mirror {spec!r} names an empty axis", "give e.g. --mirror x,y")
        if p not in names:
            names.append(p)
    return tuple(names)


def mirror_axes(names: Sequence[str], grid: Grid) -> tuple[int, ...]:
    """The spatial axis indices of ``names`` (lateral axes of ``grid``) for
    :class:`Mirrored`, refusing depth, an unknown axis or a grid not centred on it.

    A movie mirrored along a lateral axis is a movie of the mirrored vessels only when
    the acquisition is symmetric about the probe's centre (the 2D and 3D presets are:
    a centred array, tilts in +/- pairs, none across ``y``) and the grid is centred
    on it, which is checked here; the tilts are not in a sparse store."""
    out = []
    for name in names:
        if name not in grid.axes:
            raise UsageError(
                f"--mirror {name}: the grid has no axis {name!r}",
                f"mirror along lateral axes: {', '.join(grid.axes[1:])}",
            )
        a = grid.axes.index(name)
        if a == 0:
            raise UsageError(
                f"--mirror {name}: {name} is the depth axis, along which images are not symmetric",
                f"mirror along lateral axes: {', '.join(grid.axes[1:])}",
            )
        centre = grid.origin[a] + (grid.shape[a] - 1) / 2 * grid.spacing[a]
        if abs(centre) > 1e-3 * grid.spacing[a]:
            raise InputError(
                f"--mirror {name}: the grid is not centred on the probe along {name} (its "
                f"centre is at {centre * 1e3:.3g} mm), so a mirrored movie would be of "
                "another field of view",
                "leave --mirror out for this data",
            )
        if a not in out:
            out.append(a)
    return tuple(out)


class Mirrored:
    """A training set whose movies are seen mirrored along some lateral ``axes``.

    Movie ``m`` in epoch ``epoch`` is flipped along each axis with probability 1/2,
    drawn from ``numpy.random.default_rng([seed, epoch, m])`` (so a resumed run, and
    every process of a torchrun launch, sees the same); its sites' coordinates and
    its targets are flipped together. Everything else is ``data``'s.
    """

    def __init__(self, data: Any, axes: Sequence[int], seed: int, epoch: int) -> None:
        self.data = data
        self.axes = tuple(axes)
        self.seed = int(seed)
        self.epoch = int(epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def __len__(self) -> int:
        return len(self.data)

    def flips(self, m: int) -> tuple[int, ...]:
        """The spatial axes movie ``m`` is mirrored along in this epoch."""
        if not self.axes:
            return ()
        draw = np.random.default_rng([self.seed, self.epoch, int(m)]).integers(0, 2, len(self.axes))
        return tuple(a for a, d in zip(self.axes, draw) if d)

    def movie(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        coords, feats = self.data.movie(m)
        flips = self.flips(m)
        if flips:
            coords = coords.copy()
            for a in flips:
                coords[:, 1 + a] = self.data.shape[1 + a] - 1 - coords[:, 1 + a]
        return coords, feats

    def target(self, m: int, dilation: int = 0) -> np.ndarray:
        t = self.data.target(m, dilation)
        flips = self.flips(m)
        return np.ascontiguousarray(np.flip(t, axis=flips)) if flips else t

    def targets(self, movies: Sequence[int], dilation: int = 0) -> np.ndarray:
        return np.stack([self.target(m, dilation) for m in movies])
