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


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``."""
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_in_place_activations_same_gradients_less_memory() -> None:
    """The network's ELUs run in place (after a batch norm or a fresh sum): the same
    loss and gradients as out-of-place ELUs, with a fifth less kept for the backward."""
    coords, feats, _ = synthetic_movie((4, 4, 4), 32, 2, seed=3)
    c, f = movie_pixels(coords, feats)
    torch.manual_seed(0)
    net = SparseDeepStulm(dimension=4, channels=8, deep_supervision=True)
    acts = [m for m in net.modules() if isinstance(m, sp.ELU)]
    assert acts and all(m.inplace for m in acts)

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad()
        out = net(net.make_input([c], [f]))
        loss = torch.sigmoid(out.final.feats).mean() + sum(lv.feats.mean() for lv in out.levels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    state = {k: v.clone() for k, v in net.state_dict().items()}
    in_place = _saved_bytes(step)
    loss, grads = step()
    for m in acts:
        m.inplace = False
    net.load_state_dict(state)  # the batch norms' running statistics as before
    out_of_place = _saved_bytes(step)
    net.load_state_dict(state)
    ref_loss, ref_grads = step()
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        # float32: the in-place backward computes exp(z) as the output + 1
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * float(r.abs().max()))
    assert in_place < 0.85 * out_of_place


def _sorted_sites(x: sp.SparseTensor) -> torch.Tensor:
    key = torch.zeros(x.num_sites, dtype=torch.int64)
    for col in x.coords.long().unbind(1):
        key = key * 4096 + col
    return torch.argsort(key)


@pytest.mark.parametrize("frames", [64, 300])
def test_time_pool_skipped_when_one_time_index_is_left(frames, monkeypatch) -> None:
    """A movie no longer than the time pooled by transition 1 (128 frames) has one time
    index left at the high-resolution levels: transition 2's pooling is skipped, with
    the same output, the same stride, and hr 3's kernel maps reused; a longer one is
    pooled and collapsed to one map as before."""
    import ulmtools.models.deepstulm as deepstulm

    coords, feats, _ = synthetic_movie((4, 4, 4), frames, 3, seed=5)
    c, f = movie_pixels(coords, feats)
    torch.manual_seed(1)
    net = SparseDeepStulm(dimension=4, channels=8).eval()
    with torch.no_grad():
        x = net.make_input([c], [f])
        out = net(x).final
        built = x.manager.maps_built
        monkeypatch.setattr(deepstulm, "_one_time_index", lambda y: False)
        x = net.make_input([c], [f])
        ref = net(x).final
        built_ref = x.manager.maps_built
    assert out.tensor_stride == ref.tensor_stride == (1024, 1, 1, 1)
    # the same sites (pooling also sorts them) and values (up to the order of sums)
    a, b = _sorted_sites(out), _sorted_sites(ref)
    assert torch.equal(out.coords[a], ref.coords[b])
    torch.testing.assert_close(out.feats[a], ref.feats[b], rtol=1e-5, atol=1e-6)
    assert bool((out.coords[:, 1] == 0).all())
    if frames <= 128:
        assert built < built_ref
    else:
        assert built == built_ref
