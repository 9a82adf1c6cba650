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


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        data = make_sparse(tmp_path / "s3.zarr", (6, 6, 6), frames=16, movies=1)
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
