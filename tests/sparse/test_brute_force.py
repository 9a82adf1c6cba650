"""Layers in D = 4 (3D+t) and D = 3 against a one-site-at-a-time reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.sparse.reference import (
    brute_children,
    brute_conv,
    brute_conv_transpose,
    brute_max_pool,
    brute_strided,
    clustered_sites,
    random_sites,
)
from ulmtools import sparse as sp


def _grads(out: torch.Tensor, r: torch.Tensor, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad((out * r).sum(), leaves)


def _sort_rows(coords: torch.Tensor) -> torch.Tensor:
    keys = coords.long()
    order = torch.arange(len(keys))
    for col in reversed(range(keys.shape[1])):
        order = order[torch.argsort(keys[order, col], stable=True)]
    return order


CONV4 = [
    ((3, 3, 3, 3), (1, 1, 1, 1)),
    ((3, 1, 3, 5), (1, 1, 1, 1)),
    ((2, 2, 2, 4), (2, 2, 2, 4)),
    ((3, 3, 3, 3), (2, 2, 2, 2)),
    ((1, 1, 1, 1), (1, 1, 1, 1)),
]


@pytest.mark.parametrize("ks,st", CONV4)
@pytest.mark.parametrize("batch", [1, 2])
def test_conv_4d(ks, st, batch) -> None:
    rng = np.random.default_rng(abs(hash((ks, st, batch))) % 2**32)
    s_in = (2, 2, 2, 1)
    coords = random_sites(rng, batch, (5, 4, 5, 7), n=120 * batch, stride=s_in)
    feats = torch.randn(len(coords), 3, requires_grad=True)
    layer = sp.Conv(3, 2, ks, st, dimension=4)
    y = layer(sp.sparse_tensor(coords, feats, s_in))
    s_out = tuple(a * b for a, b in zip(s_in, st))
    assert torch.equal(y.coords[_sort_rows(y.coords)], brute_strided(coords, s_out))
    ref = brute_conv(coords, feats, layer.weight, ks, s_in, y.coords)
    torch.testing.assert_close(y.feats, ref)
    r = torch.randn_like(ref)
    for a, b in zip(_grads(y.feats, r, feats, layer.weight), _grads(ref, r, feats, layer.weight)):
        torch.testing.assert_close(a, b)


def test_conv_4d_dilated_clustered() -> None:
    rng = np.random.default_rng(5)
    coords = clustered_sites(rng, 2, (8, 8, 8, 10), n_blobs=3, radius=1)
    feats = torch.randn(len(coords), 2, requires_grad=True)
    layer = sp.Conv(2, 3, 3, dilation=(1, 2, 1, 2), dimension=4)
    y = layer(sp.sparse_tensor(coords, feats))
    ref = brute_conv(
        coords, feats, layer.weight, (3, 3, 3, 3), (1, 1, 1, 1), y.coords, (1, 2, 1, 2)
    )
    torch.testing.assert_close(y.feats, ref)


@pytest.mark.parametrize(
    "ks,st",
    [((2, 2, 2, 4), (2, 2, 2, 4)), ((1, 1, 1, 8), (1, 1, 1, 8)), ((3, 3, 3, 3), (2, 2, 2, 2))],
)
def test_max_pool_4d(ks, st) -> None:
    rng = np.random.default_rng(2)
    coords = random_sites(rng, 2, (4, 5, 4, 16), n=300)
    feats = torch.randn(len(coords), 4, requires_grad=True)
    y = sp.max_pool(sp.sparse_tensor(coords, feats), ks, st)
    ref = brute_max_pool(coords, feats, ks, (1, 1, 1, 1), y.coords)
    torch.testing.assert_close(y.feats, ref)
    r = torch.randn_like(ref)
    torch.testing.assert_close(_grads(y.feats, r, feats)[0], _grads(ref, r, feats)[0])


@pytest.mark.parametrize(
    "ks,st",
    [((2, 2, 2, 1), (2, 2, 2, 1)), ((3, 3, 3, 3), (2, 2, 2, 2)), ((3, 3, 3, 1), (1, 1, 1, 1))],
)
@pytest.mark.parametrize("generative", [False, True])
def test_conv_transpose_4d(ks, st, generative) -> None:
    rng = np.random.default_rng(9)
    s_fine = (2, 2, 2, 4)
    fine = random_sites(rng, 2, (4, 4, 4, 6), n=160, stride=s_fine)
    x_fine = sp.sparse_tensor(fine, torch.zeros(len(fine), 3), s_fine)
    coarse = sp.max_pool(x_fine, st) if any(s > 1 for s in st) else x_fine
    feats = torch.randn(coarse.num_sites, 3, requires_grad=True)
    layer = sp.ConvTranspose(3, 2, ks, st, generative=generative, dimension=4)
    x = coarse.replace_feats(feats)
    y = layer(x) if generative else layer(x, coordinates=x_fine)
    assert y.tensor_stride == s_fine
    if generative:
        assert {tuple(c) for c in y.coords.tolist()} == brute_children(x.coords, ks, s_fine)
        assert y.num_sites == len(brute_children(x.coords, ks, s_fine))
    ref = brute_conv_transpose(x.coords, feats, layer.weight, ks, s_fine, y.coords)
    torch.testing.assert_close(y.feats, ref)
    r = torch.randn_like(ref)
    for a, b in zip(_grads(y.feats, r, feats, layer.weight), _grads(ref, r, feats, layer.weight)):
        torch.testing.assert_close(a, b)


def test_transpose_default_target_is_the_ancestor() -> None:
    """Without ``coordinates``, an up-sampling lands on the set it was pooled from."""
    rng = np.random.default_rng(4)
    coords = random_sites(rng, 1, (6, 6, 6, 8), n=200)
    x = sp.sparse_tensor(coords, torch.randn(len(coords), 2))
    low = sp.max_pool(sp.max_pool(x, 2), 2)
    up = sp.ConvTranspose(2, 2, 2, 2, dimension=4)
    mid = up(low)
    assert mid.tensor_stride == (2, 2, 2, 2)
    assert mid.same_coords(sp.max_pool(x, 2))


@pytest.mark.parametrize("fill", [0.0, 0.5, 1.1])
def test_conv_paths_agree(fill, monkeypatch: pytest.MonkeyPatch) -> None:
    """All-im2col, mixed, and all-pair-list convolutions give the reference result."""
    import ulmtools.sparse.coords as coords_mod

    monkeypatch.setattr(coords_mod, "SPARSE_COLUMN_FILL", fill)
    rng = np.random.default_rng(12)
    coords = clustered_sites(rng, 2, (8, 8, 8, 6), n_blobs=4, radius=1)
    feats = torch.randn(len(coords), 3, requires_grad=True)
    for ks, st in (((3, 3, 3, 3), 1), ((2, 2, 2, 2), 2)):
        layer = sp.Conv(3, 2, ks, st, dimension=4)
        y = layer(sp.sparse_tensor(coords, feats))
        ref = brute_conv(coords, feats, layer.weight, ks, (1, 1, 1, 1), y.coords)
        torch.testing.assert_close(y.feats, ref)
        r = torch.randn_like(ref)
        for a, b in zip(
            _grads(y.feats, r, feats, layer.weight), _grads(ref, r, feats, layer.weight)
        ):
            torch.testing.assert_close(a, b)
