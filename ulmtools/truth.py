"""Ground truth that travels with the data: the ``truth/`` group convention.

A store whose data came from a simulation (or any source with known bubble
positions) carries a ``truth/`` group so ``ulm score`` needs only two stores:

``truth/positions``  float64 (n, D)
    every bubble position in metres, spatial axes in the store's grid order
    (``z, x`` or ``z, x, y``), all movies one after another;
``truth/frames``     int32 (n,)   frame index of each position within its movie;
``truth/ids``        int64 (n,)   bubble id, unique within a store, so tracks can be followed;
``truth/offsets``    int64 (movies + 1,)
    movie ``m`` owns rows ``offsets[m]:offsets[m+1]``, so one movie is read
    without the rest;
``truth/tracks``     uint8 (movie, *fine_space)
    per movie, the binary projection of all tracks on the super-resolved grid
    (x8 the image grid): what the networks learn and what Dice is computed on.

The group's ``grid`` attribute describes that fine grid (metres) and
``factor`` its refinement over the image grid.

Stages copy ``truth/`` through unchanged with :func:`copy_truth`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from ulmtools.errors import InputError
from ulmtools.grid import Grid
from ulmtools.store import Store, create_array

ROWS_PER_CHUNK = 1 << 20
MAX_TRUTH_GAP = 2  # frames a truth track may skip and still be drawn as one line


@dataclass
class TruthMovie:
    """The truth of one movie."""

    positions: np.ndarray  # (n, D) metres
    frames: np.ndarray  # (n,) int32
    ids: np.ndarray  # (n,) int64
    tracks: np.ndarray | None = None  # fine-grid binary projection


class TruthWriter:
    """Writes ``truth/`` one movie at a time, in movie order (bounded memory)."""

    def __init__(self, root: zarr.Group, grid: Grid, n_movies: int, *, factor: int = 8) -> None:
        self.group = root.require_group("truth")
        self.grid = grid
        self.n_movies = int(n_movies)
        self.group.attrs.update({"grid": grid.to_attrs(), "factor": int(factor)})
        d = grid.ndim
        self.positions = create_array(
            self.group,
            "positions",
            shape=(0, d),
            dtype="float64",
            dims=("truth_row", "truth_axis"),
            chunks=(ROWS_PER_CHUNK, d),
            attrs={"unit": "metre", "columns": list(grid.axes)},
        )
        self.frames = create_array(
            self.group,
            "frames",
            shape=(0,),
            dtype="int32",
            dims=("truth_row",),
            chunks=(ROWS_PER_CHUNK,),
        )
        self.ids = create_array(
            self.group,
            "ids",
            shape=(0,),
            dtype="int64",
            dims=("truth_row",),
            chunks=(ROWS_PER_CHUNK,),
        )
        self.tracks = create_array(
            self.group,
            "tracks",
            shape=(self.n_movies, *grid.shape),
            dtype="uint8",
            dims=("movie", *(f"truth_{a}" for a in grid.axes)),
            fill_value=0,
        )
        self._offsets = [0]

    def write_movie(self, movie: int, truth: TruthMovie) -> None:
        if movie != len(self._offsets) - 1:
            raise ValueError(f"truth movies must be written in order; got {movie}")
        n = len(truth.frames)
        pos = np.asarray(truth.positions, dtype=np.float64).reshape(n, self.grid.ndim)
        if n:
            self.positions.append(pos, axis=0)
            self.frames.append(np.asarray(truth.frames, dtype=np.int32), axis=0)
            self.ids.append(np.asarray(truth.ids, dtype=np.int64), axis=0)
        self._offsets.append(self._offsets[-1] + n)
        if truth.tracks is not None:
            self.tracks[movie] = np.asarray(truth.tracks, dtype=np.uint8)

    def close(self) -> None:
        if len(self._offsets) - 1 != self.n_movies:
            raise ValueError(
                f"truth has {len(self._offsets) - 1} movies written of {self.n_movies}"
            )
        create_array(
            self.group,
            "offsets",
            shape=(self.n_movies + 1,),
            dtype="int64",
            dims=("movie_edge",),
            chunks=(self.n_movies + 1,),
        )[:] = np.asarray(self._offsets, dtype=np.int64)


class Truth:
    """Read access to a store's ``truth/`` group."""

    REQUIRED = ("positions", "frames", "ids", "offsets", "tracks")

    def __init__(self, store: Store) -> None:
        if not store.has_truth:
            raise InputError(
                f"{store.path} has no ground truth (no truth/ group)",
                "score against a store made by ulm simulate, or one you gave a truth/ group",
            )
        self.group: zarr.Group = store.group["truth"]  # type: ignore[assignment]
        for name in self.REQUIRED:
            if name not in self.group:
                raise InputError(f"{store.path}/truth lacks the array {name!r}")
        self.grid = Grid.from_attrs(self.group.attrs["grid"])
        self.factor = int(self.group.attrs.get("factor", 8))
        self.offsets = np.asarray(self.group["offsets"][:], dtype=np.int64)

    @property
    def n_movies(self) -> int:
        return len(self.offsets) - 1

    @property
    def tracks(self) -> zarr.Array:
        return self.group["tracks"]  # type: ignore[return-value]

    def movie(self, m: int, *, with_tracks: bool = True) -> TruthMovie:
        a, b = int(self.offsets[m]), int(self.offsets[m + 1])
        return TruthMovie(
            positions=np.asarray(self.group["positions"][a:b]),
            frames=np.asarray(self.group["frames"][a:b]),
            ids=np.asarray(self.group["ids"][a:b]),
            tracks=np.asarray(self.tracks[m]) if with_tracks else None,
        )


def copy_truth(
    src: Store,
    dst: zarr.Group,
    movies: Sequence[int] | None = None,
    *,
    grid: Grid | None = None,
) -> bool:
    """Copy ``src``'s truth group into ``dst`` (optionally a subset of movies).

    ``grid`` is the image grid of ``dst``: when the truth's track maps are not on
    that grid refined by the truth's factor (the data was beamformed onto another
    grid), the maps are drawn again on the new fine grid from the positions, each
    bubble's consecutive positions joined by a line. Returns False when the source
    has no truth. Copies movie by movie so memory stays bounded.
    """
    if not src.has_truth:
        return False
    truth = Truth(src)
    movies = list(range(truth.n_movies)) if movies is None else list(movies)
    fine = truth.grid
    if grid is not None and not same_grid(grid.refined(truth.factor), truth.grid):
        fine = grid.refined(truth.factor)
    writer = TruthWriter(dst, fine, len(movies), factor=truth.factor)
    for i, m in enumerate(movies):
        movie = truth.movie(m, with_tracks=fine is truth.grid)
        if fine is not truth.grid:
            step = min(fine.spacing) / 2
            dense = densify_tracks(movie.positions, movie.frames, movie.ids, step)
            movie.tracks = render_tracks(dense, fine)
        writer.write_movie(i, movie)
    writer.close()
    return True


def same_grid(a: Grid, b: Grid, *, rtol: float = 1e-6) -> bool:
    """Whether two grids have the same axes, shape, origin and spacing."""
    if a.axes != b.axes or a.shape != b.shape:
        return False
    scale = max(max(a.spacing), max(b.spacing))
    return bool(
        np.allclose(a.spacing, b.spacing, rtol=rtol, atol=0)
        and np.allclose(a.origin, b.origin, rtol=0, atol=rtol * scale * 100)
    )


def densify_tracks(
    positions: np.ndarray, frames: np.ndarray, ids: np.ndarray, step: float
) -> np.ndarray:
    """Positions with points added along each id's path, at most ``step`` apart.

    Consecutive positions of one id at most :data:`MAX_TRUTH_GAP` frames apart are
    joined by a straight line, so the rendered track map is connected.
    """
    if len(positions) < 2:
        return np.asarray(positions, dtype=np.float64)
    order = np.lexsort((frames, ids))
    p, f, i = positions[order], frames[order], ids[order]
    join = (i[1:] == i[:-1]) & (f[1:] - f[:-1] <= MAX_TRUTH_GAP) & (f[1:] > f[:-1])
    a, b = p[:-1][join], p[1:][join]
    n = np.maximum(1, np.ceil(np.linalg.norm(b - a, axis=1) / step)).astype(np.int64)
    if not len(n):
        return p
    seg = np.repeat(np.arange(len(n)), n)
    frac = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n, n)
    pts = a[seg] + (b[seg] - a[seg]) * frac[:, None]
    return np.concatenate([p, pts])


def render_tracks(positions: np.ndarray, grid: Grid) -> np.ndarray:
    """The binary projection of positions (n, D, metres) on ``grid``.

    Positions outside the grid are dropped. Consecutive positions of a
    track should be closer than a fine pixel for the map to be connected;
    the simulator samples tracks finely enough before calling this.
    """
    out = np.zeros(grid.shape, dtype=np.uint8)
    if len(positions) == 0:
        return out
    idx = np.rint(grid.to_index(positions)).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    idx = idx[inside]
    out[tuple(idx.T)] = 1
    return out
