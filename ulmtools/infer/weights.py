"""Loading a model for inference: a model store path, or the weights shipped in the package.

``shipped:2d`` and ``shipped:3d`` name the small pretrained Sparse Deep-stULM
models under ``ulmtools/weights/`` (made by ``make weights``; see
``scripts/make-weights.sh`` and ``ulmtools/weights/README.md``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ulmtools.errors import InputError
from ulmtools.models import store as model_store
from ulmtools.models.deepstulm import ARCHITECTURE, SparseDeepStulm

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED = {"2d": "deepstulm-2d.zarr", "3d": "deepstulm-3d.zarr"}


def shipped_path(name: str) -> Path:
    """The store of shipped weights ``name`` (``2d`` or ``3d``)."""
    if name not in SHIPPED:
        raise InputError(
            f"no shipped model {name!r}", f"use shipped:{' or shipped:'.join(SHIPPED)}"
        )
    path = WEIGHTS_DIR / SHIPPED[name]
    if not path.exists():
        raise InputError(
            f"the shipped {name} weights are not installed ({path} is missing)",
            "run 'make weights' in the source tree, or give a model store",
        )
    return path


def shipped_features(name: str) -> str:
    """The feature set (``ulm sparsify --features``) the shipped model ``name`` reads:
    ``corr`` or ``corr,iq``; ``corr`` when it is not installed."""
    from ulmtools.train.data import features_name, model_channels

    if name not in SHIPPED or not (WEIGHTS_DIR / SHIPPED[name]).exists():
        return "corr"
    return features_name(model_channels(model_store.info(WEIGHTS_DIR / SHIPPED[name])))


def resolve(spec: str | Path) -> Path:
    s = str(spec)
    return shipped_path(s.split(":", 1)[1]) if s.startswith("shipped:") else Path(s)


def load_model(
    spec: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[SparseDeepStulm, model_store.ModelInfo]:
    """A Sparse Deep-stULM model (eval mode) from a store path or ``shipped:2d|3d``."""
    path = resolve(spec)
    meta = model_store.info(path)
    if meta.name != ARCHITECTURE:
        raise InputError(
            f"{path} holds a {meta.name!r} model; ulm infer runs {ARCHITECTURE!r} models",
            "give a model made by 'ulm train --arch sparse-deepstulm'",
        )
    net, meta = model_store.load(path, device=device)
    return net, meta  # type: ignore[return-value]
