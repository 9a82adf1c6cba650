"""Functional sparse operations; each dispatches to the backend that owns its input.

Conventions are documented in :mod:`ulmtools.sparse.coords`.  Kernel weights have
shape ``(K, C_in, C_out)`` with offsets enumerated first axis fastest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as tf
from torch import Tensor

from ulmtools.sparse.backend import Backend, get_backend
from ulmtools.sparse.coords import normalize_tuple
from ulmtools.sparse.tensor import SparseTensor

__all__ = [
    "cat",
    "conv",
    "conv_transpose",
    "elu",
    "from_dense",
    "max_pool",
    "prune",
    "relu",
    "sigmoid",
    "sparse_tensor",
    "to_dense",
    "union",
]

IntOrTuple = int | Sequence[int]


def sparse_tensor(
    coords: Tensor,
    feats: Tensor,
    tensor_stride: IntOrTuple = 1,
    *,
    backend: str | Backend | None = None,
    manager: object | None = None,
    check: bool = True,
) -> SparseTensor:
    """Build a sparse tensor from coordinates ``(N, 1 + D)`` (batch first) and features ``(N, C)``.

    Coordinates are in finest-grid units and must be multiples of the tensor
    stride (e.g. the paper scales input pixels by the x8 output factor and uses
    tensor stride 8 in space, 1 in time).  Each new input gets its own coordinate
    manager unless ``manager`` is given.  ``check`` validates shape, stride and
    uniqueness (cheap next to a forward pass).
    """
    if coords.dim() != 2 or coords.shape[1] < 2:
        raise ValueError(f"coords must be (N, 1 + D), got shape {tuple(coords.shape)}")
    if feats.dim() != 2 or feats.shape[0] != coords.shape[0]:
        raise ValueError(
            f"feats must be (N, C) with N = {coords.shape[0]}, got {tuple(feats.shape)}"
        )
    if coords.dtype.is_floating_point or coords.dtype == torch.bool:
        raise ValueError(f"coords must be integers, got {coords.dtype}")
    d = coords.shape[1] - 1
    stride = normalize_tuple(tensor_stride, d, "tensor_stride")  # type: ignore[arg-type]
    coords = coords.to(feats.device)
    if check and coords.shape[0]:
        step = torch.tensor(stride, dtype=coords.dtype, device=coords.device)
        if bool((torch.remainder(coords[:, 1:], step) != 0).any()):
            raise ValueError(f"coordinates must be multiples of the tensor stride {stride}")
        from ulmtools.sparse.coords import unique_points

        if unique_points(coords.long())[0].shape[0] != coords.shape[0]:
            raise ValueError("coordinates contain duplicate sites; merge them first")
    return get_backend(backend).make(coords.int(), feats, stride, manager)


def conv(
    x: SparseTensor,
    weight: Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    bias: Tensor | None = None,
) -> SparseTensor:
    """Sparse convolution; stride 1 is submanifold (output sites = input sites)."""
    d = x.dimension
    ks = normalize_tuple(kernel_size, d, "kernel_size")  # type: ignore[arg-type]
    _check_weight(weight, ks, x)
    out = x.backend.conv(
        x,
        weight,
        ks,
        normalize_tuple(stride, d, "stride"),  # type: ignore[arg-type]
        normalize_tuple(dilation, d, "dilation"),  # type: ignore[arg-type]
    )
    return out if bias is None else out.replace_feats(out.feats + bias)


def conv_transpose(
    x: SparseTensor,
    weight: Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    bias: Tensor | None = None,
    *,
    generative: bool = False,
    coordinates: SparseTensor | None = None,
) -> SparseTensor:
    """Transposed convolution from tensor stride ``s`` to ``s / stride``.

    Non-generative: the output lies on known finer sites -- ``coordinates`` (a
    tensor of the same forward pass at the finer stride, e.g. the U-Net skip), or
    by default the set the manager already has at that stride.  Generative: every
    input site creates all its kernel-offset children (new active sites appear).
    """
    d = x.dimension
    ks = normalize_tuple(kernel_size, d, "kernel_size")  # type: ignore[arg-type]
    _check_weight(weight, ks, x)
    out = x.backend.conv_transpose(
        x,
        weight,
        ks,
        normalize_tuple(stride, d, "stride"),  # type: ignore[arg-type]
        normalize_tuple(dilation, d, "dilation"),  # type: ignore[arg-type]
        generative,
        coordinates,
    )
    return out if bias is None else out.replace_feats(out.feats + bias)


def max_pool(
    x: SparseTensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    dilation: IntOrTuple = 1,
) -> SparseTensor:
    """Max pooling over existing sites (stride defaults to the kernel size)."""
    d = x.dimension
    ks = normalize_tuple(kernel_size, d, "kernel_size")  # type: ignore[arg-type]
    st = ks if stride is None else normalize_tuple(stride, d, "stride")  # type: ignore[arg-type]
    return x.backend.max_pool(x, ks, st, normalize_tuple(dilation, d, "dilation"))  # type: ignore[arg-type]


def elu(x: SparseTensor, alpha: float = 1.0, inplace: bool = False) -> SparseTensor:
    """ELU on the features.

    ``inplace=True`` overwrites ``x.feats`` (only safe when nothing else still
    needs them, e.g. right after a batch norm): autograd then keeps one tensor
    instead of two, which is a third less activation memory in conv-BN-ELU stacks.
    """
    if inplace:
        return x.replace_feats(tf.elu_(x.feats, alpha))
    return x.replace_feats(tf.elu(x.feats, alpha))


def relu(x: SparseTensor) -> SparseTensor:
    return x.replace_feats(torch.relu(x.feats))


def sigmoid(x: SparseTensor) -> SparseTensor:
    return x.replace_feats(torch.sigmoid(x.feats))


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate channels of tensors on the same coordinates."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    first = tensors[0]
    for t in tensors[1:]:
        if not first.same_coords(t):
            raise ValueError("cat needs tensors on the same coordinates (pool or union them first)")
    return first.replace_feats(torch.cat([t.feats for t in tensors], dim=1))


def union(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Sum of two tensors over the union of their sites (missing sites count as zero)."""
    if a.backend is not b.backend:
        raise ValueError("union needs tensors of the same backend")
    if a.num_channels != b.num_channels:
        raise ValueError(
            f"union needs equal channel counts, got {a.num_channels} and {b.num_channels}"
        )
    return a.backend.union(a, b)


def prune(x: SparseTensor, mask: Tensor) -> SparseTensor:
    """Keep the sites where ``mask`` (bool, shape (N,)) is true; gradients flow to kept rows."""
    if mask.dim() != 1 or mask.shape[0] != x.num_sites:
        raise ValueError(f"mask must have shape ({x.num_sites},), got {tuple(mask.shape)}")
    return x.backend.prune(x, mask.to(x.device))


def to_dense(
    x: SparseTensor,
    shape: Sequence[int] | None = None,
    min_coordinate: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Dense ``(B, C, *shape)`` tensor on the grid of ``x``'s tensor stride.

    Cell ``i`` along an axis holds coordinate ``min_coordinate + i * stride``;
    ``min_coordinate`` defaults to the origin (not the tensor's minimum) so that
    grids of different movies line up.  Sites outside the box are dropped.
    """
    coords = x.coords.long()
    d = x.dimension
    stride = torch.tensor(x.tensor_stride, dtype=torch.int64, device=coords.device)
    lo = torch.zeros(d, dtype=torch.int64, device=coords.device)
    if min_coordinate is not None:
        lo = torch.tensor(list(min_coordinate), dtype=torch.int64, device=coords.device)
    q = torch.div(coords[:, 1:] - lo, stride, rounding_mode="floor")
    if shape is None:
        shape = (q.max(0).values + 1).tolist() if q.shape[0] else [0] * d
    shape = [int(s) for s in shape]
    if batch_size is None:
        batch_size = int(coords[:, 0].max()) + 1 if coords.shape[0] else 0
    inside = (q >= 0).all(1) & (q < torch.tensor(shape, device=q.device)).all(1)
    inside &= (coords[:, 0] >= 0) & (coords[:, 0] < batch_size)
    flat = coords[:, 0]
    for i in range(d):
        flat = flat * shape[i] + q[:, i]
    flat = flat[inside]
    c = x.num_channels
    out = x.feats.new_zeros((batch_size * math.prod(shape), c))
    out = out.index_copy(0, flat, x.feats[inside]) if flat.numel() else out
    return out.view(batch_size, *shape, c).movedim(-1, 1)


def from_dense(
    dense: Tensor,
    mask: Tensor | None = None,
    tensor_stride: IntOrTuple = 1,
    *,
    backend: str | Backend | None = None,
    manager: object | None = None,
) -> SparseTensor:
    """Sparse tensor of the active cells of a dense ``(B, C, *shape)`` tensor.

    Active = ``mask`` (``(B, *shape)`` bool) if given, else any non-zero channel.
    Coordinates are cell indices times the tensor stride; features keep autograd
    history, so a loss on the sparse result back-propagates into ``dense``.
    """
    if dense.dim() < 3:
        raise ValueError(f"dense must be (B, C, *shape), got {tuple(dense.shape)}")
    d = dense.dim() - 2
    stride = normalize_tuple(tensor_stride, d, "tensor_stride")  # type: ignore[arg-type]
    if mask is None:
        mask = (dense != 0).any(dim=1)
    if mask.shape != (dense.shape[0], *dense.shape[2:]):
        raise ValueError(
            f"mask must have shape {(dense.shape[0], *dense.shape[2:])}, got {tuple(mask.shape)}"
        )
    idx = mask.nonzero()  # sorted (batch, axis 0, ...), i.e. the canonical order
    feats = dense.movedim(1, -1)[mask]
    step = torch.tensor((1, *stride), dtype=idx.dtype, device=idx.device)
    return sparse_tensor(idx * step, feats, stride, backend=backend, manager=manager, check=False)


def _check_weight(weight: Tensor, ks: tuple[int, ...], x: SparseTensor) -> None:
    k = math.prod(ks)
    if weight.dim() != 3 or weight.shape[0] != k:
        raise ValueError(f"weight must be (K={k}, C_in, C_out), got {tuple(weight.shape)}")
    if weight.shape[1] != x.num_channels:
        raise ValueError(
            f"layer expects {weight.shape[1]} input channels, tensor has {x.num_channels}"
        )
