"""The stage runner and its executors: the same bytes whoever runs the movies.

One Dask LocalCluster of 2 worker *processes* serves the module (through
``--dask-scheduler``/``dask_scheduler=``, so the tests pay its start once); one
test starts its own through ``--workers 2 --dask``. Data: 3 movies of 32 frames
from our simulator, so every stage has more movies than workers.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from ulmtools import api
from ulmtools.errors import EXIT_BACKEND, EXIT_INPUT, BackendError
from ulmtools.runner import (
    DaskExecutor,
    MovieStage,
    ProcessExecutor,
    SerialExecutor,
    ThreadExecutor,
    make_executor,
    run_stage,
)

dd = pytest.importorskip("dask.distributed")

#: keys whose values say when, how fast or by whom, not what was computed
VOLATILE = {"id", "time", "command", "host", "executor", "workers", "timings", "from_cache"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if k not in VOLATILE
            and not k.startswith("seconds")
            and not k.endswith("_seconds")
            and k != "frames_per_second"
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def differences(a: Path, b: Path) -> list[str]:
    """Every file of two stores: chunks byte for byte, metadata but its volatile keys."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    out = [f"only in one: {sorted(set(map(str, fa)) ^ set(map(str, fb)))}"] if fa != fb else []
    for rel in sorted(set(fa) & set(fb)):
        x, y = (a / rel).read_bytes(), (b / rel).read_bytes()
        if rel.name == "zarr.json":
            if _strip(json.loads(x)) != _strip(json.loads(y)):
                out.append(f"{rel}: metadata differs")
        elif x != y:
            out.append(f"{rel}: bytes differ")
    return out


def same_store(a: Path, b: Path) -> None:
    diff = differences(a, b)
    assert not diff, "\n".join(diff[:10])
    assert sum(1 for p in a.rglob("*") if p.is_file() and p.name != "zarr.json") > 0


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes (1 thread each); a worker that dies is not retried."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        c = dd.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
    yield c.scheduler_address
    c.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("runner")
    out = {k: d / f"{k}.zarr" for k in ("ch", "img", "sp")}
    api.simulate(out["ch"], movies=3, frames=32, seed=5, network_seed=5)
    api.beamform(out["ch"], out["img"], clutter="svd:2", workers=1, psf_model="analytic")
    api.sparsify(out["img"], out["sp"])
    return out


# ---------------------------------------------------------------------------
# Dask gives the serial bytes, stage by stage; CLI and Python give the same store
# ---------------------------------------------------------------------------


def test_simulate_dask_and_cli_match_serial(data, cluster, cli, tmp_path) -> None:
    a, b, c = (tmp_path / f"{k}.zarr" for k in "abc")
    kw: dict[str, Any] = dict(movies=3, frames=32, seed=5, network_seed=5)
    serial = api.simulate(a, **kw)
    distributed = api.simulate(b, dask_scheduler=cluster, **kw)
    same_store(a, b)
    assert serial["movies"] == distributed["movies"] == 3 and serial.text.startswith(str(a))
    r = cli("simulate", c, "--movies", 3, "--frames", 32, "--seed", 5, "--network-seed", 5)
    assert r.code == 0, r.err
    same_store(a, c)
    same_store(a, data["ch"])  # the fixture's store, made the same way, too


def test_beamform_dask_and_cli_match_serial(data, cluster, cli, tmp_path) -> None:
    a, b, c = (tmp_path / f"{k}.zarr" for k in "abc")
    kw: dict[str, Any] = dict(clutter="svd:2", psf_model="analytic")
    api.beamform(data["ch"], a, workers=1, **kw)
    result = api.beamform(data["ch"], b, dask_scheduler=cluster, **kw)
    same_store(a, b)
    assert result["mode"] == "channel" and result["truth"] is True
    prov = zarr.open_group(str(b), mode="r").attrs["provenance"][-1]
    assert prov["executor"] == {"name": "dask", "scheduler": cluster}
    cmd = ("beamform", data["ch"], c, "--clutter", "svd:2", "--psf-model", "analytic")
    r = cli(*cmd, "--workers", 1, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["movies"] == 3
    same_store(a, c)


def test_sparsify_local_dask_cluster_processes_and_cli(data, cli, tmp_path) -> None:
    a, b, c, d = (tmp_path / f"{k}.zarr" for k in "abcd")
    api.sparsify(data["img"], a)
    r = cli("sparsify", data["img"], b, "--workers", 2, "--dask", "-q")  # its own LocalCluster
    assert r.code == 0, r.err
    same_store(a, b)
    prov = zarr.open_group(str(b), mode="r").attrs["provenance"][-1]
    assert prov["executor"]["scheduler"] == "LocalCluster" and prov["executor"]["workers"] == 2
    api.sparsify(data["img"], c, workers=2)  # local worker processes
    same_store(a, c)
    assert cli("sparsify", data["img"], d).code == 0
    same_store(a, d)


def test_a_scheduler_file_names_the_cluster(data, cluster, cli, tmp_path) -> None:
    with dd.Client(cluster) as client:
        client.write_scheduler_file(str(tmp_path / "scheduler.json"))
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    api.sparsify(data["img"], a, method="topk", k=50)
    r = cli(
        "sparsify", data["img"], b, "--method", "topk", "--k", 50,
        "--dask-scheduler", tmp_path / "scheduler.json", "-q",
    )  # fmt: skip
    assert r.code == 0, r.err
    same_store(a, b)


def test_infer_dask_and_cli_match_serial(data, cluster, cli, tmp_path) -> None:
    a, b, c = (tmp_path / f"{k}.zarr" for k in "abc")
    serial = api.infer("shipped:2d", data["sp"], a, batch_size=2)
    distributed = api.infer("shipped:2d", data["sp"], b, batch_size=2, dask_scheduler=cluster)
    same_store(a, b)
    assert serial["dice"] == distributed["dice"] and serial["movies"] == 3
    r = cli("infer", "shipped:2d", data["sp"], c, "--batch-size", 2)
    assert r.code == 0, r.err
    same_store(a, c)


def test_track_dask_threads_and_cli_match_serial(data, cluster, cli, tmp_path) -> None:
    a, b, c, d = (tmp_path / f"{k}.zarr" for k in "abcd")
    api.track(data["img"], a)
    api.track(data["img"], b, dask_scheduler=cluster)
    same_store(a, b)
    api.track(data["img"], c, workers=2)  # threads
    same_store(a, c)
    r = cli("track", data["img"], d, "--json")
    assert r.code == 0, r.err
    assert (
        json.loads(r.out)["localizations"] == api.track(data["img"], a, force=True)["localizations"]
    )
    same_store(a, d)


def test_score_python_and_cli_agree(data, cli, tmp_path) -> None:
    pred = tmp_path / "t.zarr"
    api.track(data["img"], pred)
    report = api.score([pred], output=tmp_path / "r.json")
    r = cli("score", pred, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == json.loads((tmp_path / "r.json").read_text()) == dict(report)
    assert "Dice" in report.text or "dice" in report.text.lower()


# ---------------------------------------------------------------------------
# A failing or killed task leaves no output store
# ---------------------------------------------------------------------------


def test_a_dask_task_that_raises_leaves_no_output(data, cluster, cli, tmp_path) -> None:
    import shutil

    ch = tmp_path / "bad.zarr"
    shutil.copytree(data["ch"], ch)
    zarr.open_array(str(ch / "iq"), mode="r+")[2, 3, 0, 4, 5] = np.nan  # the last movie
    out = tmp_path / "img.zarr"
    r = cli("beamform", ch, out, "--psf-model", "analytic", "--dask-scheduler", cluster, "-q")
    assert r.code == EXIT_INPUT, r.err
    assert "movie 2, frame 3" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not out.exists() and leftovers(tmp_path) == []


class _KillStage(MovieStage):
    """A stage whose task for movie 1 kills the process running it (a lost worker)."""

    name = "simulate"
    kind = "angiogram"

    def __init__(self) -> None:
        self.parameters, self.attrs, self.units = {}, {}, [[0], [1], [2]]

    def create(self, root: zarr.Group) -> None:
        root.create_array("angiogram", shape=(3, 4), chunks=(1, 4), dtype="int32")

    def task(self, root_path: str | None) -> Callable[[Sequence[int]], list[Any]]:
        return _KillTask(root_path)


class _KillTask:
    def __init__(self, root: str | None) -> None:
        self.root = root

    def __call__(self, unit: Sequence[int]) -> list[Any]:
        arr = zarr.open_array(f"{self.root}/angiogram", mode="r+")
        for m in unit:
            if m == 1:
                os._exit(17)
            arr[m] = m + 1
        return [None for _ in unit]


def test_a_killed_dask_worker_leaves_no_output(cluster, tmp_path) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    out = tmp_path / "k.zarr"
    with pytest.raises(BackendError, match="worker died"):
        run_stage(_KillStage(), out, executor=DaskExecutor(cluster))
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_killed_local_worker_process_leaves_no_output(tmp_path) -> None:
    out = tmp_path / "k.zarr"
    with pytest.raises(BackendError, match="worker process died"):
        run_stage(_KillStage(), out, executor=ProcessExecutor(2))
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# Choosing the executor; Dask missing
# ---------------------------------------------------------------------------


def test_make_executor_keeps_each_stages_meaning_of_workers() -> None:
    assert isinstance(make_executor(1), SerialExecutor)
    assert isinstance(make_executor(4, local=None), SerialExecutor)  # beamform: threads inside
    assert isinstance(make_executor(3, local="thread"), ThreadExecutor)
    p = make_executor(3, local="process")
    assert isinstance(p, ProcessExecutor) and p.workers == 3
    d = make_executor(2, local=None, dask=True)
    assert isinstance(d, DaskExecutor) and d.describe()["workers"] == 2
    s = make_executor(1, dask_scheduler="tcp://example:8786")
    assert isinstance(s, DaskExecutor) and s.describe()["scheduler"] == "tcp://example:8786"


def test_without_dask_a_one_line_error_says_how_to_install(
    data, cli, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import now fails
    out = tmp_path / "s.zarr"
    r = cli("sparsify", data["img"], out, "--dask")
    assert r.code == EXIT_BACKEND
    assert "pip install 'ulm-toolchain[cluster]'" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists()


def test_local_cluster_leaves_port_8787_alone(recwarn) -> None:
    """The executor's LocalCluster does not take dask's fixed HTTP port: with 8787 held
    (a user's own dashboard), it starts without "Port 8787 is already in use"."""
    import socket

    held = socket.socket()
    try:
        held.bind(("", 8787))
        held.listen()
    except OSError:
        pass  # held by another process already: the same situation
    try:
        executor = DaskExecutor(workers=1, processes=False)
        with executor.session():
            port = executor._client.cluster.scheduler.http_server.port
    finally:
        held.close()
    assert port != 8787
    assert not [w for w in recwarn if "already in use" in str(w.message)]
