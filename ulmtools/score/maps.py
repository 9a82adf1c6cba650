"""Angiogram metrics on binary maps: the paper's accumulated Dice and its relatives.

The paper's code thresholds every movie's map at 0.5, sums the binary maps
over the movies, binarizes the sum (a pixel counts when any movie hit it) and
takes Dice = 2|A n B| / (|A| + |B|) against the same accumulation of the true
track maps. Per-movie Dice and the Dice after ``k`` accumulated movies show how
the ranking of methods depends on the amount of data; in 3D the accumulated
volumes are also compared after a maximum-intensity projection along each axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AccumulatedScore",
    "PixelCounts",
    "accumulate_and_score",
    "checkpoints",
    "dice",
    "projected_dice",
]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary maps, 2|A n B| / (|A| + |B|) (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(p, t).sum()) / denom


@dataclass(frozen=True)
class PixelCounts:
    """Pixel counts of a binary prediction against a binary truth."""

    predicted: int
    true: int
    tp: int
    fp: int
    fn: int

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray) -> PixelCounts:
        p, t = np.asarray(pred, bool), np.asarray(truth, bool)
        tp = int(np.logical_and(p, t).sum())
        n_p, n_t = int(p.sum()), int(t.sum())
        return cls(predicted=n_p, true=n_t, tp=tp, fp=n_p - tp, fn=n_t - tp)

    def to_dict(self) -> dict[str, int]:
        return {
            "predicted": self.predicted,
            "true": self.true,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def checkpoints(n: int) -> list[int]:
    """Numbers of accumulated movies to report: 1, 2, 4, ... and always ``n`` itself."""
    if n < 1:
        return []
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


@dataclass
class AccumulatedScore:
    """Everything :func:`accumulate_and_score` measures, and the two accumulated maps."""

    dice: float
    counts: PixelCounts
    per_movie_dice: list[float]
    dice_after: list[tuple[int, float]]
    pixels_after_movie: list[int]  # set pixels of the accumulated prediction after each movie
    pred: np.ndarray = field(repr=False)
    truth: np.ndarray = field(repr=False)

    @property
    def per_movie_dice_mean(self) -> float:
        return float(np.mean(self.per_movie_dice)) if self.per_movie_dice else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dice": self.dice,
            "pixels": self.counts.to_dict(),
            "per_movie_dice": self.per_movie_dice,
            "per_movie_dice_mean": self.per_movie_dice_mean,
            "dice_after_movies": [{"movies": k, "dice": d} for k, d in self.dice_after],
        }


def accumulate_and_score(
    maps: Iterable[tuple[np.ndarray, np.ndarray]], shape: Sequence[int], n_movies: int
) -> AccumulatedScore:
    """Score ``n_movies`` per-movie binary maps ``(prediction, truth)``, in movie order.

    Each movie's pair is scored alone (per-movie Dice) and added to the
    accumulated maps (a logical OR, which is the paper's sum then > 0); the
    accumulated Dice is taken after 1, 2, 4, ... movies and after the last.
    ``maps`` may be a generator: one movie is held in memory at a time.
    """
    marks = set(checkpoints(n_movies))
    acc_p = np.zeros(tuple(shape), dtype=bool)
    acc_t = np.zeros(tuple(shape), dtype=bool)
    per_movie: list[float] = []
    after: list[tuple[int, float]] = []
    pixels: list[int] = []
    i = 0
    for i, (p, t) in enumerate(maps, start=1):
        p, t = np.asarray(p, bool), np.asarray(t, bool)
        per_movie.append(dice(p, t))
        acc_p |= p
        acc_t |= t
        pixels.append(int(acc_p.sum()))
        if i in marks:
            after.append((i, dice(acc_p, acc_t)))
    if i != n_movies:
        raise ValueError(f"{i} movies of maps where {n_movies} were announced")
    return AccumulatedScore(
        dice=dice(acc_p, acc_t),
        counts=PixelCounts.of(acc_p, acc_t),
        per_movie_dice=per_movie,
        dice_after=after,
        pixels_after_movie=pixels,
        pred=acc_p,
        truth=acc_t,
    )


def projected_dice(pred: np.ndarray, truth: np.ndarray, axes: Sequence[str]) -> dict[str, float]:
    """Dice of the maximum-intensity projections along each axis, keyed by that axis.

    On binary volumes the maximum-intensity projection is a logical OR along
    the axis; ``{"z": ...}`` is the Dice of the two (x, y) images seen along z.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape or p.ndim != len(axes):
        raise ValueError(f"maps of shapes {p.shape} and {t.shape} for axes {tuple(axes)}")
    return {name: dice(p.any(axis=i), t.any(axis=i)) for i, name in enumerate(axes)}
