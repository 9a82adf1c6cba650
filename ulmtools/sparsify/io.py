"""The sparse store layout: writing it movie by movie, reading one movie back.

A ``sparse`` store holds the active sites of every movie, one movie after another:

``coords``   int32 (n, 1 + S)
    columns ``t, z, x`` (2D) or ``t, z, x, y`` (3D): frame index and pixel
    indices on the input image grid (root ``grid`` attribute), rows sorted
    by (t, z, x[, y]) within a movie;
``feats``    float32 (n, 2)
    real and imaginary part of the correlation at each site;
``offsets``  int64 (movies + 1,)
    movie ``m`` owns rows ``offsets[m]:offsets[m + 1]``, so one movie is read
    without the rest (an empty movie has equal offsets).

Root attributes: ``grid`` (the input grid, frame rate included), ``shape``
(the dense ``(t, *space)`` shape of one movie), ``features``
(``["real", "imag"]``), ``coordinates`` (the column names) and ``stats``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import zarr

from ulmtools.errors import InputError
from ulmtools.store import Store, create_array, open_store

ROWS_PER_CHUNK = 1 << 20
FEATURES = ("real", "imag")


class SparseWriter:
    """Appends movies to ``coords``/``feats`` in whole chunks (bounded memory).

    Rows are buffered until a full chunk is ready, so every chunk is written
    once; a movie larger than a chunk is split across chunks. ``close()``
    writes the remainder and the ``offsets`` array.
    """

    def __init__(
        self,
        group: zarr.Group,
        space_axes: Sequence[str],
        *,
        rows_per_chunk: int = ROWS_PER_CHUNK,
    ) -> None:
        self.group = group
        self.columns = ("t", *space_axes)
        self.rows_per_chunk = int(rows_per_chunk)
        if self.rows_per_chunk < 1:
            raise ValueError("rows_per_chunk must be positive")
        ncol = len(self.columns)
        self.coords = create_array(
            group,
            "coords",
            shape=(0, ncol),
            dtype="int32",
            dims=("site", "coordinate"),
            chunks=(self.rows_per_chunk, ncol),
            attrs={"columns": list(self.columns), "unit": "pixel index (t: frame index)"},
        )
        self.feats = create_array(
            group,
            "feats",
            shape=(0, len(FEATURES)),
            dtype="float32",
            dims=("site", "channel"),
            chunks=(self.rows_per_chunk, len(FEATURES)),
            attrs={"channels": list(FEATURES)},
        )
        self._offsets = [0]
        self._buf_c: list[np.ndarray] = []
        self._buf_f: list[np.ndarray] = []
        self._buffered = 0

    @property
    def n_movies(self) -> int:
        return len(self._offsets) - 1

    def write_movie(self, coords: np.ndarray, feats: np.ndarray) -> None:
        coords = np.asarray(coords, dtype=np.int32).reshape(-1, len(self.columns))
        feats = np.asarray(feats, dtype=np.float32).reshape(-1, len(FEATURES))
        if len(coords) != len(feats):
            raise ValueError(f"{len(coords)} coordinates but {len(feats)} feature rows")
        self._offsets.append(self._offsets[-1] + len(coords))
        if len(coords):
            self._buf_c.append(coords)
            self._buf_f.append(feats)
            self._buffered += len(coords)
        if self._buffered >= self.rows_per_chunk:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self._buffered:
            return
        c = np.concatenate(self._buf_c)
        f = np.concatenate(self._buf_f)
        n = len(c) if final else (len(c) // self.rows_per_chunk) * self.rows_per_chunk
        if n:
            self.coords.append(c[:n], axis=0)
            self.feats.append(f[:n], axis=0)
        self._buf_c = [c[n:]] if n < len(c) else []
        self._buf_f = [f[n:]] if n < len(f) else []
        self._buffered = len(c) - n

    def close(self) -> np.ndarray:
        self._flush(final=True)
        offsets = np.asarray(self._offsets, dtype=np.int64)
        create_array(
            self.group,
            "offsets",
            shape=offsets.shape,
            dtype="int64",
            dims=("movie_edge",),
            chunks=offsets.shape,
        )[:] = offsets
        return offsets


def open_sparse(path: str | os.PathLike[str] | Store) -> Store:
    """Open a sparse store read-only and check its layout is consistent."""
    store = path if isinstance(path, Store) else open_store(path, "sparse")
    if store.kind != "sparse":
        raise InputError(f"{store.path} is a {store.kind} store; this needs a sparse store")
    coords, feats, offsets = store.array("coords"), store.array("feats"), store.array("offsets")
    if coords.ndim != 2 or feats.ndim != 2 or offsets.ndim != 1 or len(offsets.shape) != 1:
        raise InputError(f"{store.path}: coords/feats must be 2-d and offsets 1-d")
    if coords.shape[0] != feats.shape[0]:
        raise InputError(
            f"{store.path}: coords has {coords.shape[0]} rows but feats {feats.shape[0]}"
        )
    if offsets.shape[0] < 1:
        raise InputError(f"{store.path}: offsets is empty (it needs movies + 1 entries)")
    if "shape" not in store.attrs:
        raise InputError(f"{store.path} lacks the 'shape' attribute (dense (t, *space) shape)")
    return store


def n_movies(store: Store) -> int:
    return int(store.array("offsets").shape[0]) - 1


def movie_shape(store: Store) -> tuple[int, ...]:
    """The dense ``(t, *space)`` shape of one movie of a sparse store."""
    return tuple(int(n) for n in store.attrs["shape"])


def read_movie(store: Store | str | os.PathLike[str], m: int) -> tuple[np.ndarray, np.ndarray]:
    """Movie ``m``'s ``(coords (n, 1+S) int32, feats (n, 2) float32)``, nothing else read."""
    store = store if isinstance(store, Store) else open_sparse(store)
    count = n_movies(store)
    if not 0 <= m < count:
        raise InputError(f"{store.path} has {count} movies; there is no movie {m}")
    a, b = (int(v) for v in store.array("offsets")[m : m + 2])
    if a == b:
        ncol = int(store.array("coords").shape[1])
        return np.zeros((0, ncol), np.int32), np.zeros((0, len(FEATURES)), np.float32)
    return (
        np.asarray(store.array("coords")[a:b], dtype=np.int32),
        np.asarray(store.array("feats")[a:b], dtype=np.float32),
    )


def to_dense(coords: np.ndarray, feats: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The dense complex64 ``shape`` array with ``feats`` at ``coords``, zero elsewhere."""
    shape = tuple(int(n) for n in shape)
    out = np.zeros(shape, dtype=np.complex64)
    coords = np.asarray(coords)
    if len(coords):
        if coords.shape[1] != len(shape):
            raise ValueError(f"coords have {coords.shape[1]} columns for a {len(shape)}-d shape")
        feats = np.asarray(feats, dtype=np.float32)
        out[tuple(coords.T)] = feats[:, 0] + 1j * feats[:, 1]
    return out
