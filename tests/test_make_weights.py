"""``scripts/make-weights.sh`` (``make weights``): an interrupted run resumes,
NPROC_3D trains in several processes, FEATURES_3D=corr,iq gives the network the IQ, and
a SIGTERM to the script stops the training it runs.

The recipe runs for hours outside CI, so it must pick up an interrupted ``ulm train``
where its checkpoint left it rather than ship the half-trained model. Here the 3D
recipe runs on one tiny movie (a few seconds of training), is interrupted in its
second epoch, and is run again.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_train import interrupt_in_epoch
from tests.test_train_distributed import WEIGHT_ATOL
from ulmtools.models import store as model_store
from ulmtools.store import open_store
from ulmtools.train import loop
from ulmtools.train import run as train_run
from ulmtools.train.checkpoint import resume_path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make-weights.sh"
TINY_3D = {
    "WEIGHTS_2D": "0",
    "TRAIN_NETS_3D": "1",
    "CONCENTRATIONS_3D": "30",
    "MOVIES_3D": "1",
    "FRAMES_3D": "32",
    "VAL_MOVIES_3D": "1",
    "EPOCHS_3D": "3",
    "FINETUNE_EPOCHS_3D": "0",  # stage 1 alone, except where a test asks for stage 2
    "CHANNELS_3D": "4",
    "INFER_ADVICE": "0",
    "OMP_NUM_THREADS": "1",
    "KEEP": "1",
    "CARD3D": "/nonexistent",
}


def recipe_env(work: Path, out: Path, **extra: str) -> dict[str, str]:
    """The tiny recipe's environment, with this interpreter's ``ulm`` first on PATH."""
    env = {**os.environ, **TINY_3D, "WORK": str(work), "OUT": str(out), **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def make_weights(work: Path, out: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = recipe_env(work, out, **extra)
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600
    )


# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_interrupted_training_resumes(cli, tmp_path: Path, monkeypatch) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    whole = make_weights(work, out)
    assert whole.returncode == 0, whole.stderr
    model = work / "deepstulm-3d.zarr"
    command = open_store(model, "model").provenance[-1]["command"]
    assert command.startswith("ulm train ")

    # the same 'ulm train' from scratch, stopped by Ctrl-C at the start of its second
    # epoch: the model store after epoch 1 (written every epoch when epochs take over a
    # minute, as the recipe's do) and its checkpoint are left, as after a kill
    shutil.rmtree(model)
    monkeypatch.setattr(train_run, "MODEL_WRITE_SECONDS", 0.0)
    real = interrupt_in_epoch(2, monkeypatch)
    assert cli(*shlex.split(command)[1:]).code == 130
    monkeypatch.setattr(loop, "run_epoch", real)
    assert model.exists() and resume_path(model).exists()
    assert len(model_store.load(model)[1].history) == 1

    again = make_weights(work, tmp_path / "out2")
    assert again.returncode == 0, again.stderr
    assert "after epoch 1 of 3" in again.stderr  # 'ulm train --resume' ran
    shipped = tmp_path / "out2" / "deepstulm-3d.zarr"
    a, _ = model_store.load_state(out / "deepstulm-3d.zarr")
    b, meta = model_store.load_state(shipped)
    assert [h["epoch"] for h in meta.history] == [1, 2, 3]
    assert meta.training["complete"] and not resume_path(model).exists()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed to the uninterrupted model"


def test_nproc_trains_in_several_processes(tmp_path: Path) -> None:
    """NPROC_3D=2 runs the recipe's 'ulm train' under torchrun: the model says it was
    trained by two processes, and equals the one-process run of the same batch size
    (to the float32 rounding of tests/test_train_distributed.py)."""
    one, two = tmp_path / "one", tmp_path / "two"
    # on the correlation, where WEIGHT_ATOL was measured: with the IQ's two more inputs the
    # same Adam-normalised rounding noise of near-zero gradients reached 3.2e-3 (a third of
    # one step at lr 1e-2); the equivalence itself is tests/test_train_distributed.py's
    batch = {"BATCH_3D": "2", "MOVIES_3D": "2", "EPOCHS_3D": "2", "FEATURES_3D": "corr"}
    done = make_weights(one / "work", one / "out", **batch)
    assert done.returncode == 0, done.stderr
    done = make_weights(two / "work", two / "out", **batch, NPROC_3D="2")
    assert done.returncode == 0, done.stderr
    a, meta_one = model_store.load_state(one / "out" / "deepstulm-3d.zarr")
    b, meta_two = model_store.load_state(two / "out" / "deepstulm-3d.zarr")
    assert meta_two.training["processes"] == 2 and "processes" not in meta_one.training
    assert [h["epoch"] for h in meta_two.history] == [1, 2]
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < WEIGHT_ATOL, worst

    bad = make_weights(tmp_path / "bad", tmp_path / "bad-out", NPROC_3D="two")
    assert bad.returncode == 2 and "NPROC_3D=two" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_features_3d_makes_iq_stores_and_a_four_input_model(tmp_path: Path) -> None:
    """FEATURES_3D=corr,iq sparsifies the 3D stores with the IQ too (their own names, so
    they sit beside the correlation-only ones) and trains a network with four inputs;
    LEVEL_3D=channel makes them from channel-level movies and ulm beamform."""
    work, out = tmp_path / "work", tmp_path / "out"
    done = make_weights(work, out, FEATURES_3D="corr,iq", LEVEL_3D="channel", EPOCHS_3D="1")
    assert done.returncode == 0, done.stderr
    for name in ("train3d-n1-c30-ch-corr-iq", "val3d-m1-ch-corr-iq"):
        store = open_store(work / f"{name}.zarr")
        feats = store.array("feats")
        assert list(feats.attrs["channels"]) == ["real", "imag", "iq_real", "iq_imag"]
        # LEVEL_3D=channel: simulated at channel level and beamformed, as the test movies
        assert [p["stage"] for p in store.provenance][:3] == ["simulate", "beamform", "sparsify"]
    meta = model_store.info(out / "deepstulm-3d.zarr")
    assert meta.kwargs["in_channels"] == 4

    bad = make_weights(tmp_path / "bad", tmp_path / "bad-out", FEATURES_3D="iq")
    assert bad.returncode == 2 and "FEATURES_3D=iq" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    bad = make_weights(tmp_path / "bad", tmp_path / "bad-out", LEVEL_3D="rf")
    assert bad.returncode == 2 and "LEVEL_3D=rf" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_finetune_level_3d_continues_on_channel_level_movies(tmp_path: Path) -> None:
    """The shipped recipe's two stages (FEATURES_3D=corr,iq, FINETUNE_LEVEL_3D=channel, the
    defaults): stage 1 trains on image-level movies, stage 2 continues from it (--init) on
    the same movies simulated at channel level and beamformed, and validates on the
    channel-level validation movies; FINETUNE_NETS_3D gives stage 2 more networks."""
    work, out = tmp_path / "work", tmp_path / "out"
    done = make_weights(work, out, EPOCHS_3D="1", FINETUNE_EPOCHS_3D="1", FINETUNE_NETS_3D="1 2")
    assert done.returncode == 0, done.stderr
    stages = {
        name: [p["stage"] for p in open_store(work / f"{name}.zarr").provenance]
        for name in ("train3d-n1-c30-corr-iq", "train3d-n1-c30-ch-corr-iq", "val3d-m1-ch-corr-iq")
    }
    assert stages["train3d-n1-c30-corr-iq"][:2] == ["simulate", "sparsify"]
    assert stages["train3d-n1-c30-ch-corr-iq"][:3] == ["simulate", "beamform", "sparsify"]
    assert stages["val3d-m1-ch-corr-iq"][:3] == ["simulate", "beamform", "sparsify"]
    # the same movie (network and seed) at both levels
    seeds = {
        name: open_store(work / f"{name}.zarr").provenance[0]["command"].split("--seed ")[1]
        for name in ("train3d-n1-c30-corr-iq", "train3d-n1-c30-ch-corr-iq")
    }
    assert len(set(seeds.values())) == 1, seeds
    # stage 2's stores are made beside stage 1's training, on the other core: beamformed
    # on one thread (numba's pool is every core unless NUMBA_NUM_THREADS says otherwise)
    for name in ("train3d-n1-c30-ch-corr-iq", "train3d-n2-c30-ch-corr-iq", "val3d-m1-ch-corr-iq"):
        beamform = open_store(work / f"{name}.zarr").provenance[1]
        assert beamform["parameters"]["workers"] == 1, (name, beamform["parameters"])
    command = open_store(out / "deepstulm-3d.zarr", "model").provenance[-1]["command"]
    assert "--init" in command and "deepstulm-3d-stage1.zarr" in command
    assert "train3d-n1-c30-ch-corr-iq.zarr" in command and "val3d-m1-ch-corr-iq.zarr" in command
    assert "train3d-n1-c30-corr-iq.zarr" not in command
    # stage 2 on networks 1 and 2, stage 1 on network 1 alone
    assert "train3d-n2-c30-ch-corr-iq.zarr" in command
    assert not (work / "train3d-n2-c30-corr-iq.zarr").exists()

    bad = make_weights(tmp_path / "bad", tmp_path / "bad-out", FINETUNE_LEVEL_3D="rf")
    assert bad.returncode == 2 and "FINETUNE_LEVEL_3D=rf" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    bad = make_weights(tmp_path / "bad2", tmp_path / "bad2-out", FINETUNE_NETS_3D="1 x")
    assert bad.returncode == 2 and "FINETUNE_NETS_3D has 'x'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad2").exists()


def _recipe_processes(work: Path) -> list[int]:
    """The pids of running processes whose command line names ``work``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if any(str(work).encode() in a for a in argv) and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def test_sigterm_stops_the_training_it_runs(tmp_path: Path) -> None:
    """SIGTERM to the recipe's shell alone (a batch scheduler, 'timeout') stops the 'ulm
    train' it is waiting for, instead of leaving it to run on and write the model later;
    the training leaves its checkpoint, and the run exits non-zero."""
    work, out = tmp_path / "work", tmp_path / "out"
    env = recipe_env(work, out, EPOCHS_3D="500")
    log = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while it runs
    with log.open("w") as err:
        recipe = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while not resume_path(work / "deepstulm-3d.zarr").exists():  # epoch 1 is done
            assert recipe.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        recipe.send_signal(signal.SIGTERM)
        assert recipe.wait(timeout=120) != 0
        deadline = time.monotonic() + 60
        while _recipe_processes(work) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _recipe_processes(work) == [], "the recipe's commands outlived it"
        assert resume_path(work / "deepstulm-3d.zarr").exists()
        assert not (out / "deepstulm-3d.zarr").exists()
    finally:
        if recipe.poll() is None:
            recipe.kill()
        for pid in _recipe_processes(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
