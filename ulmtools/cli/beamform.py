"""``ulm beamform``: channel IQ to beamformed IQ and PSF correlation."""

from __future__ import annotations

from typing import Annotated

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import (
    Dask,
    DaskScheduler,
    Force,
    InputStore,
    Json,
    OutputStore,
    Quiet,
    Verbose,
)


def beamform(
    input: InputStore,
    output: OutputStore,
    grid_step: Annotated[
        str | None,
        typer.Option(
            "--grid-step",
            help="Pixel pitch: one value or one per axis (z,x[,y]), e.g. lambda/4, 0.5lambda, "
            "25um, 2.5e-5 (metres). Default: the input's grid, else lambda/4 (2D), lambda/2 (3D).",
            show_default=False,
        ),
    ] = None,
    grid_size: Annotated[
        str | None,
        typer.Option(
            "--grid-size",
            help="Pixels per axis: 32, 32x32 or 32x32x32. Default: the input's grid, else 32 "
            "per axis.",
            show_default=False,
        ),
    ] = None,
    depth: Annotated[
        float | None,
        typer.Option(
            "--depth",
            help="Depth (metres) of the grid centre. Default: the input's grid, else the "
            "middle of the sample window.",
            show_default=False,
        ),
    ] = None,
    clutter: Annotated[
        str,
        typer.Option(
            "--clutter",
            help="Clutter filter over each movie's frames: none, or svd:K to remove the K "
            "largest singular components.",
        ),
    ] = "none",
    correlate: Annotated[
        bool,
        typer.Option(
            "--correlate/--no-correlate",
            help="Also compute the system PSF and the local normalised correlation with it.",
        ),
    ] = True,
    frames_per_chunk: Annotated[
        int | None,
        typer.Option(
            "--frames-per-chunk",
            min=1,
            help="Frames per output chunk. Default: one movie per chunk (split when a movie "
            "exceeds 32 MiB).",
            show_default=False,
        ),
    ] = None,
    interp: Annotated[
        str,
        typer.Option("--interp", help="Sample interpolation of the DAS: linear or nearest."),
    ] = "linear",
    fnumber: Annotated[
        str,
        typer.Option(
            "--fnumber",
            help="Receive f-number: auto (from the element directivity), or a number; 0 uses "
            "the full aperture.",
        ),
    ] = "auto",
    psf_model: Annotated[
        str,
        typer.Option(
            "--psf-model",
            help="Point-echo model the PSF is computed with: auto (the simulator's when "
            "installed), simulate or analytic.",
        ),
    ] = "auto",
    psf: Annotated[
        str | None,
        typer.Option(
            "--psf",
            help="PSF for beamformed IQ without an acquisition: FILE (.npy, or an image store's "
            "psf), gaussian:FWHM_Z,FWHM_X[,FWHM_Y] (metres, or 50um, 0.5lambda), or estimate "
            "(from isolated bubbles; the default when there is neither acquisition nor psf).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="Compute threads per movie; 0 uses every core. With --dask: the number of "
            "Dask workers, each beamforming one movie at a time on one thread.",
        ),
    ] = 0,
    dask: Dask = False,
    dask_scheduler: DaskScheduler = None,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Beamform plane-wave channel IQ, filter clutter and correlate with the system PSF.

    Reads a channel store (iq: movie, frame, transmit, sample, element; the
    acquisition attribute describes the probe and sequence) and writes an image
    store: iq (movie, t, *space) after delay-and-sum, coherent compounding and
    the clutter filter; corr, the local normalised complex correlation with the
    system PSF; psf, that PSF (one point at the grid centre, by the same chain).
    An image store holding beamformed iq without corr is accepted too: then only
    the clutter filter and the correlation run, with the store's psf, the PSF of its
    acquisition, --psf, or one estimated from isolated bubbles. Ground truth is
    copied through.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools import api

    with progress("beamform") as report:
        result = api.beamform(
            input,
            output,
            grid_step=grid_step,
            grid_size=grid_size,
            depth=depth,
            clutter=clutter,
            correlate=correlate,
            frames_per_chunk=frames_per_chunk,
            interp=interp,
            fnumber=fnumber,
            psf_model=psf_model,
            psf=psf,
            workers=workers,
            dask=dask,
            dask_scheduler=dask_scheduler,
            force=force,
            progress=report,
            log=log.info,
        )
    emit(result, as_json=json, text=result.text)
