"""Inference with trained networks (``ulm infer``): probability maps and angiograms."""

from ulmtools.infer.core import (
    InferConfig,
    InferStats,
    accumulate,
    angiogram_dice,
    dice,
    infer_store,
    predict,
)

__all__ = [
    "InferConfig",
    "InferStats",
    "accumulate",
    "angiogram_dice",
    "dice",
    "infer_store",
    "predict",
]
