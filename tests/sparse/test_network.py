"""The engine under the network users run (``ulmtools.models.SparseDeepStulm``), on the
synthetic movies the engine's benchmark uses."""

from __future__ import annotations

import pytest
import torch

from ulmtools import sparse as sp
from ulmtools.models.deepstulm import SparseDeepStulm
from ulmtools.sparse.synthetic import synthetic_movie


@pytest.fixture(autouse=True)
def _float32():
    # the network runs in float32, as in training
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def movie_pixels(coords: torch.Tensor, feats: torch.Tensor, scale: int = 8):
    """A synthetic movie (batch, *space x scale, t) as the network's input: pixel
    coordinates (t, *space) and features, what ``SparseDeepStulm.make_input`` takes."""
    space = coords[:, 1:-1] // scale
    return torch.cat([coords[:, -1:], space], dim=1), feats


def test_synthetic_movie_is_a_valid_sparse_input() -> None:
    coords, feats, stride = synthetic_movie((16, 16), 64, 3, seed=4)
    assert stride == (8, 8, 1)
    assert coords.shape[1] == 4 and feats.shape == (coords.shape[0], 2)
    assert coords.shape[0] > 100
    assert bool((coords[:, 1:3] % 8 == 0).all())
    assert int(coords[:, 3].max()) < 64
    x = sp.sparse_tensor(coords, feats, stride)  # validates uniqueness and strides
    assert x.num_sites == coords.shape[0]
    again, _, _ = synthetic_movie((16, 16), 64, 3, seed=4)
    assert torch.equal(coords, again)


@pytest.mark.parametrize("d,grid,frames", [(3, (8, 8), 64), (4, (4, 4, 4), 32)])
@pytest.mark.parametrize("pruning", [False, True])
def test_network_forward_backward(d, grid, frames, pruning) -> None:
    coords, feats, _ = synthetic_movie(grid, frames, 2, seed=1)
    torch.manual_seed(0)
    net = SparseDeepStulm(dimension=d, channels=8, deep_supervision=True, pruning=pruning)
    c, f = movie_pixels(coords, feats)
    out = net(net.make_input([c], [f]))
    pred = out.final
    # the x8 grid, with time pooled 4*4*8*8 = 1024 >= frames: one map per movie
    assert pred.tensor_stride == (1024,) + (1,) * (d - 1)
    assert bool((pred.coords[:, 1] == 0).all())
    fine = torch.tensor(grid) * 8
    assert bool((pred.coords[:, 2:] < fine).all()) and bool((pred.coords[:, 2:] >= 0).all())
    assert len(out.levels) == 3 and len(out.sites) == 3
    assert [lv.tensor_stride[1] for lv in out.levels] == [8, 4, 2]
    loss = torch.sigmoid(pred.feats).mean() + sum(lv.feats.mean() for lv in out.levels)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if not pruning:
        # every site at stride 8 becomes a 2x2(x2) block of children at stride 4
        assert out.levels[1].num_sites == out.levels[0].num_sites * 2 ** (d - 1)
    else:
        # untrained classifiers start at p ~ 0.05: pruning keeps few sites (at least one)
        assert 1 <= out.sites[0] < out.levels[0].num_sites
