"""``ulm train`` under torchrun: two gloo processes train like one, resume, and only
process 0 writes.

Every launch runs ``python -m torch.distributed.run --standalone --nproc-per-node 2`` in
a subprocess with ``OMP_NUM_THREADS=1``, on the tiny stores of ``tests/test_train.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import make_sparse
from ulmtools.errors import BackendError, UsageError
from ulmtools.models import store as model_store
from ulmtools.train.checkpoint import resume_path
from ulmtools.train.distributed import Launch, process_device, torchrun_env

#: Whole-batch gradients of two processes against one (float32): the largest difference
#: over all tensors, relative to the largest gradient (measured: 4e-7 .. 1.6e-6), and per tensor
#: relative to its own largest entry (measured: up to 7e-5, in batch-norm weights whose
#: small gradients are sums with cancellation, computed in another order).
GRAD_RTOL = 1e-5
GRAD_RTOL_TENSOR = 1e-3
#: Per-epoch losses of a 3-epoch run: relative differences ~1e-8 .. 1e-7.
LOSS_RTOL = 1e-5
#: Weights after 3 epochs (6 Adam steps at lr 1e-2): the float32 summation-order noise
#: of near-zero gradients (coarse levels of an 8x8 grid, where most kernel offsets see
#: one or two pairs) is normalised by Adam; measured <= 3e-4, i.e. 3 % of one step.
WEIGHT_ATOL = 2e-3
TRAIN_ARGS = ["--epochs", "3", "--channels", "4", "--seed", "3", "--batch-size", "2",
              "--pruning", "--deep-supervision"]  # fmt: skip

#: Run by torchrun in every process.  ``grad``: one whole-batch step on two processes
#: against the same step in one; ``cli``: ``ulm ARGS`` with every model-store write
#: logged with its process (and, with STOP_IN_EPOCH, Ctrl-C at that epoch).
WORKER = textwrap.dedent(
    """
    import json, os, sys

    import torch

    mode, *args = sys.argv[1:]
    if mode == "grad":
        from ulmtools.train import loop
        from ulmtools.train.config import Schedule, TrainConfig
        from ulmtools.train.data import SparseMovies
        from ulmtools.train.distributed import start, torchrun_env

        world = start(torchrun_env(), torch.device("cpu"))
        data = SparseMovies(args[0], need_truth=True)
        report = []
        # shares of 2 and 1 movies; 1 movie and none; cascaded learning's first epoch
        # (only the coarsest classifier: DDP must find the unused parameters)
        for batch, cascade in (([0, 1, 2], False), ([2], False), ([0, 1, 2], True)):
            cfg = TrainConfig(
                schedule=Schedule("t", 1, ((0, 1e-2),), ((0, len(batch)),)),
                channels=4, pruning=True, cascade=cascade, seed=5,
            )
            phase, cpu = cfg.phase(0), torch.device("cpu")
            one = loop.new_state(cfg, data.dimension, cpu)
            r1 = loop.train_step(one, data, batch, cfg, phase, cpu)
            two = loop.new_state(cfg, data.dimension, cpu)
            world.attach(two.model, cfg)
            r2 = world.train_step(two, data, batch, cfg, phase, cpu)
            world.detach()
            pairs = list(zip(one.model.parameters(), two.model.parameters()))
            unused = [a.grad is None for a, _ in pairs]
            assert unused == [b.grad is None for _, b in pairs]
            pairs = [(a, b) for a, b in pairs if a.grad is not None]
            diff = max(float((a.grad - b.grad).abs().max()) for a, b in pairs)
            scale = max(float(a.grad.abs().max()) for a, _ in pairs)
            rel = max(
                float((a.grad - b.grad).abs().max() / a.grad.abs().max().clamp_min(1e-30))
                for a, b in pairs
            )
            stats = max(
                float((a - b).abs().max())
                for (k, a), b in zip(
                    one.model.state_dict().items(), two.model.state_dict().values()
                )
                if "running" in k
            )
            report.append({"batch": batch, "unused": sum(unused), "grad_diff": diff,
                           "grad_scale": scale, "grad_rel_tensor": rel,
                           "loss": [r1["loss"], r2["loss"]],
                           "sites": [r1["sites"], r2["sites"]], "running": stats})
        if world.is_main:
            print(json.dumps(report))
        world.close()
    else:
        from ulmtools.models import store
        from ulmtools.train import loop

        real_save, real_epoch = store.save, loop.run_epoch

        def save(path, *a, **kw):
            with open(os.environ["WRITES_LOG"], "a") as f:
                f.write(f"{os.environ['RANK']} {path}\\n")
            return real_save(path, *a, **kw)

        def run_epoch(state, *a, **kw):
            if state.epoch + 1 == int(os.environ.get("STOP_IN_EPOCH", "0")):
                raise KeyboardInterrupt
            return real_epoch(state, *a, **kw)

        store.save, loop.run_epoch = save, run_epoch
        from ulmtools.cli.app import main

        sys.exit(main(args))
    """
)


# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 3 movies, batch 2: the last batch of each epoch leaves process 1 without a movie
    return make_sparse(tmp_path_factory.mktemp("ddp") / "t.zarr", (8, 8), movies=3)


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("worker") / "ddp_worker.py"
    path.write_text(WORKER)
    return path


def torchrun(worker: Path, *args: str | os.PathLike[str], cwd: Path, **env: str):
    """``torchrun --nproc-per-node 2 WORKER ARGS`` (gloo on the CPU)."""
    full = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    full.update(env)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", "2", str(worker), *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def runs(data: Path, worker: Path, tmp_path_factory) -> dict:
    """The same ``ulm train`` in one process and under torchrun with two."""
    from ulmtools.cli.app import main

    d = tmp_path_factory.mktemp("runs")
    one = d / "one.zarr"
    assert main(["train", str(data), str(one), *TRAIN_ARGS, "--val", str(data), "-q"]) == 0
    two = d / "two.zarr"
    log = d / "writes.log"
    proc = torchrun(worker, "cli", "train", data, two, *TRAIN_ARGS, "--val", data, "--json",
                    cwd=d, WRITES_LOG=str(log))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"one": one, "two": two, "proc": proc, "writes": log.read_text().splitlines()}


def test_torchrun_environment_is_detected() -> None:
    assert torchrun_env({}) is None
    one = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    assert torchrun_env(one) is None  # one process: the ordinary run
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert torchrun_env(env) == Launch(rank=3, size=4, local_rank=1, local_size=2)
    with pytest.raises(UsageError, match="integers"):
        torchrun_env({"RANK": "a", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="do not fit"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_each_process_gets_its_device() -> None:
    two = Launch(rank=1, size=2, local_rank=1, local_size=2)
    assert process_device("cpu", two) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert process_device("auto", two) == torch.device("cpu")  # gloo on the CPU
        with pytest.raises(BackendError):
            process_device("cuda", two)
    elif torch.cuda.device_count() > 1:
        assert process_device("cuda", two) == torch.device("cuda", 1)  # GPU LOCAL_RANK
    if torch.cuda.is_available():
        with pytest.raises(UsageError, match="one GPU"):
            process_device("cuda:0", two)  # two processes of this machine on one GPU


def test_two_processes_step_on_the_whole_batch_gradient(data: Path, worker: Path, tmp_path):
    """Dice sums and batch-norm statistics are reduced over the processes, so one step's
    gradient is the one-process gradient of the whole batch -- also when a process has
    no movie of the batch and runs a stand-in with weight 0."""
    proc = torchrun(worker, "grad", data, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["unused"] > 0 for r in report] == [False, False, True]
    for r in report:
        assert r["grad_diff"] < GRAD_RTOL * r["grad_scale"], r
        assert r["grad_rel_tensor"] < GRAD_RTOL_TENSOR, r
        assert r["loss"][1] == pytest.approx(r["loss"][0], rel=LOSS_RTOL), r
        assert r["sites"][0] == r["sites"][1], r
        assert r["running"] < 1e-5, r  # the running statistics kept for inference


def test_torchrun_training_matches_one_process(runs: dict) -> None:
    proc = runs["proc"]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # process 0 alone prints the result
    result = json.loads(lines[0])
    assert result["processes"] == 2 and result["epochs"] == 3 and result["seed"] == 3
    a, meta_a = model_store.load_state(runs["one"])
    b, meta_b = model_store.load_state(runs["two"])
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < WEIGHT_ATOL, worst
    la = [h["loss"] for h in meta_a.history]
    lb = [h["loss"] for h in meta_b.history]
    np.testing.assert_allclose(lb, la, rtol=LOSS_RTOL)
    assert [h["steps"] for h in meta_b.history] == [h["steps"] for h in meta_a.history]
    assert [h["val_dice"] for h in meta_b.history] == pytest.approx(
        [h["val_dice"] for h in meta_a.history], abs=1e-6
    )
    assert meta_b.training["processes"] == 2 and meta_b.training["complete"]


def test_only_process_zero_writes(runs: dict) -> None:
    ranks = {line.split()[0] for line in runs["writes"]}
    assert ranks == {"0"}, runs["writes"]
    written = {Path(line.split()[1]).name for line in runs["writes"]}
    assert written == {"two.zarr", "two.resume.zarr"}
    assert not resume_path(runs["two"]).exists()


def test_torchrun_resumes_a_run_interrupted_in_one_process(
    runs: dict, data: Path, worker: Path, tmp_path: Path, monkeypatch
) -> None:
    """--resume under torchrun continues from MODEL.resume.zarr, here one written by a
    single process: the global batch makes the number of processes free to change."""
    from ulmtools.cli.app import main
    from ulmtools.train import loop

    real = loop.run_epoch

    def interrupt_in_epoch_3(state, *a, **kw):
        if state.epoch == 2:
            raise KeyboardInterrupt
        return real(state, *a, **kw)

    part = tmp_path / "part.zarr"
    monkeypatch.setattr(loop, "run_epoch", interrupt_in_epoch_3)
    assert main(["train", str(data), str(part), *TRAIN_ARGS, "--val", str(data), "-q"]) == 130
    monkeypatch.setattr(loop, "run_epoch", real)
    assert model_store.info(resume_path(part)).training["epochs_done"] == 2
    log = tmp_path / "writes.log"
    proc = torchrun(worker, "cli", "train", data, part, "--resume", "--json", cwd=tmp_path,
                    WRITES_LOG=str(log))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["epochs"] == 3
    assert not resume_path(part).exists()
    assert {line.split()[0] for line in log.read_text().splitlines()} == {"0"}
    a, _ = model_store.load_state(runs["one"])
    b, meta = model_store.load_state(part)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < WEIGHT_ATOL, worst
    assert [h["loss"] for h in meta.history][2] == pytest.approx(
        [h["loss"] for h in model_store.info(runs["one"]).history][2], rel=LOSS_RTOL
    )
    assert meta.training["epochs_done"] == 3 and meta.provenance[-1]["parameters"]["resume"]


@pytest.mark.slow
def test_torchrun_interrupted_and_resumed_is_the_uninterrupted_run(
    runs: dict, data: Path, worker: Path, tmp_path: Path
) -> None:
    part = tmp_path / "part.zarr"
    log = tmp_path / "writes.log"
    args = ["cli", "train", data, part, *TRAIN_ARGS, "--val", data, "-q"]
    stopped = torchrun(worker, *args, cwd=tmp_path, WRITES_LOG=str(log), STOP_IN_EPOCH="3")
    assert stopped.returncode != 0  # Ctrl-C in epoch 3 of 3, in both processes
    assert model_store.info(resume_path(part)).training["epochs_done"] == 2
    resumed = torchrun(worker, *args, "--resume", cwd=tmp_path, WRITES_LOG=str(log))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not resume_path(part).exists()
    a, _ = model_store.load_state(runs["two"])
    b, meta = model_store.load_state(part)
    # two processes are deterministic: the resumed run is the uninterrupted one, bit for bit
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert meta.training["epochs_done"] == 3
    assert {line.split()[0] for line in log.read_text().splitlines()} == {"0"}


@pytest.mark.slow
def test_a_refusal_stops_every_process_with_one_error(
    runs: dict, data: Path, worker: Path, tmp_path: Path
) -> None:
    """A check that fails after the processes have met (the output exists) stops all of
    them with the same one-line error and exit code, instead of leaving one waiting
    (the subprocess's timeout would catch a hang)."""
    proc = torchrun(worker, "cli", "train", data, runs["two"], *TRAIN_ARGS, cwd=tmp_path,
                    WRITES_LOG=str(tmp_path / "w.log"))  # fmt: skip
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if "exists" in ln and "--force" in ln]
    # one line per process (unless torchrun stopped the other first), no traceback of
    # ours (torchrun prints its own report), exit code 4 (torchrun itself exits 1)
    assert 1 <= len(errors) <= 2, proc.stderr[-3000:]
    assert "ulmtools/" not in proc.stderr
    assert "exitcode  : 4" in proc.stderr
    assert not (tmp_path / "w.log").exists()
