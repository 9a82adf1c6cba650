"""The model store: any registered torch network saved as Zarr and loaded without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from ulmtools.errors import InputError, OutputError
from ulmtools.models import store as ms
from ulmtools.store import open_store


class _Tiny(nn.Module):
    """A test network with parameters, buffers of several dtypes and a 0-d buffer."""

    def __init__(self, width: int = 3, depth: int = 2, note: str = "x") -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
        self.bn = nn.BatchNorm1d(width)  # running stats + num_batches_tracked (0-d int64)
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("halves", torch.arange(4, dtype=torch.float16))
        self.register_buffer("bf16", torch.linspace(-1, 1, 5, dtype=torch.bfloat16))
        self.note = note

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.layers(x))


ms.register_architecture("test-tiny", _Tiny)


def _trained_tiny(width: int = 3) -> _Tiny:
    torch.manual_seed(0)
    net = _Tiny(width=width)
    net.train()
    net(torch.randn(8, width))  # moves the batch-norm running statistics
    return net.eval()


def test_round_trip_is_exact(tmp_path):
    net = _trained_tiny()
    path = tmp_path / "m.zarr"
    ms.save(
        path,
        "test-tiny",
        {"width": 3, "depth": 2, "note": "x"},
        net.state_dict(),
        training={"lr": 0.1, "epochs": [1, 2], "nested": {"a": None}},
        history=[{"epoch": 1, "loss": 0.5}],
        attrs={"dataset": "unit test"},
    )
    loaded, meta = ms.load(path)
    assert isinstance(loaded, _Tiny) and not loaded.training
    a, b = net.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key
    x = torch.randn(4, 3)
    assert torch.equal(net(x), loaded(x))
    assert meta.name == "test-tiny" and meta.kwargs == {"width": 3, "depth": 2, "note": "x"}
    assert meta.training == {"lr": 0.1, "epochs": [1, 2], "nested": {"a": None}}
    assert meta.history == [{"epoch": 1, "loss": 0.5}]
    assert meta.attrs == {"dataset": "unit test"}
    assert {"ulmtools", "torch", "numpy", "zarr", "python"} <= set(meta.versions)
    assert meta.provenance[-1]["stage"] == "train"


def test_layout_is_plain_zarr_with_self_describing_attributes(tmp_path):
    net = _trained_tiny()
    path = tmp_path / "m.zarr"
    ms.save(path, "test-tiny", {"width": 3}, net.state_dict())
    store = open_store(path, "model")
    assert store.attrs["ulm"]["kind"] == "model"
    assert store.attrs["architecture"] == {"name": "test-tiny", "kwargs": {"width": 3}}
    index = store.attrs["weights"]
    assert [e["key"] for e in index] == list(net.state_dict())
    root = zarr.open_group(str(path), mode="r")
    for entry, (key, tensor) in zip(index, net.state_dict().items()):
        arr = root[entry["array"]]
        assert isinstance(arr, zarr.Array)
        assert arr.attrs["key"] == key and list(arr.shape) == list(tensor.shape)
        if tensor.dtype == torch.float32:
            np.testing.assert_array_equal(arr[...], tensor.numpy())
    by_key = {e["key"]: e for e in index}
    assert by_key["bf16"]["dtype"] == "bfloat16" and root[by_key["bf16"]["array"]].dtype == "uint16"
    assert by_key["bn.num_batches_tracked"]["shape"] == []
    # nothing pickled anywhere: every file is Zarr JSON metadata or a chunk
    for f in path.rglob("*"):
        if f.is_file() and f.name == "zarr.json":
            json.loads(f.read_text())


def test_load_never_unpickles(tmp_path, monkeypatch):
    net = _trained_tiny()
    path = tmp_path / "m.zarr"
    ms.save(path, "test-tiny", {}, net.state_dict())

    def forbidden(*a, **k):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    import pickle

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    ms.load(path)


def test_save_model_uses_the_models_own_description(tmp_path):
    from ulmtools.models.mask_cnn import MaskCNN

    net = MaskCNN(spatial_dims=3, channels=4, blocks=1)
    ms.save_model(tmp_path / "m.zarr", net, training={"epochs": 1})
    loaded, meta = ms.load(tmp_path / "m.zarr")
    assert isinstance(loaded, MaskCNN) and meta.kwargs["spatial_dims"] == 3
    with pytest.raises(TypeError, match="architecture_name"):
        ms.save_model(tmp_path / "n.zarr", nn.Linear(2, 2))


def test_builtin_architectures_load_lazily():
    assert "mask-cnn" in ms.architectures()
    assert ms.get_architecture("mask-cnn").__name__ == "MaskCNN"


def test_unknown_architecture_refused(tmp_path):
    path = tmp_path / "m.zarr"
    ms.save(path, "from-the-future", {}, {"w": torch.zeros(2)})
    with pytest.raises(InputError, match="unknown model architecture 'from-the-future'"):
        ms.load(path)
    state, meta = ms.load_state(path)  # the weights are still readable
    assert meta.name == "from-the-future" and torch.equal(state["w"], torch.zeros(2))


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "m.zarr"
    ms.save(path, "test-tiny", {"width": 4}, _trained_tiny(width=3).state_dict())
    with pytest.raises(InputError, match="do not fit architecture 'test-tiny'"):
        ms.load(path)
    bad = tmp_path / "bad.zarr"
    ms.save(bad, "test-tiny", {"depth": 2, "colour": "red"}, {})
    with pytest.raises(InputError, match="cannot build architecture"):
        ms.load(bad)


def test_wrong_kind_and_missing_store_refused(tmp_path):
    from ulmtools.sparsify.synthetic import SyntheticConfig, write_synthetic_store

    img = tmp_path / "img.zarr"
    write_synthetic_store(img, SyntheticConfig(movies=1, frames=2, shape=(4, 4)))
    with pytest.raises(InputError, match="this needs a model store"):
        ms.load(img)
    with pytest.raises(InputError, match="no such store"):
        ms.load(tmp_path / "none.zarr")


def test_non_json_metadata_is_refused_before_writing(tmp_path):
    path = tmp_path / "m.zarr"
    with pytest.raises(TypeError, match="constructor arguments"):
        ms.save(path, "test-tiny", {"f": object()}, {})
    with pytest.raises(TypeError, match="training"):
        ms.save(path, "test-tiny", {}, {}, training={"opt": torch.optim.SGD})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_existing_output_needs_force_and_writes_are_atomic(tmp_path):
    path = tmp_path / "m.zarr"
    ms.save(path, "test-tiny", {}, _trained_tiny().state_dict())
    with pytest.raises(OutputError, match="exists"):
        ms.save(path, "test-tiny", {}, {})
    ms.save(path, "test-tiny", {"width": 5}, _Tiny(width=5).state_dict(), force=True)
    assert ms.info(path).kwargs == {"width": 5}

    class Boom(dict):
        def items(self):
            yield "w", torch.zeros(2)
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ms.save(tmp_path / "x.zarr", "test-tiny", {}, Boom())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


def test_register_refuses_a_clashing_name():
    class Other(nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        ms.register_architecture("test-tiny", Other)
    # registering the same factory again is harmless
    assert ms.register_architecture("test-tiny", _Tiny) is _Tiny


def test_load_to_a_device_and_info_without_weights(tmp_path):
    path = tmp_path / "m.zarr"
    ms.save(path, "test-tiny", {}, _trained_tiny().state_dict(), history=[{"epoch": 1}])
    model, _ = ms.load(path, device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    meta = ms.info(Path(path))
    assert meta.history == [{"epoch": 1}] and meta.describe()["architecture"] == "test-tiny"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_load_to_cuda(tmp_path):
    path = tmp_path / "m.zarr"
    ms.save(path, "test-tiny", {}, _trained_tiny().state_dict())
    model, _ = ms.load(path, device="cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_ulm_info_shows_the_architecture(cli, tmp_path):
    path = tmp_path / "m.zarr"
    ms.save(path, "test-tiny", {"width": 3}, _trained_tiny().state_dict())
    r = cli("info", path)
    assert r.code == 0 and "architecture: test-tiny(width=3)" in r.out
