"""Tracking: frame-to-frame Hungarian assignment with gap closing, then track kinematics.

:func:`link` labels each localization of a movie with a track. In each frame, the
open tracks (last seen at most ``max_gap + 1`` frames ago) and the frame's
localizations are paired by the Hungarian method (scipy's
``linear_sum_assignment``) on their Euclidean distance; a pair is allowed when the
distance is at most ``max_distance`` per elapsed frame (a bubble that went unseen
for g frames may have moved g + 1 times as far). Localizations left unpaired
start new tracks. Tracks with fewer than ``min_length`` localizations are
dropped (label -1).

:func:`kinematics` turns each kept track into a trajectory sampled at every frame
it spans (gaps filled linearly), smoothed by a centred moving average, with a
velocity at every sample (central differences of the smoothed positions, m/s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

_FORBIDDEN = 1e30


def link(
    frames: np.ndarray,
    positions: np.ndarray,
    *,
    max_distance: float,
    max_gap: int = 0,
    min_length: int = 1,
) -> np.ndarray:
    """Track labels (0, 1, ... in order of first appearance; -1 dropped) per localization.

    ``frames`` (n,) must be sorted; ``positions`` (n, D) in any unit shared with
    ``max_distance``.
    """
    frames = np.asarray(frames, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64)
    n = len(frames)
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    if np.any(np.diff(frames) < 0):
        raise ValueError("frames must be sorted")
    bounds = np.flatnonzero(np.diff(frames)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [n]])
    # track state, preallocated: a track is born at most once per localization
    last_pos = np.empty((n, pos.shape[1]))
    last_frame = np.empty(n, dtype=np.int64)
    open_ = np.zeros(0, dtype=np.int64)  # labels of the tracks that may still continue
    n_tracks = 0
    for a, b in zip(starts.tolist(), ends.tolist()):
        t = frames[a]
        here = pos[a:b]
        if len(open_):
            open_ = open_[t - last_frame[open_] <= max_gap + 1]
        taken = np.zeros(b - a, dtype=bool)
        if len(open_):
            diff = last_pos[open_][:, None, :] - here[None, :, :]
            dist = np.sqrt((diff * diff).sum(axis=2))
            gate = max_distance * (t - last_frame[open_])[:, None]
            cost = np.where(dist <= gate, dist, _FORBIDDEN)
            rows, cols = linear_sum_assignment(cost)
            ok = cost[rows, cols] < _FORBIDDEN
            rows, cols = rows[ok], cols[ok]
            tracks = open_[rows]
            labels[a + cols] = tracks
            last_pos[tracks] = here[cols]
            last_frame[tracks] = t
            taken[cols] = True
        new = np.flatnonzero(~taken)
        if len(new):
            born = np.arange(n_tracks, n_tracks + len(new))
            labels[a + new] = born
            last_pos[born] = here[new]
            last_frame[born] = t
            open_ = np.concatenate([open_, born])
            n_tracks += len(new)
    if min_length > 1:
        counts = np.bincount(labels, minlength=n_tracks)
        labels[counts[labels] < min_length] = -1
    # renumber the kept tracks 0.. in order of first appearance
    kept = labels >= 0
    if kept.any():
        _, first = np.unique(labels[kept], return_index=True)
        order = np.argsort(first)
        remap = np.full(n_tracks, -1, dtype=np.int64)
        remap[np.unique(labels[kept])[order]] = np.arange(len(order))
        labels[kept] = remap[labels[kept]]
    return labels


def moving_average(p: np.ndarray, size: int) -> np.ndarray:
    """Centred moving average along axis 0 whose window shrinks symmetrically at the ends.

    A symmetric window keeps straight, uniform motion unchanged up to the last
    sample (a window padded at the ends would slow a track down there).
    """
    m = len(p)
    half = np.minimum(np.minimum(np.arange(m), m - 1 - np.arange(m)), (size - 1) // 2)
    c = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])
    i = np.arange(m)
    return (c[i + half + 1] - c[i - half]) / (2 * half + 1)[:, None]


@dataclass
class Trajectory:
    """One track sampled at every frame it spans."""

    label: int
    frames: np.ndarray  # (m,) consecutive frame indices
    positions: np.ndarray  # (m, D) smoothed, metres
    velocities: np.ndarray  # (m, D) m/s


def kinematics(
    frames: np.ndarray,
    positions: np.ndarray,
    labels: np.ndarray,
    *,
    frame_rate: float,
    smooth: int = 3,
) -> list[Trajectory]:
    """Gap-filled, smoothed trajectories with velocities, one per kept track label."""
    frames = np.asarray(frames, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    out: list[Trajectory] = []
    kept = np.flatnonzero(labels >= 0)
    if len(kept) == 0:
        return out
    order = kept[np.lexsort((frames[kept], labels[kept]))]
    lab = labels[order]
    cuts = np.flatnonzero(np.diff(lab)) + 1
    dt = 1.0 / frame_rate
    for group in np.split(order, cuts):
        f = frames[group]
        p = pos[group]
        span = np.arange(f[0], f[-1] + 1)
        if len(span) != len(f):
            p = np.stack([np.interp(span, f, p[:, d]) for d in range(p.shape[1])], axis=1)
        if smooth > 1 and len(span) > 2:
            p = moving_average(p, smooth)
        v = np.gradient(p, dt, axis=0) if len(span) > 1 else np.zeros_like(p)
        out.append(Trajectory(int(labels[group[0]]), span, p, v))
    return out
