"""``ulm infer``: super-resolved track maps and the angiogram from a trained model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import (
    Backend,
    Device,
    Force,
    InputStore,
    Json,
    OutputStore,
    Quiet,
    SparseBackend,
    Verbose,
)


def infer(
    model: Annotated[
        str,
        typer.Argument(
            help="Model store (made by ulm train), or shipped:2d / shipped:3d for the "
            "pretrained weights inside the package.",
            show_default=False,
        ),
    ],
    input: InputStore,
    output: OutputStore,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            help="Probability above which a pixel counts in a movie's map (angiogram, Dice).",
        ),
    ] = 0.5,
    min_probability: Annotated[
        float,
        typer.Option(
            "--min-probability",
            help="Sites below this probability are left out of the stored per-movie maps.",
        ),
    ] = 0.01,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Movies per forward pass.")] = 1,
    input_threshold: Annotated[
        str,
        typer.Option(
            "--input-threshold",
            help="Leave out input sites with abs(corr)^2 at or below T: auto (the threshold "
            "the model was trained with, when the input was sparsified with a lower one), "
            "none (every stored site) or a number. For deepstulm and mspcn: input pixels set to "
            "0; auto repeats the model's training threshold.",
        ),
    ] = "auto",
    input_mask: Annotated[
        Path | None,
        typer.Option(
            "--input-mask",
            help="Dense models (deepstulm, mspcn): keep only the input pixels that are active "
            "sites of this sparse store of the same movies.",
            show_default=False,
        ),
    ] = None,
    backend: SparseBackend = Backend.builtin,
    device: Device = "auto",
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Predict every movie of a sparse store (or, for the dense baselines deepstulm and
    mspcn, of an image store) with a trained network.

    Writes a prediction store: per movie, the probability map on the x8 grid (kept
    sparse: coords (z, x[, y]) fine-grid indices, feats, offsets), the angiogram (per
    fine pixel, the number of movies above --threshold) with the fine grid in metres,
    and the input's truth copied through. With truth, prints the angiogram Dice.
    Movies are read and predicted one batch at a time. The model's architecture decides
    the input: the sparse model reads a sparse store, deepstulm and mspcn an image store
    (--input-threshold auto repeats their training mask); an mspcn prediction also holds
    its per-frame detections as localizations/ (PALA metrics in ulm score).
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools.cli.baselines import infer_dense, model_input_kind

    if model_input_kind(model, input) == "image":
        infer_dense(
            model,
            input,
            output,
            threshold=threshold,
            min_probability=min_probability,
            batch_size=batch_size,
            input_threshold=input_threshold,
            input_mask=input_mask,
            device=device,
            force=force,
            as_json=json,
        )
        return
    if input_mask is not None:
        from ulmtools.errors import UsageError

        raise UsageError(
            "--input-mask applies to the dense models (deepstulm, mspcn)",
            "the sparse model reads the sites of its sparse input store",
        )
    from ulmtools import sparse as sp
    from ulmtools.device import resolve_device
    from ulmtools.infer.core import InferConfig, infer_store, training_threshold
    from ulmtools.infer.core import input_threshold as pick_input_threshold
    from ulmtools.infer.weights import load_model
    from ulmtools.store import check_output, create_store, lineage, provenance_entry
    from ulmtools.train.data import SparseMovies
    from ulmtools.truth import copy_truth

    config = InferConfig(
        threshold=threshold,
        min_probability=min_probability,
        batch_size=batch_size,
        backend=backend.value,
    )
    data = SparseMovies(input)
    sp.get_backend(config.backend)
    torch_device = resolve_device(device)
    net, meta = load_model(model, device=torch_device)
    data.min_power = pick_input_threshold(
        input_threshold, training_threshold(meta.provenance), data.input_rule
    )
    if data.min_power is not None:
        log.info("input sites with abs(corr)^2 <= %g left out", data.min_power)
    model_inputs = [Path(meta.path)] if not str(model).startswith("shipped:") else []
    check_output(output, force=force, inputs=[input, *model_inputs])
    parameters = {
        **config.to_dict(),
        "device": str(torch_device),
        "model": meta.describe() | {"kwargs": meta.kwargs, "spec": str(model)},
        "input_threshold": data.min_power,
    }
    entry = provenance_entry("infer", parameters, [data.store])
    attrs = {
        "input_grid": data.grid.to_attrs(),
        "factor": 8,
        "threshold": config.threshold,
        "min_probability": config.min_probability,
        "input_threshold": data.min_power,
        "model": meta.describe(),
        "movies": len(data),
        "columns": list(data.fine_grid.axes),
    }
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
            inputs=[input, *model_inputs],
        ) as out,
        progress("infer") as report,
    ):
        stats = infer_store(net, data, out, config, device=torch_device, progress=report)
        summary = stats.summary()
        out.attrs["stats"] = summary
        if stats.dice is not None:
            out.attrs["dice"] = stats.dice
        copy_truth(data.store, out)
        # made before the rename: a failure here leaves no finished output behind an error
        elapsed = time.perf_counter() - start
        result: dict[str, Any] = {
            "output": str(output),
            "model": str(model),
            **summary,
            "seconds": round(elapsed, 3),
            "device": str(torch_device),
        }
        text = None if json else _text(result)
    log.debug("infer took %.2f s", elapsed)
    emit(result, as_json=json, text=text)


def _text(r: dict[str, Any]) -> str:
    dice = f", angiogram Dice {r['dice']:.4f}" if r["dice"] is not None else ""
    return (
        f"{r['output']}: {r['movies']} movies with {r['model']} on {r['device']}{dice}\n"
        f"sites per movie: {r['input_sites_mean']:.0f} in, {r['output_sites_mean']:.0f} out; "
        f"{r['seconds_per_movie']:.3f} s per movie"
    )
