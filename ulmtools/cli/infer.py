"""``ulm infer``: super-resolved track maps and the angiogram from a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import (
    Backend,
    Dask,
    DaskScheduler,
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
        float | None,
        typer.Option(
            "--threshold",
            help="Probability above which a pixel counts in a movie's map (angiogram, Dice).",
            show_default="the model's recommended one, else 0.5",
        ),
    ] = None,
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
    mirror: Annotated[
        str,
        typer.Option(
            "--mirror",
            metavar="AXES",
            help="Sparse model: average each movie's map over its mirror images along these "
            "lateral axes (x, or x,y in 3D; 2^k forward passes), for acquisitions symmetric "
            "about the probe's centre; auto: what the model recommends (ulm info), none: off.",
        ),
    ] = "auto",
    delays: Annotated[
        str,
        typer.Option(
            "--delays",
            metavar="FRAMES",
            help="Sparse model: also run each movie (and mirror image) delayed by these "
            "numbers of frames (e.g. 0,8; 0 is the movie as it is) and average every copy's "
            "map: the network pools time in fixed bins, so a delay bins the frames "
            "differently; auto: what the model recommends (ulm info), none: off.",
        ),
    ] = "auto",
    backend: SparseBackend = Backend.builtin,
    device: Device = "auto",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="Batches predicted at once in worker processes, each loading the model; 0 "
            "uses every core, 1 works in-process. With --dask: the number of Dask workers.",
        ),
    ] = 1,
    dask: Dask = False,
    dask_scheduler: DaskScheduler = None,
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
    from ulmtools import api

    with progress("infer") as report:
        result = api.infer(
            model,
            input,
            output,
            threshold=threshold,
            min_probability=min_probability,
            batch_size=batch_size,
            input_threshold=input_threshold,
            input_mask=input_mask,
            mirror=mirror,
            delays=delays,
            backend=backend.value,
            device=device,
            workers=workers,
            dask=dask,
            dask_scheduler=dask_scheduler,
            force=force,
            progress=report,
            log=log.info,
        )
    log.debug("infer took %.2f s", result["seconds"])
    emit(result, as_json=json, text=result.text)
