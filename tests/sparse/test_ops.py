"""Set operations, dense conversion, edge cases, caching and determinism."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sparse.reference import densify, random_sites
from ulmtools import sparse as sp
from ulmtools.sparse.coords import neighbour_table


def _rows(x: sp.SparseTensor) -> dict[tuple[int, ...], list[float]]:
    return {tuple(c): f for c, f in zip(x.coords.tolist(), x.feats.tolist())}


# -- dense <-> sparse ---------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    shape=st.lists(st.integers(1, 6), min_size=3, max_size=4),
    channels=st.integers(1, 3),
    density=st.floats(0.0, 1.0),
    stride=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_dense_round_trip(batch, shape, channels, density, stride, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn((batch, channels, *shape), generator=g)
    mask = torch.rand((batch, *shape), generator=g) < density
    dense = dense * mask.unsqueeze(1)
    x = sp.from_dense(dense, mask=mask, tensor_stride=stride)
    assert x.num_sites == int(mask.sum())
    assert bool((x.coords[:, 1:] % stride == 0).all())
    back = sp.to_dense(x, shape=shape, batch_size=batch)
    torch.testing.assert_close(back, dense)
    # and the other way: sparse -> dense -> sparse keeps sites and features
    again = sp.from_dense(back, mask=mask, tensor_stride=stride)
    assert _rows(again) == _rows(x)


def test_from_dense_is_differentiable() -> None:
    dense = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    mask = torch.rand(2, 4, 5, 6) < 0.3
    x = sp.from_dense(dense, mask=mask)
    x.feats.sum().backward()
    torch.testing.assert_close(dense.grad, mask.unsqueeze(1).expand_as(dense).to(dense.dtype))


def test_to_dense_defaults_and_stride() -> None:
    coords = torch.tensor([[0, 8, 16, 3], [1, 0, 8, 0]])
    x = sp.sparse_tensor(coords, torch.tensor([[1.0], [2.0]]), (8, 8, 1))
    d = sp.to_dense(x)
    assert d.shape == (2, 1, 2, 3, 4)
    assert d[0, 0, 1, 2, 3] == 1.0 and d[1, 0, 0, 1, 0] == 2.0
    assert d.sum() == 3.0


# -- union, cat, prune ------------------------------------------------------------------
def test_union_matches_dense_sum() -> None:
    rng = np.random.default_rng(1)
    ca = random_sites(rng, 2, (5, 5, 5), 40)
    cb = random_sites(rng, 2, (5, 5, 5), 40)
    fa = torch.randn(len(ca), 2, requires_grad=True)
    fb = torch.randn(len(cb), 2, requires_grad=True)
    x = sp.sparse_tensor(ca, fa)
    y = sp.sparse_tensor(cb, fb, manager=x.manager)
    u = sp.union(x, y)
    ref = densify(ca, fa, (1, 1, 1), (5, 5, 5), 2) + densify(cb, fb, (1, 1, 1), (5, 5, 5), 2)
    assert u.num_sites == len({tuple(c) for c in ca.tolist()} | {tuple(c) for c in cb.tolist()})
    torch.testing.assert_close(sp.to_dense(u, shape=(5, 5, 5), batch_size=2), ref)
    u.feats.sum().backward()
    torch.testing.assert_close(fa.grad, torch.ones_like(fa))


def test_cat_needs_same_coordinates() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]])
    x = sp.sparse_tensor(coords, torch.randn(2, 2))
    y = x.replace_feats(torch.randn(2, 3))
    z = sp.cat(x, y)
    assert z.num_channels == 5 and z.same_coords(x)
    other = sp.sparse_tensor(coords, torch.randn(2, 3), manager=x.manager)
    with pytest.raises(ValueError, match="same coordinates"):
        sp.cat(x, other)
    with pytest.raises(ValueError, match="same coordinates"):
        _ = x + other


def test_prune_keeps_masked_rows_and_grads() -> None:
    rng = np.random.default_rng(0)
    coords = random_sites(rng, 2, (6, 6, 6), 50)
    feats = torch.randn(len(coords), 3, requires_grad=True)
    x = sp.sparse_tensor(coords, feats)
    mask = feats[:, 0] > 0
    y = sp.Prune()(x, mask)
    assert torch.equal(y.coords, coords[mask])
    # the pruned tensor keeps working with later layers
    z = sp.Conv(3, 2, 3, dimension=3)(y)
    z.feats.sum().backward()
    assert bool((feats.grad[~mask] == 0).all())


# -- edge cases ----------------------------------------------------------------------------
@pytest.mark.parametrize("d", [3, 4])
def test_empty_tensors_flow_through_every_layer(d: int) -> None:
    x = sp.sparse_tensor(
        torch.zeros((0, 1 + d), dtype=torch.int32), torch.zeros(0, 2, requires_grad=True)
    )
    layers = [
        sp.Conv(2, 4, 3, dimension=d),
        sp.BatchNorm(4),
        sp.ELU(),
        sp.Conv(4, 4, 2, 2, dimension=d),
        sp.MaxPool(2, dimension=d),
        sp.ConvTranspose(4, 4, 2, 2, generative=True, dimension=d),
        sp.ReLU(),
        sp.Sigmoid(),
    ]
    y = x
    for layer in layers:
        y = layer(y)
        assert y.num_sites == 0
    y = sp.cat(y, y)
    y = sp.union(y, y)
    assert y.num_channels == 8
    assert sp.to_dense(y, shape=(2,) * d, batch_size=1).abs().sum() == 0
    y.feats.sum().backward()


def test_single_site_and_no_neighbours() -> None:
    x = sp.sparse_tensor(torch.tensor([[0, 4, 4, 4]]), torch.ones(1, 1))
    conv = sp.Conv(1, 1, 3, dimension=3)
    y = conv(x)
    torch.testing.assert_close(y.feats, conv.weight[13])  # only the centre tap sees data


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="multiples of the tensor stride"):
        sp.sparse_tensor(torch.tensor([[0, 3, 0, 0]]), torch.ones(1, 1), (2, 1, 1))
    with pytest.raises(ValueError, match="duplicate"):
        sp.sparse_tensor(torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]]), torch.ones(2, 1))
    with pytest.raises(ValueError, match="kernel_size must have 3"):
        sp.Conv(1, 1, (3, 3), dimension=3)
    x = sp.sparse_tensor(torch.tensor([[0, 1, 1, 1]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="input channels"):
        sp.Conv(3, 1, 3, dimension=3)(x)
    with pytest.raises(sp.BackendUnavailableError, match="unknown sparse backend"):
        sp.get_backend("nope")


# -- kernel maps: caching and the large-grid fallback ---------------------------------
def test_kernel_maps_are_built_once_per_coordinate_set() -> None:
    rng = np.random.default_rng(0)
    coords = random_sites(rng, 1, (8, 8, 8), 100)
    x = sp.sparse_tensor(coords, torch.randn(len(coords), 4))
    convs = [sp.Conv(4, 4, 3, dimension=3) for _ in range(5)]
    y = x
    for c in convs:
        y = c(y)
    assert x.manager.maps_built == 1
    y.feats.sum().backward()
    assert x.manager.maps_built == 1
    sp.Conv(4, 4, (3, 3, 1), dimension=3)(x)  # another kernel: another map
    assert x.manager.maps_built == 2


def test_sorted_fallback_matches_table(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    src = random_sites(rng, 2, (9, 7, 11), 200).long()
    queries = random_sites(rng, 2, (9, 7, 11), 150).long()
    offs = sp.kernel_offsets((3, 2, 5), (1, 2, 1))
    table = neighbour_table(src, queries, offs)
    import ulmtools.sparse.coords as coords_mod

    monkeypatch.setattr(coords_mod, "DENSE_TABLE_MAX_CELLS", 0)
    monkeypatch.setattr(coords_mod, "DENSE_TABLE_CELLS_PER_SITE", 0)
    fallback = coords_mod.neighbour_table(src, queries, offs)
    assert torch.equal(table, fallback)
    # huge sparse coordinates take the fallback path by themselves
    scale = torch.tensor([1, 1000, 1000, 1000])
    far = src * scale
    far_q = queries * scale
    far_table = neighbour_table(far, far_q, offs * 1000)
    assert torch.equal(far_table, table)


# -- determinism ---------------------------------------------------------------------------
def _run_once(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    coords = random_sites(rng, 2, (8, 8, 16), 300, stride=(2, 2, 1))
    net = torch.nn.Sequential(
        sp.Conv(2, 8, 3, dimension=3),
        sp.BatchNorm(8),
        sp.ELU(),
        sp.MaxPool((2, 2, 4), dimension=3),
        sp.Conv(8, 8, 3, dimension=3),
        sp.ConvTranspose(8, 4, (2, 2, 1), (2, 2, 1), generative=True, dimension=3),
        sp.Sigmoid(),
    )
    x = sp.sparse_tensor(coords, torch.randn(len(coords), 2), (2, 2, 1))
    y = net(x)
    y.feats.square().sum().backward()
    return y.feats.detach(), [p.grad.clone() for p in net.parameters()]


def test_same_seed_same_result() -> None:
    a, ga = _run_once(123)
    b, gb = _run_once(123)
    assert torch.equal(a, b)
    for u, v in zip(ga, gb):
        assert torch.equal(u, v)
    c, _ = _run_once(124)
    assert not torch.equal(a, c) if a.shape == c.shape else True


def test_float32_and_int64_coords() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.int64)
    x = sp.sparse_tensor(coords, torch.randn(3, 2, dtype=torch.float32))
    y = sp.Conv(2, 3, 3, dimension=3).float()(x)
    assert y.dtype == torch.float32 and y.coords.dtype == torch.int32


def test_runs_under_deterministic_algorithms() -> None:
    """No op of the engine is refused by torch's deterministic mode."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a, ga = _run_once(5)
        b, gb = _run_once(5)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb))


def test_backend_selection_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sp.ENV_VAR, "builtin")
    assert sp.get_backend().name == "builtin"
    monkeypatch.setenv(sp.ENV_VAR, "nope")
    with pytest.raises(sp.BackendUnavailableError, match="unknown sparse backend"):
        sp.get_backend()
    sp.set_default_backend("builtin")  # an explicit choice (e.g. --backend) beats the env
    try:
        assert sp.get_backend().name == "builtin"
    finally:
        sp.set_default_backend(None)


def test_missing_backend_error_mentions_make_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for MinkowskiEngine where it is missing says how to get it."""
    import builtins

    import ulmtools.sparse._minkowski as mk

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "MinkowskiEngine":
            raise ImportError("No module named 'MinkowskiEngine'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(sp.BackendUnavailableError, match="make minkowski"):
        mk.import_minkowski()
    assert "OPENBLAS_NUM_THREADS" in os.environ  # set (to 1 unless the user chose)
