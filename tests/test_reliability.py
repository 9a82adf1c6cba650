"""Bad inputs and faults are refused cleanly: the documented code, one line, nothing damaged.

Every case runs a stage the way a user would and checks three things: the exit code
(2 usage, 3 bad input, 4 output problem), exactly one line on stderr with no
traceback, and that no input changed and no temporary (``.NAME.partial-*``) is left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from tests.test_beamform import acquisition_2d, make_channel_store
from tests.test_train import make_sparse
from ulmtools.models import store as model_store
from ulmtools.models.deepstulm import SparseDeepStulm
from ulmtools.models.mask_cnn import MaskCNN
from ulmtools.sparsify.synthetic import SyntheticConfig, write_synthetic_store

# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """One small store of each kind the stages read; tests copy before they damage one."""
    d = tmp_path_factory.mktemp("stores")
    acq, grid = acquisition_2d()
    make_channel_store(d / "ch.zarr", acq, grid, n_movies=1, n_frames=4)
    write_synthetic_store(
        d / "img.zarr", SyntheticConfig(movies=2, frames=12, shape=(8, 8), seed=3)
    )
    make_sparse(d / "sp.zarr", (8, 8), frames=8, movies=2)
    torch.manual_seed(0)
    model_store.save_model(d / "model.zarr", SparseDeepStulm(dimension=3, channels=4))
    model_store.save_model(d / "mask.zarr", MaskCNN(spatial_dims=2, channels=2, blocks=1))
    return {p.stem: p for p in d.iterdir() if p.suffix == ".zarr" and "." not in p.stem}


def copy(store: Path, tmp_path: Path, name: str | None = None) -> Path:
    dst = tmp_path / (name or store.name)
    shutil.copytree(store, dst)
    return dst


def leftovers(*dirs: Path) -> list[str]:
    return [
        p.name for d in dirs for p in d.rglob("*") if ".partial-" in p.name or ".old-" in p.name
    ]


def refused(r, code: int, *words: str) -> None:
    """Exit ``code``, one error line on stderr naming ``words``, no traceback, empty stdout."""
    assert r.code == code, (r.code, r.err)
    lines = r.err.strip().splitlines()  # informational log lines may come before it
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.err
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    for w in words:
        assert w in r.err, (w, r.err)
    assert r.out == ""


# ---------------------------------------------------------------------------
# 1. An output inside (or equal to, or around) an input is refused
# ---------------------------------------------------------------------------


def nested_cases(s: dict[str, Path], t: Path) -> list[tuple[list[str], Path]]:
    ch, img, sp, model, mask = (t / s[k].name for k in ("ch", "img", "sp", "model", "mask"))
    return [
        (["beamform", ch, ch / "out.zarr"], ch),
        (["beamform", ch, ch, "--force"], ch),
        (["beamform", ch / "iq", t / "x.zarr"], ch),  # not a store: refused as input
        (["sparsify", img, img / "out.zarr"], img),
        (["sparsify", img, img / "corr" / "o.zarr"], img),
        (["sparsify", img, mask, "--method", "mask", "--mask-model", mask, "--force"], mask),
        (["sparsify", img, mask / "o.zarr", "--method", "mask", "--mask-model", mask], mask),
        (["train", sp, sp / "m.zarr", "--epochs", "1"], sp),
        (["train", sp, t / "v.zarr", "--val", t / "v.zarr", "--force", "--epochs", "1"], sp),
        (["train", img, img / "m.zarr", "--arch", "mask-cnn", "--epochs", "1"], img),
        (["infer", model, sp, model / "weights" / "p.zarr"], model),
        (["infer", model, sp, sp / "p.zarr"], sp),
        (["infer", model, sp, model, "--force"], model),
    ]


@pytest.mark.parametrize("case", range(13))
def test_output_inside_an_input_is_refused(case, cli, stores, tmp_path, digest) -> None:
    for s in stores.values():
        copy(s, tmp_path)
    shutil.copytree(tmp_path / "sp.zarr", tmp_path / "v.zarr")
    args, victim = nested_cases(stores, tmp_path)[case]
    before = digest(victim)
    r = cli(*args)
    if case == 2:
        refused(r, 3, "iq")
    else:
        refused(r, 4, "input")
    assert digest(victim) == before
    assert leftovers(tmp_path) == []


def test_output_around_an_input_is_refused(cli, stores, tmp_path, digest) -> None:
    outer = tmp_path / "outer.zarr"
    outer.mkdir()
    (outer / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    img = copy(stores["img"], outer)
    before = digest(outer)
    refused(cli("sparsify", img, outer, "--force"), 4, "inside the output")
    assert digest(outer) == before


def test_train_resume_into_its_input_is_refused(cli, stores, tmp_path, digest) -> None:
    sp = copy(stores["sp"], tmp_path)
    before = digest(sp)
    refused(cli("train", sp, sp / "m.zarr", "--resume"), 4, "inside the input")
    assert digest(sp) == before


def test_simulate_over_its_network_file_is_refused(cli, tmp_path, digest) -> None:
    net = tmp_path / "net.json"
    net.write_text(json.dumps({"nodes": [[0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]], "edges": [[0, 1]],
                               "radii": [1e-5]}))  # fmt: skip
    before = digest(net)
    refused(cli("simulate", net, "--vessels", net, "--force", "--frames", "2"), 4, "input")
    assert digest(net) == before


def test_dash_is_not_an_output(cli, stores, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    refused(cli("sparsify", stores["img"], "-"), 2, "'-'")
    refused(cli("simulate", "-", "--frames", "2"), 2, "'-'")
    assert not (tmp_path / "-").exists()


# ---------------------------------------------------------------------------
# 2. The text summary never crashes, and is made before the output appears
# ---------------------------------------------------------------------------


def test_topk_text_summary(cli, stores, tmp_path) -> None:
    out = tmp_path / "top.zarr"
    r = cli("sparsify", stores["img"], out, "--method", "topk", "--k", "100")
    assert r.code == 0, r.err
    assert "top 100 per movie" in r.out and out.is_dir()


def test_a_summary_failure_leaves_no_output(cli, stores, tmp_path, monkeypatch) -> None:
    from ulmtools import api

    def broken(result):
        raise RuntimeError("summary broke")

    monkeypatch.setattr(api, "_sparsify_text", broken)
    out = tmp_path / "s.zarr"
    r = cli("sparsify", stores["img"], out)
    assert r.code == 1 and "summary broke" in r.err
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# 3. Non-finite data and options
# ---------------------------------------------------------------------------


def poke(store: Path, array: str, index, value) -> None:
    """Write ``value`` at ``index`` of ``store/array`` in place (a damaged copy)."""
    arr = zarr.open_array(str(store / array), mode="r+")
    arr[index] = value


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_beamform_refuses_non_finite_channel_iq(value, cli, stores, tmp_path, digest) -> None:
    ch = copy(stores["ch"], tmp_path)
    poke(ch, "iq", (0, 2, 0, 3, 1), value)
    before = digest(ch)
    out = tmp_path / "img.zarr"
    refused(cli("beamform", ch, out, "--psf-model", "analytic"), 3, "iq", "movie 0, frame 2")
    assert not out.exists() and leftovers(tmp_path) == [] and digest(ch) == before


@pytest.mark.parametrize("value", [np.nan, complex(np.inf, 0)])
def test_sparsify_refuses_non_finite_corr(value, cli, stores, tmp_path) -> None:
    img = copy(stores["img"], tmp_path)
    poke(img, "corr", (1, 5, 2, 2), value)
    out = tmp_path / "s.zarr"
    for extra in ([], ["--method", "topk", "--k", "10"], ["--json"]):
        refused(cli("sparsify", img, out, *extra), 3, "corr", "movie 1, frame 5")
        assert not out.exists() and leftovers(tmp_path) == []


def test_train_and_infer_refuse_non_finite_feats(cli, stores, tmp_path) -> None:
    sp = copy(stores["sp"], tmp_path)
    n = zarr.open_array(str(sp / "feats"), mode="r").shape[0]
    poke(sp, "feats", (n - 1, 0), np.nan)
    out = tmp_path / "m.zarr"
    refused(cli("train", sp, out, "--epochs", "1"), 3, "feats", "movie 1")
    assert not out.exists() and not (tmp_path / "m.resume.zarr").exists()
    poke(sp, "feats", (n - 1, 0), np.inf)
    refused(cli("infer", stores["model"], sp, tmp_path / "p.zarr"), 3, "feats", "non-finite")
    assert leftovers(tmp_path) == [] and not (tmp_path / "p.zarr").exists()


def test_complex_feats_and_float_coords_are_refused(cli, stores, tmp_path) -> None:
    sp = copy(stores["sp"], tmp_path)
    feats = zarr.open_array(str(sp / "feats"), mode="r")[:]
    g = zarr.open_group(str(sp), mode="r+")
    del g["feats"]
    g.create_array("feats", data=feats.astype(np.complex64))
    refused(cli("train", sp, tmp_path / "m.zarr", "--epochs", "1"), 3, "feats", "complex64")
    sp2 = copy(stores["sp"], tmp_path, "sp2.zarr")
    coords = zarr.open_array(str(sp2 / "coords"), mode="r")[:]
    g = zarr.open_group(str(sp2), mode="r+")
    del g["coords"]
    g.create_array("coords", data=coords.astype(np.float32) + 0.25)
    refused(cli("infer", stores["model"], sp2, tmp_path / "p.zarr"), 3, "coords", "float32")


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("arch", ["sparse-deepstulm", "mask-cnn"])
def test_non_finite_lr_is_a_usage_error(lr, arch, cli, stores, tmp_path) -> None:
    src = stores["sp"] if arch == "sparse-deepstulm" else stores["img"]
    out = tmp_path / "m.zarr"
    refused(cli("train", src, out, "--arch", arch, "--lr", lr, "--epochs", "1"), 2, "--lr")
    assert not out.exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(
    cli, stores, tmp_path, monkeypatch
) -> None:
    from ulmtools.train import loop
    from ulmtools.train.checkpoint import load_resume

    real = loop.sparse_dice_loss
    calls = {"n": 0}

    def loss_turns_nan(*a, **kw):
        calls["n"] += 1
        value = real(*a, **kw)
        return value * float("nan") if calls["n"] > 2 else value  # 2 movies, batch 1

    monkeypatch.setattr(loop, "sparse_dice_loss", loss_turns_nan)
    out = tmp_path / "m.zarr"
    args = ("train", stores["sp"], out, "--epochs", "3", "--batch-size", "1", "--seed", "1")
    refused(cli(*args), 3, "diverged", "epoch 2", "after epoch 1")
    state, _, _ = load_resume(out)
    assert state.epoch == 1
    assert all(torch.isfinite(p).all() for p in state.model.parameters())
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# 4. Corrupt stores: damaged chunks, invalid metadata, attributes of the wrong type
# ---------------------------------------------------------------------------


def chunk_files(store: Path, array: str) -> list[Path]:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())


def damage_chunk(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(np.random.default_rng(0).bytes(max(len(data), 64)))


def edit_json(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


CHUNK_CASES = [
    ("ch", "iq", ["beamform", "{s}", "{o}", "--psf-model", "analytic"]),
    ("img", "corr", ["sparsify", "{s}", "{o}"]),
    ("sp", "feats", ["train", "{s}", "{o}", "--epochs", "1"]),
    ("sp", "coords", ["infer", "{model}", "{s}", "{o}"]),
    ("model", "weights/input.0.kernel", ["infer", "{s}", "{sp}", "{o}"]),
]


def fill(args: list[str], **paths: Path) -> list[str]:
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("case", range(len(CHUNK_CASES)))
def test_damaged_chunks_are_bad_input(case, how, cli, stores, tmp_path, digest) -> None:
    kind, array, args = CHUNK_CASES[case]
    src = copy(stores[kind], tmp_path)
    if not (src / array).is_dir():  # the model's first weight array, whatever its name
        array = sorted(p.parent.name for p in (src / "weights").glob("*/zarr.json"))[0]
        array = f"weights/{array}"
    damage_chunk(chunk_files(src, array)[0], how)
    before = digest(src)
    out = tmp_path / "out.zarr"
    r = cli(*fill(args, s=src, o=out, model=stores["model"], sp=stores["sp"]))
    refused(r, 3, str(src), array)
    assert not out.exists() and leftovers(tmp_path) == [] and digest(src) == before


def test_damaged_chunk_in_a_subprocess_is_exit_3_not_a_crash(stores, tmp_path) -> None:
    import subprocess
    import sys

    ch = copy(stores["ch"], tmp_path)
    damage_chunk(chunk_files(ch, "iq")[0], "truncated")
    out = tmp_path / "img.zarr"
    ulm = Path(sys.executable).parent / "ulm"
    r = subprocess.run([ulm, "beamform", ch, out, "-q"], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("\n") == 1 and "damaged" in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []


ARRAY_META_CASES = {
    "truncated json": lambda p: p.write_text(p.read_text()[:40]),
    "binary garbage": lambda p: p.write_bytes(b"\x89\xff\x00garbage\xfe" * 8),
    "zarr_format 2": lambda p: edit_json(p, lambda m: m.update(zarr_format=2)),
    "bad data_type": lambda p: edit_json(p, lambda m: m.update(data_type="complex999")),
    "shape a string": lambda p: edit_json(p, lambda m: m.update(shape="big")),
    "not an object": lambda p: p.write_text("[1, 2, 3]"),
}


@pytest.mark.parametrize("how", list(ARRAY_META_CASES))
@pytest.mark.parametrize("stage", ["beamform", "sparsify", "train"])
def test_invalid_array_metadata_is_bad_input(stage, how, cli, stores, tmp_path) -> None:
    kind, array = {"beamform": ("ch", "iq"), "sparsify": ("img", "corr"),
                   "train": ("sp", "offsets")}[stage]  # fmt: skip
    src = copy(stores[kind], tmp_path)
    ARRAY_META_CASES[how](src / array / "zarr.json")
    out = tmp_path / "out.zarr"
    r = cli(stage, src, out, *(["--epochs", "1"] if stage == "train" else []))
    refused(r, 3, f"{array}")
    assert not out.exists() and leftovers(tmp_path) == []


def root_json(store: Path) -> Path:
    return store / "zarr.json"


ATTRIBUTE_CASES = [
    ("img", "sparsify", lambda a: a.update(grid="32x32"), "grid"),
    ("img", "sparsify", lambda a: a.update(grid=[1, 2]), "grid"),
    ("img", "sparsify", lambda a: a.update(provenance="made by hand"), "provenance"),
    ("img", "sparsify", lambda a: a.update(provenance=7), "provenance"),
    ("img", "sparsify", lambda a: a.update(provenance={"stage": "x"}), "provenance"),
    ("img", "sparsify", lambda a: a.update(provenance=["x"]), "provenance"),
    ("sp", "train", lambda a: a.update(shape="junk"), "shape"),
    ("sp", "train", lambda a: a.update(shape=[8, "a", None]), "shape"),
    ("sp", "infer", lambda a: a.update(shape={"t": 8}), "shape"),
    ("ch", "beamform", lambda a: a.update(acquisition="L22-14"), "acquisition"),
    ("img", "sparsify", lambda a: a["grid"].update(spacing=[float("nan"), 1e-4]), "spacing"),
    ("img", "sparsify", lambda a: a["grid"].update(frame_rate=0), "frame rate"),
    ("sp", "train", lambda a: a["grid"].update(frame_rate=-1000.0), "frame rate"),
    ("sp", "train", lambda a: a["grid"].update(spacing=[float("inf"), 1e-4]), "spacing"),
    ("sp", "infer", lambda a: a["grid"].update(origin=[float("nan"), 0.0]), "origin"),
]


@pytest.mark.parametrize("case", range(len(ATTRIBUTE_CASES)))
def test_attributes_of_the_wrong_type_are_bad_input(case, cli, stores, tmp_path) -> None:
    kind, stage, change, word = ATTRIBUTE_CASES[case]
    src = copy(stores[kind], tmp_path)
    edit_json(root_json(src), lambda m: change(m["attributes"]))
    out = tmp_path / "out.zarr"
    extra = {"train": ["--epochs", "1"], "beamform": ["--psf-model", "analytic"]}.get(stage, [])
    args = [stage, stores["model"], src, out] if stage == "infer" else [stage, src, out]
    refused(cli(*args, *extra), 3, word)
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# 5. A full disk (or another OS error while writing) is an output problem
# ---------------------------------------------------------------------------


def failing_put(monkeypatch, err: int, *, after: int = 2, filename: bool = False) -> None:
    """Make zarr's file writes fail with ``err`` once ``after`` files are written."""
    from zarr.storage import _local

    real = _local._put
    count = {"n": 0}

    def put(path, value, exclusive=False):
        count["n"] += 1
        if count["n"] > after and ".partial-" in str(path):
            raise OSError(err, os.strerror(err), str(path) if filename else None)
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(_local, "_put", put)


@pytest.mark.parametrize("stage", ["sparsify", "beamform", "train", "simulate"])
def test_a_full_disk_is_exit_4_and_leaves_nothing(stage, cli, stores, tmp_path, monkeypatch):
    out = tmp_path / "out.zarr"
    args = {
        "sparsify": ["sparsify", stores["img"], out],
        "beamform": ["beamform", stores["ch"], out, "--psf-model", "analytic"],
        "train": ["train", stores["sp"], out, "--epochs", "1"],
        "simulate": ["simulate", out, "--frames", "4"],
    }[stage]
    failing_put(monkeypatch, errno.ENOSPC)
    refused(cli(*args), 4, f"no space left on {tmp_path}")
    assert not out.exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "out.resume.zarr").exists()


def test_other_write_errors_name_the_os_message(cli, stores, tmp_path, monkeypatch):
    out = tmp_path / "out.zarr"
    failing_put(monkeypatch, errno.EIO, filename=True)
    refused(cli("sparsify", stores["img"], out), 4, "cannot write", "Input/output error")
    monkeypatch.undo()
    failing_put(monkeypatch, errno.EROFS)
    refused(cli("sparsify", stores["img"], out), 4, "read-only file system")
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_full_disk_for_stdout_is_exit_4(cli, stores, tmp_path, monkeypatch):
    from ulmtools.cli import context

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(context.sys.stdout, "write", full)
    r = cli("info", stores["img"])
    assert r.code == 4 and "No space left" in r.err


# ---------------------------------------------------------------------------
# 7. SIGTERM: the temporary always goes, a finished run stays a success, workers die
# ---------------------------------------------------------------------------


def test_sigterm_after_the_rename_is_still_success(cli, stores, tmp_path, monkeypatch):
    import signal

    from ulmtools import store as store_mod

    real = store_mod._replace

    def replace_then_term(tmp, out, *, force):
        real(tmp, out, force=force)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives between the rename and the summary

    monkeypatch.setattr(store_mod, "_replace", replace_then_term)
    out = tmp_path / "s.zarr"
    r = cli("sparsify", stores["img"], out, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["output"] == str(out) and out.is_dir()


def test_sigterm_during_cleanup_still_removes_the_temporary(cli, stores, tmp_path, monkeypatch):
    import signal

    from ulmtools import store as store_mod
    from ulmtools.sparsify import core

    real_drain = store_mod._drain_zarr_io

    def drain_and_term(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM while cleaning up
        real_drain(*a, **kw)

    def interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM should have interrupted")

    monkeypatch.setattr(store_mod, "_drain_zarr_io", drain_and_term)
    monkeypatch.setattr(core, "select", interrupted)
    out = tmp_path / "s.zarr"
    r = cli("sparsify", stores["img"], out)
    assert r.code == 130 and "interrupted" in r.err
    assert not out.exists() and leftovers(tmp_path) == []


def test_sigterm_with_writes_in_flight_leaves_no_temporary(cli, stores, tmp_path, monkeypatch):
    import signal
    import threading
    import time

    from zarr.storage import _local

    real = _local._put

    def slow_put(path, value, exclusive=False):
        time.sleep(0.05)  # writes still in flight on zarr's thread when SIGTERM lands
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(_local, "_put", slow_put)
    out = tmp_path / "s.zarr"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        r = cli("sparsify", stores["img"], out, "--method", "topk", "--k", "50")
    finally:
        timer.cancel()
    time.sleep(0.3)  # anything still writing would re-create the temporary now
    if r.code == 0:  # finished before the signal: then it must be whole
        assert out.is_dir()
    else:
        assert r.code == 130 and not out.exists()
    assert leftovers(tmp_path) == []


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_simulate_takes_its_workers_along(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    ulm = Path(sys.executable).parent / "ulm"
    out = tmp_path / "s.zarr"
    proc = subprocess.Popen(
        [ulm, "simulate", out, "--movies", "400", "--frames", "64", "--workers", "2", "-q"],
        stderr=subprocess.DEVNULL,
    )
    try:
        workers: set[int] = set()
        for _ in range(600):  # wait until the forkserver and both workers run
            time.sleep(0.1)
            workers = _descendants(proc.pid)
            if len(workers) >= 3 or proc.poll() is not None:
                break
        assert proc.poll() is None and len(workers) >= 3, "workers did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(100):
            alive = {p for p in workers if Path(f"/proc/{p}").exists()}
            if not alive:
                break
            time.sleep(0.1)
        assert not alive, f"workers still running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------
# 6. Absurd sizes and counts are refused up front, naming the limit
# ---------------------------------------------------------------------------

LIMIT_CASES = [
    (["simulate", "{o}", "--frames", "1000000000"], "of memory"),
    (["simulate", "{o}", "--movies", "1000000000"], "uncompressed"),
    (["simulate", "{o}", "--concentration", "1e12"], "of memory"),
    (["simulate", "{o}", "--frames", "5000000", "--level", "image"], "of memory"),
    (["simulate", "{o}", "--seed", "-1"], "--seed"),
    (["simulate", "{o}", "--seed", str(2**64)], "18446744073709551615"),
    (["simulate", "{o}", "--network-seed", "-5"], "--network-seed"),
    (["beamform", "{ch}", "{o}", "--grid-size", "100000x100000"], "of memory"),
    (["train", "{sp}", "{o}", "--epochs", "1000000000"], "limit of 10000"),
    (["train", "{sp}", "{o}", "--channels", "100000"], "limit of 256"),
    (["train", "{img}", "{o}", "--arch", "mask-cnn", "--channels", "100000"], "limit of 256"),
    (["train", "{img}", "{o}", "--arch", "mask-cnn", "--epochs", "1000000000"], "limit"),
    (["train", "{sp}", "{o}", "--seed", "-1"], "--seed"),
    (["sparsify", "{img}", "{o}", "--device", "tpu"], "tpu"),
    (["train", "{sp}", "{o}", "--device", "tpu"], "tpu"),
    (["infer", "{model}", "{sp}", "{o}", "--device", "tpu"], "tpu"),
    (["sparsify", "{img}", "-"], "'-'"),
    (["beamform", "{ch}", "-"], "'-'"),
    (["train", "{sp}", "-"], "'-'"),
    (["infer", "{model}", "{sp}", "-"], "'-'"),
]


@pytest.mark.parametrize("case", range(len(LIMIT_CASES)))
def test_absurd_requests_are_usage_errors(case, cli, stores, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args, word = LIMIT_CASES[case]
    out = tmp_path / "out.zarr"
    r = cli(*fill(args, o=out, **stores))
    refused(r, 2, word)
    assert not out.exists() and not (tmp_path / "-").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["int8", "nan"])
def test_model_weights_must_be_finite_floats(damage, cli, stores, tmp_path) -> None:
    model = copy(stores["model"], tmp_path)
    attrs = json.loads((model / "zarr.json").read_text())["attributes"]
    entry = attrs["weights"][0]
    arr = zarr.open_array(str(model / entry["array"]), mode="r")
    data = arr[...]
    g = zarr.open_group(str(model), mode="r+")
    del g[entry["array"]]
    if damage == "int8":
        g.create_array(entry["array"], data=data.astype(np.int8))
        entry["dtype"] = "int8"
        edit_json(model / "zarr.json", lambda m: m["attributes"].update(weights=attrs["weights"]))
    else:
        data.flat[0] = np.nan
        g.create_array(entry["array"], data=data)
    out = tmp_path / "p.zarr"
    word = "int8" if damage == "int8" else "NaN"
    refused(cli("infer", model, stores["sp"], out), 3, entry["key"], word)
    assert not out.exists()
