"""``ulm sparsify``: dense PSF-correlation movies to a sparse store of active sites."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import Device, Force, InputStore, Json, OutputStore, Quiet, Verbose
from ulmtools.errors import UsageError
from ulmtools.store import check_output, create_store, lineage, open_store, provenance_entry


class Method(StrEnum):
    threshold = "threshold"
    topk = "topk"
    mask = "mask"


MASK_HINT = (
    "make one with 'ulm train IMAGE.zarr MASK.zarr --arch mask-cnn', "
    "then give --mask-model MASK.zarr"
)


def sparsify(
    input: InputStore,
    output: OutputStore,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            help="Which sites to keep: threshold on abs(corr)^2, the top k per movie, "
            "or a learned mask (needs --mask-model).",
            case_sensitive=False,
        ),
    ] = Method.threshold,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="threshold: keep sites with abs(corr)^2 > T (default 0.10 in 2D, 0.25 in 3D). "
            "mask: the probability cutoff (default 0.5).",
            show_default=False,
        ),
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(
            "--k",
            help="topk: sites kept per movie (required with --method topk).",
            show_default=False,
        ),
    ] = None,
    mask_model: Annotated[
        Path | None,
        typer.Option(
            "--mask-model",
            help="mask: a Mask CNN model store (kind model, architecture mask-cnn).",
            show_default=False,
        ),
    ] = None,
    device: Device = "auto",
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Keep the active sites of every correlation movie of an image store.

    Reads the image store's corr array (movie, t, *space) one movie at a time and
    writes a sparse store: coords (t, z, x[, y]) int32 in input-grid pixels,
    feats (real, imaginary) float32, per-movie offsets, the input grid and truth.
    Prints the active sites per movie and, with truth, the fraction of true bubble
    pixels kept.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools.sparsify.core import SparsifyConfig, check_image_store, sparsify_store

    config = SparsifyConfig(method=method.value, threshold=threshold, k=k)
    if method is Method.mask and mask_model is None:
        raise UsageError("--method mask needs a mask model (--mask-model MODEL.zarr)", MASK_HINT)
    if method is not Method.mask and mask_model is not None:
        raise UsageError(f"--mask-model applies only to --method mask, not {method.value}")
    src = open_store(input, "image")
    grid, shape = check_image_store(src)
    config = config.resolved(grid.ndim)
    inputs = [input] + ([mask_model] if mask_model is not None else [])
    check_output(output, force=force, inputs=inputs)

    predictor = None
    model_ref = None
    torch_device = None
    if method is Method.mask:
        from ulmtools.device import resolve_device
        from ulmtools.models.mask_cnn import predictor_from_model
        from ulmtools.models.store import load

        torch_device = resolve_device(device)
        model, meta = load(mask_model, device=torch_device)  # type: ignore[arg-type]
        predictor = predictor_from_model(model, grid.ndim, torch_device)
        model_ref = meta.describe() | {"kwargs": meta.kwargs}

    parameters = {
        "method": config.method,
        "threshold": config.threshold,
        "k": config.k,
        "mask_model": model_ref,
        "device": str(torch_device) if torch_device is not None else None,
        "rows_per_chunk": config.rows_per_chunk,
        "power": "real**2 + imag**2 of corr, strictly greater than the threshold",
        "truth_rule": "nearest input pixel (rint of grid.to_index) of each truth position "
        "in its frame",
    }
    entry = provenance_entry("sparsify", parameters, [src])
    space = tuple(grid.axes)
    attrs = {
        "shape": list(shape[1:]),
        "movies": shape[0],
        "columns": ["t", *space],
        "features": ["real", "imag"],
        "source": src.describe(),
    }
    start = time.perf_counter()
    with (
        create_store(
            output,
            "sparse",
            provenance=lineage([src], entry),
            grid=grid,
            axes=("movie", "t", *space),
            attrs=attrs,
            force=force,
            inputs=inputs,
        ) as out,
        progress("sparsify") as report,
    ):
        stats = sparsify_store(src, out, config, predictor=predictor, progress=report)
        summary = stats.summary()
        out.attrs["stats"] = summary
        if src.has_truth:
            from ulmtools.truth import copy_truth

            copy_truth(src, out)
        # the summary is made before the output is renamed into place: a failure here
        # leaves no finished output behind an error
        elapsed = time.perf_counter() - start
        result = {"output": str(output), **summary, "seconds": round(elapsed, 3)}
        text = None if json else _text(result)
    log.debug("sparsify took %.2f s", elapsed)
    emit(result, as_json=json, text=text)


def _text(r: dict) -> str:
    if r["method"] == "topk":
        rule = f"top {r['k']} per movie"
    elif r["method"] == "mask":
        rule = f"mask model, probability cutoff {r['threshold']:g}"
    else:
        rule = f"threshold {r['threshold']:g} on abs(corr)^2"
    lines = [
        f"{r['output']}: {r['movies']} movies, {rule}",
        f"active sites per movie: mean {r['active_sites_mean']:.0f}, min {r['active_sites_min']}, "
        f"max {r['active_sites_max']} of {r['sites_per_movie']} "
        f"({100 * r['active_fraction']:.2f} %)",
    ]
    if r["empty_movies"]:
        lines.append(f"empty movies: {r['empty_movies']}")
    kept = r["kept_bubble_fraction"]
    if kept is not None:
        lines.append(f"true bubble pixels kept: {100 * kept:.2f} % of {r['truth_sites']}")
    elif r["truth_sites"] is None:
        lines.append("true bubble pixels kept: n/a (the input has no truth)")
    else:
        lines.append("true bubble pixels kept: n/a (no truth bubble inside the grid)")
    return "\n".join(lines)
