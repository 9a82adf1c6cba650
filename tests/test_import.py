"""ulm import: every file format to a store and back, PALA-style IQ through the pipeline,
Verasonics-style channel data, refusals naming the flag, and bounded memory on a big file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from ulmtools.cli.app import main
from ulmtools.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE
from ulmtools.store import open_store

FC = 15.625e6
LAMBDA = 1540.0 / FC


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image store from the simulator: 2 movies x 64 frames, 32x32, with truth."""
    out = tmp_path_factory.mktemp("sim") / "sim.zarr"
    args = ["simulate", str(out), "--level", "image", "--movies", "2", "--frames", "64"]
    assert main([*args, "--seed", "3", "--network-seed", "3", "-q"]) == 0
    return out


def sim_iq(sim: Path) -> tuple[np.ndarray, dict]:
    store = open_store(sim)
    iq = np.asarray(store.array("iq")[...])
    return np.concatenate(list(iq), axis=0), dict(store.attrs["grid"])  # (t, z, x)


def pdata(grid: dict) -> dict:
    (dz, dx), (z0, x0) = grid["spacing"], grid["origin"]
    return {
        "PDelta": np.array([dx, 0, dz]) / LAMBDA,
        "Origin": np.array([x0, 0, z0]) / LAMBDA,
        "Size": np.array([grid["shape"][0], grid["shape"][1], 1.0]),
    }


def write_mat73(path: Path, variables: dict, structs: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5, axes reversed, complex as compounds."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, a in variables.items():
            a = np.asarray(a)
            if a.dtype.kind == "c":
                compound = np.dtype([("real", "<f4"), ("imag", "<f4")])
                data = np.empty(a.T.shape, compound)
                data["real"], data["imag"] = a.T.real, a.T.imag
            else:
                data = a.T
            f.create_dataset(name, data=data, chunks=True).attrs["MATLAB_class"] = np.bytes_(
                "single" if a.dtype.kind in "cf" and a.dtype.itemsize <= 8 else "double"
            )
        for sname, fields in structs.items():
            g = f.create_group(sname)
            g.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, v in fields.items():
                g.create_dataset(k, data=np.atleast_2d(np.asarray(v, np.float64)).T)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def truth_csv(sim: Path, path: Path, frames_per_movie: int) -> int:
    t = open_store(sim).group["truth"]
    off = t["offsets"][:]
    rows = []
    for m in range(len(off) - 1):
        a, b = int(off[m]), int(off[m + 1])
        fr = t["frames"][a:b] + m * frames_per_movie
        rows.append(np.column_stack([fr, t["positions"][a:b], t["ids"][a:b]]))
    table = np.concatenate(rows)
    np.savetxt(path, table, delimiter=",", header="frame,z,x,id", comments="",
               fmt=["%d", "%.9e", "%.9e", "%d"])  # fmt: skip
    return len(table)


# ---------------------------------------------------------------------------
# Every format round-trips: file -> store -> export -> the same numbers
# ---------------------------------------------------------------------------

FORMATS = ["npy", "npz-stored", "npz-compressed", "mat-v5", "mat-v7.3", "hdf5"]


def write_source(fmt: str, d: Path, iq_tzx: np.ndarray, grid: dict) -> tuple[Path, list[str]]:
    """Write the movie in ``fmt``; return the file and the flags ulm import then needs."""
    zxt = np.ascontiguousarray(iq_tzx.transpose(1, 2, 0))  # PALA's (nz, nx, nt)
    rate = ["--frame-rate", "1000"]
    step = ["--grid-step", f"{grid['spacing'][0]},{grid['spacing'][1]}"]
    origin = ["--origin", f"{grid['origin'][0]},{grid['origin'][1]}"]
    if fmt == "npy":
        p = d / "iq.npy"
        np.save(p, iq_tzx)
        return p, ["--layout", "t,z,x", *rate, *step, *origin]
    if fmt.startswith("npz"):
        p = d / "iq.npz"
        (np.savez if fmt == "npz-stored" else np.savez_compressed)(p, iq=zxt, other=np.ones(3))
        return p, ["--var", "iq", *rate, *step, *origin]
    if fmt == "mat-v5":
        p = d / "iq.mat"
        uf = {"FrameRateUF": 1000.0, "Lambda": LAMBDA}
        scipy.io.savemat(p, {"IQ": zxt, "PData": pdata(grid), "UF": uf})
        return p, []
    if fmt == "mat-v7.3":
        p = d / "iq73.mat"
        write_mat73(p, {"IQ": zxt}, {"PData": pdata(grid), "UF": {"FrameRateUF": 1000.0}})
        return p, ["--fc", str(FC)]
    p = d / "iq.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("bf/iq", data=iq_tzx)
        f.create_dataset("bf/other", data=np.zeros((4, 4, 4)))
    return p, ["--var", "bf/iq", "--layout", "t,z,x", *rate, *step, *origin]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(fmt: str, sim: Path, tmp_path: Path, cli) -> None:
    iq, grid = sim_iq(sim)
    iq = iq[:96]
    src, flags = write_source(fmt, tmp_path, iq, grid)
    out = tmp_path / "lab.zarr"
    r = cli("import", src, out, "--movie-frames", "48", "--json", *flags)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["movies"] == 2 and summary["frames"] == 48
    store = open_store(out, "image")
    got = np.asarray(store.array("iq")[...])
    assert got.dtype == np.complex64 and got.shape == (2, 48, 32, 32)
    np.testing.assert_array_equal(got.reshape(96, 32, 32), iq)
    g = store.grid
    np.testing.assert_allclose(g.spacing, grid["spacing"], rtol=1e-9)
    np.testing.assert_allclose(g.origin, grid["origin"], rtol=1e-9, atol=1e-12)
    assert g.frame_rate == 1000.0
    # provenance: the source path and its digest
    entry = store.provenance[-1]
    source = entry["parameters"]["source"]
    assert source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert source["path"] == str(src.resolve())
    assert entry["stage"] == "import"
    # ... and back out, through export
    assert cli("export", out, tmp_path / "m1.npy", "--array", "iq", "--movie", "1").code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "m1.npy"), iq[48:])
    assert cli("export", out, tmp_path / "m0.mat", "--array", "iq").code == 0
    mat = scipy.io.loadmat(tmp_path / "m0.mat")
    np.testing.assert_array_equal(mat["iq"], iq[:48].transpose(1, 2, 0))
    np.testing.assert_allclose(mat["z"].ravel(), g.coordinates("z"))
    np.testing.assert_allclose(mat["t"].ravel(), np.arange(48) / 1000.0)


def test_movie_axis_and_dropped_frames(sim: Path, tmp_path: Path, cli) -> None:
    iq, _ = sim_iq(sim)
    movies = iq[:100].reshape(2, 50, 32, 32).transpose(2, 3, 1, 0)  # z, x, t, movie
    np.save(tmp_path / "m.npy", movies)
    flags = ["--frame-rate", "500", "--grid-step", "lambda/4", "--wavelength", str(LAMBDA)]
    r = cli("import", tmp_path / "m.npy", tmp_path / "a.zarr", "--layout", "z,x,t,movie", *flags)
    assert r.code == 0, r.err
    got = np.asarray(open_store(tmp_path / "a.zarr").array("iq")[...])
    np.testing.assert_array_equal(got, movies.transpose(3, 2, 0, 1))
    np.testing.assert_allclose(open_store(tmp_path / "a.zarr").grid.spacing, [LAMBDA / 4] * 2)
    np.save(tmp_path / "t.npy", iq[:100])
    r = cli("import", tmp_path / "t.npy", tmp_path / "b.zarr", "--layout", "t,z,x", *flags,
            "--movie-frames", "30", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["dropped_frames"] == 10
    assert open_store(tmp_path / "b.zarr").array("iq").shape == (3, 30, 32, 32)


# ---------------------------------------------------------------------------
# PALA-shaped IQ through the whole pipeline
# ---------------------------------------------------------------------------


def test_pala_iq_through_the_pipeline(sim: Path, tmp_path: Path, cli) -> None:
    iq, grid = sim_iq(sim)
    src = tmp_path / "PALA_like.mat"
    write_mat73(src, {"IQ": iq.transpose(1, 2, 0)}, {"PData": pdata(grid),
                "UF": {"FrameRateUF": 1000.0}})  # fmt: skip
    n_truth = truth_csv(sim, tmp_path / "truth.csv", 64)
    lab = tmp_path / "lab.zarr"
    r = cli("import", src, lab, "--fc", str(FC), "--movie-frames", "64",
            "--truth", tmp_path / "truth.csv", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["truth_positions"] == n_truth
    store = open_store(lab)
    assert "acquisition" not in store.attrs and store.attrs["wavelength"] == pytest.approx(LAMBDA)
    simulated = open_store(sim)
    t_sim = np.asarray(simulated.group["truth/tracks"][...]) > 0
    t_imp = np.asarray(store.group["truth/tracks"][...]) > 0
    assert 2 * (t_sim & t_imp).sum() / (t_sim.sum() + t_imp.sum()) > 0.8  # the same vessels
    img = tmp_path / "img.zarr"
    r = cli("beamform", lab, img, "--json")
    assert r.code == 0, r.err
    bf = json.loads(r.out)
    assert bf["psf_estimate"]["patches"] >= 5
    est = np.asarray(open_store(img).array("psf")[...])
    true = np.asarray(simulated.array("psf")[...])
    c, h = np.array(true.shape) // 2, np.array(est.shape) // 2
    assert all(h <= c)
    crop = true[c[0] - h[0] : c[0] + h[0] + 1, c[1] - h[1] : c[1] + h[1] + 1]
    similarity = abs(np.vdot(crop, est)) / np.linalg.norm(crop) / np.linalg.norm(est)
    assert similarity > 0.95
    assert open_store(img).attrs["beamform"]["psf_source"] == "estimated"
    assert cli("sparsify", img, tmp_path / "sp.zarr", "-q").code == 0
    r = cli("infer", "shipped:2d", tmp_path / "sp.zarr", tmp_path / "pred.zarr", "--json", "-q")
    assert r.code == 0, r.err
    assert json.loads(r.out)["dice"] > 0.1
    assert cli("track", img, tmp_path / "tr.zarr", "-q").code == 0
    r = cli("score", tmp_path / "pred.zarr", tmp_path / "tr.zarr", "--wavelength", str(LAMBDA),
            "--json")  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert [m["kind"] for m in report["methods"]] == ["prediction", "tracks"]
    assert all(m["dice"] > 0.1 for m in report["methods"])


def test_explicit_psf_choices(sim: Path, tmp_path: Path, cli) -> None:
    iq, _ = sim_iq(sim)
    np.save(tmp_path / "iq.npy", iq)
    flags = ["--layout", "t,z,x", "--frame-rate", "1000", "--grid-step", "25um"]
    assert cli("import", tmp_path / "iq.npy", tmp_path / "lab.zarr", *flags).code == 0
    r = cli("beamform", tmp_path / "lab.zarr", tmp_path / "g.zarr",
            "--psf", "gaussian:60um,120um")  # fmt: skip
    assert r.code == 0, r.err
    psf = np.asarray(open_store(tmp_path / "g.zarr").array("psf")[...])
    assert psf.shape[0] % 2 == 1 and psf.shape[1] > psf.shape[0]
    np.save(tmp_path / "psf.npy", psf)
    r = cli("beamform", tmp_path / "lab.zarr", tmp_path / "f.zarr", "--psf", tmp_path / "psf.npy")
    assert r.code == 0, r.err
    np.testing.assert_allclose(
        open_store(tmp_path / "f.zarr").array("corr")[...],
        open_store(tmp_path / "g.zarr").array("corr")[...],
        atol=1e-6,
    )
    r = cli("beamform", tmp_path / "lab.zarr", tmp_path / "s.zarr", "--psf", tmp_path / "g.zarr")
    assert r.code == 0, r.err  # the psf array of an image store
    np.testing.assert_allclose(
        open_store(tmp_path / "s.zarr").array("psf")[...], psf, rtol=1e-6, atol=1e-7
    )
    r = cli("beamform", tmp_path / "lab.zarr", tmp_path / "x.zarr", "--psf", "gaussian:0.5lambda")
    assert r.code == EXIT_USAGE and "wavelength" in r.err
    np.save(tmp_path / "even.npy", np.ones((4, 4), np.complex64))
    r = cli("beamform", tmp_path / "lab.zarr", tmp_path / "x.zarr", "--psf", tmp_path / "even.npy")
    assert r.code == EXIT_INPUT and "odd" in r.err
    # pure noise has no isolated bubbles to learn a PSF from: refused, naming --psf
    rng = np.random.default_rng(0)
    noise = np.zeros((8, 32, 32), np.complex64)
    noise += rng.standard_normal(noise.shape).astype(np.float32) * 1e-3
    np.save(tmp_path / "flat.npy", noise)
    assert cli("import", tmp_path / "flat.npy", tmp_path / "flat.zarr", *flags).code == 0
    r = cli("beamform", tmp_path / "flat.zarr", tmp_path / "y.zarr")
    assert r.code in (0, EXIT_INPUT)
    if r.code == EXIT_INPUT:
        assert "--psf" in r.err and not (tmp_path / "y.zarr").exists()


# ---------------------------------------------------------------------------
# Refusals: the flag that supplies the missing parameter is named
# ---------------------------------------------------------------------------


def test_missing_parameters_name_their_flag(sim: Path, tmp_path: Path, cli) -> None:
    iq, grid = sim_iq(sim)
    np.save(tmp_path / "iq.npy", iq[:16])
    src, out = tmp_path / "iq.npy", tmp_path / "o.zarr"
    r = cli("import", src, out, "--layout", "t,z,x")
    assert r.code == EXIT_INPUT and "--frame-rate" in r.err
    r = cli("import", src, out, "--layout", "t,z,x", "--frame-rate", "1000")
    assert r.code == EXIT_INPUT and "--grid-step" in r.err
    r = cli("import", src, out, "--layout", "t,z,x", "--frame-rate", "1000", "--grid-step",
            "lambda/4")  # fmt: skip
    assert r.code == EXIT_USAGE and "--wavelength" in r.err
    r = cli("import", src, out, "--layout", "t,z", "--frame-rate", "1000")
    assert r.code == EXIT_USAGE and "--layout" in r.err
    np.save(tmp_path / "flat.npy", iq[0])
    r = cli("import", tmp_path / "flat.npy", out, "--frame-rate", "1000", "--grid-step", "25um")
    assert r.code == EXIT_USAGE and "--layout" in r.err
    # PData in wavelengths without a wavelength
    scipy.io.savemat(tmp_path / "p.mat", {"IQ": iq[:16].transpose(1, 2, 0), "PData": pdata(grid)})
    r = cli("import", tmp_path / "p.mat", out, "--frame-rate", "1000")
    assert r.code == EXIT_INPUT and "--wavelength" in r.err and "--fc" in r.err
    r = cli("import", tmp_path / "p.mat", out, "--frame-rate", "1000", "--fc", str(FC),
            "--var", "nope")  # fmt: skip
    assert r.code == EXIT_INPUT and "--var" in r.err and "IQ" in r.err
    # channel data without a probe description
    np.save(tmp_path / "ch.npy", np.zeros((40, 8, 4), np.complex64))
    r = cli("import", tmp_path / "ch.npy", out, "--kind", "channel", "--frame-rate", "100")
    assert r.code == EXIT_INPUT and "--probe-file" in r.err
    r = cli("import", tmp_path / "nothere.mat", out)
    assert r.code == EXIT_INPUT
    (tmp_path / "x.txt").write_text("1 2 3")
    assert cli("import", tmp_path / "x.txt", out).code == EXIT_INPUT
    assert not out.exists()
    ok = ["--layout", "t,z,x", "--frame-rate", "1000", "--grid-step", "25um"]
    assert cli("import", src, out, *ok).code == 0
    assert cli("import", src, out, *ok).code == EXIT_OUTPUT
    assert cli("import", src, out, *ok, "-f").code == 0


# ---------------------------------------------------------------------------
# Verasonics-style channel data
# ---------------------------------------------------------------------------


def test_verasonics_channel_data(tmp_path: Path, cli) -> None:
    sim = tmp_path / "ch.zarr"
    assert cli("simulate", sim, "--movies", "1", "--frames", "8", "--seed", "1", "-q").code == 0
    store = open_store(sim, "channel")
    iq = np.asarray(store.array("iq")[0])  # (frame, transmit, sample, element)
    acq = store.attrs["acquisition"]
    fc, c = acq["center_frequency"], acq["speed_of_sound"]
    lam = c / fc
    pos = np.asarray(acq["element_positions"])  # z, x, y
    structs = {
        "Trans": {"frequency": fc / 1e6, "units": "mm",
                  "ElementPos": np.column_stack([pos[:, 1], pos[:, 2], pos[:, 0],
                                                 np.zeros(len(pos))]) * 1e3,
                  "elementWidth": acq["element_width"] * 1e3},
        "TX": [{"Delay": np.asarray(d) * fc, "Steer": np.asarray(t)}
               for d, t in zip(acq["transmit_delays"], acq["tilts"])],
        "Receive": {"demodFrequency": acq["demodulation_frequency"] / 1e6,
                    "decimSampleRate": acq["sampling_frequency"] / 1e6,
                    "startDepth": acq["t0"] * c / (2 * lam)},
        "Resource": {"Parameters": {"speedOfSound": c}},
    }  # fmt: skip
    n_f, n_t, n_s, n_e = iq.shape
    rcv = iq.transpose(1, 2, 3, 0).reshape(n_t * n_s, n_e, n_f)  # Verasonics: stacked transmits
    scipy.io.savemat(tmp_path / "run.mat", {"RcvData": rcv, **structs})
    out = tmp_path / "imported.zarr"
    r = cli("import", tmp_path / "run.mat", out, "--kind", "channel", "--frame-rate",
            str(acq["frame_rate"]), "--json")  # fmt: skip
    assert r.code == 0, r.err
    got = open_store(out, "channel")
    np.testing.assert_array_equal(got.array("iq")[0], iq)
    a = got.attrs["acquisition"]
    np.testing.assert_allclose(a["element_positions"], acq["element_positions"], atol=1e-12)
    np.testing.assert_allclose(a["transmit_delays"], acq["transmit_delays"], atol=1e-15)
    for k in ("sampling_frequency", "demodulation_frequency", "t0", "center_frequency"):
        assert a[k] == pytest.approx(acq[k], rel=1e-9, abs=1e-15), k
    assert a["n_samples"] == n_s
    # beamformed, the imported channel data gives the simulator's images
    g = store.grid
    depth = g.origin[0] + (g.shape[0] - 1) / 2 * g.spacing[0]
    on = ["--grid-step", str(g.spacing[0]), "--grid-size", "32", "--depth", str(depth)]
    assert cli("beamform", sim, tmp_path / "a.zarr", "--no-correlate", "-q", *on).code == 0
    assert cli("beamform", out, tmp_path / "b.zarr", "--no-correlate", "-q", *on).code == 0
    np.testing.assert_allclose(
        open_store(tmp_path / "b.zarr").array("iq")[...],
        open_store(tmp_path / "a.zarr").array("iq")[...],
        rtol=1e-4,
        atol=1e-4 * float(np.abs(open_store(tmp_path / "a.zarr").array("iq")[...]).max()),
    )
    # the same probe as a JSON acquisition attribute, the data in a .npy
    probe = {k: v for k, v in acq.items() if k not in ("n_samples", "frame_rate")}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    np.save(tmp_path / "ch.npy", iq.transpose(2, 3, 1, 0))  # sample, element, transmit, frame
    r = cli("import", tmp_path / "ch.npy", tmp_path / "j.zarr", "--kind", "channel",
            "--probe-file", tmp_path / "probe.json", "--frame-rate", "1000")  # fmt: skip
    assert r.code == 0, r.err
    np.testing.assert_array_equal(open_store(tmp_path / "j.zarr").array("iq")[0], iq)


def test_real_rf_is_demodulated(tmp_path: Path, cli) -> None:
    """Real RF becomes baseband IQ: a tone at fc + 1 MHz comes out at +1 MHz."""
    fc, fs, n_s = 5e6, 40e6, 256
    t = np.arange(n_s) / fs
    rf = np.cos(2 * np.pi * (fc + 1e6) * t)[:, None, None] * np.ones((1, 2, 3))
    probe = {"dim": 2, "element_positions": [[0, -1e-4, 0], [0, 1e-4, 0]],
             "center_frequency": fc, "sampling_frequency": fs, "t0": 0.0,
             "transmit_delays": [[0, 0]]}  # fmt: skip
    (tmp_path / "p.json").write_text(json.dumps(probe))
    np.save(tmp_path / "rf.npy", rf.astype(np.float32))
    r = cli("import", tmp_path / "rf.npy", tmp_path / "c.zarr", "--kind", "channel",
            "--probe-file", tmp_path / "p.json", "--frame-rate", "100")  # fmt: skip
    assert r.code == 0, r.err
    iq = np.asarray(open_store(tmp_path / "c.zarr").array("iq")[0, 0, 0, 32:-32, 0])
    phase = np.unwrap(np.angle(iq))
    freq = np.polyfit(t[32:-32], phase, 1)[0] / (2 * np.pi)
    assert freq == pytest.approx(1e6, rel=1e-3)
    assert np.abs(iq).mean() == pytest.approx(1.0, rel=0.02)


# ---------------------------------------------------------------------------
# A file far over the memory a block needs, imported in blocks
# ---------------------------------------------------------------------------

RSS_SCRIPT = """
import resource, sys
from ulmtools.cli.app import main
import ulmtools.io.importer, ulmtools.io.sources, ulmtools.memory, h5py, scipy.io  # noqa
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(sys.argv[1:])
print("RSS", code, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_growth_mb(args: list[str]) -> float:
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, *args], capture_output=True, text=True)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RSS")][-1]
    _, code, base, peak = line.split()
    assert code == "0", r.stderr
    return (int(peak) - int(base)) / 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.slow  # about 10 s: writing and importing 210 MB
def test_big_file_streams_in_blocks(tmp_path: Path) -> None:
    shape = (3200, 64, 128)  # 210 MB of complex64, frames first on disk
    src = tmp_path / "big.npy"
    a = np.lib.format.open_memmap(src, mode="w+", dtype=np.complex64, shape=shape)
    rng = np.random.default_rng(0)
    for i in range(0, shape[0], 400):
        b = rng.standard_normal((400, *shape[1:], 2), dtype=np.float32)
        a[i : i + 400] = b[..., 0] + 1j * b[..., 1]
    probe = np.array(a[[0, 1234, 3199]])
    a.flush()
    del a
    size_mb = src.stat().st_size / 2**20
    small = tmp_path / "small.npy"
    np.save(small, probe[:1].repeat(16, axis=0))
    flags = ["--layout", "t,z,x", "--frame-rate", "1000", "--grid-step", "50um", "-q"]
    fixed = _peak_growth_mb(["import", str(small), str(tmp_path / "s.zarr"), *flags])
    grow = _peak_growth_mb(
        ["import", str(src), str(tmp_path / "b.zarr"), *flags, "--block-frames", "16"]
    )
    # one block is 1 MiB; the whole file is 200 MiB
    assert size_mb > 200
    assert grow < fixed + 48, (grow, fixed, size_mb)
    got = open_store(tmp_path / "b.zarr").array("iq")
    assert got.shape == (1, *shape) and got.chunks[1] == 16
    np.testing.assert_array_equal(got[0, [0, 1234, 3199]], probe)


def test_verasonics_v73_struct_arrays(tmp_path: Path, cli) -> None:
    """v7.3 as MATLAB writes it: TX(1..n) as object references, Trans.units as char."""
    sim = tmp_path / "ch.zarr"
    assert cli("simulate", sim, "--movies", "1", "--frames", "4", "--seed", "1", "-q").code == 0
    store = open_store(sim, "channel")
    iq = np.asarray(store.array("iq")[0])
    acq = store.attrs["acquisition"]
    fc, c = acq["center_frequency"], acq["speed_of_sound"]
    lam = c / fc
    pos = np.asarray(acq["element_positions"])
    n_f, n_t, n_s, n_e = iq.shape
    rcv = iq.transpose(1, 2, 3, 0).reshape(n_t * n_s, n_e, n_f)
    src = tmp_path / "run73.mat"
    with h5py.File(src, "w", userblock_size=512) as f:
        compound = np.dtype([("real", "<f4"), ("imag", "<f4")])
        data = np.empty(rcv.T.shape, compound)
        data["real"], data["imag"] = rcv.T.real, rcv.T.imag
        f.create_dataset("RcvData", data=data)
        trans = f.create_group("Trans")
        trans.create_dataset("frequency", data=np.array([[fc / 1e6]]))
        element_pos = np.column_stack([pos[:, 1], pos[:, 2], pos[:, 0], np.zeros(len(pos))])
        trans.create_dataset("ElementPos", data=(element_pos / lam).T)
        units = np.frombuffer("wavelengths".encode("utf-16-le"), dtype="<u2")[:, None]
        trans.create_dataset("units", data=units).attrs["MATLAB_class"] = np.bytes_("char")
        refs, tx = f.create_group("#refs#"), f.create_group("TX")
        delays, steers = [], []
        for i, (d, t) in enumerate(zip(acq["transmit_delays"], acq["tilts"])):
            delays.append(refs.create_dataset(f"d{i}", data=(np.asarray(d) * fc)[:, None]).ref)
            steers.append(refs.create_dataset(f"s{i}", data=np.asarray(t)[:, None]).ref)
        tx.create_dataset("Delay", data=np.array(delays, dtype=h5py.ref_dtype)[None, :])
        tx.create_dataset("Steer", data=np.array(steers, dtype=h5py.ref_dtype)[None, :])
        rx = f.create_group("Receive")
        rx.create_dataset("demodFrequency", data=[[acq["demodulation_frequency"] / 1e6]])
        rx.create_dataset("decimSampleRate", data=[[acq["sampling_frequency"] / 1e6]])
        rx.create_dataset("startDepth", data=[[acq["t0"] * c / (2 * lam)]])
    with open(src, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file")
    out = tmp_path / "imported.zarr"
    r = cli("import", src, out, "--kind", "channel", "--frame-rate", "1000")
    assert r.code == 0, r.err
    got = open_store(out, "channel")
    np.testing.assert_array_equal(got.array("iq")[0], iq)
    a = got.attrs["acquisition"]
    np.testing.assert_allclose(a["element_positions"], acq["element_positions"], atol=1e-12)
    np.testing.assert_allclose(a["transmit_delays"], acq["transmit_delays"], atol=1e-15)
    np.testing.assert_allclose(a["tilts"], acq["tilts"])


def test_volume_with_pdata_and_a_truth_array(tmp_path: Path, cli) -> None:
    """3D PALA-style IQ (nz, nx, ny, nt): PData with three sections, truth as .npy."""
    rng = np.random.default_rng(1)
    iq = (rng.standard_normal((8, 10, 6, 20)) + 1j * rng.standard_normal((8, 10, 6, 20))).astype(
        np.complex64
    )
    pd = {"PDelta": [0.5, 0.5, 0.5], "Origin": [-2.5, -1.5, 60.0], "Size": [8, 10, 6]}
    uf = {"FrameRateUF": 250.0, "Lambda": 2e-4}
    scipy.io.savemat(tmp_path / "vol.mat", {"IQ": iq, "PData": pd, "UF": uf})
    truth = np.array([[0, 12.2e-3, -0.2e-3, 0.0, 7], [1, 12.25e-3, -0.15e-3, 0.0, 7],
                      [3, 12.5e-3, 0.1e-3, 0.1e-3, 9]])  # fmt: skip
    np.save(tmp_path / "truth.npy", truth)
    out = tmp_path / "vol.zarr"
    r = cli("import", tmp_path / "vol.mat", out, "--truth", tmp_path / "truth.npy", "--json")
    assert r.code == 0, r.err
    store = open_store(out, "image")
    g = store.grid
    assert g.axes == ("z", "x", "y") and g.shape == (8, 10, 6)
    np.testing.assert_allclose(g.spacing, [1e-4] * 3)
    np.testing.assert_allclose(g.origin, [12e-3, -0.5e-3, -0.3e-3])
    assert g.frame_rate == 250.0
    np.testing.assert_array_equal(store.array("iq")[0], iq.transpose(3, 0, 1, 2))
    t = store.group["truth"]
    np.testing.assert_array_equal(t["ids"][:], [7, 7, 9])
    np.testing.assert_allclose(t["positions"][:], truth[:, 1:4])
    tracks = np.asarray(t["tracks"][0])
    assert tracks.shape == (64, 80, 48) and tracks.sum() > 5  # the 7-track drawn as a line
