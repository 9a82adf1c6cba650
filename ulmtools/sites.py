"""Per-movie rows in ragged tables; per-movie sets of sites (coordinates + features).

:class:`RaggedWriter` writes any set of row-aligned columns movie by movie with
per-movie offsets (the tracks store's localization table uses it);
:class:`SiteWriter` is its case for sites.

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


class RaggedWriter:
    """Appends movies of rows to several columns in whole chunks (bounded memory).

    ``columns`` maps an array name to ``(dtype, width, attrs)``: a 1-D column when
    ``width`` is None, else (rows, width). Rows are buffered until a full chunk is
    ready, so every chunk is written once; ``close()`` writes the remainder and the
    ``offsets`` array (movie ``m`` owns rows ``offsets[m]:offsets[m + 1]``).
    """

    def __init__(
        self,
        group: zarr.Group,
        columns: dict[str, tuple[str, int | None, dict]],
        *,
        rows_per_chunk: int = ROWS_PER_CHUNK,
    ) -> None:
        self.group = group
        self.rows_per_chunk = int(rows_per_chunk)
        if self.rows_per_chunk < 1:
            raise ValueError("rows_per_chunk must be positive")
        self.arrays: dict[str, zarr.Array] = {}
        self.widths: dict[str, int | None] = {}
        for name, (dtype, width, attrs) in columns.items():
            shape = (0,) if width is None else (0, width)
            chunks = (self.rows_per_chunk,) if width is None else (self.rows_per_chunk, width)
            dims = ("row",) if width is None else ("row", "column")
            if "dims" in attrs:
                attrs = dict(attrs)
                dims = tuple(attrs.pop("dims"))
            self.arrays[name] = create_array(
                group, name, shape=shape, dtype=dtype, dims=dims, chunks=chunks, attrs=attrs
            )
            self.widths[name] = width
        self._offsets = [0]
        self._buf: dict[str, list[np.ndarray]] = {name: [] for name in columns}
        self._buffered = 0

    @property
    def n_movies(self) -> int:
        return len(self._offsets) - 1

    def write_movie(self, **data: np.ndarray) -> None:
        if set(data) != set(self.arrays):
            raise ValueError(f"a movie needs the columns {sorted(self.arrays)}, got {sorted(data)}")
        rows = None
        for name, value in data.items():
            arr = self.arrays[name]
            width = self.widths[name]
            v = np.asarray(value, dtype=arr.dtype)
            v = v.reshape(-1) if width is None else v.reshape(-1, width)
            if rows is not None and len(v) != rows:
                raise ValueError(f"column {name} has {len(v)} rows, another has {rows}")
            rows = len(v)
            data[name] = v
        rows = rows or 0
        self._offsets.append(self._offsets[-1] + rows)
        if rows:
            for name, v in data.items():
                self._buf[name].append(v)
            self._buffered += rows
        if self._buffered >= self.rows_per_chunk:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self._buffered:
            return
        n = (
            self._buffered
            if final
            else (self._buffered // self.rows_per_chunk) * self.rows_per_chunk
        )
        for name, parts in self._buf.items():
            whole = np.concatenate(parts)
            if n:
                self.arrays[name].append(whole[:n], axis=0)
            self._buf[name] = [whole[n:]] if n < len(whole) else []
        self._buffered -= n

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


class SiteWriter(RaggedWriter):
    """Per-movie sites: ``coords`` int32 (n, columns) and ``feats`` float32 (n, features)."""

    def __init__(
        self,
        group: zarr.Group,
        columns: Sequence[str],
        features: Sequence[str],
        *,
        unit: str,
        rows_per_chunk: int = ROWS_PER_CHUNK,
    ) -> None:
        self.columns = tuple(columns)
        self.features = tuple(features)
        super().__init__(
            group,
            {
                "coords": (
                    "int32",
                    len(self.columns),
                    {"dims": ("site", "coordinate"), "columns": list(self.columns), "unit": unit},
                ),
                "feats": (
                    "float32",
                    len(self.features),
                    {"dims": ("site", "channel"), "channels": list(self.features)},
                ),
            },
            rows_per_chunk=rows_per_chunk,
        )
        self.coords = self.arrays["coords"]
        self.feats = self.arrays["feats"]

    def write_movie(self, coords: np.ndarray, feats: np.ndarray) -> None:  # type: ignore[override]
        coords = np.asarray(coords, dtype=np.int32).reshape(-1, len(self.columns))
        feats = np.asarray(feats, dtype=np.float32).reshape(-1, len(self.features))
        if len(coords) != len(feats):
            raise ValueError(f"{len(coords)} coordinates but {len(feats)} feature rows")
        super().write_movie(coords=coords, feats=feats)
