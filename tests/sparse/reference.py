"""Independent references for the sparse engine tests.

Two kinds: torch's dense 3D ops (conv3d, conv_transpose3d, max_pool3d) for D = 3,
and a brute-force reference for any D whose kernel maps come from a Python dict
(one site at a time) -- a different algorithm from the engine's vectorised
tables -- with the arithmetic left to torch autograd so gradients come for free.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as tf
from torch import Tensor


def random_sites(
    rng: np.random.Generator,
    batch: int,
    shape: tuple[int, ...],
    n: int,
    stride: tuple[int, ...] | None = None,
) -> Tensor:
    """``n`` distinct random sites (or fewer if the grid is small) on a strided grid."""
    d = len(shape)
    stride = stride or (1,) * d
    cells = batch * math.prod(shape)
    n = min(n, cells)
    flat = rng.choice(cells, size=n, replace=False)
    idx = np.stack(np.unravel_index(flat, (batch, *shape)), axis=1)
    idx[:, 1:] *= np.asarray(stride)
    return torch.from_numpy(idx.astype(np.int32))


def clustered_sites(
    rng: np.random.Generator, batch: int, shape: tuple[int, ...], n_blobs: int, radius: int
) -> Tensor:
    """Blob-like sites (what thresholded PSF-correlation movies look like)."""
    d = len(shape)
    pts = []
    for b in range(batch):
        for _ in range(n_blobs):
            c = rng.integers(0, shape)
            r = [range(max(0, c[i] - radius), min(shape[i], c[i] + radius + 1)) for i in range(d)]
            for p in itertools.product(*r):
                if rng.random() < 0.7:
                    pts.append((b, *p))
    arr = np.unique(np.asarray(pts, dtype=np.int32).reshape(-1, d + 1), axis=0)
    return torch.from_numpy(arr)


def axis_offsets(k: int, d: int = 1) -> list[int]:
    return [(i - (k - 1) // 2) * d for i in range(k)] if k % 2 else [i * d for i in range(k)]


def offsets_me_order(
    ks: tuple[int, ...], dil: tuple[int, ...] | None = None
) -> list[tuple[int, ...]]:
    """Kernel offsets, first axis fastest (written independently of the engine's)."""
    dil = dil or (1,) * len(ks)
    per = [axis_offsets(k, d) for k, d in zip(ks, dil)]
    out = []
    for flat in range(math.prod(ks)):
        o, rest = [], flat
        for i, k in enumerate(ks):
            o.append(per[i][rest % k])
            rest //= k
        out.append(tuple(o))
    return out


def sparse_to_dense_weight(w: Tensor, ks: tuple[int, ...]) -> Tensor:
    """(K, Cin, Cout), first axis fastest -> torch conv weight (Cout, Cin, k0, k1, k2)."""
    _, cin, cout = w.shape
    return w.reshape(*reversed(ks), cin, cout).permute(4, 3, 2, 1, 0)


def _lookup(coords: Tensor) -> dict[tuple[int, ...], int]:
    return {tuple(r): i for i, r in enumerate(coords.tolist())}


def brute_conv(
    cin: Tensor,
    feats: Tensor,
    weight: Tensor,
    ks: tuple[int, ...],
    s_in: tuple[int, ...],
    cout: Tensor,
    dil: tuple[int, ...] | None = None,
) -> Tensor:
    """out[c] = sum_o W[o] in[c + o * s_in] on the given output sites."""
    table = _lookup(cin)
    rows_out, rows_in, ks_idx = [], [], []
    for j, c in enumerate(cout.tolist()):
        for k, o in enumerate(offsets_me_order(ks, dil)):
            q = (c[0], *(c[i + 1] + o[i] * s_in[i] for i in range(len(ks))))
            if q in table:
                rows_out.append(j)
                rows_in.append(table[q])
                ks_idx.append(k)
    out = feats.new_zeros((cout.shape[0], weight.shape[2]))
    if rows_out:
        contrib = torch.einsum("nc,ncd->nd", feats[rows_in], weight[ks_idx])
        out = out.index_add(0, torch.tensor(rows_out), contrib)
    return out


def brute_conv_transpose(
    cin: Tensor,
    feats: Tensor,
    weight: Tensor,
    ks: tuple[int, ...],
    s_out: tuple[int, ...],
    cout: Tensor,
) -> Tensor:
    """out[c_in + o * s_out] += W[o] in[c_in] on the given output sites."""
    table = _lookup(cout)
    rows_out, rows_in, ks_idx = [], [], []
    for i, c in enumerate(cin.tolist()):
        for k, o in enumerate(offsets_me_order(ks)):
            q = (c[0], *(c[a + 1] + o[a] * s_out[a] for a in range(len(ks))))
            if q in table:
                rows_out.append(table[q])
                rows_in.append(i)
                ks_idx.append(k)
    out = feats.new_zeros((cout.shape[0], weight.shape[2]))
    if rows_out:
        contrib = torch.einsum("nc,ncd->nd", feats[rows_in], weight[ks_idx])
        out = out.index_add(0, torch.tensor(rows_out), contrib)
    return out


def brute_children(
    cin: Tensor, ks: tuple[int, ...], s_out: tuple[int, ...]
) -> set[tuple[int, ...]]:
    kids = set()
    for c in cin.tolist():
        for o in offsets_me_order(ks):
            kids.add((c[0], *(c[a + 1] + o[a] * s_out[a] for a in range(len(ks)))))
    return kids


def brute_strided(cin: Tensor, s_out: tuple[int, ...]) -> Tensor:
    rows = {(c[0], *(v // s * s for v, s in zip(c[1:], s_out))) for c in cin.tolist()}
    return torch.tensor(sorted(rows), dtype=torch.int32).reshape(-1, cin.shape[1])


def brute_max_pool(
    cin: Tensor, feats: Tensor, ks: tuple[int, ...], s_in: tuple[int, ...], cout: Tensor
) -> Tensor:
    table = _lookup(cin)
    rows = []
    for c in cout.tolist():
        members = []
        for o in offsets_me_order(ks):
            q = (c[0], *(c[i + 1] + o[i] * s_in[i] for i in range(len(ks))))
            if q in table:
                members.append(table[q])
        rows.append(feats[members].max(0).values)
    return torch.stack(rows) if rows else feats.new_zeros((0, feats.shape[1]))


def densify(
    coords: Tensor, feats: Tensor, unit: tuple[int, ...], shape: tuple[int, ...], batch: int
) -> Tensor:
    """Dense (B, C, *shape) from sites in ``unit`` steps; differentiable in ``feats``."""
    q = coords.long().clone()
    q[:, 1:] //= torch.tensor(unit)
    out = feats.new_zeros((batch, *shape, feats.shape[1]))
    out = out.index_put(tuple(q.t()), feats)
    return out.movedim(-1, 1)


def sample(
    dense: Tensor, coords: Tensor, unit: tuple[int, ...], shift: tuple[int, ...] | None = None
) -> Tensor:
    """Rows of a dense (B, C, *S) tensor at sites / unit (+ shift); zero outside."""
    q = coords.long().clone()
    q[:, 1:] //= torch.tensor(unit)
    if shift is not None:
        q[:, 1:] += torch.tensor(shift)
    pad = (
        [
            (0, max(0, int(q[:, i + 1].max()) + 1 - dense.shape[i + 2]))
            for i in range(dense.dim() - 2)
        ]
        if len(q)
        else []
    )
    flat = [p for pair in reversed(pad) for p in pair]
    if flat:
        dense = tf.pad(dense, flat)
    d = dense.movedim(1, -1)
    return d[tuple(q.t())]
