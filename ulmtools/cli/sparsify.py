"""``ulm sparsify``: dense PSF-correlation movies to a sparse store of active sites."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import (
    Dask,
    DaskScheduler,
    Device,
    Force,
    InputStore,
    Json,
    OutputStore,
    Quiet,
    Seed,
    Verbose,
)


class Method(StrEnum):
    threshold = "threshold"
    topk = "topk"
    mask = "mask"


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
    corr_noise: Annotated[
        float,
        typer.Option(
            "--corr-noise",
            min=0,
            help="Add complex Gaussian noise of this standard deviation to the real and to "
            "the imaginary part of corr before choosing the sites (the paper's robustness "
            "test, or noisy training data); seeded by --seed.",
        ),
    ] = 0.0,
    seed: Seed = None,
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="What each site carries: corr (real and imaginary correlation, the paper's "
            "input) or corr,iq (also the beamformed IQ at the same sites, divided by its "
            "root mean square over the movie's sites: the PSF's profile, for sub-pixel "
            "placement). The sites are chosen on corr either way. auto: what the shipped "
            "model of the store's dimension reads (ulm info shipped:2d, shipped:3d), or corr "
            "when the store has no IQ.",
        ),
    ] = "auto",
    device: Device = "auto",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="Movies sparsified at once in worker processes; 0 uses every core, 1 works "
            "in-process. With --dask: the number of Dask workers.",
        ),
    ] = 1,
    dask: Dask = False,
    dask_scheduler: DaskScheduler = None,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Keep the active sites of every correlation movie of an image store.

    Reads the image store's corr array (movie, t, *space) one movie at a time and
    writes a sparse store: coords (t, z, x[, y]) int32 in input-grid pixels,
    feats (real, imaginary correlation; with --features corr,iq also the IQ) float32,
    per-movie offsets, the input grid and truth.
    Prints the active sites per movie and, with truth, the fraction of true bubble
    pixels kept.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools import api

    with progress("sparsify") as report:
        result = api.sparsify(
            input,
            output,
            method=method.value,
            threshold=threshold,
            k=k,
            mask_model=mask_model,
            corr_noise=corr_noise,
            seed=seed,
            features=features,
            device=device,
            workers=workers,
            dask=dask,
            dask_scheduler=dask_scheduler,
            force=force,
            progress=report,
        )
    log.debug("sparsify took %.2f s", result["seconds"])
    emit(result, as_json=json, text=result.text)
