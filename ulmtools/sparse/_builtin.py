"""The built-in backend: pure PyTorch, deterministic, CPU and CUDA.

Convolutions are "gather -> GEMM": the cached neighbour table gathers, for every
output site, the K input rows it reads (im2col) and one matrix product with the
(K * C_in, C_out) weight does the rest.  The backward pass gathers too (through
the reversed table, or the same table with the kernel flipped for submanifold
maps), and one gather there feeds both gradients.  Offsets that only a few sites
use (neighbouring time slices in 2D+t) go through per-offset pair lists instead,
where each output row is touched once per offset, so no add ever collides and
results do not depend on thread scheduling.  Rows are processed in cache-sized
chunks through one reused buffer, which keeps memory flat on millions of sites.

Transposed convolutions whose kernel tiles the grid (kernel == stride, the
up-sampling in U-Nets) skip tables entirely: one GEMM computes every child of
every input site, and the generative case keeps all of them as the new sites.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ulmtools.sparse.backend import Backend
from ulmtools.sparse.coords import CoordinateManager, CoordinateSet, KernelMap, unique_points
from ulmtools.sparse.tensor import SparseTensor

__all__ = ["BuiltinBackend"]

#: Elements of the im2col buffer (~4 MB in float32).  Small enough to stay in
#: cache between the gather and the GEMM that reads it, large enough that the
#: Python loop over chunks costs little; reused across chunks, because a fresh
#: large buffer per chunk costs more in page faults than the gather itself.
_GEMM_CHUNK = 1 << 20


def _padded(x: Tensor, fill: float = 0.0) -> Tensor:
    """``x`` with one extra row: what a sentinel index in a table reads."""
    return torch.cat([x, x.new_full((1, x.shape[1]), fill)])


def _chunks(m: int, row_elems: int) -> tuple[int, list[int]]:
    # With several threads each op is a parallel region ending in a barrier; fewer,
    # larger chunks keep the per-thread share of a chunk about cache-sized.
    budget = _GEMM_CHUNK * max(1, torch.get_num_threads())
    rows = max(16, budget // max(row_elems, 1))
    return rows, list(range(0, m, rows))


def _gather_mm(x: Tensor, table: Tensor, w2: Tensor) -> Tensor:
    """``out[j] = concat_k(x[table[j, k]]) @ w2`` with sentinel rows reading zeros."""
    m, k = table.shape
    c = x.shape[1]
    out = x.new_empty((m, w2.shape[1]))
    if m == 0:
        return out
    if k == 0:
        return out.zero_()
    xp = _padded(x)
    rows, starts = _chunks(m, k * c)
    buf = x.new_empty((min(rows, m) * k, c))
    for r0 in starts:
        idx = table[r0 : r0 + rows].reshape(-1)
        cols = torch.index_select(xp, 0, idx, out=buf[: idx.shape[0]])
        torch.mm(cols.view(-1, k * c), w2, out=out[r0 : r0 + idx.shape[0] // k])
    return out


class _TableConv(torch.autograd.Function):
    """Sparse convolution: im2col over well-filled offsets, pair lists for sparse ones."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, km: KernelMap) -> Tensor:  # type: ignore[override]
        dense, active, pairs = km.split()
        ctx.save_for_backward(x, weight)
        ctx.km = km
        out = _gather_mm(x, dense, weight.index_select(0, active).reshape(-1, weight.shape[2]))
        for off, out_rows, in_rows in pairs:
            # each output row appears once per offset: no colliding adds
            out.index_add_(0, out_rows, x.index_select(0, in_rows) @ weight[off])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        km: KernelMap = ctx.km
        dense, active, pairs = km.split()
        k = weight.shape[0]
        g = g.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if km.symmetric:
            # Submanifold map with symmetric offsets: reading the table backwards
            # is reading it with the kernel flipped, so no reverse table is needed.
            rev, offsets = dense, (k - 1) - active
        else:
            rev, offsets = km.reverse(), active
        gx, gw_dense = _gather_backward(x, g, rev, weight.index_select(0, offsets), need_x, need_w)
        gw = None
        if gw_dense is not None:
            gw = weight.new_zeros(weight.shape)
            gw.index_copy_(0, offsets, gw_dense)
        for off, out_rows, in_rows in pairs:
            g_rows = g.index_select(0, out_rows)
            if gx is not None:
                gx.index_add_(0, in_rows, g_rows @ weight[off].t())
            if gw is not None:
                gw[off] = x.index_select(0, in_rows).t() @ g_rows
        return gx, gw, None


def _gather_backward(
    x: Tensor, g: Tensor, rev: Tensor, w: Tensor, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Both gradients from one gather of ``g`` through the reversed table.

    With ``G[i] = concat_k g[rev[i, k]]`` (the output rows input i fed):
    ``grad_x = G @ W^T`` and ``grad_W[k] = x^T G[:, k]``, so the gathered rows
    serve both products while they are in cache.
    """
    n, k = rev.shape
    _, cin, cout = w.shape
    gx = x.new_empty((n, cin)) if need_x else None
    gw = x.new_zeros((cin, k * cout)) if need_w else None
    if n == 0 or k == 0:
        if gx is not None:
            gx.zero_()
        return gx, (gw.view(cin, k, cout).transpose(0, 1) if gw is not None else None)
    wt = w.permute(0, 2, 1).reshape(k * cout, cin)
    gp = _padded(g)
    rows, starts = _chunks(n, k * cout)
    buf = g.new_empty((min(rows, n) * k, cout))
    for r0 in starts:
        idx = rev[r0 : r0 + rows].reshape(-1)
        cols = torch.index_select(gp, 0, idx, out=buf[: idx.shape[0]]).view(-1, k * cout)
        r1 = r0 + cols.shape[0]
        if gx is not None:
            torch.mm(cols, wt, out=gx[r0:r1])
        if gw is not None:
            gw.addmm_(x[r0:r1].t(), cols)
    return gx, (gw.view(cin, k, cout).transpose(0, 1) if gw is not None else None)


class _TableMaxPool(torch.autograd.Function):
    """Max over each output site's table row; the gradient goes to the arg-max input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, km: KernelMap) -> Tensor:  # type: ignore[override]
        table, _ = km.table()
        n, c = x.shape
        m, k = table.shape
        ctx.n = n
        if m == 0 or k == 0:
            ctx.save_for_backward(torch.zeros((m, c), dtype=torch.int64, device=x.device))
            return x.new_zeros((m, c))
        xp = _padded(x, float("-inf"))
        vals = xp.index_select(0, table.reshape(-1)).view(m, k, c)
        if not ctx.needs_input_grad[0]:
            return vals.amax(dim=1)  # inference: no arg-max bookkeeping
        out, arg = vals.max(dim=1)
        # int32 when it fits: this index is kept alive until the backward pass
        src = table.gather(1, arg) if table.dtype == torch.int32 else table.long().gather(1, arg)
        ctx.save_for_backward(src)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (src,) = ctx.saved_tensors
        gx = g.new_zeros((ctx.n + 1, g.shape[1]))
        gx.scatter_add_(0, src.long(), g)
        return gx[: ctx.n], None


def _expand_weight(weight: Tensor) -> Tensor:
    """(K, C_in, C_out) -> (C_in, K * C_out): one GEMM gives every child of a site."""
    k, cin, cout = weight.shape
    return weight.permute(1, 0, 2).reshape(cin, k * cout)


class BuiltinBackend(Backend):
    """Pure-PyTorch sparse engine (the default)."""

    name = "builtin"

    # -- coordinates -------------------------------------------------------------
    def make(
        self,
        coords: Tensor,
        feats: Tensor,
        tensor_stride: tuple[int, ...],
        manager: Any = None,
    ) -> SparseTensor:
        d = len(tensor_stride)
        if manager is None:
            manager = CoordinateManager(d, feats.device)
        elif not isinstance(manager, CoordinateManager) or manager.dimension != d:
            raise ValueError("manager must be a built-in CoordinateManager of the same dimension")
        cs = manager.add(coords, tuple(tensor_stride))
        return SparseTensor(feats, cs, manager, self)

    def coords(self, x: SparseTensor) -> Tensor:
        return x.key.coords

    def tensor_stride(self, x: SparseTensor) -> tuple[int, ...]:
        return x.key.stride

    def same_key(self, a: Any, b: Any) -> bool:
        return a is b

    def _new(self, x: SparseTensor, feats: Tensor, cs: CoordinateSet) -> SparseTensor:
        return SparseTensor(feats, cs, x.manager, self)

    # -- operations --------------------------------------------------------------
    def conv(
        self,
        x: SparseTensor,
        weight: Tensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> SparseTensor:
        mgr: CoordinateManager = x.manager
        cs_in: CoordinateSet = x.key
        cs_out = mgr.stride_set(cs_in, stride)
        if cs_out is cs_in and weight.shape[0] == 1:
            return self._new(x, x.feats @ weight[0], cs_out)  # 1x1: no map needed
        km = mgr.conv_map(cs_in, cs_out, kernel_size, dilation)
        return self._new(x, _TableConv.apply(x.feats, weight, km), cs_out)

    def conv_transpose(
        self,
        x: SparseTensor,
        weight: Tensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
        generative: bool,
        target: SparseTensor | None,
    ) -> SparseTensor:
        mgr: CoordinateManager = x.manager
        cs_in: CoordinateSet = x.key
        k, _, cout = weight.shape
        if generative:
            if target is not None:
                raise ValueError(
                    "a generative transposed convolution makes its own sites; drop `coordinates`"
                )
            if any(d != 1 for d in dilation):
                raise ValueError("generative transposed convolution supports dilation 1 only")
            cs_out, exact = mgr.generate_set(cs_in, kernel_size, stride)
            if exact:
                # Site i * K + k is child k of input i: the GEMM output *is* the result.
                feats = (x.feats @ _expand_weight(weight)).view(-1, cout)
                return self._new(x, feats, cs_out)
        else:
            out_stride = tuple(s // f for s, f in zip(cs_in.stride, stride))
            if any(s % f for s, f in zip(cs_in.stride, stride)):
                raise ValueError(f"cannot upsample tensor stride {cs_in.stride} by {stride}")
            if target is not None:
                if target.manager is not mgr:
                    raise ValueError(
                        "`coordinates` must come from the same forward pass (coordinate manager)"
                    )
                cs_out = target.key
                if cs_out.stride != out_stride:
                    raise ValueError(
                        f"target tensor stride {cs_out.stride} does not match "
                        f"{cs_in.stride} / {stride}"
                    )
            else:
                cs_out = mgr.find_transpose_target(cs_in, out_stride)
        km = mgr.transpose_map(cs_in, cs_out, kernel_size, stride, dilation)
        if km.parent is not None:
            assert km.child is not None
            children = _padded((x.feats @ _expand_weight(weight)).view(-1, cout))
            idx = torch.where(
                km.parent < cs_in.size, km.parent.long() * k + km.child, cs_in.size * k
            )
            return self._new(x, children.index_select(0, idx), cs_out)
        return self._new(x, _TableConv.apply(x.feats, weight, km), cs_out)

    def max_pool(
        self,
        x: SparseTensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> SparseTensor:
        mgr: CoordinateManager = x.manager
        cs_out = mgr.stride_set(x.key, stride)
        km = mgr.conv_map(x.key, cs_out, kernel_size, dilation)
        return self._new(x, _TableMaxPool.apply(x.feats, km), cs_out)

    def union(self, a: SparseTensor, b: SparseTensor) -> SparseTensor:
        if a.manager is not b.manager:
            raise ValueError("union needs tensors from the same forward pass (coordinate manager)")
        if a.key.stride != b.key.stride:
            raise ValueError(
                f"union needs equal tensor strides, got {a.key.stride} and {b.key.stride}"
            )
        if a.key is b.key:
            return a + b
        mgr: CoordinateManager = a.manager
        key = ("union", a.key.id, b.key.id)
        cached = mgr._maps.get(key)
        if cached is None:
            pts, inverse = unique_points(torch.cat([a.key.coords, b.key.coords]).long())
            cs = mgr.add(pts, a.key.stride)
            cached = (cs, inverse[: a.num_sites], inverse[a.num_sites :])
            mgr._maps[key] = cached  # type: ignore[assignment]
        cs, ia, ib = cached  # type: ignore[misc]
        feats = a.feats.new_zeros((cs.size, a.num_channels))
        # Each index_add has unique indices (a set has no duplicates): deterministic.
        feats = feats.index_add(0, ia, a.feats).index_add(0, ib, b.feats)
        return self._new(a, feats, cs)

    def prune(self, x: SparseTensor, mask: Tensor) -> SparseTensor:
        keep = mask.nonzero().squeeze(1) if mask.dtype == torch.bool else mask.long()
        cs = x.manager.add(x.key.coords.index_select(0, keep), x.key.stride)
        return self._new(x, x.feats.index_select(0, keep), cs)
