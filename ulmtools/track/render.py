"""Rendering trajectories on a super-resolved grid: track maps, density, velocity maps.

Each trajectory is drawn as a polyline: its consecutive samples are joined by
points at most half a fine pixel apart, and every point falls in the fine pixel
that holds it. A movie's *track map* is the set of fine pixels any of its tracks
crosses (what the networks predict and ``ulm score`` compares). The *density* of
a pixel is the number of tracks that cross it, summed over movies (PALA's
intensity rendering counts interpolated points instead; counting tracks keeps a
slow bubble from outweighing a fast one). The velocity maps average, per pixel,
the speed and the signed axial velocity of every rendered point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ulmtools.grid import Grid
from ulmtools.track.link import Trajectory

STEP = 0.5  # fine pixels between rendered points


def polyline_points(
    trajectories: Sequence[Trajectory], grid: Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fractional fine-grid indices (k, D) of every rendered point, its track, its velocity."""
    d = grid.ndim
    pts, owner, vel = [], [], []
    for i, tr in enumerate(trajectories):
        p = grid.to_index(tr.positions)
        v = tr.velocities
        if len(p) == 1:
            pts.append(p)
            vel.append(v)
            owner.append(np.full(1, i, np.int64))
            continue
        seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
        n_sub = np.maximum(1, np.ceil(seg / STEP).astype(np.int64))
        seg_of = np.repeat(np.arange(len(seg)), n_sub)
        first = np.concatenate([[0], np.cumsum(n_sub)[:-1]])
        u = (np.arange(len(seg_of)) - first[seg_of]) / n_sub[seg_of]
        a, b = p[seg_of], p[seg_of + 1]
        va, vb = v[seg_of], v[seg_of + 1]
        pts.append(np.concatenate([a + (b - a) * u[:, None], p[-1:]]))
        vel.append(np.concatenate([va + (vb - va) * u[:, None], v[-1:]]))
        owner.append(np.full(len(seg_of) + 1, i, np.int64))
    if not pts:
        return np.zeros((0, d)), np.zeros(0, np.int64), np.zeros((0, d))
    return np.concatenate(pts), np.concatenate(owner), np.concatenate(vel)


@dataclass
class Maps:
    """Accumulated maps on the fine grid (over every movie rendered so far)."""

    grid: Grid
    angiogram: np.ndarray  # uint32: movies whose track map holds the pixel
    density: np.ndarray  # uint32: tracks crossing the pixel
    samples: np.ndarray  # uint32: rendered points in the pixel
    speed_sum: np.ndarray  # float64
    vz_sum: np.ndarray  # float64

    @classmethod
    def empty(cls, grid: Grid) -> Maps:
        shape = grid.shape
        return cls(
            grid,
            np.zeros(shape, np.uint32),
            np.zeros(shape, np.uint32),
            np.zeros(shape, np.uint32),
            np.zeros(shape, np.float64),
            np.zeros(shape, np.float64),
        )

    def add_movie(self, trajectories: Sequence[Trajectory]) -> np.ndarray:
        """Render one movie's trajectories; return its track map as fine indices (k, D)."""
        shape = np.asarray(self.grid.shape)
        pts, owner, vel = polyline_points(trajectories, self.grid)
        idx = np.rint(pts).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < shape), axis=1)
        idx, owner, vel = idx[inside], owner[inside], vel[inside]
        if len(idx) == 0:
            return np.zeros((0, self.grid.ndim), np.int32)
        flat = np.ravel_multi_index(tuple(idx.T), self.grid.shape)
        np.add.at(self.samples.reshape(-1), flat, 1)
        np.add.at(self.speed_sum.reshape(-1), flat, np.linalg.norm(vel, axis=1))
        np.add.at(self.vz_sum.reshape(-1), flat, vel[:, 0])
        per_track = np.unique(flat + owner * np.int64(self.samples.size))
        np.add.at(self.density.reshape(-1), per_track % self.samples.size, 1)
        pixels = np.unique(flat)
        self.angiogram.reshape(-1)[pixels] += 1
        return np.stack(np.unravel_index(pixels, self.grid.shape), axis=1).astype(np.int32)

    def speed(self) -> np.ndarray:
        """Mean speed per pixel (m/s), NaN where no track passed."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.samples > 0, self.speed_sum / self.samples, np.nan).astype(
                np.float32
            )

    def velocity_z(self) -> np.ndarray:
        """Mean signed axial velocity per pixel (m/s, positive away from the probe)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.samples > 0, self.vz_sum / self.samples, np.nan).astype(np.float32)
