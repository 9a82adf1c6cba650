"""Sparse tensor engine: one interface, two backends.

The built-in backend (pure PyTorch, default) needs nothing but torch; the
MinkowskiEngine 0.5.4 backend is optional (``make minkowski``).  Pick one with
``backend=`` on :func:`sparse_tensor` / :func:`from_dense`, the
``ULM_SPARSE_BACKEND`` environment variable, or :func:`set_default_backend`;
layers follow their input, so the same network runs on either.

Example::

    import torch
    from ulmtools import sparse as sp

    coords = torch.tensor([[0, 8, 16, 3], [0, 8, 24, 3], [0, 16, 16, 4]])  # (batch, x, y, t)
    x = sp.sparse_tensor(coords, torch.randn(3, 2), tensor_stride=(8, 8, 1))
    net = torch.nn.Sequential(
        sp.Conv(2, 16, kernel_size=3, dimension=3),
        sp.BatchNorm(16),
        sp.ELU(),
        sp.MaxPool((2, 2, 4), dimension=3),
    )
    y = net(x)                      # y.tensor_stride == (16, 16, 4)
    img = sp.to_dense(y)            # (B, 16, X, Y, T) on y's grid
"""

from ulmtools.sparse.backend import (
    BACKENDS,
    ENV_VAR,
    Backend,
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_default_backend,
)
from ulmtools.sparse.coords import CoordinateManager, kernel_offsets
from ulmtools.sparse.functional import (
    cat,
    conv,
    conv_transpose,
    elu,
    from_dense,
    max_pool,
    prune,
    relu,
    sigmoid,
    sparse_tensor,
    to_dense,
    union,
)
from ulmtools.sparse.nn import ELU, BatchNorm, Conv, ConvTranspose, MaxPool, Prune, ReLU, Sigmoid
from ulmtools.sparse.tensor import SparseTensor

__all__ = [
    "BACKENDS",
    "ELU",
    "ENV_VAR",
    "Backend",
    "BackendUnavailableError",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "CoordinateManager",
    "MaxPool",
    "Prune",
    "ReLU",
    "Sigmoid",
    "SparseTensor",
    "available_backends",
    "cat",
    "conv",
    "conv_transpose",
    "elu",
    "from_dense",
    "get_backend",
    "kernel_offsets",
    "max_pool",
    "prune",
    "relu",
    "set_default_backend",
    "sigmoid",
    "sparse_tensor",
    "to_dense",
    "union",
]
