"""``ulm sparsify --features corr,iq``: the beamformed IQ as two more channels per site,
and what training and inference do with stores that carry it (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ulmtools.errors import InputError, UsageError
from ulmtools.models import store as model_store
from ulmtools.sparsify import open_sparse, power, read_movie
from ulmtools.sparsify.core import movie_to_sites
from ulmtools.store import open_store
from ulmtools.train.data import SparseMovies
from ulmtools.train.run import train

# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A simulated 2D image store (iq and corr) sparsified both ways."""
    from ulmtools import api

    d = tmp_path_factory.mktemp("features")
    img = d / "img.zarr"
    api.simulate(img, dim=2, movies=2, frames=32, level="image", seed=3, network_seed=21)
    out = {"img": img}
    for features in ("corr", "corr,iq"):
        out[features] = d / f"sp-{features.replace(',', '-')}.zarr"
        api.sparsify(img, out[features], features=features)
    return out


def test_iq_columns_are_the_iq_at_the_same_sites_over_its_rms() -> None:
    rng = np.random.default_rng(0)
    shape = (3, 5, 4)
    corr = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    iq = (40 * (rng.normal(size=shape) + 1j * rng.normal(size=shape))).astype(np.complex64)
    mask = power(corr) > 1.0
    coords, feats = movie_to_sites(corr, mask, iq)
    plain_coords, plain = movie_to_sites(corr, mask)
    np.testing.assert_array_equal(coords, plain_coords)
    np.testing.assert_array_equal(feats[:, :2], plain)
    at = iq[tuple(coords.T)]
    rms = np.sqrt(np.mean(np.abs(at.astype(np.complex128)) ** 2))
    np.testing.assert_allclose(feats[:, 2] + 1j * feats[:, 3], at / rms, rtol=1e-6)
    assert abs(np.sqrt(np.mean(feats[:, 2] ** 2 + feats[:, 3] ** 2)) - 1) < 1e-5
    # no site: an empty (0, 4) table, not a division by zero
    c, f = movie_to_sites(corr, np.zeros(shape, bool), iq)
    assert c.shape == (0, 3) and f.shape == (0, 4)


def test_sparsify_features_corr_iq_end_to_end(cli, stores, tmp_path, digest) -> None:
    img = stores["img"]
    before = digest(img)
    out = tmp_path / "sp.zarr"
    r = cli("sparsify", img, out, "--features", "corr,iq", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["features"] == "corr,iq"
    assert digest(img) == before
    sp, plain = open_sparse(out), open_sparse(stores["corr"])
    assert list(sp.array("feats").attrs["channels"]) == ["real", "imag", "iq_real", "iq_imag"]
    assert list(sp.attrs["features"]) == ["real", "imag", "iq_real", "iq_imag"]
    r = cli("info", out)
    assert "sparsity: threshold 0.1, features corr,iq:" in r.out
    src = open_store(img, "image")
    for m in range(2):
        coords, feats = read_movie(sp, m)
        c0, f0 = read_movie(plain, m)
        np.testing.assert_array_equal(coords, c0)  # the same sites, chosen on corr
        np.testing.assert_array_equal(feats[:, :2], f0)
        iq = src.array("iq")[m][tuple(coords.T)]
        ratio = (feats[:, 2] + 1j * feats[:, 3]) / iq
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)  # one real scale per movie
        assert abs(ratio[0].imag) < 1e-6 * abs(ratio[0]) and ratio[0].real > 0


def test_bad_features_are_refused_in_one_line(cli, stores, tmp_path) -> None:
    out = tmp_path / "sp.zarr"
    r = cli("sparsify", stores["img"], out, "--features", "iq")
    assert r.code == 2 and "unknown --features 'iq'" in r.err and "corr,iq" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists()
    # an image store without iq (PSF correlation only)
    from ulmtools.sparsify.synthetic import SyntheticConfig, write_synthetic_store

    corr_only = tmp_path / "corr-only.zarr"
    write_synthetic_store(corr_only, SyntheticConfig(movies=1, frames=8, shape=(8, 8)))
    r = cli("sparsify", corr_only, out, "--features", "corr,iq")
    assert r.code == 3 and "no 'iq' array" in r.err and "--features corr" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists()


def test_a_network_trained_on_corr_iq_takes_four_channels(stores, tmp_path) -> None:
    model = tmp_path / "m.zarr"
    train(stores["corr,iq"], model, val=stores["corr,iq"], epochs=1, channels=4, seed=3)
    info = model_store.info(model)
    assert info.kwargs["in_channels"] == 4
    assert info.training["config"]["features"] == ["real", "imag", "iq_real", "iq_imag"]
    assert model_store.load_state(model)[0]["inp.conv.weight"].shape[1] == 4
    from ulmtools.inspect import format_summary, summarize

    text = format_summary(summarize(model))
    assert "input: sparse stores whose sites carry corr,iq (ulm sparsify --features" in text
    # the same run on the correlation alone is a different network (two inputs)
    plain = tmp_path / "p.zarr"
    train(stores["corr"], plain, epochs=1, channels=4, seed=3)
    assert model_store.info(plain).kwargs["in_channels"] == 2


def test_stores_of_other_features_are_refused_with_the_fix(stores, tmp_path) -> None:
    iq, corr = stores["corr,iq"], stores["corr"]
    with pytest.raises(InputError, match="sparsify every training store with the same"):
        train(iq, tmp_path / "a.zarr", also=[corr], epochs=1, channels=4)
    with pytest.raises(InputError, match=r"has the site features corr but the training store"):
        train(iq, tmp_path / "b.zarr", val=corr, epochs=1, channels=4)
    base = tmp_path / "base.zarr"
    train(corr, base, epochs=1, channels=4, seed=1)
    with pytest.raises(UsageError, match="takes 2 input features per site"):
        train(iq, tmp_path / "c.zarr", init=base)
    with pytest.raises(UsageError, match="not a multiple of the 4 input features"):
        train(iq, tmp_path / "d.zarr", epochs=1, channels=6)
    assert not any((tmp_path / n).exists() for n in ("a.zarr", "b.zarr", "c.zarr", "d.zarr"))


def test_inference_takes_the_channels_its_model_was_trained_on(cli, stores, tmp_path) -> None:
    iq, corr = stores["corr,iq"], stores["corr"]
    plain = tmp_path / "plain.zarr"
    train(corr, plain, epochs=1, channels=4, seed=2)
    # a correlation model reads the first two channels of a corr,iq store: the same maps
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    assert cli("infer", plain, corr, a, "-q").code == 0
    assert cli("infer", plain, iq, b, "-q").code == 0
    pa, pb = open_store(a), open_store(b)
    np.testing.assert_array_equal(pa.array("coords")[:], pb.array("coords")[:])
    np.testing.assert_array_equal(pa.array("feats")[:], pb.array("feats")[:])
    # a corr,iq model on a store without the IQ: one line naming the fix, nothing written
    model = tmp_path / "iq.zarr"
    train(iq, model, epochs=1, channels=4, seed=2)
    out = tmp_path / "c.zarr"
    r = cli("infer", model, corr, out)
    assert r.code == 3 and "sparsify the image store with ulm sparsify --features corr,iq" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists()
    assert SparseMovies(iq).in_channels == 4


def test_auto_features_are_what_the_shipped_model_reads(cli, stores, tmp_path, monkeypatch):
    """``--features auto`` (the default) gives a store what the shipped model of its
    dimension reads, so ``ulm sparsify`` then ``ulm infer shipped:Nd`` works as it is."""
    from ulmtools.infer import weights
    from ulmtools.sparsify.core import FEATURES
    from ulmtools.train.data import model_channels

    shipped = model_channels(model_store.info(weights.shipped_path("2d")))
    out = tmp_path / "sp.zarr"
    assert cli("sparsify", stores["img"], out, "-q").code == 0
    assert tuple(open_sparse(out).attrs["features"]) == shipped
    # a package whose 2D model reads corr,iq: auto gives stores the IQ, except a store
    # that has none
    pkg = tmp_path / "weights"
    pkg.mkdir()
    train(stores["corr,iq"], pkg / "deepstulm-2d.zarr", epochs=1, channels=4, seed=2)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", pkg)
    assert weights.shipped_features("2d") == "corr,iq"
    assert weights.shipped_features("3d") == "corr"  # not installed there
    iq = tmp_path / "iq.zarr"
    r = cli("sparsify", stores["img"], iq, "--json")
    assert r.code == 0 and json.loads(r.out)["features"] == "corr,iq"
    assert tuple(open_sparse(iq).attrs["features"]) == FEATURES["corr,iq"]
    from ulmtools.sparsify.synthetic import SyntheticConfig, write_synthetic_store

    corr_only = tmp_path / "corr-only.zarr"
    write_synthetic_store(corr_only, SyntheticConfig(movies=1, frames=8, shape=(8, 8)))
    r = cli("sparsify", corr_only, tmp_path / "c.zarr", "--json")
    assert r.code == 0 and json.loads(r.out)["features"] == "corr"
