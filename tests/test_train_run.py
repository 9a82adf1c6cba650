"""``ulmtools.train.run.train``: the library call ``ulm train`` is a thin layer over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_train import make_sparse
from ulmtools.errors import InputError, OutputError, UsageError
from ulmtools.models import store as model_store
from ulmtools.train.run import train

# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_sparse(tmp_path_factory.mktemp("run") / "t.zarr", (8, 8))


ARGS = {"epochs": 2, "channels": 4, "seed": 7, "deep_supervision": True}


def test_the_function_is_the_command(cli, data: Path, tmp_path: Path) -> None:
    steps = []
    lib = tmp_path / "lib.zarr"
    result = train(data, lib, val=data, progress=lambda d, n, m="": steps.append((d, n, m)), **ARGS)
    r = cli("train", data, tmp_path / "cli.zarr", "--val", data, "--epochs", "2",
            "--channels", "4", "--seed", "7", "--deep-supervision", "--json")  # fmt: skip
    assert r.code == 0, r.err
    printed = json.loads(r.out)
    assert set(result) == set(printed)
    for key in ("architecture", "parameters", "dimension", "epochs", "schedule", "loss",
                "val_dice", "seed"):  # fmt: skip
        assert result[key] == printed[key], key
    a, _ = model_store.load_state(lib)
    b, _ = model_store.load_state(tmp_path / "cli.zarr")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps and steps[-1][0] == steps[-1][1] and "epoch 2/2" in steps[-1][2]


def test_errors_carry_the_commands_exit_codes(data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown architecture"):
        train(data, tmp_path / "m.zarr", arch="resnet")
    with pytest.raises(UsageError, match="does not apply"):
        train(data, tmp_path / "m.zarr", arch="mask-cnn", pruning=True)
    with pytest.raises(InputError, match="no resume state"):
        train(data, tmp_path / "m.zarr", resume=True)
    (tmp_path / "m.zarr").mkdir()
    (tmp_path / "m.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(OutputError, match="exists") as err:
        train(data, tmp_path / "m.zarr", **ARGS)
    assert err.value.exit_code == 4


def test_a_validation_store_without_truth_is_named_as_such(cli, data: Path, tmp_path: Path):
    bare = make_sparse(tmp_path / "bare.zarr", (8, 8), truth=False)
    r = cli("train", data, tmp_path / "m.zarr", "--val", bare, "--epochs", "1", "--channels", "4")
    assert r.code == 3
    assert "no ground truth (truth/ group) to validate on" in r.err
    assert "validate on a sparse store made from simulated data" in r.err
    assert not (tmp_path / "m.zarr").exists()
    r = cli("train", bare, tmp_path / "m.zarr", "--epochs", "1", "--channels", "4")
    assert r.code == 3 and "to train on" in r.err


def test_only_the_sparse_network_trains_under_torchrun(data: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    img = data.with_name(data.name + ".img.zarr")
    for arch in ("mask-cnn", "deepstulm"):
        with pytest.raises(UsageError, match="trains in one process") as err:
            train(img, tmp_path / "m.zarr", arch=arch)
        assert err.value.exit_code == 2


def test_init_starts_from_a_trained_model_and_keeps_its_architecture(
    cli, data: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.zarr"
    train(data, base, **ARGS)
    w0, meta0 = model_store.load_state(base)
    # zero epochs of change would be the same weights: one epoch at a tiny lr stays close
    tuned = tmp_path / "tuned.zarr"
    r = cli("train", data, tuned, "--init", base, "--epochs", "1", "--lr", "1e-9",
            "--seed", "3", "--json")  # fmt: skip
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["schedule"] == "finetune"  # auto picks it with --init
    w1, meta1 = model_store.load_state(tuned)
    assert meta1.kwargs == meta0.kwargs  # width 4 and classifiers came from the model
    conv = [k for k in w0 if k.endswith("weight") and w0[k].ndim > 1]
    assert max(float((w1[k] - w0[k]).abs().max()) for k in conv) < 1e-4
    # from scratch with the same seed the weights are nowhere near
    scratch = tmp_path / "scratch.zarr"
    train(data, scratch, epochs=1, channels=4, seed=3, deep_supervision=True, lr=1e-9)
    w2, _ = model_store.load_state(scratch)
    assert max(float((w2[k] - w0[k]).abs().max()) for k in conv) > 1e-2
    # the model's record names its starting point, and the lineage keeps the first run's
    assert meta1.training["init"]["id"] == meta0.id
    stages = [e["stage"] for e in meta1.provenance]
    assert stages.count("train") == 2
    r = cli("info", tuned, "--json")
    assert json.loads(r.out)["parameters"] == out["parameters"]
    r = cli("info", tuned)
    assert f"started from {base}" in r.out and f"{out['parameters']:,} parameters" in r.out


def test_init_refusals(cli, data: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.zarr"
    train(data, base, epochs=1, channels=4, seed=1)
    with pytest.raises(UsageError, match=r"--channels 8 \(the model's 4\)"):
        train(data, tmp_path / "m.zarr", init=base, channels=8)
    with pytest.raises(UsageError, match="no intermediate classifiers"):
        train(data, tmp_path / "m.zarr", init=base, pruning=True)
    with pytest.raises(UsageError, match="does not apply"):
        train(data, tmp_path / "m.zarr", arch="deepstulm", init=base)
    vol = make_sparse(tmp_path / "vol.zarr", (8, 8, 8), frames=8)
    with pytest.raises(UsageError, match=r"is a 2D\+t model but the training data are 3D\+t"):
        train(vol, tmp_path / "m.zarr", init=base)
    r = cli("train", data, tmp_path / "m.zarr", "--init", data)
    assert r.code != 0 and "Traceback" not in r.err and len(r.err.strip().splitlines()) <= 2
    assert not (tmp_path / "m.zarr").exists()


def test_time_pool_is_a_stored_architecture_choice_that_init_may_change(
    cli, data: Path, tmp_path: Path
) -> None:
    from ulmtools.infer.core import predict
    from ulmtools.models.deepstulm import SparseDeepStulm
    from ulmtools.train.data import SparseMovies

    pooled = tmp_path / "pooled.zarr"
    r = cli("train", data, pooled, "--epochs", "1", "--channels", "4", "--seed", "2",
            "--deep-supervision", "--time-pool", "2,2,2,64", "--json")  # fmt: skip
    assert r.code == 0, r.err
    net, meta = model_store.load(pooled)
    assert meta.kwargs["time_pool"] == [2, 2, 2, 64] and net.time_pool == (2, 2, 2, 64)
    assert meta.training["config"]["time_pool"] == [2, 2, 2, 64]
    assert "time_pool=[2, 2, 2, 64]" in cli("info", pooled).out
    # the same weights pooled the paper's way make another map: the pooling is used
    paper = SparseDeepStulm(**{**meta.kwargs, "time_pool": (4, 4, 8, 8)})
    paper.load_state_dict(net.state_dict())
    movie = SparseMovies(data).movie(0)
    (c1, p1), (c2, p2) = predict(net, [movie])[0], predict(paper, [movie])[0]
    assert len(c1) != len(c2) or not torch.allclose(torch.from_numpy(p1), torch.from_numpy(p2))
    # --init keeps the model's pooling, or takes a new one (pooling has no weights)
    kept, changed = tmp_path / "kept.zarr", tmp_path / "changed.zarr"
    train(data, kept, init=pooled, epochs=1, lr=1e-9, seed=3)
    assert model_store.load(kept)[1].kwargs["time_pool"] == [2, 2, 2, 64]
    train(data, changed, init=pooled, epochs=1, lr=1e-9, seed=3, time_pool="4,4,8,8")
    w0, _ = model_store.load_state(pooled)
    w1, meta1 = model_store.load_state(changed)
    assert meta1.kwargs["time_pool"] == [4, 4, 8, 8]
    assert {k: v for k, v in meta1.kwargs.items() if k != "time_pool"} == {
        k: v for k, v in meta.kwargs.items() if k != "time_pool"
    }
    conv = [k for k in w0 if k.endswith("weight") and w0[k].ndim > 1]
    assert max(float((w1[k] - w0[k]).abs().max()) for k in conv) < 1e-4
    # --resume keeps the stored pooling (also from an --init model with another) and
    # refuses a different one
    from tests.test_train import interrupt_in_epoch
    from ulmtools.train import loop

    part = tmp_path / "part.zarr"
    monkeypatch = pytest.MonkeyPatch()
    real = interrupt_in_epoch(2, monkeypatch)
    try:
        r = cli("train", data, part, "--init", pooled, "--epochs", "2", "--lr", "1e-9",
                "--time-pool", "4,4,8,8", "-q")  # fmt: skip
        assert r.code == 130, r.err
    finally:
        monkeypatch.setattr(loop, "run_epoch", real)
        monkeypatch.undo()
    r = cli("train", data, part, "--resume", "--init", pooled, "--time-pool", "2,2,2,64")
    assert r.code == 2 and "--time-pool 2,2,2,64 (stored 4,4,8,8)" in r.err
    r = cli("train", data, part, "--resume", "--init", pooled, "-q")
    assert r.code == 0, r.err
    assert model_store.load(part)[1].kwargs["time_pool"] == [4, 4, 8, 8]
    # refusals: one line, exit 2, nothing written
    bad = tmp_path / "bad.zarr"
    for spec, msg in [("4,4,8", "needs 4 positive whole factors"),
                      ("4,4,0,8", "needs 4 positive whole factors"),
                      ("4,4,x,8", "give 4 whole numbers")]:  # fmt: skip
        r = cli("train", data, bad, "--time-pool", spec)
        assert r.code == 2 and msg in r.err, (spec, r.err)
        assert "Traceback" not in r.err
    img = data.with_name(data.name + ".img.zarr")
    r = cli("train", img, bad, "--arch", "mspcn", "--time-pool", "4,4,8,8")
    assert r.code == 2 and "--time-pool" in r.err
    assert not bad.exists()
