"""Per-movie sets of sites (coordinates + features) in one ragged table.

The layout shared by ``sparse`` stores (input sites of the networks) and
``prediction`` stores (their super-resolved output maps):

``coords``   int32 (n, columns)    integer coordinates of every site;
``feats``    float32 (n, features) the features of every site;
``offsets``  int64 (movies + 1,)   movie ``m`` owns rows ``offsets[m]:offsets[m + 1]``,
                                   so one movie is read without the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr

from ulmtools.store import create_array

ROWS_PER_CHUNK = 1 << 20


class SiteWriter:
    """Appends movies to ``coords``/``feats`` in whole chunks (bounded memory).

    Rows are buffered until a full chunk is ready, so every chunk is written
    once; a movie larger than a chunk is split across chunks. ``close()``
    writes the remainder and the ``offsets`` array.
    """

    def __init__(
        self,
        group: zarr.Group,
        columns: Sequence[str],
        features: Sequence[str],
        *,
        unit: str,
        rows_per_chunk: int = ROWS_PER_CHUNK,
    ) -> None:
        self.group = group
        self.columns = tuple(columns)
        self.features = tuple(features)
        self.rows_per_chunk = int(rows_per_chunk)
        if self.rows_per_chunk < 1:
            raise ValueError("rows_per_chunk must be positive")
        ncol, nfeat = len(self.columns), len(self.features)
        self.coords = create_array(
            group,
            "coords",
            shape=(0, ncol),
            dtype="int32",
            dims=("site", "coordinate"),
            chunks=(self.rows_per_chunk, ncol),
            attrs={"columns": list(self.columns), "unit": unit},
        )
        self.feats = create_array(
            group,
            "feats",
            shape=(0, nfeat),
            dtype="float32",
            dims=("site", "channel"),
            chunks=(self.rows_per_chunk, nfeat),
            attrs={"channels": list(self.features)},
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
        feats = np.asarray(feats, dtype=np.float32).reshape(-1, len(self.features))
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
