"""``ulm train`` for the dense baselines (``--arch deepstulm``, ``mspcn``).

Both read image stores (the dense correlation of ``ulm beamform`` or ``ulm
simulate --level image``); the sparse network reads sparse stores. Inference
with them (routing, input masking) is in :mod:`ulmtools.infer.stage`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ulmtools.cli.context import emit, progress
from ulmtools.errors import UsageError


def train_baseline(
    arch: str,
    train_store: Path,
    model_store: Path,
    *,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    channels: int,
    seed: int | None,
    device: str,
    input_mask: Path | None,
    input_threshold: float | None,
    force: bool,
    as_json: bool,
) -> None:
    """``ulm train --arch deepstulm|mspcn``: train on an image store, write a model store."""
    from dataclasses import replace

    import numpy as np

    from ulmtools.device import resolve_device
    from ulmtools.models.store import save_model
    from ulmtools.store import check_output, lineage, provenance_entry
    from ulmtools.train.baselines import BaselineTrainConfig, ImageMovies, train_baseline
    from ulmtools.train.config import check_channels, check_epochs, check_lr

    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if epochs is not None:
        check_epochs(epochs)
    if lr is not None:
        check_lr(lr)
    check_channels(channels)
    if input_mask is not None and input_threshold is not None:
        raise UsageError("give --input-mask or --input-threshold, not both")
    data = ImageMovies(
        train_store,
        need_truth=True,
        input_threshold=input_threshold,
        input_mask=input_mask,
        arch=arch,
    )
    inputs = [train_store] + ([input_mask] if input_mask is not None else [])
    check_output(model_store, force=force, inputs=inputs)
    torch_device = resolve_device(device)
    config = BaselineTrainConfig(arch=arch, channels=channels)
    overrides = {"epochs": epochs, "batch": batch_size, "lr": lr}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config = replace(
        config, seed=int(np.random.SeedSequence().entropy % (2**31)) if seed is None else seed
    )
    start = time.perf_counter()
    with progress(f"train {arch}") as report:
        model, history = train_baseline(data, config, device=torch_device, progress=report)
    sources = [data.store] + ([data.mask.store] if data.mask is not None else [])
    entry = provenance_entry(
        "train",
        {
            "arch": arch,
            "config": config.to_dict(),
            "input_masking": data.masking,
            "device": str(torch_device),
        },
        sources,
    )
    last = history[-1] if history else {}
    result: dict[str, Any] = {
        "output": str(model_store),
        "architecture": arch,
        "parameters": model.num_parameters(),
        "dimension": 3,
        "epochs": config.epochs,
        "input_masking": data.masking,
        "loss": last.get("loss"),
        "dice": last.get("dice"),
        "seconds": round(time.perf_counter() - start, 3),
        "peak_memory_mb": round(max(h["peak_memory_mb"] for h in history), 1),
        "device": str(torch_device),
        "seed": config.seed,
    }
    masked = ""
    if data.masking is not None:
        how = data.masking
        masked = (
            f", input masked by abs(corr)^2 > {how['threshold']}"
            if how["method"] == "threshold"
            else f", input masked by the sites of {input_mask}"
        )
    dice = f", training Dice {result['dice']:.4f}" if result["dice"] is not None else ""
    text = (
        f"{model_store}: {arch} ({result['parameters']} parameters, 2D+t), "
        f"{config.epochs} epoch{'s' if config.epochs != 1 else ''} on {torch_device}{masked}\n"
        f"final loss {result['loss']:.4f}{dice}; {result['seconds']:.1f} s, "
        f"peak memory {result['peak_memory_mb']:.0f} MB"
    )
    save_model(
        model_store,
        model,
        training={
            "config": config.to_dict(),
            "complete": True,
            "device": str(torch_device),
            "train": data.store.describe(),
            "input_masking": data.masking,
            "grid": data.grid.to_attrs(),
            "fine_grid": data.fine_grid.to_attrs(),
        },
        history=history,
        provenance=lineage(sources, entry),
        force=force,
        inputs=inputs,
    )
    emit(result, as_json=as_json, text=None if as_json else text)
