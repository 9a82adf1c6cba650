"""``ulm simulate`` end to end: store layout, truth, determinism, refusals, subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from ulmtools.acquisition import PRESETS, Acquisition
from ulmtools.grid import Grid
from ulmtools.store import open_store
from ulmtools.truth import Truth

SMALL = ["--movies", "2", "--frames", "24", "--seed", "5"]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name in ("iq", "corr", "truth/positions", "truth/frames", "truth/ids", "truth/tracks"):
        if name.split("/")[0] in g:
            out[name] = np.asarray(g[name][...])
    return out


def test_channel_store_2d(cli, tmp_path) -> None:
    out = tmp_path / "sim.zarr"
    r = cli("simulate", out, *SMALL, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)  # stdout holds only the result
    assert result["kind"] == "channel" and result["movies"] == 2 and result["seed"] == 5
    store = open_store(out, "channel")
    acq = Acquisition.from_attrs(store.attrs["acquisition"])
    pre = PRESETS["2d"]
    assert acq.n_elements == 128 and acq.n_transmits == 3
    assert acq.center_frequency == pre.center_frequency and acq.frame_rate == 1000
    assert acq.n_samples > 10 and acq.t0 > 0
    iq = store.array("iq")
    assert iq.dtype == np.complex64
    assert iq.shape == (2, 24, 3, acq.n_samples, 128)
    assert list(iq.metadata.dimension_names) == ["movie", "frame", "transmit", "sample", "element"]
    assert [a["name"] for a in store.attrs["axes"]] == list(iq.metadata.dimension_names)
    grid = store.grid
    assert grid == pre.grid() or (grid.shape, grid.spacing) == (
        pre.grid().shape,
        pre.grid().spacing,
    )
    assert grid.frame_rate == 1000
    sim = store.attrs["simulation"]
    assert sim["concentration"] == 5 and sim["engine"] == "fast" and sim["seed"] == 5
    assert store.provenance[-1]["stage"] == "simulate"
    assert store.provenance[-1]["parameters"]["network_seed"] == 5
    assert np.abs(iq[0]).max() > 0
    truth = Truth(store)
    assert truth.n_movies == 2 and truth.grid == grid.refined(8)
    assert truth.tracks.shape == (2, 256, 256)
    m = truth.movie(1)
    assert m.positions.shape[1] == 2 and len(m.frames) == len(m.ids) > 0
    assert m.frames.min() >= 0 and m.frames.max() < 24
    assert np.all(m.ids >> 32 == 1)
    assert m.tracks is not None and m.tracks.sum() > 0


def test_same_seed_same_store_and_networks_differ(cli, tmp_path) -> None:
    a, b, c = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "c.zarr"
    assert cli("simulate", a, *SMALL, "-q").code == 0
    assert cli("simulate", b, *SMALL, "-q").code == 0
    assert cli("simulate", c, *SMALL, "-q", "--network-seed", "6").code == 0
    xa, xb, xc = _arrays(a), _arrays(b), _arrays(c)
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)
    assert not np.array_equal(xa["truth/tracks"], xc["truth/tracks"])


def test_workers_give_the_same_store(cli, tmp_path) -> None:
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    args = ["--movies", "3", "--frames", "8", "--seed", "9", "-q"]
    assert cli("simulate", a, *args, "--workers", "1").code == 0
    assert cli("simulate", b, *args, "--workers", "2").code == 0
    xa, xb = _arrays(a), _arrays(b)
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


def test_image_store_2d_and_noise(cli, tmp_path) -> None:
    out = tmp_path / "img.zarr"
    r = cli("simulate", out, *SMALL, "--level", "image", "--snr", "30", "--json")
    assert r.code == 0, r.err
    store = open_store(out, "image")
    iq, corr, psf = store.array("iq"), store.array("corr"), store.array("psf")
    assert iq.shape == corr.shape == (2, 24, 32, 32)
    assert list(iq.metadata.dimension_names) == ["movie", "t", "z", "x"]
    assert psf.ndim == 2 and all(n % 2 == 1 for n in psf.shape)
    Grid.from_attrs(psf.attrs["grid"])
    c = np.abs(corr[0])
    assert c.max() <= 1.0 + 1e-5 and c.max() > 0.8
    assert "acquisition" in store.attrs and store.has_truth


def test_clutter_is_slow_and_dominant(cli, tmp_path) -> None:
    out = tmp_path / "clut.zarr"
    args = ["--movies", "1", "--frames", "32", "--seed", "2", "--clutter", "20", "-q"]
    assert cli("simulate", out, *args).code == 0
    iq = np.asarray(open_store(out).array("iq")[0]).reshape(32, -1)
    s = np.linalg.svd(iq, compute_uv=False)
    assert s[0] ** 2 / (s**2).sum() > 0.5  # tissue: one slowly varying component


def test_3d_channel_and_image(cli, tmp_path) -> None:
    a, b = tmp_path / "c3.zarr", tmp_path / "i3.zarr"
    args = ["--dim", "3", "--movies", "1", "--frames", "4", "--seed", "1", "-q"]
    assert cli("simulate", a, *args).code == 0
    st = open_store(a, "channel")
    acq = Acquisition.from_attrs(st.attrs["acquisition"])
    assert st.array("iq").shape == (1, 4, 5, acq.n_samples, 1024)
    assert Truth(st).tracks.shape == (1, 256, 256, 256)
    assert Truth(st).movie(0).positions.shape[1] == 3
    assert st.attrs["simulation"]["concentration"] == 30
    assert cli("simulate", b, *args, "--level", "image").code == 0
    assert open_store(b, "image").array("corr").shape == (1, 4, 32, 32, 32)


def test_random_vessels_and_network_file(cli, tmp_path) -> None:
    out = tmp_path / "r.zarr"
    assert cli("simulate", out, *SMALL, "--vessels", "random", "-q").code == 0
    assert open_store(out).attrs["simulation"]["vessels_kind"] == "random"
    # a hand-made network: one straight vessel through the 2D field of view
    net = {
        "nodes": [[7.0e-3, -1e-3, 0.0], [9.0e-3, 1e-3, 0.0]],
        "edges": [[0, 1]],
        "radii": [20e-6],
    }
    f = tmp_path / "net.json"
    f.write_text(json.dumps(net))
    out2 = tmp_path / "f.zarr"
    r = cli("simulate", out2, *SMALL, "--vessels", f, "--json")
    assert r.code == 0, r.err
    truth = Truth(open_store(out2))
    pos = truth.movie(0).positions
    # on the line z - 8 mm = x, within the vessel radius
    assert np.all(np.abs((pos[:, 0] - 8e-3) - pos[:, 1]) / np.sqrt(2) <= 20e-6 + 1e-9)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--concentration", "-1"], 2, "concentration"),
        (["--frames", "0"], 2, "frames"),
        (["--movies", "0"], 2, "movies"),
        (["--preset", "l7-4"], 2, "preset"),
        (["--dim", "4"], 2, "dim"),
        (["--engine", "field2"], 2, "engine"),
        (["--level", "rf"], 2, "level"),
        (["--vessels", "NOPE.json"], 3, "network"),
    ],
)
def test_bad_arguments_refused(cli, tmp_path, args, code, words) -> None:
    out = tmp_path / "bad.zarr"
    r = cli("simulate", out, "--frames", "4", *args)
    assert r.code == code, r.err
    assert r.out == ""
    assert words in r.err.lower()
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unreadable_network_and_existing_output(cli, tmp_path) -> None:
    f = tmp_path / "net.json"
    f.write_text('{"nodes": "x"}')
    r = cli("simulate", tmp_path / "o.zarr", "--vessels", f, "--frames", "4")
    assert r.code == 3 and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()
    out = tmp_path / "exists.zarr"
    assert cli("simulate", out, "--frames", "4", "--seed", "1", "-q").code == 0
    r = cli("simulate", out, "--frames", "4")
    assert r.code == 4 and "--force" in r.err
    assert cli("simulate", out, "--frames", "4", "-f", "-q").code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.zarr", "net.json"]


def test_beamform_reads_the_channel_store(cli, tmp_path) -> None:
    sim, img = tmp_path / "s.zarr", tmp_path / "b.zarr"
    assert cli("simulate", sim, "--movies", "1", "--frames", "8", "--seed", "4", "-q").code == 0
    r = cli("beamform", sim, img, "--json")
    assert r.code == 0, r.err
    st = open_store(img, "image")
    assert st.array("corr").shape == (1, 8, 32, 32)
    assert st.has_truth and Truth(st).tracks.shape == (1, 256, 256)


def test_subprocess(tmp_path) -> None:
    ulm = shutil.which("ulm") or str(Path(sys.executable).with_name("ulm"))
    out = tmp_path / "p.zarr"
    proc = subprocess.run(
        [ulm, "simulate", str(out), "--movies", "1", "--frames", "4", "--seed", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] == 4
    proc = subprocess.run(
        [ulm, "simulate", str(tmp_path / "q.zarr"), "--concentration", "-3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1


def test_pymust_engine_store_matches_fast(cli, tmp_path) -> None:
    pytest.importorskip("pymust")
    from ulmtools.beamform.das import DASOperator

    a, b = tmp_path / "fast.zarr", tmp_path / "ref.zarr"
    args = ["--movies", "1", "--frames", "2", "--seed", "8", "--concentration", "3", "-q"]
    assert cli("simulate", a, *args).code == 0
    assert cli("simulate", b, *args, "--engine", "pymust").code == 0
    sa, sb = open_store(a), open_store(b)
    assert sb.attrs["simulation"]["engine"] == "pymust"
    assert sa.attrs["acquisition"] == sb.attrs["acquisition"]
    op = DASOperator(Acquisition.from_attrs(sa.attrs["acquisition"]), sa.grid)
    x, y = op.apply(sa.array("iq")[0]), op.apply(sb.array("iq")[0])
    assert abs(np.vdot(x, y)) / (np.linalg.norm(x) * np.linalg.norm(y)) >= 0.97
    r = cli("simulate", tmp_path / "c.zarr", *args, "--engine", "pymust", "--level", "image")
    assert r.code == 2 and "fast" in r.err
