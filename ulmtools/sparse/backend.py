"""Backend interface and selection.

A backend owns coordinates and implements the few operations that depend on
them; everything element-wise (batch norm, activations, residual sums,
concatenation) is shared code working on ``SparseTensor.feats``.  Parameters
live in the layers in a backend-neutral layout (kernel weights ``(K, C_in,
C_out)``), so the same module with the same weights runs on either backend.

Selection, first match wins: an explicit name (``backend=`` on a call), the
default set by :func:`set_default_backend` (what a CLI ``--backend`` flag
calls), the ``ULM_SPARSE_BACKEND`` environment variable, then ``builtin``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from ulmtools.sparse.tensor import SparseTensor

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "set_default_backend",
]

ENV_VAR = "ULM_SPARSE_BACKEND"
BACKENDS = ("builtin", "minkowski")

try:  # the package-wide error family, when present (exit codes, fix-it hints)
    from ulmtools.errors import BackendError as _BackendErrorBase  # type: ignore[import-not-found]
except Exception:  # pragma: no cover - depends on what else is installed

    class _BackendErrorBase(RuntimeError):  # type: ignore[no-redef]
        def __init__(self, message: str, hint: str | None = None) -> None:
            super().__init__(message if hint is None else f"{message} ({hint})")
            self.message = message
            self.hint = hint


class BackendUnavailableError(_BackendErrorBase):  # type: ignore[misc,valid-type]
    """A sparse backend was asked for but cannot be used here."""


class Backend(ABC):
    """What a sparse engine must provide; see ``_builtin.py`` for the reference."""

    name: str

    # coordinates
    @abstractmethod
    def make(
        self, coords: Tensor, feats: Tensor, tensor_stride: tuple[int, ...], manager: Any = None
    ) -> SparseTensor: ...

    @abstractmethod
    def coords(self, x: SparseTensor) -> Tensor: ...

    @abstractmethod
    def tensor_stride(self, x: SparseTensor) -> tuple[int, ...]: ...

    @abstractmethod
    def same_key(self, a: Any, b: Any) -> bool: ...

    # operations
    @abstractmethod
    def conv(
        self,
        x: SparseTensor,
        weight: Tensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> SparseTensor: ...

    @abstractmethod
    def conv_transpose(
        self,
        x: SparseTensor,
        weight: Tensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
        generative: bool,
        target: SparseTensor | None,
    ) -> SparseTensor: ...

    @abstractmethod
    def max_pool(
        self,
        x: SparseTensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> SparseTensor: ...

    @abstractmethod
    def union(self, a: SparseTensor, b: SparseTensor) -> SparseTensor: ...

    @abstractmethod
    def prune(self, x: SparseTensor, mask: Tensor) -> SparseTensor: ...


_default: str | None = None
_instances: dict[str, Backend] = {}


def set_default_backend(name: str | None) -> None:
    """Choose the backend used when none is named (e.g. from ``--backend``)."""
    global _default
    if name is not None:
        _check_name(name)
    _default = name


def _check_name(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown sparse backend {name!r}", hint=f"choose one of: {', '.join(BACKENDS)}"
        )
    return name


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend object for ``name`` (or the configured default)."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = _default or os.environ.get(ENV_VAR) or "builtin"
    name = _check_name(name)
    if name not in _instances:
        if name == "builtin":
            from ulmtools.sparse._builtin import BuiltinBackend

            _instances[name] = BuiltinBackend()
        else:
            from ulmtools.sparse._minkowski import MinkowskiBackend

            _instances[name] = MinkowskiBackend()
    return _instances[name]


def available_backends() -> list[str]:
    """Backends that can be used on this machine."""
    out = ["builtin"]
    try:
        get_backend("minkowski")
        out.append("minkowski")
    except BackendUnavailableError:
        pass
    return out


def as_index(mask: Tensor) -> Tensor:
    """Boolean mask or integer index -> int64 index (helper for prune)."""
    if mask.dtype == torch.bool:
        return mask.nonzero().squeeze(1)
    return mask.long()
