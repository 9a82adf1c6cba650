"""Networks and the model store.

:mod:`ulmtools.models.store` saves and loads any registered torch network as a
Zarr ``model`` store (weights as arrays, architecture and training metadata as
attributes, no pickle). :mod:`ulmtools.models.mask_cnn` is the learned
dense-to-sparse mask of ``ulm sparsify --method mask``.
"""

from ulmtools.models.store import (
    ModelInfo,
    architectures,
    build,
    load,
    load_state,
    register_architecture,
    save,
    save_model,
)

__all__ = [
    "ModelInfo",
    "architectures",
    "build",
    "load",
    "load_state",
    "register_architecture",
    "save",
    "save_model",
]
