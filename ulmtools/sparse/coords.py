"""Coordinate sets, kernel offsets and cached kernel maps for the built-in backend.

Conventions (the same as MinkowskiEngine 0.5, so a network behaves identically on
both backends):

* coordinates are integers in units of the *finest* grid, shape ``(N, 1 + D)``
  with the batch index first;
* a set with tensor stride ``s`` (one int per axis) holds sites at multiples of
  ``s``;
* a strided convolution or pooling with stride ``k`` maps site ``c`` to
  ``floor(c / (s * k)) * (s * k)``;
* kernel offsets are in units of the *input* tensor stride for convolutions and
  pooling, and of the *output* (finer) stride for transposed convolutions.  Along
  one axis, an odd kernel of size ``k`` is centred (offsets ``-(k-1)/2 ..
  (k-1)/2``), an even one starts at zero (``0 .. k-1``); both are multiplied by
  the dilation.  Offsets are enumerated with the *first* axis varying fastest,
  which is MinkowskiEngine's kernel-weight order, so a weight tensor of shape
  ``(K, C_in, C_out)`` means the same thing on both backends.

Kernel maps are stored as *neighbour tables*: for every output site a row of K
input indices, the sentinel ``N_in`` marking "no input at this offset".  A table
turns a sparse convolution into one gather (im2col) and one GEMM, and the same
table read the other way gives a gather-only (hence deterministic) backward.
Tables are built with vectorised lookups in a dense cell table over the
bounding box (or sorted keys + searchsorted when the box is huge), never with a
Python loop over sites, and cached per (input set, output set, kernel,
dilation) in the :class:`CoordinateManager` of the forward pass.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "CoordinateManager",
    "CoordinateSet",
    "KernelMap",
    "kernel_offsets",
    "normalize_tuple",
]

#: Largest lookup table (in cells) built for neighbour search; beyond it the
#: search falls back to sort + searchsorted, which needs only O(N) memory.
DENSE_TABLE_MAX_CELLS = 1 << 25
#: Offsets filled below this fraction of output sites skip im2col (see KernelMap.split).
SPARSE_COLUMN_FILL = 0.35
#: ... or, for large sets, this many cells per site (the table then costs about as
#: much as the coordinates themselves).
DENSE_TABLE_CELLS_PER_SITE = 8
#: Rough number of int64 elements handled per chunk when building tables, so that
#: maps for millions of sites never need gigabytes of temporaries.
_CHUNK_ELEMS = 1 << 22


def normalize_tuple(
    value: int | tuple[int, ...] | list[int], dimension: int, name: str
) -> tuple[int, ...]:
    """Expand an int to a D-tuple and check a tuple's length; reject non-positive values."""
    out = (value,) * dimension if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != dimension:
        raise ValueError(f"{name} must have {dimension} entries (one per axis), got {out}")
    if any(v < 1 for v in out):
        raise ValueError(f"{name} entries must be >= 1, got {out}")
    return out


def _axis_offsets(k: int, d: int) -> list[int]:
    if k % 2 == 1:
        r = (k - 1) // 2
        return [i * d for i in range(-r, r + 1)]
    return [i * d for i in range(k)]


def kernel_offsets(kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> Tensor:
    """Kernel offsets (K, D) in stride units, first axis fastest (MinkowskiEngine order)."""
    per_axis = [_axis_offsets(k, d) for k, d in zip(kernel_size, dilation)]
    # itertools.product varies the *last* factor fastest, so feed the axes reversed.
    rows = [tuple(reversed(p)) for p in itertools.product(*reversed(per_axis))]
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), len(kernel_size))


def is_patch_kernel(
    kernel_size: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> bool:
    """True when the kernel tiles the coarse grid exactly: every fine site has one parent.

    That holds when kernel == stride, dilation 1, and each axis is either even or 1
    (an odd kernel > 1 is centred and would overlap its neighbours).
    """
    return all(
        k == s and d == 1 and (k == 1 or k % 2 == 0)
        for k, s, d in zip(kernel_size, stride, dilation)
    )


@dataclass(eq=False)
class CoordinateSet:
    """One set of unique sites with a tensor stride, owned by a CoordinateManager."""

    id: int
    coords: Tensor  # (N, 1 + D) int32, unique rows, multiples of ``stride``
    stride: tuple[int, ...]
    #: For sets made by striding, the set they came from (used to find the
    #: target of a non-generative transposed convolution).
    parent: int | None = None

    @property
    def size(self) -> int:
        return int(self.coords.shape[0])

    @property
    def dimension(self) -> int:
        return len(self.stride)


@dataclass(eq=False)
class KernelMap:
    """How output sites read input sites, for one (input set, output set, kernel).

    Usually a neighbour table: ``nbr[j, a]`` is the input row that output site j
    reads at offset ``active[a]`` (the sentinel ``n_in`` when there is none).
    Offsets that never hit are left out -- common for time offsets once time is
    pooled to a few slices -- which shrinks the im2col buffer and the GEMM in
    proportion.  For an exact-tiling ("patch") transposed map, ``parent`` /
    ``child`` hold each output site's input row and offset index instead
    (``parent == n_in`` when the parent is missing).
    """

    n_in: int
    n_out: int
    kernel_volume: int
    nbr: Tensor | None = None
    active: Tensor | None = None
    parent: Tensor | None = None
    child: Tensor | None = None
    #: True for a submanifold map whose offsets are symmetric about zero: then
    #: reading the table backwards is reading it with the kernel flipped.
    symmetric: bool = False
    _rev: Tensor | None = field(default=None, repr=False)
    _split: tuple[Tensor, Tensor, list[tuple[int, Tensor, Tensor]]] | None = field(
        default=None, repr=False
    )

    def table(self) -> tuple[Tensor, Tensor]:
        """The neighbour table (N_out, K_active) and the offsets its columns stand for."""
        if self.nbr is None or self.active is None:
            raise ValueError("this kernel map has no neighbour table (it is a patch map)")
        return self.nbr, self.active

    def split(self) -> tuple[Tensor, Tensor, list[tuple[int, Tensor, Tensor]]]:
        """The table cut into well-filled columns and sparse ones, for convolutions.

        Returns the dense part (table, offsets) and, for each sparsely filled
        offset, ``(offset, out_rows, in_rows)`` pairs.  im2col pays for every slot,
        filled or not; a pair list pays only for real pairs but at a few times the
        cost each.  In 2D+t the in-slice offsets are ~95 % filled and the
        neighbouring time slices ~25 %, so each kind goes where it is cheaper.
        """
        if self._split is None:
            table, active = self.table()
            pairs: list[tuple[int, Tensor, Tensor]] = []
            if table.shape[0] and table.shape[1]:
                filled = (table < self.n_in).sum(0).double() / table.shape[0]
                sparse = filled < SPARSE_COLUMN_FILL
                if bool(sparse.any()):
                    for pos in sparse.nonzero().squeeze(1).tolist():
                        col = table[:, pos]
                        out_rows = (col < self.n_in).nonzero().squeeze(1)
                        pairs.append((int(active[pos]), out_rows, col[out_rows].long()))
                    keep = (~sparse).nonzero().squeeze(1)
                    table, active = table.index_select(1, keep).contiguous(), active[keep]
            self._split = (table, active, pairs)
        return self._split

    def reverse(self) -> Tensor:
        """The dense part of :meth:`split` read backwards: (N_in, K_dense), sentinel N_out."""
        if self._rev is None:
            self._rev = _reverse_table(self.split()[0], self.n_in, self.n_out)
        return self._rev


def _reverse_table(nbr: Tensor, n_in: int, n_out: int) -> Tensor:
    k = nbr.shape[1]
    rev = torch.full((n_in * k + 1,), n_out, dtype=nbr.dtype, device=nbr.device)
    rows_per_chunk = max(1, _CHUNK_ELEMS // max(k, 1))
    cols = torch.arange(k, device=nbr.device)
    for r0 in range(0, nbr.shape[0], rows_per_chunk):
        block = nbr[r0 : r0 + rows_per_chunk].long()
        rows = (
            torch.arange(r0, r0 + block.shape[0], device=nbr.device).unsqueeze(1).expand_as(block)
        )
        valid = block < n_in
        # Each (input, offset) pair has at most one output, so the writes never collide.
        pos = torch.where(valid, block * k + cols, n_in * k)
        rev.index_put_((pos.reshape(-1),), rows.reshape(-1).to(nbr.dtype))
    return rev[: n_in * k].view(n_in, k)


class _Radix:
    """Mixed-radix linearisation of integer points inside a box (last axis fastest)."""

    def __init__(self, lo: Tensor, hi: Tensor) -> None:
        self.lo = lo
        ext = (hi - lo + 1).tolist()
        mult = [1] * len(ext)
        for i in range(len(ext) - 2, -1, -1):
            mult[i] = mult[i + 1] * ext[i + 1]
        self.volume = mult[0] * ext[0]
        if self.volume >= (1 << 62):
            raise ValueError("coordinate range too large to index (more than 2**62 cells)")
        self.ext = torch.tensor(ext, dtype=torch.int64, device=lo.device)
        self.mult = torch.tensor(mult, dtype=torch.int64, device=lo.device)

    def encode(self, pts: Tensor) -> Tensor:
        return ((pts - self.lo) * self.mult).sum(1)

    def decode(self, keys: Tensor) -> Tensor:
        return (keys.unsqueeze(1) // self.mult) % self.ext + self.lo


def neighbour_table(src: Tensor, queries: Tensor, offsets: Tensor) -> Tensor:
    """For each query point and offset, the row of ``src`` at ``query + offset``.

    ``src`` (N, 1+D) and ``queries`` (M, 1+D) are int64 points in one common unit;
    ``offsets`` (K, D) shifts the spatial part.  Returns (M, K) int32 (int64 when N
    does not fit) with sentinel N for "absent".
    """
    table, _ = active_neighbour_table(src, queries, offsets, drop_empty=False)
    return table


def active_neighbour_table(
    src: Tensor, queries: Tensor, offsets: Tensor, drop_empty: bool = True
) -> tuple[Tensor, Tensor]:
    """:func:`neighbour_table` without the offsets that never hit, and the kept offsets.

    Offsets that cannot hit along some axis (e.g. time offsets once time is pooled
    to one slice) are ruled out up front from per-axis occupancy, so they cost
    neither lookups nor memory.  Lookups go through a dense table when the padded
    bounding box is small (O(1) each, rows of neighbours touch nearby cells),
    otherwise through sorted keys and searchsorted (O(N) memory).
    """
    n, m, k = src.shape[0], queries.shape[0], offsets.shape[0]
    device = src.device
    idx_dtype = torch.int32 if n < (1 << 31) - 1 else torch.int64
    if n == 0 or m == 0:
        if drop_empty:
            empty = torch.empty((m, 0), dtype=idx_dtype, device=device)
            return empty, torch.empty(0, dtype=torch.int64, device=device)
        return torch.full((m, k), n, dtype=idx_dtype, device=device), torch.arange(k, device=device)
    offsets = offsets.to(device)
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    off = torch.cat([zero.expand(k, 1), offsets], dim=1)
    lo = torch.minimum(src.min(0).values, queries.min(0).values + off.min(0).values)
    hi = torch.maximum(src.max(0).values, queries.max(0).values + off.max(0).values)
    radix = _Radix(lo, hi)
    active = torch.arange(k, device=device)
    if drop_empty:
        active = active[_feasible_offsets(src, queries, offsets, lo, hi)]
    off_key = (off.index_select(0, active) * radix.mult).sum(1)
    ka = active.shape[0]
    out = torch.empty((m, ka), dtype=idx_dtype, device=device)
    if ka == 0:
        return out, active
    rows = max(1, _CHUNK_ELEMS // ka)
    if radix.volume <= max(DENSE_TABLE_MAX_CELLS, DENSE_TABLE_CELLS_PER_SITE * n):
        table = torch.full((radix.volume,), n, dtype=idx_dtype, device=device)
        table[radix.encode(src)] = torch.arange(n, dtype=idx_dtype, device=device)
        for r0 in range(0, m, rows):
            q = radix.encode(queries[r0 : r0 + rows])
            out[r0 : r0 + q.shape[0]] = table[q.unsqueeze(1) + off_key]
    else:
        sorted_key, perm = torch.sort(radix.encode(src))
        perm = torch.cat([perm.to(idx_dtype), torch.tensor([n], dtype=idx_dtype, device=device)])
        for r0 in range(0, m, rows):
            key = radix.encode(queries[r0 : r0 + rows]).unsqueeze(1) + off_key
            pos = torch.searchsorted(sorted_key, key).clamp_(max=n - 1)
            out[r0 : r0 + key.shape[0]] = perm[torch.where(sorted_key[pos] == key, pos, n)]
    if drop_empty:
        hit = (out < n).any(0)
        if not bool(hit.all()):
            out, active = out[:, hit].contiguous(), active[hit]
    return out, active


def _feasible_offsets(
    src: Tensor, queries: Tensor, offsets: Tensor, lo: Tensor, hi: Tensor
) -> Tensor:
    """Offsets that can hit along every axis, from which coordinate values occur at all."""
    ok = torch.ones(offsets.shape[0], dtype=torch.bool, device=src.device)
    for axis in range(1, src.shape[1]):
        ext = int(hi[axis] - lo[axis]) + 1
        if ext > (1 << 24):
            continue  # too wide to tabulate; let the lookups decide
        has_src = torch.zeros(ext, dtype=torch.bool, device=src.device)
        has_src[src[:, axis] - lo[axis]] = True
        has_query = torch.zeros(ext, dtype=torch.bool, device=src.device)
        has_query[queries[:, axis] - lo[axis]] = True
        values = has_query.nonzero().squeeze(1)
        for v in torch.unique(offsets[:, axis - 1]).tolist():
            if not bool(has_src[values + v].any()):
                ok &= offsets[:, axis - 1] != v
    return ok


def unique_points(pts: Tensor) -> tuple[Tensor, Tensor]:
    """Unique rows of an int64 (N, 1+D) tensor, sorted (batch, axis 0, ...), with inverse."""
    if pts.shape[0] == 0:
        return pts, torch.zeros(0, dtype=torch.int64, device=pts.device)
    radix = _Radix(pts.min(0).values, pts.max(0).values)
    keys, inverse = torch.unique(radix.encode(pts), sorted=True, return_inverse=True)
    return radix.decode(keys), inverse


class CoordinateManager:
    """Owns the coordinate sets of one forward pass and caches what is derived from them.

    Every layer that shares coordinates (all submanifold convolutions at a level,
    batch norms, activations) asks for the same kernel map, so it is built once
    per forward pass and reused for the backward pass too.  A manager belongs to a
    single input (one batch of movies); drop it with the tensors.
    """

    def __init__(self, dimension: int, device: torch.device | str = "cpu") -> None:
        self.dimension = dimension
        self.device = torch.device(device)
        self._sets: list[CoordinateSet] = []
        self._strided: dict[tuple[int, tuple[int, ...]], int] = {}
        self._generated: dict[tuple[int, tuple[int, ...], tuple[int, ...]], int] = {}
        self._maps: dict[tuple, KernelMap] = {}
        #: How many kernel maps were built (not fetched from the cache): for tests.
        self.maps_built = 0

    # -- sets -------------------------------------------------------------------
    def add(
        self, coords: Tensor, stride: tuple[int, ...], parent: int | None = None
    ) -> CoordinateSet:
        cs = CoordinateSet(
            len(self._sets), coords.to(self.device, torch.int32).contiguous(), stride, parent
        )
        self._sets.append(cs)
        return cs

    def get(self, set_id: int) -> CoordinateSet:
        return self._sets[set_id]

    def stride_set(self, cs: CoordinateSet, stride: tuple[int, ...]) -> CoordinateSet:
        """The set at ``cs.stride * stride``: every site floored onto the coarser grid."""
        if all(s == 1 for s in stride):
            return cs
        key = (cs.id, stride)
        if key not in self._strided:
            out_stride = tuple(a * b for a, b in zip(cs.stride, stride))
            pts = cs.coords.long()
            step = torch.tensor((1, *out_stride), dtype=torch.int64, device=pts.device)
            coarse, _ = unique_points(torch.div(pts, step, rounding_mode="floor") * step)
            self._strided[key] = self.add(coarse, out_stride, parent=cs.id).id
        return self._sets[self._strided[key]]

    def generate_set(
        self, cs: CoordinateSet, kernel_size: tuple[int, ...], stride: tuple[int, ...]
    ) -> tuple[CoordinateSet, bool]:
        """The finer set made by a generative transposed convolution.

        Returns the set and whether it is the *exact expansion* (site ``i * K + k``
        is child ``k`` of input ``i``), which holds when the kernel tiles the grid.
        """
        out_stride = _finer_stride(cs.stride, stride)
        exact = is_patch_kernel(kernel_size, stride, (1,) * len(stride))
        key = (cs.id, kernel_size, stride)
        if key not in self._generated:
            offs = kernel_offsets(kernel_size, (1,) * len(stride)).to(self.device)
            step = torch.tensor(out_stride, dtype=torch.int64, device=self.device)
            pts = cs.coords.long()
            kids = pts.unsqueeze(1).repeat(1, offs.shape[0], 1)
            kids[:, :, 1:] += offs * step
            kids = kids.reshape(-1, pts.shape[1])
            if not exact:
                kids, _ = unique_points(kids)
            self._generated[key] = self.add(kids, out_stride).id
        return self._sets[self._generated[key]], exact

    def find_transpose_target(
        self, cs: CoordinateSet, out_stride: tuple[int, ...]
    ) -> CoordinateSet:
        """Where a non-generative transposed convolution lands when no target is given.

        Like MinkowskiEngine: the set already known at the finer stride (the nearest
        ancestor, else the most recent set with that stride), else the input's own
        sites relabelled at the finer stride.
        """
        node: CoordinateSet | None = cs
        while node is not None:
            if node.stride == out_stride:
                return node
            node = self._sets[node.parent] if node.parent is not None else None
        for other in reversed(self._sets):
            if other.stride == out_stride:
                return other
        return self.add(cs.coords, out_stride)

    # -- kernel maps -------------------------------------------------------------
    def conv_map(
        self,
        cs_in: CoordinateSet,
        cs_out: CoordinateSet,
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> KernelMap:
        """Map for a (strided) convolution or pooling: out site c reads in sites c + o * s_in."""
        key = ("conv", cs_in.id, cs_out.id, kernel_size, dilation)
        km = self._maps.get(key)
        if km is None:
            offs = kernel_offsets(kernel_size, dilation).to(self.device)
            unit = torch.tensor((1, *cs_in.stride), dtype=torch.int64, device=self.device)
            table, active = active_neighbour_table(
                cs_in.coords.long() // unit, cs_out.coords.long() // unit, offs
            )
            symmetric = cs_in is cs_out and all(k % 2 == 1 for k in kernel_size)
            km = KernelMap(
                cs_in.size, cs_out.size, offs.shape[0], table, active, symmetric=symmetric
            )
            self._maps[key] = km
            self.maps_built += 1
        return km

    def transpose_map(
        self,
        cs_in: CoordinateSet,
        cs_out: CoordinateSet,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> KernelMap:
        """Map for a transposed convolution: out site c reads in sites c - o * s_out."""
        key = ("transpose", cs_in.id, cs_out.id, kernel_size, dilation)
        km = self._maps.get(key)
        if km is None:
            unit = torch.tensor((1, *cs_out.stride), dtype=torch.int64, device=self.device)
            src = cs_in.coords.long() // unit
            dst = cs_out.coords.long() // unit
            if is_patch_kernel(kernel_size, stride, dilation):
                # Each fine site has exactly one possible parent: find it, and which child it is.
                ks = torch.tensor((1, *kernel_size), dtype=torch.int64, device=self.device)
                up = torch.div(dst, ks, rounding_mode="floor") * ks
                zero = torch.zeros((1, self.dimension), dtype=torch.int64, device=self.device)
                parent = neighbour_table(src, up, zero)[:, 0]
                rel = dst[:, 1:] - up[:, 1:]
                mult = torch.cumprod(torch.tensor((1, *kernel_size[:-1]), device=self.device), 0)
                child = (rel * mult).sum(1)
                km = KernelMap(
                    cs_in.size, cs_out.size, math.prod(kernel_size), parent=parent, child=child
                )
            else:
                offs = kernel_offsets(kernel_size, dilation).to(self.device)
                table, active = active_neighbour_table(src, dst, -offs)
                symmetric = cs_in is cs_out and all(k % 2 == 1 for k in kernel_size)
                km = KernelMap(
                    cs_in.size, cs_out.size, offs.shape[0], table, active, symmetric=symmetric
                )
            self._maps[key] = km
            self.maps_built += 1
        return km

    def __repr__(self) -> str:
        return (
            f"CoordinateManager(dimension={self.dimension}, sets={len(self._sets)}, "
            f"maps={len(self._maps)})"
        )


def _finer_stride(stride: tuple[int, ...], factor: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for s, k in zip(stride, factor):
        if s % k:
            raise ValueError(f"cannot upsample tensor stride {stride} by {factor}: not divisible")
        out.append(s // k)
    return tuple(out)
