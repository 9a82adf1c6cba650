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


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_only_the_sparse_network_trains_under_torchrun(data: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    img = data.with_name(data.name + ".img.zarr")
    for arch in ("mask-cnn", "deepstulm"):
        with pytest.raises(UsageError, match="trains in one process") as err:
            train(img, tmp_path / "m.zarr", arch=arch)
        assert err.value.exit_code == 2
