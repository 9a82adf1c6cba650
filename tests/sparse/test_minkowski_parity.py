"""Built-in vs MinkowskiEngine backends: same module, same weights, same numbers.

Skipped (with the reason) when MinkowskiEngine is not installed: ``make minkowski``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.sparse.reference import clustered_sites, random_sites
from ulmtools import sparse as sp

try:
    sp.get_backend("minkowski")
    _SKIP = ""
except sp.BackendUnavailableError as err:
    _SKIP = f"MinkowskiEngine backend unavailable: {err}"

pytestmark = [
    pytest.mark.minkowski,
    pytest.mark.skipif(bool(_SKIP), reason=_SKIP or "-"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

RTOL = 1e-5


def _order(coords: torch.Tensor) -> torch.Tensor:
    keys = coords.long()
    order = torch.arange(len(keys))
    for col in reversed(range(keys.shape[1])):
        order = order[torch.argsort(keys[order, col], stable=True)]
    return order


def _probe(coords: torch.Tensor, channels: int) -> torch.Tensor:
    """A fixed pseudo-random weight per (site, channel), the same on both backends."""
    c = coords.double()
    phase = c @ torch.tensor([0.37, 1.13, 0.71, 0.29, 0.53][: c.shape[1]], dtype=torch.float64)
    return torch.sin(phase.unsqueeze(1) * (1 + torch.arange(channels)) + 0.1)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(float(b.abs().max()), 1e-12) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL * scale)


def _run(backend: str, build, coords, feats, stride, module: torch.nn.Module):
    f = feats.detach().clone().requires_grad_(True)
    module.zero_grad()
    x = sp.sparse_tensor(coords, f, stride, backend=backend)
    y = build(x, module)
    loss = (y.feats * _probe(y.coords, y.num_channels).to(y.dtype)).sum()
    loss.backward()
    order = _order(y.coords)
    grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    return y.coords[order], y.feats.detach()[order], f.grad, grads, y.tensor_stride


def _parity(build, coords, feats, stride, module) -> None:
    a = _run("builtin", build, coords, feats, stride, module)
    b = _run("minkowski", build, coords, feats, stride, module)
    assert a[4] == b[4], "tensor strides differ"
    assert torch.equal(a[0], b[0]), "output sites differ"
    _close(a[1], b[1])
    _close(a[2], b[2])
    for ga, gb in zip(a[3], b[3]):
        _close(ga, gb)


def _data(d: int, n: int = 300, stride=None, seed: int = 0, batch: int = 2):
    rng = np.random.default_rng(seed)
    stride = stride or (1,) * d
    shape = (6, 6, 12) if d == 3 else (5, 5, 5, 12)
    coords = random_sites(rng, batch, shape, n, stride)
    return coords, torch.randn(len(coords), 3, dtype=torch.float64), stride


def _conv(x, m):
    return m(x)


@pytest.mark.parametrize("d", [3, 4])
@pytest.mark.parametrize(
    "ks,st",
    [(3, 1), ((3, 1, 5, 3), 1), ((2, 2, 4, 2), 1), ((2, 2, 2, 4), (2, 2, 2, 4)), (3, 2), (1, 1)],
)
def test_conv_parity(d, ks, st) -> None:
    ks = ks if isinstance(ks, int) else ks[:d]
    st = st if isinstance(st, int) else st[:d]
    m = sp.Conv(3, 4, ks, st, bias=True, dimension=d).double()
    _parity(_conv, *_data(d, stride=(2,) * (d - 1) + (1,)), m)


@pytest.mark.parametrize("d", [3, 4])
@pytest.mark.parametrize(
    "ks,st", [(2, 2), ((2, 2, 2, 4), (2, 2, 2, 4)), ((1, 1, 1, 8), (1, 1, 1, 8)), (3, 2)]
)
def test_max_pool_parity(d, ks, st) -> None:
    ks = ks if isinstance(ks, int) else (*ks[: d - 1], ks[-1])
    st = st if isinstance(st, int) else (*st[: d - 1], st[-1])
    m = torch.nn.Identity()

    def build(x, _m):
        return sp.max_pool(x, ks, st) * 1.0

    coords, feats, stride = _data(d)
    a = _run("builtin", build, coords, feats, stride, m)
    b = _run("minkowski", build, coords, feats, stride, m)
    assert torch.equal(a[0], b[0]) and a[4] == b[4]
    _close(a[1], b[1])
    _close(a[2], b[2])


@pytest.mark.parametrize("d", [3, 4])
@pytest.mark.parametrize(
    "ks,st",
    [((2, 2, 2, 1), (2, 2, 2, 1)), ((3, 3, 3, 3), (2, 2, 2, 2)), ((2, 2, 2, 4), (2, 2, 2, 4))],
)
@pytest.mark.parametrize("mode", ["target", "default", "generative"])
def test_conv_transpose_parity(d, ks, st, mode) -> None:
    ks = (*ks[: d - 1], ks[-1])
    st = (*st[: d - 1], st[-1])
    m = sp.ConvTranspose(3, 2, ks, st, generative=mode == "generative", dimension=d).double()

    def build(x, mod):
        low = sp.max_pool(x, st)  # the coarse tensor of a U-Net
        low = low.replace_feats(low.feats * 2.0 - 0.5)
        if mode == "target":
            return mod(low, coordinates=x)
        return mod(low)

    _parity(build, *_data(d, n=250), m)


def test_union_and_prune_parity() -> None:
    m = sp.Conv(3, 3, 3, dimension=3).double()

    def build(x, mod):
        y = mod(x)
        low = sp.max_pool(y, 2)
        other = sp.ConvTranspose(3, 3, 2, 2, generative=True, dimension=3).double()
        torch.manual_seed(0)
        other.reset_parameters()
        gen = other(low)
        keep = gen.feats[:, 0] > 0
        pruned = sp.prune(gen, keep)
        return sp.union(pruned, y)

    _parity(build, *_data(3, n=200), m)


@pytest.mark.parametrize("d", [3, 4])
def test_block_parity_float32(d) -> None:
    """A conv/BN/ELU/pool/up/cat block in float32, the dtype training uses."""
    torch.manual_seed(1)
    net = _Block(d)

    def build(x, mod):
        return mod(x)

    rng = np.random.default_rng(2)
    shape = (10, 10, 32) if d == 3 else (6, 6, 6, 16)
    coords = clustered_sites(rng, 1, shape, 6, 1)
    stride = (2,) * (d - 1) + (1,)
    coords[:, 1:] *= torch.tensor(stride, dtype=coords.dtype)
    feats = torch.randn(len(coords), 2)
    _parity(build, coords, feats, stride, net)


class _Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        pool = (2,) * (d - 1) + (4,)
        self.c1 = sp.Conv(2, 8, 3, dimension=d)
        self.bn = sp.BatchNorm(8)
        self.pool = sp.MaxPool(pool, dimension=d)
        self.c2 = sp.Conv(8, 8, 3, dimension=d)
        self.up = sp.ConvTranspose(8, 8, pool, pool, dimension=d)
        self.gen = sp.ConvTranspose(
            16, 4, (2,) * (d - 1) + (1,), (2,) * (d - 1) + (1,), generative=True, dimension=d
        )

    def forward(self, x):
        h = sp.elu(self.bn(self.c1(x)))
        low = self.c2(self.pool(h))
        cat = sp.cat(self.up(low, coordinates=h), h)
        return sp.sigmoid(self.gen(cat))


def test_empty_input_is_refused_cleanly() -> None:
    with pytest.raises(ValueError, match="no sites"):
        sp.sparse_tensor(
            torch.zeros((0, 4), dtype=torch.int32), torch.zeros(0, 2), backend="minkowski"
        )


@pytest.mark.parametrize(
    "d,grid,frames,pruning",
    [(3, (8, 8), 64, False), (4, (4, 4, 4), 32, False), (3, (8, 8), 64, True)],
)
def test_whole_network_parity(d, grid, frames, pruning) -> None:
    """Sparse Deep-stULM as users run it (``ulmtools.models``), end to end: outputs,
    input gradients and every parameter gradient."""
    from ulmtools.models.deepstulm import SparseDeepStulm
    from ulmtools.sparse.synthetic import synthetic_movie

    coords, feats, _ = synthetic_movie(grid, frames, 3, seed=3)
    assert len(coords) > 50
    # (batch, *space, t) -> the network's (batch, t, *space), stride 8 in space
    coords = torch.cat([coords[:, :1], coords[:, -1:], coords[:, 1:-1]], dim=1)
    torch.manual_seed(0)
    net = SparseDeepStulm(dimension=d, channels=8, deep_supervision=True, pruning=pruning).double()

    def build(x, mod):
        out = mod(x)
        # fold the classifiers' maps into the loss through the final map's sites
        return out.final.replace_feats(out.final.feats + sum(lv.feats.mean() for lv in out.levels))

    _parity(build, coords, feats.double(), net.input_stride, net)
