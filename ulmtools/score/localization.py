"""PALA's localization metrics (Heiles et al. 2022), per frame, and a true RMSE beside them.

For every frame:

1. truth positions outside the field of view of the image grid (pixel-centre
   extent +- half a pixel) are dropped;
2. detections are paired with the remaining truth positions, distances in
   wavelengths. ``greedy`` is PALA's pairing: detections are ordered by their
   distance to the nearest truth position, and each in turn takes the nearest
   truth position not yet taken. ``hungarian`` solves the assignment
   (:func:`scipy.optimize.linear_sum_assignment`) on the same distance matrix,
   where pairs at lambda/2 or more cost more than any set of closer pairs, so it
   finds the most pairs within the gate and, among those, the smallest total
   distance;
3. pairs closer than lambda/2 enter the error statistics; a pair closer than
   lambda/4 is a true positive. FN = N_truth - TP, FP = N_detected - TP.

Precision TP/(TP+FP), sensitivity TP/(TP+FN) and Jaccard TP/(TP+FP+FN) are
computed per block of frames (here: one movie) and averaged over the blocks
where they are defined. PALA's "RMSE" is the mean Euclidean distance of the
pairs within lambda/2 (``pala_rmse_mean_distance``); the true root mean
square of the same distances is reported beside it (``rmse``). Both pool
every pair of every frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ulmtools.grid import Grid
from ulmtools.score.grids import field_of_view

PAIR_GATE = 0.5  # wavelengths: pairs closer than this enter the error statistics
TP_GATE = 0.25  # wavelengths: pairs closer than this are true positives
PAIRINGS = ("greedy", "hungarian")


def distances(det: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix (n_det, n_ref)."""
    d = np.asarray(det, np.float64)[:, None, :] - np.asarray(ref, np.float64)[None, :, :]
    return np.sqrt((d * d).sum(axis=-1))


def greedy_pairs(dist: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """PALA's pairing: (detection, reference) index pairs closer than ``gate``.

    Detections are visited in order of their distance to the nearest reference;
    each takes the nearest reference still free, when it is closer than ``gate``.
    """
    n_det, n_ref = dist.shape
    if n_det == 0 or n_ref == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(dist.min(axis=1), kind="stable")
    free = np.ones(n_ref, dtype=bool)
    rows: list[int] = []
    cols: list[int] = []
    for i in order:
        if not free.any():
            break
        d = np.where(free, dist[i], np.inf)
        j = int(np.argmin(d))
        if d[j] < gate:
            rows.append(int(i))
            cols.append(j)
            free[j] = False
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)


def hungarian_pairs(dist: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment on ``dist`` with the same gate: the most pairs, then the closest."""
    n_det, n_ref = dist.shape
    if n_det == 0 or n_ref == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # A gated pair costs more than all gated-in pairs together could, so the
    # solver never trades a pair inside the gate for a shorter total.
    penalty = gate * (min(n_det, n_ref) + 1)
    cost = np.where(dist < gate, dist, penalty)
    rows, cols = linear_sum_assignment(cost)
    keep = dist[rows, cols] < gate
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def pair(dist: np.ndarray, gate: float, pairing: str) -> tuple[np.ndarray, np.ndarray]:
    if pairing == "greedy":
        return greedy_pairs(dist, gate)
    if pairing == "hungarian":
        return hungarian_pairs(dist, gate)
    raise ValueError(f"unknown pairing {pairing!r}; use one of {', '.join(PAIRINGS)}")


def inside(positions: np.ndarray, grid: Grid) -> np.ndarray:
    """Which positions (n, D) lie in the field of view of ``grid``."""
    lo, hi = field_of_view(grid)
    p = np.asarray(positions, np.float64).reshape(-1, grid.ndim)
    return np.all((p >= lo) & (p <= hi), axis=1)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


@dataclass
class Block:
    """Counts of one block of frames (one movie)."""

    frames: int = 0
    detections: int = 0
    truth: int = 0
    truth_dropped: int = 0
    pairs: int = 0
    tp: int = 0

    @property
    def fp(self) -> int:
        return self.detections - self.tp

    @property
    def fn(self) -> int:
        return self.truth - self.tp

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def sensitivity(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def jaccard(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "detections": self.detections,
            "truth": self.truth,
            "truth_outside_fov_dropped": self.truth_dropped,
            "pairs": self.pairs,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": _finite(self.precision),
            "sensitivity": _finite(self.sensitivity),
            "jaccard": _finite(self.jaccard),
        }


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _nanmean(values: list[float]) -> float | None:
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else None


@dataclass
class LocalizationScore:
    pairing: str
    wavelength: float
    blocks: list[Block]
    errors: np.ndarray = field(repr=False)  # distances (wavelengths) of the pairs within lambda/2

    def total(self) -> Block:
        t = Block()
        for b in self.blocks:
            for name in ("frames", "detections", "truth", "truth_dropped", "pairs", "tp"):
                setattr(t, name, getattr(t, name) + getattr(b, name))
        return t

    @property
    def precision(self) -> float | None:
        return _nanmean([b.precision for b in self.blocks])

    @property
    def sensitivity(self) -> float | None:
        return _nanmean([b.sensitivity for b in self.blocks])

    @property
    def jaccard(self) -> float | None:
        return _nanmean([b.jaccard for b in self.blocks])

    @property
    def pala_rmse(self) -> float | None:
        """PALA's "RMSE": the mean distance of the pairs within lambda/2, in wavelengths."""
        return float(self.errors.mean()) if len(self.errors) else None

    @property
    def rmse(self) -> float | None:
        """The root-mean-square distance of the same pairs, in wavelengths."""
        return float(np.sqrt((self.errors**2).mean())) if len(self.errors) else None

    def to_dict(self) -> dict[str, Any]:
        total = self.total()
        lam = self.wavelength
        pala, rmse = self.pala_rmse, self.rmse
        return {
            "pairing": self.pairing,
            "wavelength_m": lam,
            "block": "movie",
            "pair_gate_wavelengths": PAIR_GATE,
            "tp_gate_wavelengths": TP_GATE,
            "precision": self.precision,
            "sensitivity": self.sensitivity,
            "jaccard": self.jaccard,
            "pala_rmse_mean_distance_wavelengths": pala,
            "pala_rmse_mean_distance_m": None if pala is None else pala * lam,
            "rmse_wavelengths": rmse,
            "rmse_m": None if rmse is None else rmse * lam,
            "pooled": total.to_dict(),
            "blocks": [b.to_dict() for b in self.blocks],
        }


def score_frames(
    det: np.ndarray,
    det_frames: np.ndarray,
    ref: np.ndarray,
    ref_frames: np.ndarray,
    *,
    wavelength: float,
    pairing: str = "greedy",
    block: Block | None = None,
) -> tuple[Block, np.ndarray]:
    """Pair one block of frames; truth is expected already cut to the field of view.

    Positions are (n, D) in metres, frames (n,) integers. Returns the block's
    counts and the distances (wavelengths) of its pairs within lambda/2.
    """
    b = Block() if block is None else block
    det = np.asarray(det, np.float64) / wavelength
    ref = np.asarray(ref, np.float64) / wavelength
    det_frames = np.asarray(det_frames, np.int64)
    ref_frames = np.asarray(ref_frames, np.int64)
    od, orf = np.argsort(det_frames, kind="stable"), np.argsort(ref_frames, kind="stable")
    det, det_frames, ref, ref_frames = det[od], det_frames[od], ref[orf], ref_frames[orf]
    frames = np.union1d(det_frames, ref_frames)
    d_lo = np.searchsorted(det_frames, frames, "left")
    d_hi = np.searchsorted(det_frames, frames, "right")
    r_lo = np.searchsorted(ref_frames, frames, "left")
    r_hi = np.searchsorted(ref_frames, frames, "right")
    errors: list[np.ndarray] = []
    for a, bb, c, d in zip(d_lo, d_hi, r_lo, r_hi):
        dist = distances(det[a:bb], ref[c:d])
        rows, cols = pair(dist, PAIR_GATE, pairing)
        e = dist[rows, cols]
        errors.append(e)
        b.detections += int(bb - a)
        b.truth += int(d - c)
        b.pairs += len(e)
        b.tp += int((e < TP_GATE).sum())
    return b, (np.concatenate(errors) if errors else np.zeros(0))


def score_localizations(
    movies: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]],
    image_grid: Grid,
    *,
    wavelength: float,
    pairing: str = "greedy",
) -> LocalizationScore:
    """PALA's metrics over movies ``(det, det_frames, truth, truth_frames, n_frames)``.

    Each movie is one block. Truth outside ``image_grid``'s field of view is
    dropped before pairing; detections are all kept (as in PALA).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; use one of {', '.join(PAIRINGS)}")
    if not wavelength > 0:
        raise ValueError(f"the wavelength must be positive, got {wavelength}")
    blocks: list[Block] = []
    errors: list[np.ndarray] = []
    for det, det_frames, ref, ref_frames, n_frames in movies:
        keep = inside(ref, image_grid)
        block = Block(frames=int(n_frames), truth_dropped=int((~keep).sum()))
        ref = np.asarray(ref).reshape(-1, image_grid.ndim)[keep]
        _, e = score_frames(
            np.asarray(det).reshape(-1, image_grid.ndim),
            det_frames,
            ref,
            np.asarray(ref_frames)[keep],
            wavelength=wavelength,
            pairing=pairing,
            block=block,
        )
        blocks.append(block)
        errors.append(e)
    all_errors = np.concatenate(errors) if errors else np.zeros(0)
    return LocalizationScore(pairing, float(wavelength), blocks, all_errors)
