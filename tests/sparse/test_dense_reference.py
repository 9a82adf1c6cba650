"""Every layer against torch's dense 3D ops (D = 3): outputs and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as tf

from tests.sparse.reference import densify, random_sites, sample, sparse_to_dense_weight
from ulmtools import sparse as sp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHAPE = (7, 6, 9)  # odd, unequal extents
CASES_CONV = [
    # kernel, stride, dilation
    ((3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((3, 1, 5), (1, 1, 1), (1, 1, 1)),
    ((2, 2, 4), (1, 1, 1), (1, 1, 1)),
    ((3, 3, 3), (1, 1, 1), (2, 1, 2)),
    ((2, 2, 4), (2, 2, 4), (1, 1, 1)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((1, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((1, 1, 3), (1, 1, 2), (1, 1, 1)),
]


def _axis_pad(k: int, d: int) -> int:
    return (k - 1) // 2 * d if k % 2 else 0


def _dense_conv(
    x: torch.Tensor, w: torch.Tensor, ks, st, dil
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Dense conv whose output cell j is the sparse site j * stride (in input units)."""
    lo = [_axis_pad(k, d) for k, d in zip(ks, dil)]
    hi = [(k - 1) * d - p + s for k, d, p, s in zip(ks, dil, lo, st)]
    flat = [v for a in reversed(range(3)) for v in (lo[a], hi[a])]
    y = tf.conv3d(tf.pad(x, flat), w, stride=st, dilation=dil)
    return y


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("ks,st,dil", CASES_CONV)
def test_conv_matches_conv3d(ks, st, dil, batch) -> None:
    rng = np.random.default_rng(hash((ks, st, dil, batch)) % 2**32)
    s_in = (2, 1, 4)  # a non-unit input tensor stride, as in the network
    coords = random_sites(rng, batch, SHAPE, n=60 * batch, stride=s_in)
    cin, cout = 3, 4
    feats = torch.randn(coords.shape[0], cin, requires_grad=True)
    layer = sp.Conv(cin, cout, kernel_size=ks, stride=st, dilation=dil, dimension=3)
    x = sp.sparse_tensor(coords, feats, s_in)
    y = layer(x)
    assert y.tensor_stride == tuple(a * b for a, b in zip(s_in, st))
    r = torch.randn_like(y.feats)
    (y.feats * r).sum().backward()

    feats2 = feats.detach().clone().requires_grad_(True)
    w2 = sparse_to_dense_weight(layer.weight.detach(), ks).clone().requires_grad_(True)
    dense = densify(coords, feats2, s_in, SHAPE, batch)
    yd = _dense_conv(dense, w2, ks, st, dil)
    ref = sample(yd, y.coords, tuple(a * b for a, b in zip(s_in, st)))
    (ref * r).sum().backward()

    torch.testing.assert_close(y.feats, ref)
    torch.testing.assert_close(feats.grad, feats2.grad)
    torch.testing.assert_close(layer.weight.grad, _to_sparse_weight(w2.grad, ks))
    # the output sites are exactly the strided input sites
    step = torch.tensor((1, *(a * b for a, b in zip(s_in, st))))
    expect = torch.unique((coords.long() // step) * step, dim=0)
    assert torch.equal(torch.unique(y.coords.long(), dim=0), expect)


def _to_sparse_weight(wd: torch.Tensor, ks) -> torch.Tensor:
    cout, cin = wd.shape[:2]
    return wd.permute(4, 3, 2, 1, 0).reshape(math.prod(ks), cin, cout)


@pytest.mark.parametrize(
    "ks,st", [((2, 2, 4), (2, 2, 4)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 1), (2, 2, 1))]
)
def test_max_pool_matches_max_pool3d(ks, st) -> None:
    rng = np.random.default_rng(7)
    coords = random_sites(rng, 2, SHAPE, n=150)
    feats = torch.randn(coords.shape[0], 5, requires_grad=True)
    y = sp.max_pool(sp.sparse_tensor(coords, feats), ks, st)
    r = torch.randn_like(y.feats)
    (y.feats * r).sum().backward()

    feats2 = feats.detach().clone().requires_grad_(True)
    dense = densify(coords, feats2, (1, 1, 1), SHAPE, 2)
    occupied = densify(coords, torch.ones(len(coords), 1), (1, 1, 1), SHAPE, 2) > 0
    dense = torch.where(occupied, dense, torch.tensor(float("-inf")))
    lo = [_axis_pad(k, 1) for k in ks]
    hi = [k - 1 - p + s for k, p, s in zip(ks, lo, st)]
    flat = [v for a in reversed(range(3)) for v in (lo[a], hi[a])]
    yd = tf.max_pool3d(tf.pad(dense, flat, value=float("-inf")), ks, st)
    ref = sample(yd, y.coords, st)
    (ref * r).sum().backward()
    torch.testing.assert_close(y.feats, ref)
    torch.testing.assert_close(feats.grad, feats2.grad)


@pytest.mark.parametrize(
    "ks,st",
    [
        ((2, 2, 1), (2, 2, 1)),
        ((2, 2, 4), (2, 2, 4)),
        ((3, 3, 3), (2, 2, 2)),
        ((3, 3, 3), (1, 1, 1)),
    ],
)
@pytest.mark.parametrize("generative", [False, True])
def test_conv_transpose_matches_conv_transpose3d(ks, st, generative) -> None:
    rng = np.random.default_rng(11)
    s_fine = (1, 2, 1)
    s_coarse = tuple(a * b for a, b in zip(s_fine, st))
    fine = random_sites(rng, 2, SHAPE, n=200, stride=s_fine)
    cin, cout = 3, 2
    # the coarse input: the fine sites strided (as in a U-Net), features random
    x_fine = sp.sparse_tensor(fine, torch.zeros(len(fine), cin), s_fine)
    pooled = sp.max_pool(x_fine, st, st) if any(s > 1 for s in st) else x_fine
    feats = torch.randn(pooled.num_sites, cin, requires_grad=True)
    x = pooled.replace_feats(feats)
    layer = sp.ConvTranspose(
        cin, cout, kernel_size=ks, stride=st, generative=generative, dimension=3
    )
    y = layer(x) if generative else layer(x, coordinates=x_fine)
    assert y.tensor_stride == s_fine
    if not generative:
        assert y.same_coords(x_fine)
    r = torch.randn_like(y.feats)
    (y.feats * r).sum().backward()

    feats2 = feats.detach().clone().requires_grad_(True)
    w2 = (
        sparse_to_dense_weight(layer.weight.detach(), ks)
        .permute(1, 0, 2, 3, 4)
        .clone()
        .requires_grad_(True)
    )
    cshape = tuple(math.ceil(n / s) + 1 for n, s in zip(SHAPE, st))
    dense = densify(x.coords, feats2, s_coarse, cshape, 2)
    yd = tf.conv_transpose3d(dense, w2, stride=st)
    shift = tuple(_axis_pad(k, 1) for k in ks)
    lo_ok = (y.coords[:, 1:].long() // torch.tensor(s_fine) + torch.tensor(shift) >= 0).all()
    assert lo_ok
    ref = sample(yd, y.coords, s_fine, shift)
    (ref * r).sum().backward()
    torch.testing.assert_close(y.feats, ref)
    torch.testing.assert_close(feats.grad, feats2.grad)
    torch.testing.assert_close(
        layer.weight.grad, _to_sparse_weight(w2.grad.permute(1, 0, 2, 3, 4), ks)
    )
    if generative:
        # every child of every input site, nothing else
        offs = sp.kernel_offsets(ks, (1, 1, 1)) * torch.tensor(s_fine)
        kids = x.coords.long().unsqueeze(1).repeat(1, len(offs), 1)
        kids[:, :, 1:] += offs
        expect = torch.unique(kids.reshape(-1, 4), dim=0)
        assert torch.equal(torch.unique(y.coords.long(), dim=0), expect)
        assert y.num_sites == expect.shape[0]


def test_network_block_matches_dense() -> None:
    """A conv-BN-ELU-pool-upsample-cat chain, checked end to end against dense ops."""
    rng = np.random.default_rng(3)
    coords = random_sites(rng, 2, (6, 6, 8), n=160)
    feats = torch.randn(len(coords), 2, requires_grad=True)
    conv = sp.Conv(2, 4, 3, dimension=3)
    up = sp.ConvTranspose(4, 4, (2, 2, 4), (2, 2, 4), dimension=3)
    x = sp.sparse_tensor(coords, feats)
    h = sp.elu(conv(x))
    low = sp.max_pool(h, (2, 2, 4))
    out = sp.cat(up(low, coordinates=h), h)
    loss = (out.feats**2).sum()
    loss.backward()

    f2 = feats.detach().clone().requires_grad_(True)
    d = densify(coords, f2, (1, 1, 1), (6, 6, 8), 2)
    occ = densify(coords, torch.ones(len(coords), 1), (1, 1, 1), (6, 6, 8), 2) > 0
    hd = (
        tf.elu(tf.conv3d(d, sparse_to_dense_weight(conv.weight.detach(), (3, 3, 3)), padding=1))
        * occ
    )
    lowd = tf.max_pool3d(torch.where(occ, hd, torch.tensor(float("-inf"))), (2, 2, 4))
    lowd = torch.where(torch.isinf(lowd), torch.zeros(()), lowd)
    upd = tf.conv_transpose3d(
        lowd,
        sparse_to_dense_weight(up.weight.detach(), (2, 2, 4)).permute(1, 0, 2, 3, 4),
        stride=(2, 2, 4),
    )
    outd = torch.cat([upd, hd], 1) * occ
    (outd**2).sum().backward()
    torch.testing.assert_close(out.feats, sample(outd, out.coords, (1, 1, 1)))
    torch.testing.assert_close(feats.grad, f2.grad)
