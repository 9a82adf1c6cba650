"""``ulm infer``: prediction stores on the x8 grid, empty movies, refused models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import make_sparse
from ulmtools.infer.core import dice, predict
from ulmtools.infer.weights import SHIPPED, WEIGHTS_DIR
from ulmtools.models import store as model_store
from ulmtools.models.deepstulm import SparseDeepStulm
from ulmtools.store import open_store
from ulmtools.train.data import SparseMovies
from ulmtools.truth import Truth

# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sparse2d(tmp_path_factory) -> Path:
    return make_sparse(tmp_path_factory.mktemp("i2") / "s2.zarr", (8, 8), movies=3)


@pytest.fixture(scope="module")
def model2d(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = SparseDeepStulm(dimension=3, channels=4)
    path = tmp_path_factory.mktemp("m2") / "m2.zarr"
    model_store.save_model(path, net)
    return path


def test_infer_writes_a_prediction_store(cli, sparse2d: Path, model2d: Path, tmp_path) -> None:
    out = tmp_path / "pred.zarr"
    r = cli("infer", model2d, sparse2d, out, "--min-probability", "0", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["movies"] == 3 and 0 <= result["dice"] <= 1
    pred = open_store(out, "prediction")
    data = SparseMovies(sparse2d)
    assert pred.grid == data.fine_grid  # the x8 grid, in metres
    ang = np.asarray(pred.array("angiogram")[...])
    assert ang.shape == tuple(data.fine_grid.shape) == Truth(pred).tracks.shape[1:]
    offsets = np.asarray(pred.array("offsets")[:])
    coords = np.asarray(pred.array("coords")[:])
    prob = np.asarray(pred.array("feats")[:, 0])
    assert len(offsets) == 4 and offsets[-1] == len(coords)
    assert coords.min() >= 0 and (coords < np.asarray(data.fine_grid.shape)).all()
    assert ((prob >= 0) & (prob <= 1)).all()
    # the angiogram is the per-movie maps thresholded and summed
    expect = np.zeros_like(ang)
    for m in range(3):
        c, p = coords[offsets[m] : offsets[m + 1]], prob[offsets[m] : offsets[m + 1]]
        np.add.at(expect, tuple(c[p > 0.5].T), 1)
    assert np.array_equal(ang, expect)
    assert pred.attrs["dice"] == pytest.approx(dice(ang > 0, data.truth_angiogram()))
    assert pred.provenance[-1]["stage"] == "infer"


def test_empty_movie_gives_an_empty_map(model2d: Path, tmp_path: Path, cli) -> None:
    net, _ = model_store.load(model2d)
    c = np.zeros((0, 3), np.int32)
    f = np.zeros((0, 2), np.float32)
    (coords, prob), (c2, p2) = predict(net, [(c, f), (np.array([[0, 1, 1]]), np.ones((1, 2)))])
    assert coords.shape == (0, 2) and prob.shape == (0,)
    assert len(c2) == 64 and len(p2) == 64
    # a store whose movies are all empty (threshold above every site)
    empty = make_sparse(tmp_path / "empty.zarr", (4, 4), frames=8, movies=2, threshold=1e6)
    r = cli("infer", model2d, empty, tmp_path / "p.zarr", "--json")
    assert r.code == 0, r.err
    pred = open_store(tmp_path / "p.zarr", "prediction")
    assert pred.array("coords").shape[0] == 0
    assert list(pred.array("offsets")[:]) == [0, 0, 0]
    assert int(np.asarray(pred.array("angiogram")[...]).sum()) == 0


def test_refuses_models_it_cannot_read(cli, sparse2d: Path, model2d: Path, tmp_path) -> None:
    import shutil

    newer = tmp_path / "newer.zarr"
    shutil.copytree(model2d, newer)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["ulm"]["version"] = "2.0"
    (newer / "zarr.json").write_text(json.dumps(meta))
    r = cli("infer", newer, sparse2d, tmp_path / "a.zarr")
    assert r.code == 3 and "version 2.0" in r.err
    r = cli("infer", sparse2d, sparse2d, tmp_path / "b.zarr")  # wrong kind
    assert r.code == 3 and "sparse store" in r.err
    from ulmtools.models.mask_cnn import MaskCNN

    mask = tmp_path / "mask.zarr"
    model_store.save_model(mask, MaskCNN())
    r = cli("infer", mask, sparse2d, tmp_path / "c.zarr")
    assert r.code == 3 and "mask-cnn" in r.err
    three = tmp_path / "m3.zarr"
    model_store.save_model(three, SparseDeepStulm(dimension=4, channels=4))
    r = cli("infer", three, sparse2d, tmp_path / "d.zarr")
    assert r.code == 3 and "3D+t" in r.err
    assert cli("infer", model2d, sparse2d, tmp_path / "e.zarr", "--threshold", "2").code == 2
    assert cli("infer", "shipped:4d", sparse2d, tmp_path / "f.zarr").code == 3
    for name in "abcdef":
        assert not (tmp_path / f"{name}.zarr").exists()
    out = tmp_path / "g.zarr"
    assert cli("infer", model2d, sparse2d, out).code == 0
    assert cli("infer", model2d, sparse2d, out).code == 4  # exists


@pytest.mark.parametrize("name", ["2d", "3d"])
def test_shipped_weights_run_out_of_the_box(name: str, cli, sparse2d: Path, tmp_path) -> None:
    if not (WEIGHTS_DIR / SHIPPED[name]).exists():
        pytest.skip("shipped weights not built (make weights)")
    data = sparse2d
    if name == "3d":
        # a simulated volume sparsified with the defaults: --features auto gives the sites
        # what the shipped 3D model reads (the correlation and the IQ)
        img, data = tmp_path / "i3.zarr", tmp_path / "s3.zarr"
        args = ["--dim", "3", "--level", "image", "--movies", "1", "--frames", "16"]
        assert cli("simulate", img, *args, "--seed", "3", "-q").code == 0
        assert cli("sparsify", img, data, "-q").code == 0
    r = cli("infer", f"shipped:{name}", data, tmp_path / "p.zarr", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["movies"] == (3 if name == "2d" else 1)
    r = cli("info", f"shipped:{name}")  # the model card: its training in brief
    assert r.code == 0 and "training: " in r.out and "epochs of" in r.out
    assert cli("info", "shipped:4d").code == 3


def test_infer_subprocess(sparse2d: Path, model2d: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ulm"),
            "infer",
            str(model2d),
            str(sparse2d),
            str(tmp_path / "p.zarr"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "angiogram Dice" in proc.stdout


def test_store_without_truth_and_bad_coordinates(cli, model2d: Path, tmp_path: Path) -> None:
    bare = make_sparse(tmp_path / "bare.zarr", (4, 4), frames=8, movies=1, truth=False)
    r = cli("infer", model2d, bare, tmp_path / "p.zarr", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["dice"] is None
    assert not open_store(tmp_path / "p.zarr", "prediction").has_truth
    import zarr

    g = zarr.open_group(str(bare), mode="r+")
    g["coords"][0] = [0, 99, 0]  # outside the 4x4 grid
    r = cli("infer", model2d, bare, tmp_path / "q.zarr")
    assert r.code == 3 and "outside" in r.err and not (tmp_path / "q.zarr").exists()


def test_input_threshold_follows_the_model(cli, sparse2d: Path, tmp_path: Path) -> None:
    from ulmtools.errors import UsageError
    from ulmtools.infer.core import input_threshold, training_threshold

    sp = {"stage": "sparsify", "parameters": {"method": "threshold", "threshold": 0.25}}
    assert training_threshold([{"stage": "simulate"}, sp, sp]) == 0.25
    other = {"stage": "sparsify", "parameters": {"method": "topk", "threshold": None}}
    assert training_threshold([sp, other]) is None and training_threshold([]) is None
    assert input_threshold("auto", 0.25, ("threshold", 0.1)) == 0.25
    assert input_threshold("auto", 0.25, ("threshold", 0.4)) is None  # already sparser
    assert input_threshold("auto", None, ("threshold", 0.1)) is None
    assert input_threshold("auto", 0.25, ("topk", None)) is None
    assert input_threshold("none", 0.25, ("threshold", 0.1)) is None
    assert input_threshold("0.3", 0.25, ("threshold", 0.1)) == 0.3
    with pytest.raises(UsageError):
        input_threshold("high", 0.25, ("threshold", 0.1))

    torch.manual_seed(0)
    path = tmp_path / "m.zarr"
    model_store.save_model(path, SparseDeepStulm(dimension=3, channels=4), provenance=[sp])
    low = tmp_path / "low.zarr"  # sparsified at 0.1, below the model's 0.25
    img = sparse2d.with_name(sparse2d.name + ".img.zarr")
    assert cli("sparsify", img, low, "--threshold", "0.1", "-q").code == 0
    assert SparseMovies(low).input_rule == ("threshold", 0.1)
    runs = {}
    for spec in ("auto", "none", "0.25"):
        r = cli("infer", path, low, tmp_path / f"p-{spec}.zarr", "--input-threshold", spec,
                "--json")  # fmt: skip
        assert r.code == 0, r.err
        runs[spec] = json.loads(r.out)["input_sites_mean"]
    data = SparseMovies(low)
    assert runs["none"] == np.mean([data.sites(m) for m in range(len(data))])
    assert runs["auto"] == runs["0.25"] < runs["none"]
    c, f = SparseMovies(low, min_power=0.25).movie(0)
    assert ((f**2).sum(1) > 0.25).all() and len(c) == len(f)
    assert open_store(tmp_path / "p-auto.zarr").attrs["input_threshold"] == 0.25
    assert cli("infer", path, sparse2d, tmp_path / "x.zarr", "--input-threshold", "x").code == 2


@pytest.fixture(scope="module")
def sparse3d(tmp_path_factory) -> Path:
    return make_sparse(tmp_path_factory.mktemp("i3") / "s3.zarr", (6, 6, 6), frames=16)


@pytest.fixture(scope="module")
def model3d(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    net = SparseDeepStulm(dimension=4, channels=4)
    with torch.no_grad():  # weights far from the initialisation: maps that vary
        for w in net.parameters():
            w.add_(0.5 * torch.randn_like(w))
    path = tmp_path_factory.mktemp("m3") / "m3.zarr"
    model_store.save_model(path, net)
    return path


def _net_and_movie(model: Path, data: Path):
    """The model, the input grid's shape, the fine grid's shape and the first movie."""
    net, _ = model_store.load(model)
    movies = SparseMovies(data)
    return net, movies.shape[1:], tuple(movies.fine_grid.shape), movies.movie(0)


def _infer_dense_model(cli, tmp_path: Path, out: Path, *options: str):
    """``ulm infer`` of an mspcn model on a small 2D image store, with ``options``."""
    from ulmtools.models.mspcn import MSPCN

    dense = tmp_path / "mspcn.zarr"
    model_store.save_model(dense, MSPCN())
    img2d = make_sparse(tmp_path / "s2.zarr", (8, 8), frames=8, movies=1)
    return cli("infer", dense, img2d.with_name(img2d.name + ".img.zarr"), out, *options)


def _dense(coords: np.ndarray, prob: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, np.float64)
    out[tuple(coords.T.astype(np.int64))] = prob
    return out


def test_mirrored_prediction_is_the_mean_of_the_mirror_images(
    sparse3d: Path, model3d: Path
) -> None:
    net, shape, fine, movie = _net_and_movie(model3d, sparse3d)
    ((c, p),) = predict(net, [movie], mirror=(1, 2), shape=shape)
    assert np.array_equal(c, np.unique(c, axis=0))  # sorted, one row per site
    # brute force: each mirror image predicted alone, mirrored back, densely averaged
    want = np.zeros(fine)
    for flips in [(), (1,), (2,), (1, 2)]:
        coords = movie[0].copy()
        for a in flips:
            coords[:, 1 + a] = shape[a] - 1 - coords[:, 1 + a]
        ((fc, fp),) = predict(net, [(coords, movie[1])])
        want += np.flip(_dense(fc, fp, fine), axis=flips) / 4
    np.testing.assert_allclose(_dense(c, p, fine), want, atol=1e-6)
    assert np.ptp(p) > 0.1  # a map that varies, and mirroring changes it
    assert np.abs(want - _dense(*predict(net, [movie])[0], fine)).max() > 0.01
    # the mean over the mirror images is itself mirror-symmetric: a mirrored movie's
    # map is the mirrored map
    flipped = movie[0].copy()
    flipped[:, 2] = shape[1] - 1 - flipped[:, 2]
    ((c2, p2),) = predict(net, [(flipped, movie[1])], mirror=(1, 2), shape=shape)
    np.testing.assert_allclose(_dense(c2, p2, fine), np.flip(want, 1), atol=1e-6)


def test_delayed_prediction_is_the_mean_of_the_delayed_copies(
    sparse3d: Path, model3d: Path
) -> None:
    net, shape, fine, movie = _net_and_movie(model3d, sparse3d)

    def alone(coords: np.ndarray, delay: int) -> np.ndarray:
        coords = coords.copy()
        coords[:, 0] += delay
        ((fc, fp),) = predict(net, [(coords, movie[1])])
        return _dense(fc, fp, fine)

    ((c, p),) = predict(net, [movie], delays=(0, 2))
    assert np.array_equal(c, np.unique(c, axis=0))
    want = (alone(movie[0], 0) + alone(movie[0], 2)) / 2
    np.testing.assert_allclose(_dense(c, p, fine), want, atol=1e-6)
    # a delay of 2 frames regroups the 4-frame time bins: another map, not a copy
    assert np.abs(alone(movie[0], 2) - alone(movie[0], 0)).max() > 0.01
    # with mirroring: every mirror image at every delay (4 x 2 forward passes)
    ((c, p),) = predict(net, [movie], mirror=(1, 2), shape=shape, delays=(0, 5))
    want = np.zeros(fine)
    for flips in [(), (1,), (2,), (1, 2)]:
        coords = movie[0].copy()
        for a in flips:
            coords[:, 1 + a] = shape[a] - 1 - coords[:, 1 + a]
        for d in (0, 5):
            want += np.flip(alone(coords, d), axis=flips) / 8
    np.testing.assert_allclose(_dense(c, p, fine), want, atol=1e-6)
    # (0,) is the movie alone
    ((c0, p0),) = predict(net, [movie], delays=(0,))
    ((c1, p1),) = predict(net, [movie])
    assert np.array_equal(c0, c1) and np.array_equal(p0, p1)


def test_infer_delays_option_and_the_models_advice(
    cli, sparse3d: Path, model3d: Path, tmp_path: Path
) -> None:
    import shutil

    import zarr

    plain, delayed = tmp_path / "plain.zarr", tmp_path / "delayed.zarr"
    assert cli("infer", model3d, sparse3d, plain, "-q").code == 0
    r = cli("infer", model3d, sparse3d, delayed, "--delays", "0,2")
    assert r.code == 0, r.err
    a, b = open_store(plain, "prediction"), open_store(delayed, "prediction")
    assert a.attrs["delays"] == [] and b.attrs["delays"] == [0, 2]
    assert not np.array_equal(a.array("feats")[:], b.array("feats")[:])
    # the model's advice is followed by default, and ulm info shows it
    advised = tmp_path / "advised.zarr"
    shutil.copytree(model3d, advised)
    zarr.open_group(advised, mode="r+").attrs["inference"] = {
        "mirror": ["x", "y"], "delays": [0, 2], "threshold": 0.3}  # fmt: skip
    assert "ulm infer uses: --mirror x,y --delays 0,2 --threshold 0.3" in cli("info", advised).out
    out = tmp_path / "auto.zarr"
    r = cli("infer", advised, sparse3d, out)
    assert r.code == 0, r.err
    assert "over delays of 0, 2 frames" in r.err
    auto = open_store(out, "prediction")
    assert auto.attrs["delays"] == [0, 2] and auto.attrs["mirror"] == ["x", "y"]
    explicit = tmp_path / "explicit.zarr"
    assert cli("infer", model3d, sparse3d, explicit, "--mirror", "x,y", "--delays", "0,2",
               "--threshold", "0.3", "-q").code == 0  # fmt: skip
    assert np.array_equal(auto.array("feats")[:], open_store(explicit).array("feats")[:])
    # none (or 0) is the movie alone
    for spec in ("none", "0"):
        out = tmp_path / f"{spec}.zarr"
        assert cli("infer", advised, sparse3d, out, "--mirror", "none", "--delays", spec,
                   "--threshold", "0.5", "-q").code == 0  # fmt: skip
        assert open_store(out).attrs["delays"] == []
        assert np.array_equal(open_store(out).array("feats")[:], a.array("feats")[:])
    bad = tmp_path / "bad.zarr"
    for spec, msg in [("x", "'x' is not a whole number"), ("-1", "in [0, 1024)"),
                      ("1024", "in [0, 1024)"), ("2.5", "not a whole number")]:  # fmt: skip
        r = cli("infer", model3d, sparse3d, bad, "--delays", spec)
        assert r.code == 2 and msg in r.err, (spec, r.err)
        assert len(r.err.strip().splitlines()) <= 2  # the error and its hint, no traceback
    r = _infer_dense_model(cli, tmp_path, bad, "--delays", "0,8")
    assert r.code == 2 and "--delays applies to the sparse model" in r.err
    assert not bad.exists()


def test_infer_mirror_option_and_the_models_advice(
    cli, sparse3d: Path, model3d: Path, tmp_path: Path
) -> None:
    import shutil

    import zarr

    plain, mirrored = tmp_path / "plain.zarr", tmp_path / "mirrored.zarr"
    assert cli("infer", model3d, sparse3d, plain, "-q").code == 0
    r = cli("infer", model3d, sparse3d, mirrored, "--mirror", "x,y", "--json")
    assert r.code == 0, r.err
    a, b = open_store(plain, "prediction"), open_store(mirrored, "prediction")
    assert a.attrs["mirror"] == [] and b.attrs["mirror"] == ["x", "y"]
    assert a.attrs["threshold"] == b.attrs["threshold"] == 0.5
    assert b.array("coords").shape[0] >= a.array("coords").shape[0] > 0
    # a model store may recommend its inference settings (chosen on validation data)
    advised = tmp_path / "advised.zarr"
    shutil.copytree(model3d, advised)
    zarr.open_group(advised, mode="r+").attrs["inference"] = {"mirror": ["x", "y"],
                                                              "threshold": 0.3}  # fmt: skip
    out = tmp_path / "auto.zarr"
    assert cli("infer", advised, sparse3d, out, "-q").code == 0
    auto = open_store(out, "prediction")
    assert auto.attrs["mirror"] == ["x", "y"] and auto.attrs["threshold"] == 0.3
    assert np.array_equal(auto.array("coords")[:], b.array("coords")[:])
    out = tmp_path / "none.zarr"
    assert cli("infer", advised, sparse3d, out, "--mirror", "none", "--threshold", "0.5").code == 0
    assert np.array_equal(
        open_store(out, "prediction").array("angiogram")[...], a.array("angiogram")[...]
    )
    bad = tmp_path / "bad.zarr"
    r = cli("infer", model3d, sparse3d, bad, "--mirror", "z")
    assert r.code == 2 and "depth axis" in r.err
    r = cli("infer", model3d, sparse3d, bad, "--mirror", "w")
    assert r.code == 2 and "no axis 'w'" in r.err
    r = _infer_dense_model(cli, tmp_path, bad, "--mirror", "x")
    assert r.code == 2 and "--mirror applies to the sparse model" in r.err
    assert not bad.exists()


def test_info_shows_the_inference_a_model_recommends(cli, model3d: Path, tmp_path: Path) -> None:
    import shutil

    import zarr

    advised = tmp_path / "advised.zarr"
    shutil.copytree(model3d, advised)
    assert "ulm infer uses" not in cli("info", advised).out
    zarr.open_group(advised, mode="r+").attrs["inference"] = {
        "mirror": ["x", "y"],
        "threshold": 0.35,
        "chosen": "on validation network 42",
    }
    r = cli("info", advised)
    assert r.code == 0
    assert "ulm infer uses: --mirror x,y --threshold 0.35 (on validation network 42)" in r.out


def test_dice_by_threshold_is_what_infer_gives(cli, sparse3d: Path, model3d: Path, tmp_path):
    from ulmtools.errors import UsageError
    from ulmtools.infer.core import dice_by_threshold

    base = tmp_path / "base.zarr"
    assert cli("infer", model3d, sparse3d, base, "--mirror", "x,y", "--min-probability", "0.05",
               "-q").code == 0  # fmt: skip
    swept = dice_by_threshold(base, [0.1, 0.3, 0.6])
    assert len(set(swept.values())) > 1
    for t, d in swept.items():
        out = tmp_path / f"t{t}.zarr"
        assert cli("infer", model3d, sparse3d, out, "--mirror", "x,y", "--threshold", str(t),
                   "-q").code == 0  # fmt: skip
        assert open_store(out, "prediction").attrs["dice"] == pytest.approx(d, abs=1e-12)
    with pytest.raises(UsageError, match="below the stored maps' min_probability"):
        dice_by_threshold(base, [0.01])


def test_recommended_mirroring_is_skipped_on_an_off_centre_grid(
    cli, model3d: Path, tmp_path: Path, caplog
) -> None:
    import shutil

    import zarr

    from ulmtools.grid import Grid

    advised = tmp_path / "advised.zarr"
    shutil.copytree(model3d, advised)
    zarr.open_group(advised, mode="r+").attrs["inference"] = {"mirror": ["x", "y"]}
    data = make_sparse(tmp_path / "s.zarr", (6, 6, 6), frames=16, movies=1)
    g = zarr.open_group(data, mode="r+")
    grid = Grid.from_attrs(g.attrs["grid"])
    shifted = Grid(grid.axes, grid.shape, (grid.origin[0], 0.0, 0.0), grid.spacing)
    g.attrs["grid"] = {**g.attrs["grid"], **shifted.to_attrs()}
    out = tmp_path / "p.zarr"
    r = cli("infer", advised, data, out)
    assert r.code == 0, r.err
    assert "not mirroring as the model recommends" in r.err
    assert open_store(out, "prediction").attrs["mirror"] == []
    r = cli("infer", advised, data, tmp_path / "q.zarr", "--mirror", "x")  # asked for: refused
    assert r.code == 3 and "not centred on the probe along x" in r.err
