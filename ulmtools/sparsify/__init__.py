"""Dense-to-sparse conversion of PSF-correlation movies (``ulm sparsify``).

The library side: selection rules (:mod:`.core`), the sparse store layout and
its readers (:mod:`.io`) and synthetic correlation movies for tests and
benchmarks (:mod:`.synthetic`). The learned mask network is in
:mod:`ulmtools.models.mask_cnn`.
"""

from ulmtools.sparsify.core import (
    DEFAULT_MASK_CUTOFF,
    DEFAULT_THRESHOLD,
    METHODS,
    SparsifyConfig,
    SparsifyStats,
    check_image_store,
    movie_to_sites,
    power,
    select,
    sparsify_store,
    threshold_mask,
    topk_mask,
    truth_mask,
    truth_sites,
)
from ulmtools.sparsify.io import (
    SparseWriter,
    movie_shape,
    n_movies,
    open_sparse,
    read_movie,
    to_dense,
)

__all__ = [
    "DEFAULT_MASK_CUTOFF",
    "DEFAULT_THRESHOLD",
    "METHODS",
    "SparseWriter",
    "SparsifyConfig",
    "SparsifyStats",
    "check_image_store",
    "movie_shape",
    "movie_to_sites",
    "n_movies",
    "open_sparse",
    "power",
    "read_movie",
    "select",
    "sparsify_store",
    "threshold_mask",
    "to_dense",
    "topk_mask",
    "truth_mask",
    "truth_sites",
]
