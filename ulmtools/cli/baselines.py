"""``ulm train`` / ``ulm infer`` for the dense baselines (``--arch deepstulm``, ``mspcn``).

Both read image stores (the dense correlation of ``ulm beamform`` or ``ulm
simulate --level image``); the sparse network reads sparse stores. The routing
and the one-line refusals of the wrong input kind live here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ulmtools.cli.context import emit, log, progress
from ulmtools.errors import InputError, UsageError

DENSE = ("deepstulm", "mspcn")
READS = {
    "deepstulm": ("image", "ulm beamform"),
    "mspcn": ("image", "ulm beamform"),
    "sparse-deepstulm": ("sparse", "ulm sparsify"),
}


def model_input_kind(model: str, input: Path) -> str:
    """``image`` or ``sparse``: what the model reads; refuses an input of the other kind."""
    from ulmtools.infer.weights import resolve
    from ulmtools.models.store import info
    from ulmtools.store import open_store

    meta = info(resolve(model))
    if meta.name not in READS:
        return "sparse"  # ulm infer's own refusal names the architectures it runs
    kind, made_by = READS[meta.name]
    store = open_store(input)
    if store.kind != kind:
        raise InputError(
            f"this {meta.name} model reads {'an' if kind == 'image' else 'a'} {kind} store "
            f"({made_by}); {input} is {'an' if store.kind[0] in 'aeiou' else 'a'} "
            f"{store.kind} store",
            "sparsify an image store with ulm sparsify for the sparse model; "
            "give the image store itself to a dense one",
        )
    return kind


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


def mask_for_inference(
    spec: str | None, input_mask: Path | None, trained: dict[str, Any] | None
) -> tuple[float | None, Path | None]:
    """(threshold, mask store) to apply to a dense model's input.

    ``--input-threshold auto`` repeats the model's training threshold; ``none`` or a
    number override it. A model trained on a sparse store's sites needs ``--input-mask``.
    """
    if input_mask is not None:
        if spec not in (None, "auto", "none"):
            raise UsageError("give --input-mask or a numeric --input-threshold, not both")
        return None, input_mask
    s = "auto" if spec is None else str(spec).lower()
    if s == "none":
        return None, None
    if s == "auto":
        if trained and trained.get("method") == "threshold":
            return float(trained["threshold"]), None
        if trained and trained.get("method") == "sparse-store":
            log.warning(
                "the model was trained on inputs masked by the sites of %s; give --input-mask "
                "with the sparse store of this input to do the same",
                (trained.get("store") or {}).get("path"),
            )
        return None, None
    try:
        value = float(s)
    except ValueError:
        raise UsageError(
            f"--input-threshold must be auto, none or a number, got {spec!r}"
        ) from None
    return value, None


def infer_dense(
    model: str,
    input: Path,
    output: Path,
    *,
    threshold: float,
    min_probability: float,
    batch_size: int,
    input_threshold: str,
    input_mask: Path | None,
    device: str,
    force: bool,
    as_json: bool,
) -> None:
    """``ulm infer`` with a deepstulm or mspcn model on an image store."""
    from ulmtools.device import resolve_device
    from ulmtools.infer.core import InferConfig
    from ulmtools.infer.dense import infer_image_store
    from ulmtools.infer.weights import resolve
    from ulmtools.models.store import load
    from ulmtools.store import check_output, create_store, lineage, provenance_entry
    from ulmtools.train.baselines import ImageMovies
    from ulmtools.truth import copy_truth

    config = InferConfig(
        threshold=threshold, min_probability=min_probability, batch_size=batch_size
    )
    torch_device = resolve_device(device)
    net, meta = load(resolve(model), device=torch_device)
    t_in, mask = mask_for_inference(input_threshold, input_mask, meta.training.get("input_masking"))
    data = ImageMovies(input, input_threshold=t_in, input_mask=mask, arch=meta.name)
    if t_in is not None:
        log.info("input pixels with abs(corr)^2 <= %g set to 0", t_in)
    inputs = [input, Path(meta.path)] + ([mask] if mask is not None else [])
    check_output(output, force=force, inputs=inputs)
    parameters = {
        **config.to_dict(),
        "device": str(torch_device),
        "model": meta.describe() | {"kwargs": meta.kwargs, "spec": str(model)},
        "input_masking": data.masking,
    }
    sources = [data.store] + ([data.mask.store] if data.mask is not None else [])
    entry = provenance_entry("infer", parameters, sources)
    attrs = {
        "input_grid": data.grid.to_attrs(),
        "factor": 8,
        "threshold": config.threshold,
        "min_probability": config.min_probability,
        "input_threshold": t_in,
        "input_masking": data.masking,
        "model": meta.describe(),
        "movies": len(data),
        "frames": data.frames,
        "columns": list(data.fine_grid.axes),
    }
    wavelength = data.store.attrs.get("wavelength")  # as ulm track: for PALA's gates
    if "acquisition" in data.store.attrs:
        from ulmtools.acquisition import Acquisition

        wavelength = Acquisition.from_attrs(data.store.attrs["acquisition"]).wavelength
    if wavelength is not None:
        attrs["wavelength"] = wavelength
    start = time.perf_counter()
    with (
        create_store(
            output,
            "prediction",
            provenance=lineage([data.store], entry),
            grid=data.fine_grid,
            axes=tuple(data.fine_grid.axes),
            attrs=attrs,
            force=force,
            inputs=inputs,
        ) as out,
        progress("infer") as report,
    ):
        stats = infer_image_store(net, data, out, config, device=torch_device, progress=report)  # type: ignore[arg-type]
        summary = stats.summary()
        out.attrs["stats"] = summary
        if stats.dice is not None:
            out.attrs["dice"] = stats.dice
        copy_truth(data.store, out)
        elapsed = time.perf_counter() - start
        result: dict[str, Any] = {
            "output": str(output),
            "model": str(model),
            "architecture": meta.name,
            **summary,
            "seconds": round(elapsed, 3),
            "device": str(torch_device),
        }
        if "localizations" in out:
            result["localizations"] = int(out["localizations"]["offsets"][-1])
    dice = f", angiogram Dice {result['dice']:.4f}" if result["dice"] is not None else ""
    locs = f"; {result['localizations']} localizations" if "localizations" in result else ""
    text = (
        f"{output}: {result['movies']} movies with {model} ({meta.name}) on "
        f"{torch_device}{dice}\n"
        f"{result['output_sites_mean']:.0f} map sites per movie{locs}; "
        f"{result['seconds_per_movie']:.3f} s per movie"
    )
    emit(result, as_json=as_json, text=None if as_json else text)
