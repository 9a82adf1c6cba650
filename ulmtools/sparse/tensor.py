"""The backend-neutral sparse tensor.

A :class:`SparseTensor` is features ``(N, C)`` attached to a coordinate set held by
a coordinate manager.  Which backend owns the coordinates (built-in or
MinkowskiEngine) is recorded on the tensor, so layers dispatch on their input and
one network definition runs on either backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ulmtools.sparse.backend import Backend

__all__ = ["SparseTensor"]


class SparseTensor:
    """Sparse features on integer sites ``(batch, x_1 .. x_D)`` with a tensor stride.

    Create one with :func:`ulmtools.sparse.sparse_tensor` (or ``from_dense``);
    layers return new tensors that share the manager, so kernel maps built for
    one layer are reused by every later layer on the same coordinates.

    Attributes:
        feats: (N, C) features, row i belonging to ``coords[i]``.
        key: the backend's handle for the coordinate set.
        manager: the backend's coordinate manager.
        backend: the backend that owns ``key`` and ``manager``.
    """

    __slots__ = ("backend", "feats", "key", "manager")

    def __init__(self, feats: Tensor, key: Any, manager: Any, backend: Backend) -> None:
        if feats.dim() != 2:
            raise ValueError(f"features must be (N, C), got shape {tuple(feats.shape)}")
        self.feats = feats
        self.key = key
        self.manager = manager
        self.backend = backend

    # -- views ------------------------------------------------------------------
    @property
    def F(self) -> Tensor:
        return self.feats

    @property
    def coords(self) -> Tensor:
        """(N, 1 + D) int32 coordinates (batch first) in finest-grid units."""
        return self.backend.coords(self)

    C = coords

    @property
    def tensor_stride(self) -> tuple[int, ...]:
        return self.backend.tensor_stride(self)

    @property
    def dimension(self) -> int:
        return len(self.tensor_stride)

    @property
    def num_sites(self) -> int:
        return int(self.feats.shape[0])

    def __len__(self) -> int:
        return self.num_sites

    @property
    def num_channels(self) -> int:
        return int(self.feats.shape[1])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    def replace_feats(self, feats: Tensor) -> SparseTensor:
        """Same sites, new features (e.g. after an element-wise op)."""
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"need {self.feats.shape[0]} feature rows, got {feats.shape[0]}")
        return SparseTensor(feats, self.key, self.manager, self.backend)

    def same_coords(self, other: SparseTensor) -> bool:
        return self.manager is other.manager and self.backend.same_key(self.key, other.key)

    def dense(self, **kwargs: Any) -> Tensor:
        """Shorthand for :func:`ulmtools.sparse.to_dense`."""
        from ulmtools.sparse.functional import to_dense

        return to_dense(self, **kwargs)

    # -- arithmetic on shared coordinates (residual connections) -----------------
    def _binary(self, other: Any, op: Any) -> SparseTensor:
        if isinstance(other, SparseTensor):
            if not self.same_coords(other):
                raise ValueError(
                    "element-wise ops need both tensors on the same coordinates; "
                    "use ulmtools.sparse.union to add tensors on different sites"
                )
            other = other.feats
        return self.replace_feats(op(self.feats, other))

    def __add__(self, other: Any) -> SparseTensor:
        return self._binary(other, torch.add)

    __radd__ = __add__

    def __sub__(self, other: Any) -> SparseTensor:
        return self._binary(other, torch.sub)

    def __mul__(self, other: Any) -> SparseTensor:
        return self._binary(other, torch.mul)

    __rmul__ = __mul__

    def __neg__(self) -> SparseTensor:
        return self.replace_feats(-self.feats)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(sites={self.num_sites}, channels={self.num_channels}, "
            f"tensor_stride={self.tensor_stride}, backend={self.backend.name!r}, "
            f"dtype={self.dtype}, device={self.device})"
        )
