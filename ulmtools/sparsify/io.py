"""The sparse store layout: writing it movie by movie, reading one movie back.

A ``sparse`` store holds the active sites of every movie, one movie after another:

``coords``   int32 (n, 1 + S)
    columns ``t, z, x`` (2D) or ``t, z, x, y`` (3D): frame index and pixel
    indices on the input image grid (root ``grid`` attribute), rows sorted
    by (t, z, x[, y]) within a movie;
``feats``    float32 (n, 2) or (n, 4)
    real and imaginary part of the correlation at each site, then, when sparsified
    with ``--features corr,iq``, of the normalised IQ (the array's ``channels``
    attribute names them: ``real, imag[, iq_real, iq_imag]``);
``offsets``  int64 (movies + 1,)
    movie ``m`` owns rows ``offsets[m]:offsets[m + 1]``, so one movie is read
    without the rest (an empty movie has equal offsets).

Root attributes: ``grid`` (the input grid, frame rate included), ``shape``
(the dense ``(t, *space)`` shape of one movie), ``features``
(the channel names, as on ``feats``), ``coordinates`` (the column names) and ``stats``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import zarr

from ulmtools.errors import InputError
from ulmtools.sites import ROWS_PER_CHUNK, SiteWriter
from ulmtools.store import Store, open_store

FEATURES = ("real", "imag")


class SparseWriter(SiteWriter):
    """Writes a sparse store's sites: columns (t, *space), features (real, imag[, iq...])."""

    def __init__(
        self,
        group: zarr.Group,
        space_axes: Sequence[str],
        *,
        features: Sequence[str] = FEATURES,
        rows_per_chunk: int = ROWS_PER_CHUNK,
    ) -> None:
        super().__init__(
            group,
            ("t", *space_axes),
            features,
            unit="pixel index (t: frame index)",
            rows_per_chunk=rows_per_chunk,
        )


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
    """Movie ``m``'s ``(coords (n, 1+S) int32, feats (n, C) float32)``, nothing else read."""
    store = store if isinstance(store, Store) else open_sparse(store)
    count = n_movies(store)
    if not 0 <= m < count:
        raise InputError(f"{store.path} has {count} movies; there is no movie {m}")
    a, b = (int(v) for v in store.array("offsets")[m : m + 2])
    if a == b:
        ncol = int(store.array("coords").shape[1])
        nfeat = int(store.array("feats").shape[1])
        return np.zeros((0, ncol), np.int32), np.zeros((0, nfeat), np.float32)
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
