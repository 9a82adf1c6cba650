"""Scoring reconstructions against ground truth: Dice, projected Dice, PALA metrics.

Pure functions on arrays live in :mod:`~ulmtools.score.maps` (accumulated and
per-movie Dice, projected Dice), :mod:`~ulmtools.score.localization` (PALA's
per-frame pairing, precision, sensitivity, Jaccard, mean distance and RMSE),
:mod:`~ulmtools.score.saturation` and :mod:`~ulmtools.score.grids` (matching
grids by physical coordinates). :mod:`~ulmtools.score.core` reads prediction,
tracks and angiogram stores and a truth, :mod:`~ulmtools.score.report` formats
the comparison table and :mod:`~ulmtools.score.figure` draws the figure.
"""

from ulmtools.score.core import Report, score
from ulmtools.score.grids import GridMatch, block_or, match_grids
from ulmtools.score.localization import greedy_pairs, hungarian_pairs, score_localizations
from ulmtools.score.maps import accumulate_and_score, checkpoints, dice, projected_dice

__all__ = [
    "GridMatch",
    "Report",
    "accumulate_and_score",
    "block_or",
    "checkpoints",
    "dice",
    "greedy_pairs",
    "hungarian_pairs",
    "match_grids",
    "projected_dice",
    "score",
    "score_localizations",
]
