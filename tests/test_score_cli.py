"""``ulm score`` end to end: hand-made prediction, tracks and angiogram stores, and real data."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ulmtools.grid import Grid
from ulmtools.score.grids import block_or
from ulmtools.score.maps import dice
from ulmtools.sites import SiteWriter
from ulmtools.store import create_store, write_array
from ulmtools.truth import TruthMovie, TruthWriter

LAM = 1e-4
IMAGE = Grid(("z", "x"), (16, 16), (1e-3, 0.0), (LAM / 4, LAM / 4), frame_rate=1000.0)
FINE = IMAGE.refined(4)  # 64 x 64
IMAGE3 = Grid(("z", "x", "y"), (4, 4, 4), (1e-3, 0.0, 0.0), (LAM / 2,) * 3)
FINE3 = IMAGE3.refined(2)  # 8 x 8 x 8


# ---------------------------------------------------------------------------
# Stores written by hand, exactly in the documented layouts
# ---------------------------------------------------------------------------


def truth_maps(grid: Grid, n: int, seed: int = 0) -> list[np.ndarray]:
    """Per-movie binary track maps: a few random straight segments each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = np.zeros(grid.shape, np.uint8)
        for _ in range(3):
            a, b = rng.uniform(0, np.asarray(grid.shape) - 1, (2, grid.ndim))
            for t in np.linspace(0, 1, 4 * max(grid.shape)):
                m[tuple(np.rint(a + t * (b - a)).astype(int))] = 1
        out.append(m)
    return out


def write_truth(
    root: Any,
    grid: Grid,
    tracks: Sequence[np.ndarray],
    positions: Sequence[np.ndarray] | None = None,
    frames: Sequence[np.ndarray] | None = None,
) -> None:
    w = TruthWriter(root, grid, len(tracks), factor=4)
    for m, tr in enumerate(tracks):
        pos = np.zeros((0, grid.ndim)) if positions is None else np.asarray(positions[m])
        fr = np.zeros(0, np.int32) if frames is None else np.asarray(frames[m])
        w.write_movie(m, TruthMovie(pos, fr, np.arange(len(fr)), tracks=tr))
    w.close()


def write_maps(root: Any, grid: Grid, maps: Sequence[np.ndarray], feature: str) -> None:
    sw = SiteWriter(root, grid.axes, [feature], unit="fine-grid index")
    for p in maps:
        idx = np.argwhere(p > 0.01)
        sw.write_movie(idx, p[tuple(idx.T)])
    sw.close()
    acc = np.sum([p > 0.5 for p in maps], axis=0).astype(np.uint32)
    write_array(root, "angiogram", acc, dims=grid.axes)


def make_prediction(
    path: Path,
    grid: Grid,
    maps: Sequence[np.ndarray],
    *,
    truth: dict[str, Any] | None = None,
    provenance: Sequence[dict[str, Any]] = (),
    input_grid: Grid = IMAGE,
) -> Path:
    attrs = {"input_grid": input_grid.to_attrs(), "factor": 4, "movies": len(maps)}
    with create_store(
        path, "prediction", provenance=provenance, grid=grid, axes=grid.axes, attrs=attrs
    ) as root:
        write_maps(root, grid, maps, "probability")
        if truth is not None:
            write_truth(root, **truth)
    return path


def make_tracks(
    path: Path,
    grid: Grid,
    maps: Sequence[np.ndarray],
    locs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    truth: dict[str, Any] | None = None,
    wavelength: float | None = LAM,
    input_grid: Grid = IMAGE,
) -> Path:
    attrs: dict[str, Any] = {
        "input_grid": input_grid.to_attrs(),
        "factor": 4,
        "movies": len(maps),
    }
    if wavelength is not None:
        attrs["wavelength"] = wavelength
    with create_store(
        path, "tracks", provenance=[], grid=grid, axes=grid.axes, attrs=attrs
    ) as root:
        write_maps(root, grid, [m.astype(np.float32) for m in maps], "track")
        density = np.sum(maps, axis=0).astype(np.uint32)
        write_array(root, "density", density, dims=grid.axes)
        speed = np.where(density > 0, 0.01, np.nan).astype(np.float32)
        write_array(root, "speed", speed, dims=grid.axes)
        write_array(root, "velocity_z", speed, dims=grid.axes)
        g = root.require_group("localizations")
        pos = np.concatenate([p for p, _ in locs]).reshape(-1, grid.ndim)
        fr = np.concatenate([f for _, f in locs]).astype(np.int32)
        n = len(fr)
        write_array(g, "positions", pos.astype(np.float64), dims=("row", "coordinate"))
        write_array(g, "frames", fr, dims=("row",))
        write_array(g, "intensity", np.ones(n, np.float32), dims=("row",))
        write_array(g, "track", np.full(n, -1, np.int64), dims=("row",))
        write_array(g, "velocity", np.full((n, grid.ndim), np.nan, np.float32), dims=("row", "c"))
        offsets = np.concatenate([[0], np.cumsum([len(f) for _, f in locs])]).astype(np.int64)
        write_array(g, "offsets", offsets, dims=("movie_edge",))
        if truth is not None:
            write_truth(root, **truth)
    return path


def make_truth_store(
    path: Path, truth: dict[str, Any], *, acquisition: dict[str, Any] | None = None
) -> Path:
    attrs = {"acquisition": acquisition} if acquisition else {}
    with create_store(
        path, "image", provenance=[], grid=IMAGE, axes=("movie", "t", "z", "x"), attrs=attrs
    ) as root:
        write_array(root, "corr", np.zeros((1, 1, 2, 2), np.float32), dims=("movie", "t", "z", "x"))
        write_truth(root, **truth)
    return path


def noisy(maps: Sequence[np.ndarray], seed: int = 1) -> list[np.ndarray]:
    """Probability maps: the truth at 0.9 with some pixels dropped, plus false alarms."""
    rng = np.random.default_rng(seed)
    out = []
    for t in maps:
        p = np.where(t > 0, 0.9, 0.0) * (rng.random(t.shape) > 0.3)
        p = np.maximum(p, (rng.random(t.shape) > 0.97) * 0.7)
        p = np.maximum(p, (rng.random(t.shape) > 0.9) * 0.3)  # below threshold: ignored
        out.append(p.astype(np.float32))
    return out


def expected_dice(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], k: int = 1) -> float:
    acc_p = block_or(np.any([p > 0.5 for p in preds], axis=0), k)
    acc_t = np.any([t > 0 for t in truths], axis=0)
    return dice(acc_p, acc_t)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def pred2d(tmp_path: Path) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    truths = truth_maps(FINE, 3)
    preds = noisy(truths)
    path = make_prediction(
        tmp_path / "pred.zarr", FINE, preds, truth={"grid": FINE, "tracks": truths}
    )
    return path, preds, truths


Cli = Callable[..., Any]


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def test_json_on_stdout_and_nothing_else(cli: Cli, pred2d: Any) -> None:
    path, preds, truths = pred2d
    r = cli("score", path, "--json")
    assert r.code == 0, r.err
    assert r.out.count("\n") == 1 and r.out.endswith("\n")
    doc = json.loads(r.out)
    (m,) = doc["methods"]
    assert m["dice"] == pytest.approx(expected_dice(preds, truths))
    assert m["per_movie_dice"] == pytest.approx(
        [dice(p > 0.5, t > 0) for p, t in zip(preds, truths)]
    )
    assert [k["movies"] for k in m["dice_after_movies"]] == [1, 2, 3]
    assert m["dice_after_movies"][0]["dice"] == pytest.approx(m["per_movie_dice"][0])
    assert m["dice_after_movies"][-1]["dice"] == pytest.approx(m["dice"])
    px = m["pixels"]
    assert px["tp"] + px["fp"] == px["predicted"] and px["tp"] + px["fn"] == px["true"]
    assert m["localization"] is None and "projected_dice" not in m
    assert m["saturation"]["fraction_of_final"][-1] == 1.0
    assert doc["truth"]["path"] == str(path) and doc["movies"] == 3
    # Dice equals the prediction's own angiogram binarized (the paper's accumulation).
    import zarr

    ang = np.asarray(zarr.open_group(str(path), mode="r")["angiogram"][:]) > 0
    assert m["dice"] == pytest.approx(dice(ang, np.any(truths, axis=0)))


def test_table_by_default_and_json_with_dash(cli: Cli, pred2d: Any) -> None:
    path, preds, truths = pred2d
    r = cli("score", path)
    assert r.code == 0, r.err
    assert "Dice" in r.out and str(path) in r.out and f"{expected_dice(preds, truths):.4f}" in r.out
    assert "k=1" in r.out and "k=3" in r.out
    r = cli("score", path, "-o", "-")
    assert r.code == 0 and json.loads(r.out)["methods"][0]["kind"] == "prediction"


def test_report_file_written_and_refused_without_force(
    cli: Cli, pred2d: Any, tmp_path: Path
) -> None:
    path, _, _ = pred2d
    report = tmp_path / "report.json"
    r = cli("score", path, "-o", report, "-q")
    assert r.code == 0, r.err
    assert "Dice" in r.out  # the table still goes to stdout
    before = report.read_text()
    assert json.loads(before)["methods"][0]["path"] == str(path)
    r = cli("score", path, "-o", report)
    assert r.code == 4 and "exists" in r.err and "--force" in r.err
    assert report.read_text() == before
    assert cli("score", path, "-o", report, "-f", "--json").code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_figure_is_a_png_of_the_stated_size(cli: Cli, pred2d: Any, tmp_path: Path) -> None:
    path, _, _ = pred2d
    fig = tmp_path / "fig.png"
    r = cli("score", path, "--figure", fig, "--json")
    assert r.code == 0, r.err
    stated = json.loads(r.out)["figure"]
    assert png_size(fig) == (stated["width"], stated["height"]) == (3 * 320, 360)
    r = cli("score", path, "--figure", fig)
    assert r.code == 4 and "exists" in r.err
    assert cli("score", path, "--figure", fig, "-f").code == 0


def test_output_that_is_an_input_is_refused(cli: Cli, pred2d: Any) -> None:
    path, _, _ = pred2d
    r = cli("score", path, "-o", path)
    assert r.code == 4


# ---------------------------------------------------------------------------
# Grids, truth and movies
# ---------------------------------------------------------------------------


def test_x2_refinement_scores_like_a_manual_reduction(cli: Cli, tmp_path: Path) -> None:
    truths = truth_maps(FINE, 2, seed=4)
    finer = FINE.refined(2)
    # The truth upsampled, then perturbed: so the reduction has something to do.
    preds = noisy([np.kron(t, np.ones((2, 2), np.uint8)) for t in truths], seed=5)
    path = make_prediction(
        tmp_path / "fine.zarr", finer, preds, truth={"grid": FINE, "tracks": truths}
    )
    r = cli("score", path, "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)["methods"][0]
    assert m["block_reduction"] == {"prediction": 2, "truth": 1}
    assert m["dice"] == pytest.approx(expected_dice(preds, truths, k=2))
    assert m["dice"] < 1
    # The other way round: the truth is the finer one.
    coarse = make_prediction(
        tmp_path / "coarse.zarr",
        FINE,
        [block_or(p > 0.5, 2).astype(np.float32) for p in preds],
        truth={"grid": finer, "tracks": [np.kron(t, np.ones((2, 2), np.uint8)) for t in truths]},
    )
    r = cli("score", coarse, "--json")
    assert r.code == 0, r.err
    m2 = json.loads(r.out)["methods"][0]
    assert m2["block_reduction"] == {"prediction": 1, "truth": 2}
    assert m2["dice"] == pytest.approx(m["dice"])


def test_a_mismatched_grid_is_refused_naming_both(cli: Cli, tmp_path: Path) -> None:
    truths = truth_maps(FINE, 1)
    shifted = Grid(FINE.axes, FINE.shape, (FINE.origin[0] + FINE.spacing[0], 0.0), FINE.spacing)
    path = make_prediction(
        tmp_path / "p.zarr", shifted, noisy(truths), truth={"grid": FINE, "tracks": truths}
    )
    r = cli("score", path)
    assert r.code == 3
    (line,) = [x for x in r.err.splitlines() if x.startswith("Error:")]
    assert "64x64" in line and "p.zarr/truth" in line and "integer refinement" in line
    assert f"{shifted.origin[0] * 1e3:.6g}" in line and f"{FINE.origin[0] * 1e3:.6g}" in line


def test_truth_from_another_store_and_none_anywhere(cli: Cli, tmp_path: Path) -> None:
    truths = truth_maps(FINE, 2)
    preds = noisy(truths)
    bare = make_prediction(tmp_path / "bare.zarr", FINE, preds)
    r = cli("score", bare)
    assert r.code == 3 and "no ground truth" in r.err and "--truth" in r.err
    t = make_truth_store(tmp_path / "truth.zarr", {"grid": FINE, "tracks": truths})
    r = cli("score", bare, "--truth", t, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["methods"][0]["dice"] == pytest.approx(expected_dice(preds, truths))
    r = cli("score", bare, "--truth", bare)
    assert r.code == 3 and "no ground truth" in r.err
    r = cli("score", tmp_path / "missing.zarr")
    assert r.code == 3 and "no such store" in r.err
    r = cli("score", t)  # an image store is not a reconstruction
    assert r.code == 3 and "prediction or tracks or angiogram" in r.err


def test_movie_counts_and_movies_option(cli: Cli, tmp_path: Path) -> None:
    truths = truth_maps(FINE, 3)
    preds = noisy(truths)
    t = make_truth_store(tmp_path / "truth.zarr", {"grid": FINE, "tracks": truths[:2]})
    p = make_prediction(tmp_path / "p.zarr", FINE, preds)
    r = cli("score", p, "--truth", t)
    assert r.code == 3 and "3 movies" in r.err and "--movies" in r.err
    r = cli("score", p, "--truth", t, "--movies", "2", "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)["methods"][0]
    assert len(m["per_movie_dice"]) == 2
    assert m["dice"] == pytest.approx(expected_dice(preds[:2], truths[:2]))
    assert cli("score", p, "--truth", t, "--movies", "3").code == 2
    assert cli("score", p, "--truth", t, "--movies", "0").code == 2
    assert cli("score", p, "--pairing", "nearest").code == 2
    assert cli("score", p, "--truth", t, "--movies", "1", "--wavelength", "-1").code == 2


def test_several_predictions_give_one_table(cli: Cli, pred2d: Any, tmp_path: Path) -> None:
    path, _, truths = pred2d
    other = make_prediction(tmp_path / "other.zarr", FINE, noisy(truths, seed=9))
    r = cli("score", path, other)
    assert r.code == 0, r.err
    rows = [line for line in r.out.splitlines() if line.startswith(str(tmp_path))]
    assert len(rows) == 6  # each method in the main, pixel and Dice-after-k tables
    r = cli("score", path, other, "--json")
    doc = json.loads(r.out)
    assert [m["path"] for m in doc["methods"]] == [str(path), str(other)]


def test_random_trajectories_are_labelled(cli: Cli, tmp_path: Path) -> None:
    truths = truth_maps(FINE, 2)
    entry = {"stage": "simulate", "parameters": {"vessels": "random", "frames": 50}}
    p = make_prediction(
        tmp_path / "p.zarr",
        FINE,
        noisy(truths),
        truth={"grid": FINE, "tracks": truths},
        provenance=[entry],
    )
    r = cli("score", p, "--json")
    m = json.loads(r.out)["methods"][0]
    assert m["random_trajectories"] is True
    assert m["trajectory_dice"] == pytest.approx(m["per_movie_dice_mean"])
    assert m["saturation"]["frames"] == [50, 100]
    assert "traj. Dice" in cli("score", p).out


# ---------------------------------------------------------------------------
# Tracks, 3D and angiogram stores
# ---------------------------------------------------------------------------


def _at(x_wavelengths: float, z: float = 1.1e-3) -> list[float]:
    return [z, 1e-4 + x_wavelengths * LAM]


def tracks_case(tmp_path: Path, wavelength: float | None = LAM) -> tuple[Path, dict[str, Any]]:
    """The hand-made pairing of tests/test_score.py in a tracks store (one movie, 3 frames)."""
    det = np.array([_at(0.18), _at(0.52), [1.1e-3, -2e-5 + 0.1 * LAM], _at(2.4)])
    ref = np.array([_at(0.0), _at(0.3), [1.1e-3, -2e-5], _at(2.0)])
    frames = np.array([0, 0, 1, 2])
    truths = truth_maps(FINE, 1)
    truth = {"grid": FINE, "tracks": truths, "positions": [ref], "frames": [frames]}
    maps = [(t > 0) for t in truths]
    path = make_tracks(
        tmp_path / "tracks.zarr", FINE, maps, [(det, frames)], truth=truth, wavelength=wavelength
    )
    return path, truth


def test_tracks_store_localization_metrics(cli: Cli, tmp_path: Path) -> None:
    path, _ = tracks_case(tmp_path)
    r = cli("score", path, "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)["methods"][0]
    assert m["kind"] == "tracks" and m["dice"] == pytest.approx(1.0)
    loc = m["localization"]
    assert loc["pairing"] == "greedy" and loc["wavelength_m"] == LAM
    assert (loc["pooled"]["tp"], loc["pooled"]["fp"], loc["pooled"]["fn"]) == (1, 3, 2)
    assert loc["pooled"]["truth_outside_fov_dropped"] == 1
    assert loc["precision"] == pytest.approx(1 / 4)
    assert loc["sensitivity"] == pytest.approx(1 / 3)
    assert loc["jaccard"] == pytest.approx(1 / 6)
    assert loc["pala_rmse_mean_distance_wavelengths"] == pytest.approx(0.26)
    assert loc["pala_rmse_mean_distance_m"] == pytest.approx(0.26 * LAM)
    assert loc["rmse_wavelengths"] == pytest.approx(np.sqrt((0.12**2 + 0.4**2) / 2))
    sat = m["saturation"]
    assert sat["granularity"] == "frame" and sat["frames"][-1] == 3
    assert sat["fraction_of_final"][-1] == 1.0
    r = cli("score", path, "--json", "--pairing", "hungarian")
    loc = json.loads(r.out)["methods"][0]["localization"]
    assert loc["pairing"] == "hungarian" and loc["pooled"]["tp"] == 2
    assert loc["jaccard"] == pytest.approx(2 / 5)
    out = cli("score", path).out
    assert "precision" in out and "0.2500" in out and "greedy pairing" in out


def test_wavelength_sources(cli: Cli, tmp_path: Path) -> None:
    path, truth = tracks_case(tmp_path, wavelength=None)
    r = cli("score", path)
    assert r.code == 2 and "--wavelength" in r.err
    r = cli("score", path, "--wavelength", str(2 * LAM), "--json")
    assert r.code == 0
    loc = json.loads(r.out)["methods"][0]["localization"]
    assert loc["wavelength_m"] == 2 * LAM and loc["wavelength_source"] == "--wavelength"
    t = make_truth_store(
        tmp_path / "truth.zarr",
        truth,
        acquisition={"center_frequency": 1540.0 / LAM, "speed_of_sound": 1540.0},
    )
    r = cli("score", path, "--truth", t, "--json")
    assert r.code == 0, r.err
    loc = json.loads(r.out)["methods"][0]["localization"]
    assert loc["wavelength_m"] == pytest.approx(LAM) and "acquisition" in loc["wavelength_source"]


def test_prediction_and_tracks_in_one_figure(cli: Cli, tmp_path: Path) -> None:
    path, truth = tracks_case(tmp_path)
    pred = make_prediction(tmp_path / "pred.zarr", FINE, noisy(truth["tracks"]))
    fig = tmp_path / "cmp.png"
    r = cli("score", pred, path, "--truth", path, "--figure", fig, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert [m["kind"] for m in doc["methods"]] == ["prediction", "tracks"]
    assert png_size(fig) == (4 * 320, 2 * 360)  # the speed column for the tracks store


def test_3d_projected_dice_and_figure(cli: Cli, tmp_path: Path) -> None:
    truths = truth_maps(FINE3, 2, seed=2)
    preds = noisy(truths, seed=3)
    path = make_prediction(
        tmp_path / "p3.zarr",
        FINE3,
        preds,
        truth={"grid": FINE3, "tracks": truths},
        input_grid=IMAGE3,
    )
    fig = tmp_path / "p3.png"
    r = cli("score", path, "--json", "--figure", fig)
    assert r.code == 0, r.err
    m = json.loads(r.out)["methods"][0]
    acc_p = np.any([p > 0.5 for p in preds], axis=0)
    acc_t = np.any(truths, axis=0)
    assert m["projected_dice"] == {
        a: pytest.approx(dice(acc_p.any(axis=i), acc_t.any(axis=i))) for i, a in enumerate("zxy")
    }
    assert png_size(fig) == (3 * 320, 3 * 360)
    assert "proj. z" in cli("score", path).out


def test_angiogram_store_gives_the_accumulated_dice_only(cli: Cli, tmp_path: Path) -> None:
    truths = truth_maps(FINE, 2)
    preds = noisy(truths)
    acc = np.sum([p > 0.5 for p in preds], axis=0).astype(np.float32)
    with create_store(
        tmp_path / "ang.zarr", "angiogram", provenance=[], grid=FINE, attrs={"movies": 2}
    ) as root:
        write_array(root, "angiogram", acc, dims=FINE.axes)
        write_truth(root, FINE, truths)
    r = cli("score", tmp_path / "ang.zarr", "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)["methods"][0]
    assert m["dice"] == pytest.approx(expected_dice(preds, truths))
    assert m["per_movie_dice"] is None and m["dice_after_movies"] is None
    assert cli("score", tmp_path / "ang.zarr", "--movies", "1").code == 2
    assert cli("score", tmp_path / "ang.zarr").code == 0


# ---------------------------------------------------------------------------
# Real data: simulate -> sparsify -> infer -> score
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 movies x 64 frames of ulm simulate --level image (about a second)."""
    from ulmtools.cli.app import main

    sim = tmp_path_factory.mktemp("real") / "sim.zarr"
    args = ["--level", "image", "--movies", "2", "--frames", "64", "--seed", "3", "-q"]
    assert main(["simulate", str(sim), *args]) == 0
    return sim


def test_real_pipeline_scored_end_to_end(cli: Cli, real_sim: Path, tmp_path: Path) -> None:
    sp, pred = tmp_path / "sp.zarr", tmp_path / "pred.zarr"
    assert cli("sparsify", real_sim, sp, "-q").code == 0
    assert cli("infer", "shipped:2d", sp, pred, "--device", "cpu", "-q").code == 0
    fig = tmp_path / "real.png"
    r = cli("score", pred, "--json", "--figure", fig, "-q")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    m = doc["methods"][0]
    import zarr

    stored = zarr.open_group(str(pred), mode="r").attrs["dice"]
    assert m["dice"] == pytest.approx(stored)  # infer's own Dice, the same definition
    assert m["random_trajectories"] is False and doc["movies"] == 2
    assert m["saturation"]["frames"] == [64, 128]
    assert png_size(fig) == (3 * 320, 360)
    # Scoring against the simulation store itself gives the same answer.
    r2 = cli("score", pred, "--truth", real_sim, "--json", "-q")
    assert json.loads(r2.out)["methods"][0]["dice"] == pytest.approx(m["dice"])
    # a prediction made at another --threshold is scored at that threshold, as infer did
    low = tmp_path / "low.zarr"
    assert cli("infer", "shipped:2d", sp, low, "--threshold", "0.1", "-q").code == 0
    r3 = cli("score", low, "--json", "-q")
    got = json.loads(r3.out)["methods"][0]
    assert got["dice"] == pytest.approx(zarr.open_group(str(low), mode="r").attrs["dice"])
    assert got["pixels"]["predicted"] > m["pixels"]["predicted"]


def test_real_tracks_scored_end_to_end(cli: Cli, real_sim: Path, tmp_path: Path) -> None:
    """Conventional ULM on the same data: a tracks store as ulm track writes it."""
    import zarr

    tracks = tmp_path / "tracks.zarr"
    assert cli("track", real_sim, tracks, "-q").code == 0
    r = cli("score", tracks, "--json", "-q")
    assert r.code == 0, r.err
    t = json.loads(r.out)["methods"][0]
    group = zarr.open_group(str(tracks), mode="r")
    truth_acc = np.asarray(group["truth/tracks"][:]).any(axis=0)
    assert t["dice"] == pytest.approx(dice(np.asarray(group["angiogram"][:]) > 0, truth_acc))
    loc = t["localization"]
    assert loc["wavelength_m"] == pytest.approx(1540.0 / 15.625e6)
    assert 0 < loc["precision"] <= 1 and 0 < loc["sensitivity"] <= 1
    assert loc["pooled"]["truth_outside_fov_dropped"] > 0  # the simulator's echo margin
    assert t["saturation"]["granularity"] == "frame"
    assert t["saturation"]["fraction_of_final"][-1] == 1.0


@pytest.mark.slow
def test_real_3d_pipeline_scored_end_to_end(cli: Cli, tmp_path: Path) -> None:
    sim, sp, pred = tmp_path / "s3.zarr", tmp_path / "sp3.zarr", tmp_path / "p3.zarr"
    tracks = tmp_path / "t3.zarr"
    args = ["--dim", "3", "--level", "image", "--movies", "1", "--frames", "16", "--seed", "3"]
    assert cli("simulate", sim, *args, "-q").code == 0
    assert cli("sparsify", sim, sp, "-q").code == 0
    assert cli("infer", "shipped:3d", sp, pred, "--device", "cpu", "-q").code == 0
    assert cli("track", sim, tracks, "-q").code == 0
    fig = tmp_path / "s3.png"
    r = cli("score", pred, tracks, "--json", "--figure", fig, "-q")
    assert r.code == 0, r.err
    p, t = json.loads(r.out)["methods"]
    assert set(p["projected_dice"]) == set(t["projected_dice"]) == {"z", "x", "y"}
    assert t["localization"]["wavelength_m"] == pytest.approx(1540.0 / 7.8125e6)
    assert png_size(fig) == (4 * 320, 6 * 360)
