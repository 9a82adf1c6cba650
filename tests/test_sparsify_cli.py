"""``ulm sparsify`` end to end: results on stdout, refusals, provenance, ``ulm info``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ulmtools.grid import Grid
from ulmtools.sparsify import open_sparse, power, read_movie, to_dense
from ulmtools.sparsify.synthetic import SyntheticConfig, write_image_store, write_synthetic_store
from ulmtools.store import create_store, open_store
from ulmtools.truth import Truth


@pytest.fixture(scope="module")
def img2d(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img2d.zarr"
    write_synthetic_store(path, SyntheticConfig(movies=3, frames=48, shape=(16, 16), seed=4))
    return path


@pytest.fixture(scope="module")
def img3d(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img3d.zarr"
    cfg = SyntheticConfig(movies=2, frames=12, shape=(8, 8, 8), sigma=(0.7, 1.2, 1.2), seed=5)
    write_synthetic_store(path, cfg)
    return path


def no_leftovers(directory: Path) -> bool:
    return not any(p.name.startswith(".") for p in directory.iterdir())


def test_threshold_default_2d_json(cli, img2d, tmp_path, digest):
    before = digest(img2d)
    out = tmp_path / "sp.zarr"
    r = cli("sparsify", img2d, out, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)  # stdout holds exactly one JSON object
    assert result["method"] == "threshold" and result["threshold"] == 0.10
    assert result["movies"] == 3 and result["sites_per_movie"] == 48 * 16 * 16
    assert result["active_sites_min"] <= result["active_sites_mean"] <= result["active_sites_max"]
    assert 0 < result["kept_bubble_fraction"] <= 1
    assert digest(img2d) == before  # the input is untouched

    sp = open_sparse(out)
    assert sp.attrs["stats"]["active_sites_mean"] == result["active_sites_mean"]
    assert sp.attrs["shape"] == [48, 16, 16]
    assert sp.attrs["columns"] == ["t", "z", "x"]
    assert sp.grid == open_store(img2d).grid and sp.grid.frame_rate == 1000.0
    corr = open_store(img2d).array("corr")[1]
    c, f = read_movie(sp, 1)
    np.testing.assert_array_equal(to_dense(c, f, corr.shape), np.where(power(corr) > 0.1, corr, 0))
    # truth carried through, provenance appended with every resolved parameter
    assert Truth(sp).n_movies == 3
    prov = sp.provenance
    assert [e["stage"] for e in prov] == ["synthetic", "sparsify"]
    params = prov[-1]["parameters"]
    assert params["method"] == "threshold" and params["threshold"] == 0.10
    assert "truth_rule" in params and params["k"] is None
    assert no_leftovers(tmp_path)


def test_threshold_default_3d_and_text_output(cli, img3d, tmp_path):
    r = cli("sparsify", img3d, tmp_path / "sp3.zarr")
    assert r.code == 0, r.err
    assert "threshold 0.25 on abs(corr)^2" in r.out
    assert "active sites per movie" in r.out and "true bubble pixels kept" in r.out
    sp = open_sparse(tmp_path / "sp3.zarr")
    assert sp.array("coords").shape[1] == 4
    assert sp.attrs["columns"] == ["t", "z", "x", "y"]


def test_topk_cli_keeps_k(cli, img2d, tmp_path):
    r = cli("sparsify", img2d, tmp_path / "top.zarr", "--method", "topk", "--k", "500", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["active_sites_min"] == result["active_sites_max"] == 500
    offsets = open_sparse(tmp_path / "top.zarr").array("offsets")[:]
    assert list(np.diff(offsets)) == [500, 500, 500]


def test_info_shows_the_sparsity(cli, img2d, tmp_path):
    out = tmp_path / "sp.zarr"
    assert cli("sparsify", img2d, out, "--threshold", "0.3", "-q").code == 0
    r = cli("info", out)
    assert r.code == 0
    line = next(x for x in r.out.splitlines() if x.startswith("sparsity:"))
    assert "threshold 0.3" in line and "active sites per movie" in line and "kept" in line
    info = json.loads(cli("info", out, "--json").out)
    assert info["stats"]["threshold"] == 0.3


def test_empty_movie_warns_on_stderr_not_a_crash(cli, tmp_path):
    grid = Grid(("z", "x"), (4, 4), (0.005, 0.0), (25e-6, 25e-6), 1000.0)
    corr = np.zeros((2, 5, 4, 4), dtype=np.complex64)
    corr[0, 2, 1, 1] = 1
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid)
    r = cli("sparsify", src, tmp_path / "sp.zarr", "--json")
    assert r.code == 0, r.err
    assert "movie 1 has no active site" in r.err
    result = json.loads(r.out)
    assert result["empty_movies"] == 1 and result["active_sites_min"] == 0
    assert result["kept_bubble_fraction"] is None
    assert list(open_sparse(tmp_path / "sp.zarr").array("offsets")[:]) == [0, 1, 1]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--method", "mask"], 2, "needs a mask model"),
        (["--method", "topk"], 2, "needs --k"),
        (["--method", "topk", "--k", "0"], 2, "at least 1"),
        (["--method", "topk", "--k", "5", "--threshold", "0.1"], 2, "does not apply"),
        (["--k", "5"], 2, "only to --method topk"),
        (["--threshold", "-0.5"], 2, ">= 0"),
        (["--mask-model", "m.zarr"], 2, "only to --method mask"),
        (["--method", "median"], 2, "median"),
        (["--method", "mask", "--mask-model", "missing.zarr"], 3, "no such store"),
        (["--method", "mask", "--mask-model", "m.zarr", "--device", "tpu"], 2, "unknown device"),
    ],
)
def test_bad_options_refused_in_one_line(cli, img2d, tmp_path, args, code, message):
    out = tmp_path / "sp.zarr"
    r = cli("sparsify", img2d, out, *args)
    assert r.code == code, r.err
    assert message in r.err
    assert r.out == ""
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not out.exists() and no_leftovers(tmp_path)


def test_mask_hint_names_how_to_make_a_model(cli, img2d, tmp_path):
    r = cli("sparsify", img2d, tmp_path / "sp.zarr", "--method", "mask")
    assert r.code == 2 and "--arch mask-cnn" in r.err and "ulm train" in r.err


def test_wrong_input_kind_refused(cli, img2d, tmp_path):
    sp = tmp_path / "sp.zarr"
    assert cli("sparsify", img2d, sp, "-q").code == 0
    r = cli("sparsify", sp, tmp_path / "again.zarr")
    assert r.code == 3
    assert "is a sparse store; this needs an image store" in r.err
    assert not (tmp_path / "again.zarr").exists()
    r = cli("sparsify", tmp_path / "nope.zarr", tmp_path / "again.zarr")
    assert r.code == 3 and "no such store" in r.err


def test_image_store_without_corr_refused(cli, tmp_path):
    grid = Grid(("z", "x"), (4, 4), (0.005, 0.0), (25e-6, 25e-6), 1000.0)
    src = tmp_path / "iq.zarr"
    with create_store(src, "image", provenance=[], grid=grid) as g:
        g.create_array("iq", shape=(1, 2, 4, 4), dtype="complex64")
    r = cli("sparsify", src, tmp_path / "sp.zarr")
    assert r.code == 3 and "no 'corr' array" in r.err


def test_existing_output_needs_force(cli, img2d, tmp_path):
    out = tmp_path / "sp.zarr"
    assert cli("sparsify", img2d, out, "-q").code == 0
    r = cli("sparsify", img2d, out, "--threshold", "0.5")
    assert r.code == 4 and "--force" in r.err
    assert open_sparse(out).attrs["stats"]["threshold"] == 0.10
    assert cli("sparsify", img2d, out, "--threshold", "0.5", "-f", "-q").code == 0
    assert open_sparse(out).attrs["stats"]["threshold"] == 0.5
    r = cli("sparsify", img2d, img2d, "-f")
    assert r.code == 4 and "also an input" in r.err


def test_subprocess_smoke(img2d, tmp_path):
    ulm = Path(sys.executable).with_name("ulm")
    out = tmp_path / "sp.zarr"
    p = subprocess.run(
        [str(ulm), "sparsify", str(img2d), str(out), "--method", "topk", "--k", "100", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["active_sites_mean"] == 100
    p = subprocess.run(
        [str(ulm), "sparsify", str(img2d), str(tmp_path / "m.zarr"), "--method", "mask"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert "needs a mask model" in p.stderr and "Traceback" not in p.stderr


def test_reads_what_ulm_simulate_writes(cli, tmp_path):
    img = tmp_path / "sim.zarr"
    r = cli("simulate", img, "--level", "image", "--frames", "32", "--seed", "3", "-q")
    assert r.code == 0, r.err
    out = tmp_path / "sp.zarr"
    r = cli("sparsify", img, out, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["kept_bubble_fraction"] is not None and result["kept_bubble_fraction"] > 0.5
    corr = open_store(img).array("corr")[0]
    c, f = read_movie(open_sparse(out), 0)
    np.testing.assert_array_equal(to_dense(c, f, corr.shape), np.where(power(corr) > 0.1, corr, 0))


def test_corr_noise_from_the_command_line_is_recorded_and_reproducible(cli, img2d, tmp_path):
    a, b, c = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "c.zarr"
    r = cli("sparsify", img2d, a, "--corr-noise", "0.1", "--seed", "5", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["corr_noise"] == 0.1 and result["corr_noise_seed"] == 5
    # two worker processes draw each movie's noise from the same seed
    assert cli("sparsify", img2d, b, "--corr-noise", "0.1", "--seed", "5", "--workers", "2",
               "-q").code == 0  # fmt: skip
    for m in range(3):
        for x, y in zip(read_movie(open_sparse(a), m), read_movie(open_sparse(b), m)):
            np.testing.assert_array_equal(x, y)
    params = open_sparse(a).attrs["provenance"][-1]["parameters"]
    assert params["corr_noise"] == 0.1 and params["seed"] == 5
    # without --seed one is drawn and recorded; the text says what was added
    r = cli("sparsify", img2d, c, "--corr-noise", "0.2")
    assert r.code == 0, r.err
    seed = open_sparse(c).attrs["provenance"][-1]["parameters"]["seed"]
    assert isinstance(seed, int) and f"noise sigma 0.2 on corr (seed {seed})" in r.out
