"""The scoring library on hand-made maps and pairings with values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ulmtools.errors import InputError
from ulmtools.grid import Grid
from ulmtools.score.grids import block_or, field_of_view, match_grids, same_grid
from ulmtools.score.localization import (
    greedy_pairs,
    hungarian_pairs,
    inside,
    score_localizations,
)
from ulmtools.score.maps import (
    PixelCounts,
    accumulate_and_score,
    checkpoints,
    dice,
    projected_dice,
)
from ulmtools.score.saturation import localization_saturation, movie_saturation

LAM = 1e-4  # wavelength (m) of the hand-made localization cases


def test_dice_identical_disjoint_and_by_hand() -> None:
    a = np.zeros((4, 4), bool)
    a[0, :4] = True
    assert dice(a, a) == 1.0
    b = np.zeros_like(a)
    b[3, :2] = True
    assert dice(a, b) == 0.0
    c = np.zeros_like(a)
    c[0, 3] = c[1, 3] = True  # one of two pixels inside a's four
    assert dice(a, c) == pytest.approx(2 * 1 / (4 + 2))
    assert PixelCounts.of(a, c) == PixelCounts(predicted=4, true=2, tp=1, fp=3, fn=1)


def test_checkpoints_are_powers_of_two_then_all() -> None:
    assert checkpoints(1) == [1]
    assert checkpoints(3) == [1, 2, 3]
    assert checkpoints(4) == [1, 2, 4]
    assert checkpoints(5) == [1, 2, 4, 5]
    assert checkpoints(8) == [1, 2, 4, 8]


def _pixels(shape: tuple[int, ...], flat: list[int]) -> np.ndarray:
    m = np.zeros(int(np.prod(shape)), bool)
    m[flat] = True
    return m.reshape(shape)


def test_dice_after_k_movies_on_hand_made_maps() -> None:
    shape = (2, 4)
    movies = [
        (_pixels(shape, [0]), _pixels(shape, [0, 1])),  # per movie 2*1/3
        (_pixels(shape, [2]), _pixels(shape, [2])),  # per movie 1
        (_pixels(shape, [5]), _pixels(shape, [3])),  # per movie 0
    ]
    s = accumulate_and_score(iter(movies), shape, 3)
    assert s.per_movie_dice == pytest.approx([2 / 3, 1.0, 0.0])
    assert s.per_movie_dice_mean == pytest.approx((2 / 3 + 1) / 3)
    # after 1: {0} vs {0,1}; after 2: {0,2} vs {0,1,2}; after 3: {0,2,5} vs {0,1,2,3}
    assert s.dice_after == [
        (1, pytest.approx(2 / 3)),
        (2, pytest.approx(0.8)),
        (3, pytest.approx(4 / 7)),
    ]
    assert s.dice == pytest.approx(4 / 7)
    assert s.counts == PixelCounts(predicted=3, true=4, tp=2, fp=1, fn=2)
    assert s.pixels_after_movie == [1, 2, 3]


def test_accumulation_refuses_a_wrong_movie_count() -> None:
    shape = (2, 2)
    with pytest.raises(ValueError, match="2 movies"):
        accumulate_and_score(iter([(np.zeros(shape), np.zeros(shape))] * 2), shape, 3)


def test_projected_dice_on_a_hand_made_volume() -> None:
    pred = np.zeros((2, 3, 4), bool)
    truth = np.zeros_like(pred)
    pred[0, 0, 0] = pred[1, 0, 0] = True
    truth[0, 0, 0] = truth[1, 2, 3] = True
    assert dice(pred, truth) == pytest.approx(0.5)
    got = projected_dice(pred, truth, ("z", "x", "y"))
    # along z: (x, y) {(0,0)} vs {(0,0),(2,3)}; along x: (z, y) {(0,0),(1,0)} vs {(0,0),(1,3)};
    # along y: (z, x) {(0,0),(1,0)} vs {(0,0),(1,2)}
    assert got == {"z": pytest.approx(2 / 3), "x": pytest.approx(0.5), "y": pytest.approx(0.5)}


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------

IMAGE = Grid(("z", "x"), (16, 16), (1e-3, 0.0), (LAM / 4, LAM / 4))


def test_grids_match_by_coordinates_and_integer_refinement() -> None:
    fine = IMAGE.refined(4)
    assert match_grids(fine, fine, pred_name="p", truth_name="t").pred_factor == 1
    twice = fine.refined(2)
    m = match_grids(twice, fine, pred_name="p", truth_name="t")
    assert (m.grid, m.pred_factor, m.truth_factor) == (fine, 2, 1)
    m = match_grids(fine, twice, pred_name="p", truth_name="t")
    assert (m.grid, m.pred_factor, m.truth_factor) == (fine, 1, 2)
    # Rounding in the last digits (a grid written by another program) is tolerated.
    nudged = Grid(fine.axes, fine.shape, tuple(o * (1 + 1e-12) for o in fine.origin), fine.spacing)
    assert same_grid(nudged, fine)


@pytest.mark.parametrize(
    "other",
    [
        Grid(("z", "x"), (64, 64), (1e-3 + LAM / 16, 0.0), (LAM / 16, LAM / 16)),  # shifted
        Grid(("z", "x"), (128, 128), (1e-3, 0.0), (LAM / 32, LAM / 32)),  # finer, edges moved
        Grid(("z", "x"), (96, 96), (1e-3, 0.0), (LAM / 16, LAM / 16)),  # same pitch, bigger
        Grid(("x", "z"), (64, 64), (1e-3, 0.0), (LAM / 16, LAM / 16)),  # other axes
    ],
)
def test_other_grids_are_refused_naming_both(other: Grid) -> None:
    fine = IMAGE.refined(4)
    with pytest.raises(InputError) as exc:
        match_grids(other, fine, pred_name="pred.zarr", truth_name="truth.zarr/truth")
    text = str(exc.value)
    assert "pred.zarr" in text and "truth.zarr/truth" in text and "\n" not in text
    assert "x".join(map(str, other.shape)) in text and "64x64" in text


def test_block_or_reduces_by_any() -> None:
    m = np.zeros((4, 6), bool)
    m[0, 1] = m[3, 5] = True
    assert block_or(m, 2).tolist() == [[True, False, False], [False, False, True]]
    assert block_or(m, 1) is not None and block_or(m, 1).sum() == 2


def test_field_of_view_is_pixel_centres_plus_half_a_pixel() -> None:
    lo, hi = field_of_view(IMAGE)
    assert lo == pytest.approx([1e-3 - LAM / 8, -LAM / 8])
    assert hi == pytest.approx([1e-3 + 15.5 * LAM / 4, 15.5 * LAM / 4])
    pts = np.array([[1e-3, -LAM / 9], [1e-3, -LAM / 7], [1e-3 + 16 * LAM / 4, 0.0]])
    assert inside(pts, IMAGE).tolist() == [True, False, False]


# ---------------------------------------------------------------------------
# PALA localization metrics
# ---------------------------------------------------------------------------


def test_greedy_and_hungarian_pairings_on_a_matrix() -> None:
    # detection 0 is nearest to reference 1 (0.12), which detection 1 needs (0.22):
    # greedy gives 0-1 and leaves 1 alone (0.52 to reference 0 is beyond the gate);
    # the assignment gives 0-0 and 1-1.
    dist = np.array([[0.18, 0.12], [0.52, 0.22]])
    r, c = greedy_pairs(dist, 0.5)
    assert list(zip(r, c)) == [(0, 1)]
    r, c = hungarian_pairs(dist, 0.5)
    assert sorted(zip(r.tolist(), c.tolist())) == [(0, 0), (1, 1)]
    empty = np.zeros((0, 3))
    assert len(greedy_pairs(empty, 0.5)[0]) == len(hungarian_pairs(empty, 0.5)[0]) == 0


def test_greedy_visits_detections_by_their_nearest_distance() -> None:
    # Detection 1 is closest to a reference overall (0.05) and goes first, taking
    # reference 0 that detection 0 (listed first) is also nearest to.
    dist = np.array([[0.1, 0.3], [0.05, 0.4]])
    r, c = greedy_pairs(dist, 0.5)
    assert dict(zip(r.tolist(), c.tolist())) == {1: 0, 0: 1}


def _at(x_wavelengths: float, z: float = 1.1e-3) -> list[float]:
    return [z, 1e-4 + x_wavelengths * LAM]


def _movie_one() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    # frame 0: truth A (0), B (0.3 lambda); detections at 0.18 and 0.52 lambda
    # frame 1: truth C outside the field of view, a detection 0.1 lambda from it
    # frame 2: truth D, a detection 0.4 lambda away (a pair, but not a true positive)
    det = np.array([_at(0.18), _at(0.52), [1.1e-3, -2e-5 + 0.1 * LAM], _at(2.4)])
    det_frames = np.array([0, 0, 1, 2])
    ref = np.array([_at(0.0), _at(0.3), [1.1e-3, -2e-5], _at(2.0)])
    ref_frames = np.array([0, 0, 1, 2])
    return det, det_frames, ref, ref_frames, 3


def test_pala_metrics_greedy_by_hand() -> None:
    s = score_localizations([_movie_one()], IMAGE, wavelength=LAM, pairing="greedy")
    t = s.total()
    assert (t.detections, t.truth, t.truth_dropped, t.pairs, t.tp, t.fp, t.fn) == (
        4,
        3,
        1,
        2,
        1,
        3,
        2,
    )
    assert s.precision == pytest.approx(1 / 4)
    assert s.sensitivity == pytest.approx(1 / 3)
    assert s.jaccard == pytest.approx(1 / 6)
    assert sorted(s.errors) == pytest.approx([0.12, 0.4])
    assert s.pala_rmse == pytest.approx(0.26)
    assert s.rmse == pytest.approx(math.sqrt((0.12**2 + 0.4**2) / 2))
    d = s.to_dict()
    assert d["pala_rmse_mean_distance_m"] == pytest.approx(0.26 * LAM)
    assert d["rmse_m"] == pytest.approx(s.rmse * LAM)
    assert d["block"] == "movie" and d["pooled"]["truth_outside_fov_dropped"] == 1


def test_pala_metrics_hungarian_differs_by_hand() -> None:
    s = score_localizations([_movie_one()], IMAGE, wavelength=LAM, pairing="hungarian")
    t = s.total()
    assert (t.pairs, t.tp, t.fp, t.fn) == (3, 2, 2, 1)
    assert (s.precision, s.sensitivity, s.jaccard) == (
        pytest.approx(1 / 2),
        pytest.approx(2 / 3),
        pytest.approx(2 / 5),
    )
    assert sorted(s.errors) == pytest.approx([0.18, 0.22, 0.4])
    assert s.pala_rmse == pytest.approx(0.8 / 3)
    assert s.rmse == pytest.approx(math.sqrt((0.18**2 + 0.22**2 + 0.4**2) / 3))


def test_pala_metrics_average_blocks() -> None:
    perfect = (np.array([_at(1.0)]), np.array([0]), np.array([_at(1.01)]), np.array([0]), 1)
    s = score_localizations([_movie_one(), perfect], IMAGE, wavelength=LAM)
    assert s.precision == pytest.approx((1 / 4 + 1) / 2)
    assert s.sensitivity == pytest.approx((1 / 3 + 1) / 2)
    assert s.jaccard == pytest.approx((1 / 6 + 1) / 2)
    assert s.pala_rmse == pytest.approx((0.12 + 0.4 + 0.01) / 3)
    # A block without detections has no precision; it is left out of that mean only.
    nothing = (np.zeros((0, 2)), np.zeros(0, int), np.array([_at(1.0)]), np.array([0]), 1)
    s = score_localizations([perfect, nothing], IMAGE, wavelength=LAM)
    assert s.precision == pytest.approx(1.0)
    assert s.sensitivity == pytest.approx(0.5)
    assert s.blocks[1].to_dict()["precision"] is None


def test_pairs_never_cross_frames() -> None:
    det = np.array([_at(0.0)])
    ref = np.array([_at(0.0)])
    s = score_localizations([(det, np.array([1]), ref, np.array([0]), 2)], IMAGE, wavelength=LAM)
    assert (s.total().tp, s.total().fp, s.total().fn) == (0, 1, 1)


# ---------------------------------------------------------------------------
# Saturation
# ---------------------------------------------------------------------------


def test_movie_saturation() -> None:
    s = movie_saturation([2, 3, 4], [10, 10, 10], 16)
    assert s["frames"] == [10, 20, 30]
    assert s["fraction_of_final"] == pytest.approx([0.5, 0.75, 1.0])
    assert s["fraction_of_grid"] == pytest.approx([2 / 16, 3 / 16, 4 / 16])


def test_localization_saturation_counts_first_hits() -> None:
    g = Grid(("z", "x"), (4, 4), (0.0, 0.0), (1.0, 1.0))
    # movie 0 (4 frames): pixel (0,0) at frames 0 and 3, (1,1) at frame 2;
    # movie 1 (4 frames): (1,1) again at frame 0, (3,3) at frame 3, one outside the grid.
    pos = [np.array([[0, 0], [0.2, 0.1], [1, 1]]), np.array([[1, 1], [3, 3], [9, 9]])]
    frames = [np.array([0, 3, 2]), np.array([0, 3, 1])]
    s = localization_saturation(pos, frames, [4, 4], g, samples=4)
    assert s["frames"] == [2, 4, 6, 8]
    assert s["pixels"] == [1, 2, 2, 3]
    assert s["fraction_of_final"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    # On the grid twice coarser, (0,0) and (1,1) share a pixel.
    s2 = localization_saturation(pos, frames, [4, 4], g, reduce=2, samples=4)
    assert s2["pixels"] == [1, 1, 1, 2]
    assert s2["fraction_of_grid"][-1] == pytest.approx(2 / 4)
