"""The Deep-stULM-shaped network and the synthetic movies used by the benchmark."""

from __future__ import annotations

import pytest
import torch

from ulmtools import sparse as sp
from ulmtools.sparse.blocks import DeepStULMSketch, count_parameters, soft_dice_loss
from ulmtools.sparse.synthetic import synthetic_movie


@pytest.fixture(autouse=True)
def _float32():
    # the network runs in float32, as in training
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


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
@pytest.mark.parametrize("prune", [False, True])
def test_sketch_forward_backward(d, grid, frames, prune) -> None:
    coords, feats, stride = synthetic_movie(grid, frames, 2, seed=1)
    torch.manual_seed(0)
    net = DeepStULMSketch(d, prune=prune)
    out = net(sp.sparse_tensor(coords, feats, stride))
    pred = out.prediction
    # the x8 grid, with time pooled 4*4*8*8 = 1024 >= frames: one map per movie
    assert pred.tensor_stride == (1,) * (d - 1) + (1024,)
    assert bool((pred.coords[:, -1] == 0).all())
    assert len(out.level_maps) == 3
    assert bool(((pred.feats >= 0) & (pred.feats <= 1)).all())
    loss = soft_dice_loss(pred.feats[:, 0], (pred.coords[:, 1] % 3 == 0).float())
    loss = loss + sum(m.feats.mean() for m in out.level_maps)  # deep supervision
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if not prune:
        # every coarse site at the x8 grid becomes a 2x2(x2) block three times over
        assert out.level_maps[1].num_sites == out.level_maps[0].num_sites * 2 ** (d - 1)


def test_sketch_parameter_counts_match_the_paper_scale() -> None:
    # paper: ~1.05 M (2D+t) and ~3.1 M (3D+t); the sketch is within 15 %
    assert 0.9e6 < count_parameters(DeepStULMSketch(3)) < 1.25e6
    assert 2.7e6 < count_parameters(DeepStULMSketch(4)) < 3.6e6
