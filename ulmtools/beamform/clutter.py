"""SVD clutter filter over a movie's frames.

``svd_filter(iq, k)`` removes the ``k`` largest singular components of the
Casorati matrix (frames x pixels) of one movie: tissue is slow and strong, so
it lives in the first components; moving bubbles decorrelate from frame to
frame and spread over the rest. The SVD is taken through the smaller of the
two Gram matrices (frames x frames or pixels x pixels), whose
eigenvectors are the singular vectors, so a 512-frame movie costs one
Hermitian product and a small eigendecomposition.

The BLAS and LAPACK calls run on one thread: OpenBLAS splits its sums differently
with more threads, so the filtered movie's bytes depended on the thread count (a
Dask worker, started with one BLAS thread, differed from the driver). Stages run
movies in parallel (``--workers``) instead.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

from ulmtools.errors import UsageError

__all__ = ["svd_filter"]


def svd_filter(iq: np.ndarray, k: int) -> np.ndarray:
    """``iq`` (t, *space) complex, minus its ``k`` largest singular components."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _svd_filter(np.asarray(iq), k)


def _svd_filter(x: np.ndarray, k: int) -> np.ndarray:
    if k < 0:
        raise UsageError(f"the SVD cut-off must be >= 0, got {k}")
    n_t = x.shape[0]
    if k == 0:
        return x.astype(np.complex64, copy=False)
    if k >= min(n_t, int(np.prod(x.shape[1:]))):
        raise UsageError(
            f"cannot remove {k} singular components from a movie of {n_t} frames "
            f"and {int(np.prod(x.shape[1:]))} pixels",
            "use a smaller K in --clutter svd:K",
        )
    c = np.ascontiguousarray(x.reshape(n_t, -1), dtype=np.complex64)
    n_t, n_p = c.shape
    # herk fills the upper triangle of the Hermitian Gram matrix (half a gemm)
    if n_t <= n_p:
        g = scipy.linalg.blas.cherk(1.0, c).astype(np.complex128)  # frames x frames
        _, u = scipy.linalg.eigh(g, lower=False, subset_by_index=[n_t - k, n_t - 1])
        u = u.astype(np.complex64)
        filtered = c - u @ (u.conj().T @ c)
    else:
        g = scipy.linalg.blas.cherk(1.0, c, trans=2).astype(np.complex128)  # pixels x pixels
        _, v = scipy.linalg.eigh(g, lower=False, subset_by_index=[n_p - k, n_p - 1])
        v = v.astype(np.complex64)
        filtered = c - (c @ v) @ v.conj().T
    return filtered.reshape(x.shape).astype(np.complex64, copy=False)
