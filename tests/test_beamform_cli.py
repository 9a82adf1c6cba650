"""ulm beamform, the command: store layout, options, refusals, streaming memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_beamform import (
    acquisition_2d,
    acquisition_3d_small,
    make_channel_store,
    random_channel,
)
from ulmtools.beamform.correlation import psf_correlation
from ulmtools.beamform.das import DASOperator
from ulmtools.beamform.pipeline import (
    BeamformConfig,
    parse_clutter,
    parse_grid_size,
    parse_grid_step,
    plan,
    resolve_grid,
    run,
)
from ulmtools.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE, UsageError
from ulmtools.grid import Grid
from ulmtools.store import create_store, open_store, provenance_entry, write_array
from ulmtools.truth import Truth

ULM = Path(sys.executable).parent / "ulm"


@pytest.fixture(scope="module")
def channel2d(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("bf") / "ch.zarr"
    acq, grid = acquisition_2d()
    tracks = make_channel_store(path, acq, grid, n_movies=2, n_frames=12)
    return path, tracks


def leftovers(directory: Path, name: str) -> list[str]:
    return [p.name for p in directory.iterdir() if name in p.name]


def test_beamform_channel_store(tmp_path: Path, cli, channel2d, digest) -> None:
    src, tracks = channel2d
    before = digest(src)
    out = tmp_path / "img.zarr"
    result = cli("beamform", src, out, "--frames-per-chunk", "5", "--psf-model", "analytic")
    assert result.code == 0, result.err
    assert result.out.count("\n") == 1 and "2 movie(s) x 12 frames on a 32x32 grid" in result.out
    assert digest(src) == before  # the input is untouched
    store = open_store(out, "image")
    iq, corr, psf = store.array("iq"), store.array("corr"), store.array("psf")
    assert iq.shape == corr.shape == (2, 12, 32, 32)
    assert iq.dtype == corr.dtype == psf.dtype == np.complex64
    assert iq.chunks == corr.chunks == (1, 5, 32, 32)
    assert list(iq.metadata.dimension_names) == ["movie", "t", "z", "x"]
    assert psf.ndim == 2 and all(n % 2 for n in psf.shape)
    assert Grid.from_attrs(psf.attrs["grid"]).spacing == store.grid.spacing
    attrs = store.attrs
    src_store = open_store(src)
    assert dict(attrs["acquisition"]) == dict(src_store.attrs["acquisition"])
    assert store.grid == Grid.from_attrs(src_store.attrs["grid"])
    assert store.grid.frame_rate == 1000.0
    assert [a["name"] for a in attrs["axes"]] == ["movie", "t", "z", "x"]
    params = attrs["beamform"]
    assert params["clutter"] == 0 and params["correlate"] and params["interp"] == "linear"
    assert params["result"]["das"]["nnz"] > 0 and params["mode"] == "channel"
    assert [e["stage"] for e in store.provenance] == ["simulate", "beamform"]
    assert store.provenance[-1]["parameters"]["frames_per_chunk"] == 5
    truth = Truth(store)
    np.testing.assert_allclose(truth.movie(1).positions, tracks[1])
    # the arrays are what the library computes
    acq = src_store.attrs["acquisition"]
    from ulmtools.acquisition import Acquisition

    op = DASOperator(Acquisition.from_attrs(acq), store.grid)
    expect = op.apply(np.asarray(src_store.array("iq")[1]))
    np.testing.assert_allclose(iq[1], expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
    np.testing.assert_allclose(corr[1], psf_correlation(iq[1], psf[...]), atol=1e-5)
    assert np.all(np.abs(corr[...]) <= 1 + 1e-6)
    # each frame's correlation peaks on the bubble (within a pixel)
    for f in (0, 6, 11):
        peak = np.unravel_index(np.argmax(np.abs(corr[1, f])), (32, 32))
        true = store.grid.to_index(tracks[1, f][None])[0]
        assert np.all(np.abs(np.array(peak) - true) <= 1.0)


def test_json_summary_and_subprocess(tmp_path: Path, channel2d) -> None:
    src, _ = channel2d
    out = tmp_path / "img.zarr"
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run(
        [str(ULM), "beamform", str(src), str(out), "--json", "--no-correlate", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    assert data["movies"] == 2 and data["frames"] == 12 and data["mode"] == "channel"
    assert data["grid_shape"] == [32, 32] and data["truth"] is True
    assert data["frames_per_second"] > 0 and "das" in data and "psf_shape" not in data
    assert "corr" not in open_store(out).group and "psf" not in open_store(out).group
    again = subprocess.run(
        [str(ULM), "beamform", str(src), str(out)], capture_output=True, text=True
    )
    assert again.returncode == EXIT_OUTPUT and again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr


def test_grid_options_and_clutter(tmp_path: Path, cli, channel2d) -> None:
    src, _ = channel2d
    out = tmp_path / "g.zarr"
    result = cli(
        "beamform", src, out, "--grid-step", "lambda/8", "--grid-size", "16x24",
        "--depth", "8.1e-3", "--clutter", "svd:1", "--fnumber", "0", "--interp", "nearest",
        "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    store = open_store(out)
    g = store.grid
    lam = 1540 / 15.625e6
    assert g.shape == (16, 24) and np.allclose(g.spacing, lam / 8)
    assert np.isclose(g.origin[0] + 7.5 * g.spacing[0], 8.1e-3)
    params = store.attrs["beamform"]
    assert params["clutter"] == 1 and params["fnumber"] == 0.0 and params["interp"] == "nearest"
    assert json.loads(result.out)["das"]["fnumber"] == [0.0, 0.0]


def test_default_grid_without_grid_attribute(tmp_path: Path, cli) -> None:
    acq, _ = acquisition_2d()
    src = tmp_path / "ch.zarr"
    make_channel_store(src, acq, None, n_movies=1, n_frames=4, truth=False)
    out = tmp_path / "img.zarr"
    assert cli("beamform", src, out).code == 0
    g = open_store(out).grid
    assert g.shape == (32, 32) and np.allclose(g.spacing, acq.wavelength / 4)
    centre = [o + (n - 1) / 2 * s for o, n, s in zip(g.origin, g.shape, g.spacing)]
    mid_window = (acq.t0 + (acq.n_samples - 1) / 2 / acq.sampling_frequency) * 1540 / 2
    assert np.isclose(centre[0], mid_window) and abs(centre[1]) < 1e-12
    assert not open_store(out).has_truth


def test_beamform_3d(tmp_path: Path, cli) -> None:
    acq, grid = acquisition_3d_small(n_el=8, shape=10)
    src = tmp_path / "ch3.zarr"
    make_channel_store(src, acq, grid, n_movies=1, n_frames=3)
    out = tmp_path / "img3.zarr"
    result = cli("beamform", src, out, "--psf-model", "analytic", "--clutter", "svd:1")
    assert result.code == 0, result.err
    store = open_store(out)
    assert store.array("iq").shape == (1, 3, 10, 10, 10)
    assert store.array("psf").ndim == 3
    assert [a["name"] for a in store.attrs["axes"]] == ["movie", "t", "z", "x", "y"]


def make_image_store(path: Path, iq: np.ndarray, grid: Grid, **attrs) -> None:
    with create_store(
        path,
        "image",
        provenance=[provenance_entry("import", {"lab": True})],
        grid=grid,
        axes=("movie", "t", *grid.axes),
        attrs=attrs,
    ) as root:
        write_array(root, "iq", iq, dims=("movie", "t", *grid.axes))


def test_image_store_input(tmp_path: Path, cli, channel2d) -> None:
    src, _ = channel2d
    beamformed = tmp_path / "bf.zarr"
    assert cli("beamform", src, beamformed, "--no-correlate").code == 0
    store = open_store(beamformed)
    iq = np.asarray(store.array("iq")[...])
    lab = tmp_path / "lab.zarr"
    make_image_store(lab, iq, store.grid, acquisition=dict(store.attrs["acquisition"]))
    out = tmp_path / "corr.zarr"
    result = cli("beamform", lab, out, "--clutter", "svd:2", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["mode"] == "image" and "das" not in data
    got = open_store(out)
    assert got.array("corr").shape == iq.shape
    assert got.attrs["beamform"]["psf_source"] == "computed"
    # without an acquisition: its own psf array, --psf, or one estimated from its bubbles
    bare = tmp_path / "bare.zarr"
    make_image_store(bare, iq, store.grid)
    estimated = cli("beamform", bare, tmp_path / "x.zarr")
    assert estimated.code == 0, estimated.err
    assert open_store(tmp_path / "x.zarr").attrs["beamform"]["psf_source"] == "estimated"
    gauss = cli("beamform", bare, tmp_path / "g.zarr", "--psf", "gaussian:50um,100um")
    assert gauss.code == 0, gauss.err
    assert open_store(tmp_path / "g.zarr").attrs["beamform"]["psf_source"] == "gaussian"
    refused = cli("beamform", bare, tmp_path / "l.zarr", "--psf", "gaussian:lambda")
    assert refused.code == EXIT_USAGE and "wavelength" in refused.err
    assert cli("beamform", bare, tmp_path / "y.zarr", "--no-correlate").code == 0
    with_psf = tmp_path / "psf.zarr"
    make_image_store(with_psf, iq, store.grid)
    import zarr

    g = zarr.open_group(str(with_psf), mode="a")
    psf = np.asarray(got.array("psf")[...])
    g.create_array("psf", shape=psf.shape, dtype="complex64")[...] = psf
    assert cli("beamform", with_psf, tmp_path / "z.zarr").code == 0
    z = open_store(tmp_path / "z.zarr")
    assert z.attrs["beamform"]["psf_source"] == "input"
    np.testing.assert_allclose(z.array("corr")[...], psf_correlation(iq, psf), atol=1e-5)
    # an image store that already holds corr, or grid flags with beamformed IQ
    assert cli("beamform", out, tmp_path / "w.zarr").code == EXIT_INPUT
    r = cli("beamform", lab, tmp_path / "v.zarr", "--grid-size", "16")
    assert r.code == EXIT_USAGE and "channel data only" in r.err


def test_refusals_are_one_line_and_leave_nothing(tmp_path: Path, cli, channel2d) -> None:
    src, _ = channel2d
    acq, grid = acquisition_2d()
    # a store of the wrong kind
    ang = tmp_path / "ang.zarr"
    with create_store(ang, "angiogram", provenance=[], grid=grid) as root:
        write_array(root, "angiogram", np.zeros(grid.shape, np.float32), dims=("z", "x"))
    # a channel store without its acquisition attribute
    noacq = tmp_path / "noacq.zarr"
    with create_store(noacq, "channel", provenance=[]) as root:
        write_array(root, "iq", np.zeros((1, 1, 3, 4, 5), np.complex64), dims=list("mftse"))
    # iq inconsistent with the acquisition, and real-valued iq
    wrong = tmp_path / "wrong.zarr"
    bad = random_channel(acq, 2)[:, :, :-1][None]
    make_channel_store(wrong, acq, grid, n_movies=1, n_frames=2, truth=False, iq=bad)
    real = tmp_path / "real.zarr"
    make_channel_store(real, acq, grid, 1, 2, truth=False, iq=random_channel(acq, 2).real[None])
    # a malformed acquisition attribute
    broken = tmp_path / "broken.zarr"
    with create_store(broken, "channel", provenance=[], attrs={"acquisition": {"dim": 2}}) as root:
        write_array(root, "iq", np.zeros((1, 1, 3, 4, 5), np.complex64), dims=list("mftse"))
    cases = [
        ([ang], EXIT_INPUT, "angiogram store"),
        ([noacq], EXIT_INPUT, "acquisition"),
        ([wrong], EXIT_INPUT, "acquisition describes"),
        ([real], EXIT_INPUT, "not complex"),
        ([broken], EXIT_INPUT, "acquisition attribute lacks"),
        ([tmp_path / "missing.zarr"], EXIT_INPUT, "no such store"),
        ([src, "--clutter", "pca:3"], EXIT_USAGE, "clutter"),
        ([src, "--clutter", "svd:12"], EXIT_USAGE, "every component"),
        ([src, "--grid-step", "fast"], EXIT_USAGE, "grid step"),
        ([src, "--grid-size", "32x32x32"], EXIT_USAGE, "grid-size"),
        ([src, "--fnumber", "-1"], EXIT_USAGE, "fnumber"),
        ([src, "--interp", "cubic"], EXIT_USAGE, "interpolation"),
        ([src, "--psf-model", "fancy"], EXIT_INPUT, "echo model"),
        ([src, "--frames-per-chunk", "0"], EXIT_USAGE, "frames-per-chunk"),
    ]
    out = tmp_path / "out.zarr"
    for args, code, words in cases:
        result = cli("beamform", args[0], out, *args[1:])
        assert result.code == code, (args, result.err)
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert words in result.err, (words, result.err)
        assert result.out == ""
        assert not out.exists() and leftovers(tmp_path, "out.zarr") == []


def test_peak_memory_does_not_grow_with_movies(tmp_path: Path) -> None:
    acq, grid = acquisition_2d(fs_factor=2)
    peaks = []
    for n_movies in (1, 4):
        src = tmp_path / f"ch{n_movies}.zarr"
        make_channel_store(src, acq, grid, n_movies=n_movies, n_frames=16, truth=False)
        store = open_store(src)
        work = plan(store, BeamformConfig(clutter=1, psf_model="analytic"))
        run(work, create_group(tmp_path / f"warm{n_movies}.zarr"))  # compile, cache the matrix
        tracemalloc.start()
        run(work, create_group(tmp_path / f"out{n_movies}.zarr"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.25 * peaks[0], peaks


def create_group(path: Path):
    import zarr

    return zarr.open_group(str(path), mode="w", zarr_format=3)


# ---------------------------------------------------------------------------
# Option parsing
# ---------------------------------------------------------------------------


def test_parse_grid_step() -> None:
    lam = 1e-4
    assert parse_grid_step("lambda/4", 2, lam) == (2.5e-5, 2.5e-5)
    assert parse_grid_step("0.5lambda", 3, lam) == (5e-5,) * 3
    assert np.allclose(parse_grid_step("25um,50um", 2, lam), (25e-6, 50e-6))
    assert np.allclose(parse_grid_step("0.025mm", 2, lam), (25e-6, 25e-6))
    assert parse_grid_step("2.5e-5", 2, lam) == (2.5e-5, 2.5e-5)
    assert parse_grid_step("λ/2", 2, lam) == (5e-5, 5e-5)
    for bad in ("", "fast", "-1um", "lambda/0", "1,2,3"):
        with pytest.raises(UsageError):
            parse_grid_step(bad, 2, lam)


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-3, 10), st.integers(1, 16))
def test_parse_grid_step_in_wavelengths(num: float, den: int) -> None:
    (s,) = set(parse_grid_step(f"{num!r}lambda/{den}", 2, 2e-4))
    assert np.isclose(s, num / den * 2e-4)


def test_parse_grid_size_and_clutter() -> None:
    assert parse_grid_size("32", 3) == (32, 32, 32)
    assert parse_grid_size("16x24", 2) == (16, 24)
    assert parse_grid_size("8,9,10", 3) == (8, 9, 10)
    assert parse_clutter("none") == 0 and parse_clutter("SVD:7") == 7
    for bad in ("0x4", "a", "1x2x3x4"):
        with pytest.raises(UsageError):
            parse_grid_size(bad, 2)
    with pytest.raises(UsageError):
        parse_clutter("svd:-1")


def test_resolve_grid_keeps_stored_grid_centre() -> None:
    acq, grid = acquisition_2d()
    g = resolve_grid(acq, grid, size="16")
    centre = lambda gr: [o + (n - 1) / 2 * s for o, n, s in zip(gr.origin, gr.shape, gr.spacing)]  # noqa: E731
    assert np.allclose(centre(g), centre(grid)) and g.shape == (16, 16)
    assert resolve_grid(acq, grid) == grid


def test_chain_from_ulm_simulate(tmp_path: Path, cli) -> None:
    sim = tmp_path / "sim.zarr"
    made = cli("simulate", sim, "--movies", "1", "--frames", "8", "--seed", "3", "-q")
    assert made.code == 0, made.err
    out = tmp_path / "img.zarr"
    result = cli("beamform", sim, out, "--json", "-q")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    store = open_store(out)
    assert store.array("corr").shape == (1, 8, 32, 32) and data["truth"] is True
    assert store.attrs["beamform"]["psf_model"] == "ulmtools.simulate.echoes.point_echoes"
    assert [e["stage"] for e in store.provenance] == ["simulate", "beamform"]
    assert np.abs(store.array("corr")[...]).max() > 0.9  # bubbles match the PSF
