"""The learned mask: Mask CNN shapes, windowed inference, training, ``--method mask``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ulmtools.models.mask_cnn import (
    MaskCNN,
    MaskPredictor,
    MaskTrainConfig,
    as_input,
    soft_dice_loss,
    train_mask_cnn,
)
from ulmtools.models.store import load, save, save_model
from ulmtools.sparsify import open_sparse, read_movie, to_dense
from ulmtools.sparsify.synthetic import SyntheticConfig, write_synthetic_store

TINY = MaskTrainConfig(
    epochs=8, steps_per_epoch=10, batch=2, crop_frames=32, channels=8, blocks=1, seed=0
)


@pytest.fixture(scope="module")
def train_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mask") / "train.zarr"
    write_synthetic_store(
        path, SyntheticConfig(movies=4, frames=64, shape=(16, 16), bubbles=3, seed=11)
    )
    return path


@pytest.fixture(scope="module")
def trained(train_store, tmp_path_factory):
    torch.manual_seed(0)
    model, history = train_mask_cnn(train_store, TINY)
    path = tmp_path_factory.mktemp("mask") / "mask.zarr"
    save_model(path, model, training=TINY.to_dict(), history=history)
    return model, history, path


@pytest.mark.parametrize(("dims", "space"), [(2, (6, 5)), (3, (4, 3, 5))])
@pytest.mark.parametrize("frames", [1, 7, 16])
def test_output_has_the_input_resolution(dims, space, frames):
    model = MaskCNN(spatial_dims=dims, channels=4, blocks=1).eval()
    x = torch.randn(2, 2, frames, *space)
    with torch.no_grad():
        y = model(x)
        p = model.probabilities(x)
    assert y.shape == (2, frames, *space)
    assert float(p.min()) >= 0 and float(p.max()) <= 1


def test_wrong_input_shape_is_a_clear_error():
    model = MaskCNN(spatial_dims=2, channels=4)
    with pytest.raises(ValueError, match="expected \\(B, 2, T"):
        model(torch.randn(1, 3, 4, 5, 5))


def test_windowed_inference_matches_a_whole_movie_pass():
    torch.manual_seed(1)
    model = MaskCNN(spatial_dims=2, channels=4, blocks=2).eval()
    rng = np.random.default_rng(0)
    movie = (rng.normal(size=(70, 6, 6)) + 1j * rng.normal(size=(70, 6, 6))).astype(np.complex64)
    whole = model.probabilities(as_input(movie[None]))[0].detach().numpy()
    small = MaskPredictor(model, budget_bytes=6 * 6 * 4 * 4 * 10)  # ~10-frame windows
    win, halo = small.window(movie.shape)
    assert win < 70 and win % 2 == 0 and halo % 2 == 0
    np.testing.assert_allclose(small(movie), whole, atol=1e-5)


def test_soft_dice_loss():
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert float(soft_dice_loss(t, t)) == pytest.approx(0, abs=1e-6)
    assert float(soft_dice_loss(1 - t, t)) == pytest.approx(1, abs=1e-3)
    assert float(soft_dice_loss(torch.full((4,), 0.5), t)) == pytest.approx(0.5, abs=1e-3)


def test_training_lowers_the_dice_loss(trained):
    _, history, _ = trained
    assert len(history) == TINY.epochs
    assert history[-1]["loss"] < history[0]["loss"] - 0.15
    assert {"epoch", "loss", "dice", "lr", "seconds"} <= set(history[0])


def test_training_needs_truth(tmp_path):
    from ulmtools.errors import InputError

    path = tmp_path / "no_truth.zarr"
    write_synthetic_store(path, SyntheticConfig(movies=1, frames=8, shape=(8, 8)), truth=False)
    with pytest.raises(InputError, match="no ground truth"):
        train_mask_cnn(path, TINY)


def test_saved_mask_model_round_trips(trained):
    model, history, path = trained
    loaded, meta = load(path)
    assert meta.name == "mask-cnn" and meta.kwargs["channels"] == TINY.channels
    assert meta.training["crop_frames"] == TINY.crop_frames
    assert meta.history == json.loads(json.dumps(history))
    x = as_input(np.ones((1, 10, 16, 16), np.complex64))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_cli_mask_method(cli, trained, train_store, tmp_path):
    model, _, path = trained
    out = tmp_path / "masked.zarr"
    r = cli("sparsify", train_store, out, "--method", "mask", "--mask-model", path,
            "--device", "cpu", "--json")  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["method"] == "mask" and result["threshold"] == 0.5
    assert result["kept_bubble_fraction"] > 0.2  # a few seconds of training finds bubbles
    sp = open_sparse(out)
    params = sp.provenance[-1]["parameters"]
    assert params["mask_model"]["architecture"] == "mask-cnn" and params["device"] == "cpu"
    # the kept sites are exactly those whose predicted probability exceeds 0.5
    from ulmtools.store import open_store

    corr = open_store(train_store).array("corr")[0]
    prob = MaskPredictor(model)(corr)
    c, f = read_movie(sp, 0)
    np.testing.assert_array_equal(to_dense(c, f, corr.shape), np.where(prob > 0.5, corr, 0))
    # a stricter cutoff keeps fewer sites
    r = cli("sparsify", train_store, tmp_path / "strict.zarr", "--method", "mask",
            "--mask-model", path, "--threshold", "0.9", "--json")  # fmt: skip
    assert json.loads(r.out)["active_sites_total"] <= result["active_sites_total"]


def test_cli_refuses_a_model_of_another_dimension_or_kind(cli, trained, tmp_path):
    _, _, path = trained
    img3 = tmp_path / "img3.zarr"
    cfg = SyntheticConfig(movies=1, frames=8, shape=(4, 4, 4), sigma=(1, 1, 1))
    write_synthetic_store(img3, cfg)
    r = cli("sparsify", img3, tmp_path / "o.zarr", "--method", "mask", "--mask-model", path)
    assert r.code == 3 and "2D images but the input grid is 3D" in r.err
    # a model store of another architecture
    other = tmp_path / "other.zarr"
    net = MaskCNN(spatial_dims=3, channels=2, blocks=0)
    save(other, "mask-cnn", net.architecture_kwargs, net.state_dict())
    r = cli("sparsify", img3, tmp_path / "o.zarr", "--method", "mask", "--mask-model", other)
    assert r.code == 0, r.err  # a 3D model fits
    r = cli("sparsify", img3, tmp_path / "o2.zarr", "--method", "mask", "--mask-model", img3)
    assert r.code == 3 and "is an image store; this needs a model store" in r.err
