"""MinkowskiEngine 0.5.4 behind the ulmtools sparse interface (optional).

Layers keep their parameters in ulmtools' layout; this module calls
MinkowskiEngine's autograd functions with those very tensors, so the same module
and weights run on either backend.  MinkowskiEngine is built from its PyPI sdist
by ``make minkowski`` (``scripts/build-minkowski.sh``).
"""

from __future__ import annotations

import collections
import collections.abc
import os
import warnings
from typing import Any

import torch
from torch import Tensor

from ulmtools.sparse.backend import Backend, BackendUnavailableError
from ulmtools.sparse.tensor import SparseTensor

__all__ = ["MinkowskiBackend", "import_minkowski"]

INSTALL_HINT = (
    "build it with `make minkowski` (MinkowskiEngine 0.5.4 from source into .venv, "
    "about 8 minutes), or use the default built-in backend"
)


def import_minkowski() -> Any:
    """Import MinkowskiEngine, papering over what breaks it on current Pythons."""
    # Its sources use `from collections import Sequence`, gone since Python 3.10.
    for name in ("Sequence", "Mapping", "MutableMapping", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    # Two competing BLAS thread pools (OpenBLAS's and torch's) made it 3x slower here.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        with warnings.catch_warnings():
            # a CPU-only build says so on every import; that is expected here
            warnings.filterwarnings("ignore", message=".*compiled with CPU_ONLY.*")
            import MinkowskiEngine as ME  # type: ignore[import-not-found]
    except ImportError as err:
        raise BackendUnavailableError(
            f"the minkowski sparse backend needs MinkowskiEngine, which is not importable ({err})",
            hint=INSTALL_HINT,
        ) from err
    if not ME.__version__.startswith("0.5"):
        raise BackendUnavailableError(
            f"MinkowskiEngine {ME.__version__} found; the minkowski backend supports 0.5.x",
            hint=INSTALL_HINT,
        )
    return ME


class _Manager:
    """A MinkowskiEngine CoordinateManager plus a cache of coordinate tensors."""

    def __init__(self, me_manager: Any) -> None:
        self.me = me_manager
        self.coords: dict[str, Tensor] = {}


class MinkowskiBackend(Backend):
    """Dispatches ulmtools layers to MinkowskiEngine 0.5.4 kernels."""

    name = "minkowski"

    def __init__(self) -> None:
        self.ME = import_minkowski()
        from MinkowskiEngine.MinkowskiConvolution import (  # type: ignore[import-not-found]
            MinkowskiConvolutionFunction,
            MinkowskiConvolutionTransposeFunction,
        )
        from MinkowskiEngine.MinkowskiPooling import (  # type: ignore[import-not-found]
            MinkowskiLocalPoolingFunction,
        )

        self._conv_fn = MinkowskiConvolutionFunction
        self._convt_fn = MinkowskiConvolutionTransposeFunction
        self._pool_fn = MinkowskiLocalPoolingFunction
        from MinkowskiEngineBackend._C import ConvolutionMode  # type: ignore[import-not-found]

        self._conv_mode = ConvolutionMode.DEFAULT

    # -- coordinates -------------------------------------------------------------
    def make(
        self,
        coords: Tensor,
        feats: Tensor,
        tensor_stride: tuple[int, ...],
        manager: Any = None,
    ) -> SparseTensor:
        ME = self.ME
        d = len(tensor_stride)
        if manager is None:
            map_type = ME.CoordinateMapType.CUDA if feats.is_cuda else ME.CoordinateMapType.CPU
            manager = _Manager(ME.CoordinateManager(D=d, coordinate_map_type=map_type))
        elif not isinstance(manager, _Manager):
            raise ValueError("manager must come from a tensor of the minkowski backend")
        if coords.shape[0] == 0:
            # MinkowskiEngine 0.5.4 segfaults on empty coordinate maps; fail cleanly instead.
            raise ValueError(
                "the minkowski backend cannot hold a tensor with no sites "
                "(MinkowskiEngine crashes on them); use the built-in backend for empty inputs"
            )
        coords = coords.int().to(feats.device).contiguous()
        key, (unique_index, _) = manager.me.insert_and_map(coords, list(tensor_stride), "")
        if unique_index.numel() != coords.shape[0] or (
            coords.shape[0]
            and not torch.equal(unique_index.long().cpu(), torch.arange(coords.shape[0]))
        ):
            raise ValueError("coordinates contain duplicate sites; merge them first")
        return SparseTensor(feats, key, manager, self)

    def coords(self, x: SparseTensor) -> Tensor:
        cache = x.manager.coords
        name = str(x.key)
        if name not in cache:
            cache[name] = x.manager.me.get_coordinates(x.key).int()
        return cache[name]

    def tensor_stride(self, x: SparseTensor) -> tuple[int, ...]:
        return tuple(int(s) for s in x.key.get_tensor_stride())

    def same_key(self, a: Any, b: Any) -> bool:
        return bool(a == b)

    def _me(self, x: SparseTensor) -> Any:
        return self.ME.SparseTensor(
            x.feats, coordinate_map_key=x.key, coordinate_manager=x.manager.me
        )

    def _wrap(self, x: SparseTensor, feats: Tensor, key: Any) -> SparseTensor:
        return SparseTensor(feats, key, x.manager, self)

    def _kernel(
        self,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
        transpose: bool = False,
        expand: bool = False,
    ) -> Any:
        return self.ME.KernelGenerator(
            kernel_size=list(kernel_size),
            stride=list(stride),
            dilation=list(dilation),
            is_transpose=transpose,
            expand_coordinates=expand,
            dimension=len(kernel_size),
        )

    def _empty_key(self, x: SparseTensor) -> Any:
        return self.ME.CoordinateMapKey(x.dimension + 1)

    # -- operations --------------------------------------------------------------
    def conv(
        self,
        x: SparseTensor,
        weight: Tensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> SparseTensor:
        if weight.shape[0] == 1 and all(s == 1 for s in stride):
            return self._wrap(x, x.feats @ weight[0], x.key)  # what MinkowskiConvolution does
        out_key = self._empty_key(x)
        feats = self._conv_fn.apply(
            x.feats,
            weight,
            self._kernel(kernel_size, stride, dilation),
            self._conv_mode,
            x.key,
            out_key,
            x.manager.me,
        )
        return self._wrap(x, feats, out_key)

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
        if target is not None:
            if generative:
                raise ValueError(
                    "a generative transposed convolution makes its own sites; drop `coordinates`"
                )
            if target.manager is not x.manager:
                raise ValueError(
                    "`coordinates` must come from the same forward pass (coordinate manager)"
                )
            out_key = target.key
        else:
            out_key = self._empty_key(x)
        feats = self._convt_fn.apply(
            x.feats,
            weight,
            self._kernel(kernel_size, stride, dilation, transpose=True, expand=generative),
            self._conv_mode,
            x.key,
            out_key,
            x.manager.me,
        )
        return self._wrap(x, feats, out_key)

    def max_pool(
        self,
        x: SparseTensor,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> SparseTensor:
        out_key = self._empty_key(x)
        feats = self._pool_fn.apply(
            x.feats,
            self.ME.PoolingMode.LOCAL_MAX_POOLING,
            self._kernel(kernel_size, stride, dilation),
            x.key,
            out_key,
            x.manager.me,
        )
        return self._wrap(x, feats, out_key)

    def union(self, a: SparseTensor, b: SparseTensor) -> SparseTensor:
        if a.manager is not b.manager:
            raise ValueError("union needs tensors from the same forward pass (coordinate manager)")
        if self.same_key(a.key, b.key):
            return a + b
        out = self.ME.MinkowskiUnion()(self._me(a), self._me(b))
        return self._wrap(a, out.F, out.coordinate_map_key)

    def prune(self, x: SparseTensor, mask: Tensor) -> SparseTensor:
        if mask.dtype != torch.bool:
            keep = torch.zeros(x.num_sites, dtype=torch.bool, device=x.device)
            keep[mask.long()] = True
            mask = keep
        if not bool(mask.any()):
            raise ValueError(
                "pruning every site is not supported by the minkowski backend "
                "(MinkowskiEngine crashes on empty tensors); keep at least one site"
            )
        out = self.ME.MinkowskiPruning()(self._me(x), mask)
        return self._wrap(x, out.F, out.coordinate_map_key)
