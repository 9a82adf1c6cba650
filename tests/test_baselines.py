"""The dense baselines: dense Deep-stULM and mSPCN-ULM through ulm train / infer / score."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import make_sparse
from ulmtools.infer.dense import angiogram_dice
from ulmtools.models import store as model_store
from ulmtools.models.deepstulm import SparseDeepStulm
from ulmtools.models.dense_deepstulm import DenseDeepStulm, activation_elements
from ulmtools.models.mspcn import MSPCN, blurred_l1, local_maxima, refine
from ulmtools.sparsify.synthetic import SyntheticConfig, default_grid, write_synthetic_store
from ulmtools.store import open_store
from ulmtools.train.baselines import BaselineTrainConfig, ImageMovies, build_baseline
from ulmtools.train.data import SparseMovies

#: the settings the overfitting tests train with (measured: Dice 0 at initialisation)
DEEPSTULM = ("--epochs", "100", "--channels", "8", "--lr", "0.01", "--batch-size", "2")


# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny 2D movies (32 frames, 8x8): the image store and its sparse store."""
    sparse = make_sparse(tmp_path_factory.mktemp("base") / "sparse.zarr", (8, 8))
    return sparse.with_name(sparse.name + ".img.zarr"), sparse


@pytest.fixture(scope="module")
def other_image(tmp_path_factory) -> Path:
    """Two more tiny movies like ``stores``' (another seed): an image store with truth."""
    sparse = make_sparse(tmp_path_factory.mktemp("other") / "b.zarr", (8, 8), seed=2)
    return sparse.with_name(sparse.name + ".img.zarr")


@pytest.fixture(scope="module")
def image3d(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base3") / "img3.zarr"
    cfg = SyntheticConfig(movies=1, frames=8, shape=(4, 4, 4), sigma=(1, 1, 1))
    write_synthetic_store(path, cfg)
    return path


@pytest.fixture(scope="module")
def sparse_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = SparseDeepStulm(channels=2)
    path = tmp_path_factory.mktemp("sm") / "sparse-model.zarr"
    model_store.save_model(path, net)
    return path


def untrained(arch: str, path: Path, channels: int = 8) -> Path:
    torch.manual_seed(0)
    model_store.save_model(path, build_baseline(BaselineTrainConfig(arch=arch, channels=channels)))
    return path


def test_dense_deepstulm_has_the_papers_size_and_the_x8_output():
    assert 1.0e6 < DenseDeepStulm().num_parameters() < 1.1e6  # the paper's ~1.05 M
    net = DenseDeepStulm(channels=4).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 2, 8, 8, 8)).shape == (2, 64, 64)
        # any frame count gives one map; sizes not multiple of 4 are padded, then cropped
        assert net(torch.randn(1, 2, 7, 10, 13)).shape == (1, 80, 104)


def test_activation_estimate_grows_with_a_spatial_axis():
    two, three = activation_elements(512, (32, 32)), activation_elements(512, (32, 32, 32))
    assert 32 < three / two < 256  # between the input's and the output's extra extent


def test_mspcn_is_frame_by_frame_subpixel():
    net = MSPCN(channels=8, layers=1).eval()
    x = torch.randn(5, 2, 6, 7)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (5, 48, 56)
        torch.testing.assert_close(net(x[2:3]), y[2:3])  # frames are independent
    target = torch.zeros(1, 16, 16)
    target[0, 5, 9] = 1
    assert float(blurred_l1(target, target, 1.0)) == 0
    assert float(blurred_l1(torch.zeros_like(target), target, 1.0)) > 0
    peaks = local_maxima(target * 0.9, 0.5)
    assert peaks.tolist() == [[0, 5, 9]]
    np.testing.assert_allclose(refine(target, peaks).numpy(), [[5.0, 9.0]])


def test_models_load_without_pickle(tmp_path):
    for arch in ("deepstulm", "mspcn"):
        path = untrained(arch, tmp_path / f"{arch}.zarr", channels=4)
        net, meta = model_store.load(path)
        assert meta.name == arch and type(net) is type(build_baseline(BaselineTrainConfig(arch)))
        assert not list(path.rglob("*.pt")) and not list(path.rglob("*.pkl"))


def test_output_grids_match_the_sparse_networks(cli, stores, sparse_model, tmp_path):
    image, sparse = stores
    dense, sparse_data = ImageMovies(image), SparseMovies(sparse)
    assert dense.fine_grid == sparse_data.fine_grid
    model = untrained("deepstulm", tmp_path / "d.zarr", channels=4)
    r = cli("infer", model, image, tmp_path / "pd.zarr", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    r = cli("infer", sparse_model, sparse, tmp_path / "ps.zarr", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    pd, ps = open_store(tmp_path / "pd.zarr"), open_store(tmp_path / "ps.zarr")
    assert pd.kind == ps.kind == "prediction"
    for key in ("grid", "input_grid", "factor", "columns"):
        assert pd.attrs[key] == ps.attrs[key], key
    for name in ("coords", "feats", "offsets", "angiogram"):
        assert pd.array(name).ndim == ps.array(name).ndim
    assert pd.array("angiogram").shape == ps.array("angiogram").shape == (64, 64)
    np.testing.assert_array_equal(pd.array("truth/tracks")[:], ps.array("truth/tracks")[:])
    # every site of the dense map is a fine-grid pixel, one row per pixel
    c = np.asarray(pd.array("coords")[:])
    assert c.min() >= 0 and c.max() < 64 and pd.array("offsets")[-1] == 2 * 64 * 64


def test_masked_input(stores):
    image, sparse = stores
    plain = ImageMovies(image).movie(0)
    by_threshold = ImageMovies(image, input_threshold=0.1).movie(0)
    np.testing.assert_array_equal(by_threshold, np.where(np.abs(plain) ** 2 > 0.1, plain, 0))
    by_store = ImageMovies(image, input_mask=sparse).movie(0)
    coords, feats = SparseMovies(sparse).movie(0)
    dense = np.zeros(plain.shape, np.complex64)
    dense[tuple(coords.T)] = feats[:, 0] + 1j * feats[:, 1]
    np.testing.assert_allclose(by_store, dense, atol=1e-6)
    assert 0 < np.count_nonzero(by_store) < plain.size


def test_dense_deepstulm_overfits_two_tiny_movies(cli, stores, tmp_path):
    image, _ = stores
    data = ImageMovies(image, need_truth=True)
    init = angiogram_dice(model_store.load(untrained("deepstulm", tmp_path / "u.zarr"))[0], data)
    model = tmp_path / "deepstulm.zarr"
    r = cli("train", image, model, "--arch", "deepstulm", *DEEPSTULM, "--seed", "0",
            "--device", "cpu", "--json")  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["architecture"] == "deepstulm" and result["input_masking"] is None
    r = cli("infer", model, image, tmp_path / "pred.zarr", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    dice = json.loads(r.out)["dice"]
    assert init < 0.1 and dice > 0.5, (init, dice)  # measured: 0.0 -> ~0.66
    r = cli("score", tmp_path / "pred.zarr", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["methods"][0]["dice"] == pytest.approx(dice)


def test_dense_model_with_masked_input_remembers_its_mask(cli, stores, tmp_path):
    image, sparse = stores
    model = tmp_path / "masked.zarr"
    r = cli("train", image, model, "--arch", "deepstulm", "--epochs", "1", "--channels", "4",
            "--input-threshold", "0.1", "--device", "cpu", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["input_masking"] == {"method": "threshold", "threshold": 0.1}
    meta = model_store.info(model)
    assert meta.training["input_masking"]["threshold"] == 0.1
    r = cli("infer", model, image, tmp_path / "p.zarr", "--device", "cpu")
    assert r.code == 0, r.err
    assert open_store(tmp_path / "p.zarr").attrs["input_threshold"] == 0.1  # auto
    r = cli("infer", model, image, tmp_path / "p2.zarr", "--input-threshold", "none")
    assert r.code == 0 and open_store(tmp_path / "p2.zarr").attrs["input_threshold"] is None
    r = cli("train", image, tmp_path / "m2.zarr", "--arch", "mspcn", "--epochs", "1",
            "--channels", "2", "--input-mask", sparse, "--device", "cpu", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["input_masking"]["method"] == "sparse-store"
    r = cli("train", image, tmp_path / "m3.zarr", "--arch", "mspcn", "--input-mask", sparse,
            "--input-threshold", "0.1")  # fmt: skip
    assert r.code == 2 and "not both" in r.err


def test_refusals(cli, stores, image3d, sparse_model, tmp_path):
    image, sparse = stores
    dense = untrained("deepstulm", tmp_path / "d.zarr", channels=4)
    r = cli("infer", dense, sparse, tmp_path / "o1.zarr")
    assert r.code == 3
    assert (
        f"this deepstulm model reads an image store (ulm beamform); {sparse} is a sparse" in r.err
    )
    r = cli("infer", sparse_model, image, tmp_path / "o2.zarr")
    assert r.code == 3
    assert "this sparse-deepstulm model reads a sparse store (ulm sparsify)" in r.err
    assert f"{image} is an image store" in r.err
    r = cli("train", sparse, tmp_path / "o3.zarr", "--arch", "deepstulm")
    assert r.code == 3 and "reads an image store (ulm beamform)" in r.err
    for arch, why in (("deepstulm", "4D convolutions"), ("mspcn", "PixelShuffle")):
        r = cli("train", image3d, tmp_path / f"o-{arch}.zarr", "--arch", arch)
        assert r.code == 2, r.err
        assert f"--arch {arch} is 2D only" in r.err and why in r.err
        assert "--arch sparse-deepstulm" in r.err
    r = cli("train", image, tmp_path / "o4.zarr", "--arch", "deepstulm", "--pruning")
    assert r.code == 2 and "--pruning does not apply to --arch deepstulm" in r.err
    r = cli("train", sparse, tmp_path / "o5.zarr", "--input-threshold", "0.1")
    assert r.code == 2 and "apply to the dense baselines" in r.err
    r = cli("infer", sparse_model, sparse, tmp_path / "o6.zarr", "--input-mask", sparse)
    assert r.code == 2 and "--input-mask applies to the dense models" in r.err
    r = cli("train", image, tmp_path / "o7.zarr", "--arch", "mspcn", "--lr", "nan")
    assert r.code == 2 and "--lr" in r.err
    r = cli("train", image, image / "m.zarr", "--arch", "deepstulm", "--epochs", "1")
    assert r.code == 4 and not (image / "m.zarr").exists()  # never inside an input
    r = cli("infer", dense, image, image / "p.zarr")
    assert r.code == 4 and not (image / "p.zarr").exists()
    names = ("o1.zarr", "o2.zarr", "o3.zarr", "o6.zarr", "o7.zarr")
    assert not any((tmp_path / n).exists() for n in names)


def test_mspcn_prediction_has_localizations_scored_by_ulm_score(cli, stores, tmp_path):
    image, _ = stores
    model = untrained("mspcn", tmp_path / "m.zarr", channels=2)
    pred = tmp_path / "pred.zarr"
    # threshold 0: every local maximum of the untrained maps is a detection
    r = cli("infer", model, image, pred, "--threshold", "0", "--min-probability", "0",
            "--device", "cpu", "--json")  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["architecture"] == "mspcn" and result["localizations"] > 0
    store = open_store(pred)
    loc = store.group["localizations"]
    offsets = np.asarray(loc["offsets"][:])
    assert len(offsets) == 3 and offsets[-1] == result["localizations"]
    positions = np.asarray(loc["positions"][:])
    grid = ImageMovies(image).grid
    idx = grid.to_index(positions)
    assert (idx > -0.5).all() and (idx < np.asarray(grid.shape) - 0.5).all()
    frames = np.asarray(loc["frames"][:])
    assert frames.min() >= 0 and frames.max() < 32
    # the per-movie maps are the detections on the x8 grid
    assert set(np.asarray(store.array("feats")[:]).ravel()) == {1.0}
    r = cli("score", pred, "--wavelength", "1e-4", "--json")  # synthetic: no acquisition
    assert r.code == 0, r.err
    method = json.loads(r.out)["methods"][0]
    assert method["kind"] == "prediction" and method["localization"] is not None
    loc = method["localization"]
    assert {"precision", "sensitivity", "jaccard", "rmse_wavelengths"} <= set(loc)
    assert loc["pooled"]["detections"] == result["localizations"]


@pytest.mark.slow
def test_mspcn_overfits_two_tiny_movies(cli, stores, tmp_path):
    image, _ = stores
    data = ImageMovies(image, need_truth=True)
    init = angiogram_dice(model_store.load(untrained("mspcn", tmp_path / "u.zarr"))[0], data)
    model = tmp_path / "mspcn.zarr"
    r = cli("train", image, model, "--arch", "mspcn", "--epochs", "150", "--channels", "8",
            "--lr", "0.003", "--batch-size", "2", "--seed", "0", "--device", "cpu")  # fmt: skip
    assert r.code == 0, r.err
    pred = tmp_path / "pred.zarr"
    r = cli("infer", model, image, pred, "--device", "cpu", "--json")
    assert r.code == 0, r.err
    dice = json.loads(r.out)["dice"]
    assert init < 0.1 and dice > 0.35, (init, dice)  # measured: 0.0 -> ~0.48
    r = cli("score", pred, "--wavelength", "1e-4", "--json")
    assert r.code == 0, r.err
    loc = json.loads(r.out)["methods"][0]["localization"]
    assert loc["sensitivity"] > 0.3 and loc["precision"] > 0.3, loc


def test_also_and_val_train_on_the_union_and_validate_as_ulm_infer(
    cli, stores, other_image, tmp_path
):
    image, _ = stores
    model = tmp_path / "m.zarr"
    # settings measured to give a non-zero validation Dice in the last epochs (~0.02-0.06)
    r = cli("train", image, model, "--arch", "deepstulm", "--also", other_image,
            "--val", image, "--epochs", "10", "--channels", "8", "--lr", "0.02",
            "--seed", "0", "--device", "cpu", "--json")  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["movies"] == 4  # TRAIN's 2 and --also's 2
    meta = model_store.info(model)
    history = meta.history
    assert len(history) == 10 and all(h["val_dice"] is not None for h in history)
    assert result["val_dice"] == history[-1]["val_dice"]
    assert result["best_val_dice"] == max(h["val_dice"] for h in history) > 0
    # every training store and the validation store are the run's inputs
    ids = [open_store(p).id for p in (image, other_image, image)]
    train_entry = meta.provenance[-1]
    assert train_entry["stage"] == "train"
    assert [i["id"] for i in train_entry["inputs"]] == ids
    assert meta.training["movies"] == 4
    assert [a["id"] for a in meta.training["also"]] == ids[1:2]
    assert meta.training["val"]["id"] == ids[2]
    # the last epoch's validation Dice is what ulm infer and ulm score give the model
    pred = tmp_path / "pred.zarr"
    r = cli("infer", model, image, pred, "--device", "cpu", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["dice"] == pytest.approx(result["val_dice"], abs=1e-12)
    r = cli("score", pred, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["methods"][0]["dice"] == pytest.approx(result["val_dice"], abs=1e-12)


def test_mspcn_validates_on_the_masked_val_store_without_changing_the_training(
    cli, stores, other_image, tmp_path
):
    image, _ = stores
    args = ("--arch", "mspcn", "--epochs", "2", "--channels", "2", "--seed", "1",
            "--input-threshold", "0.1", "--device", "cpu")  # fmt: skip
    model = tmp_path / "m.zarr"
    r = cli("train", image, model, "--val", other_image, *args)
    assert r.code == 0, r.err
    assert "validation Dice" in r.out and "of 2 movies" in r.out
    assert len(r.out.strip().splitlines()) == 2
    history = model_store.info(model).history
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["val_dice"] is not None for h in history)
    # the process's peak RSS in MiB on a CPU, as ulm train records for Sparse Deep-stULM
    assert all(h["memory"] == "peak_rss" and 50 < h["peak_memory_mb"] < 24_000 for h in history)
    # ulm infer repeats the training threshold (auto) on the val store: the same Dice
    r = cli("infer", model, other_image, tmp_path / "p.zarr", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["dice"] == pytest.approx(history[-1]["val_dice"], abs=1e-12)
    # validating draws no random numbers: the weights are those of a run without it
    r = cli("train", image, tmp_path / "plain.zarr", *args)
    assert r.code == 0, r.err
    a, _ = model_store.load_state(model)
    b, _ = model_store.load_state(tmp_path / "plain.zarr")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_also_refusals(cli, stores, other_image, tmp_path):
    image, sparse = stores
    short = tmp_path / "short.zarr"
    write_synthetic_store(short, SyntheticConfig(movies=1, frames=16, shape=(8, 8), sigma=(1, 1)))
    coarse = tmp_path / "coarse.zarr"
    grid = default_grid((8, 8))
    grid = replace(grid, spacing=tuple(2 * s for s in grid.spacing))
    write_synthetic_store(
        coarse, SyntheticConfig(movies=1, frames=32, shape=(8, 8), sigma=(1, 1)), grid=grid
    )
    for other, what in ((short, "16 frames of 8x8 pixels, not 32 of 8x8"), (coarse, "pixels of")):
        out = tmp_path / f"o-{other.name}"
        r = cli("train", image, out, "--arch", "deepstulm", "--also", other_image,
                "--also", other, "--epochs", "1")  # fmt: skip
        assert r.code == 3, r.err
        assert len(r.err.strip().splitlines()) == 1, r.err
        assert f"{other} does not match {image}" in r.err and what in r.err
        assert not out.exists()
    for flag, value in (("--also", other_image), ("--val", other_image)):
        out = tmp_path / f"o{flag}.zarr"
        r = cli("train", image, out, "--arch", "mspcn", "--input-mask", sparse, flag, value)
        assert r.code == 2, r.err
        assert len(r.err.strip().splitlines()) == 1, r.err
        assert "--input-mask masks TRAIN's movies only" in r.err and flag in r.err
        assert "--input-threshold" in r.err and not out.exists()
    r = cli("train", image, tmp_path / "o-val.zarr", "--arch", "deepstulm", "--val", sparse)
    assert r.code == 3 and "reads an image store" in r.err
    r = cli("train", image, tmp_path / "o-mask.zarr", "--arch", "mask-cnn", "--also", image)
    assert r.code == 2 and "--also does not apply to --arch mask-cnn" in r.err
    assert not (tmp_path / "o-val.zarr").exists() and not (tmp_path / "o-mask.zarr").exists()
