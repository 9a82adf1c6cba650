"""``torch.nn`` layers for sparse tensors.

Every layer takes ``dimension`` (D, the number of coordinate axes: 3 for 2D+t,
4 for 3D+t) so one network definition serves both.  Parameters are stored in a
backend-neutral layout, so a module runs unchanged on the built-in and the
MinkowskiEngine backend -- the backend is chosen by the input tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ulmtools.sparse import functional as F
from ulmtools.sparse.coords import normalize_tuple
from ulmtools.sparse.tensor import SparseTensor

__all__ = [
    "ELU",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "Prune",
    "ReLU",
    "Sigmoid",
]

IntOrTuple = int | Sequence[int]


class _KernelLayer(nn.Module):
    """Shared weight handling: weight (K, C_in, C_out), K = prod(kernel_size)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple,
        dilation: IntOrTuple,
        bias: bool,
        dimension: int,
    ) -> None:
        super().__init__()
        if dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {dimension}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dimension = dimension
        self.kernel_size = normalize_tuple(kernel_size, dimension, "kernel_size")  # type: ignore[arg-type]
        self.stride = normalize_tuple(stride, dimension, "stride")  # type: ignore[arg-type]
        self.dilation = normalize_tuple(dilation, dimension, "dilation")  # type: ignore[arg-type]
        k = math.prod(self.kernel_size)
        self.weight = nn.Parameter(torch.empty(k, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Kaiming-uniform with fan_in = K * C_in, as for a dense conv of this size.
        fan_in = self.weight.shape[0] * self.weight.shape[1]
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        nn.init.uniform_(self.weight, -math.sqrt(3.0) * bound, math.sqrt(3.0) * bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, bias={self.bias is not None}, "
            f"dimension={self.dimension}"
        )


class Conv(_KernelLayer):
    """Sparse convolution: submanifold with stride 1, down-sampling with stride > 1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple = 3,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        bias: bool = False,
        *,
        dimension: int,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return F.conv(x, self.weight, self.kernel_size, self.stride, self.dilation, self.bias)


class ConvTranspose(_KernelLayer):
    """Transposed convolution (up-sampling by ``stride``).

    ``generative=False`` lands on known finer sites (pass the skip tensor as
    ``coordinates``); ``generative=True`` creates every kernel-offset child.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple = 2,
        stride: IntOrTuple = 2,
        dilation: IntOrTuple = 1,
        bias: bool = False,
        *,
        generative: bool = False,
        dimension: int,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension)
        self.generative = generative

    def forward(self, x: SparseTensor, coordinates: SparseTensor | None = None) -> SparseTensor:
        return F.conv_transpose(
            x,
            self.weight,
            self.kernel_size,
            self.stride,
            self.dilation,
            self.bias,
            generative=self.generative,
            coordinates=coordinates,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", generative={self.generative}"


class MaxPool(nn.Module):
    """Max pooling; anisotropic kernels such as (2, 2, 4) pool space and time differently."""

    def __init__(
        self,
        kernel_size: IntOrTuple,
        stride: IntOrTuple | None = None,
        dilation: IntOrTuple = 1,
        *,
        dimension: int,
    ) -> None:
        super().__init__()
        self.dimension = dimension
        self.kernel_size = normalize_tuple(kernel_size, dimension, "kernel_size")  # type: ignore[arg-type]
        self.stride = (
            self.kernel_size if stride is None else normalize_tuple(stride, dimension, "stride")  # type: ignore[arg-type]
        )
        self.dilation = normalize_tuple(dilation, dimension, "dilation")  # type: ignore[arg-type]

    def forward(self, x: SparseTensor) -> SparseTensor:
        return F.max_pool(x, self.kernel_size, self.stride, self.dilation)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dimension={self.dimension}"


class BatchNorm(nn.BatchNorm1d):
    """Batch norm over the active sites (inactive sites are not samples)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        if x.num_sites == 0:
            return x  # nothing to normalise; do not poison the running statistics
        return x.replace_feats(super().forward(x.feats))


class ELU(nn.Module):
    """ELU; ``inplace=True`` saves activation memory when the input is not reused."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, x: SparseTensor) -> SparseTensor:
        return F.elu(x, self.alpha, self.inplace)


class ReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return F.relu(x)


class Sigmoid(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return F.sigmoid(x)


class Prune(nn.Module):
    """Module form of :func:`ulmtools.sparse.prune` (drop sites where ``mask`` is false)."""

    def forward(self, x: SparseTensor, mask: Tensor) -> SparseTensor:
        return F.prune(x, mask)
