"""``ulm simulate``: vessel networks -> bubble flow -> channel or image IQ, with ground truth."""

from __future__ import annotations

from typing import Annotated

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import (
    SEED_MAX,
    Dask,
    DaskScheduler,
    Force,
    Json,
    OutputStore,
    Quiet,
    Seed,
    Verbose,
    Workers,
)


def simulate(
    output: OutputStore,
    dim: Annotated[
        int, typer.Option("--dim", help="2 (linear L22-14 preset) or 3 (32x32 matrix preset).")
    ] = 2,
    movies: Annotated[int, typer.Option("--movies", help="Number of movies to simulate.")] = 1,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames", help="Frames per movie. Default: the preset's 512.", show_default=False
        ),
    ] = None,
    concentration: Annotated[
        float | None,
        typer.Option(
            "--concentration",
            help="Mean number of bubbles inside the field of view per frame. "
            "Default: 5 in 2D, 30 in 3D (the paper's training sets).",
            show_default=False,
        ),
    ] = None,
    vessels: Annotated[
        str,
        typer.Option(
            "--vessels",
            help="tree (a synthetic vascular tree), random (random straight or curved "
            "trajectories) or a network FILE (.json or .npz: nodes (N,3) z,x,y metres, "
            "edges (M,2), radii (M,) metres, optional flow).",
        ),
    ] = "tree",
    network_seed: Annotated[
        int | None,
        typer.Option(
            "--network-seed",
            help="Seed of the synthetic vessel tree (the 'animal'); use different values for "
            "training, validation and test sets. Default: --seed.",
            show_default=False,
            min=0,
            max=SEED_MAX,
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="Echo model: fast (analytic, numba) or pymust (SIMUS reference, ~100-1000x "
            "slower).",
        ),
    ] = "fast",
    level: Annotated[
        str,
        typer.Option(
            "--level",
            help="channel: element IQ per transmit (input of ulm beamform); image: beamformed "
            "IQ and PSF correlation directly (shifted system PSFs; the bulk path for 3D).",
        ),
    ] = "channel",
    snr: Annotated[
        float | None,
        typer.Option(
            "--snr",
            help="Thermal noise: dB of a bubble's peak echo at the grid centre over the noise "
            "RMS (per channel sample, or per pixel at --level image). Default: no noise.",
            show_default=False,
        ),
    ] = None,
    clutter: Annotated[
        float | None,
        typer.Option(
            "--clutter",
            help="Slowly moving tissue: dB of a tissue scatterer's echo over a bubble's "
            "(about 2 scatterers per wavelength^dim). Default: no tissue.",
            show_default=False,
        ),
    ] = None,
    preset_name: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Acquisition preset (2d or 3d). Default: the one of --dim.",
            show_default=False,
        ),
    ] = None,
    sampling_frequency: Annotated[
        float | None,
        typer.Option(
            "--sampling-frequency",
            help="IQ sampling rate in Hz. Default: the centre frequency (100 percent bandwidth IQ "
            "as on a Verasonics system).",
            show_default=False,
        ),
    ] = None,
    seed: Seed = None,
    workers: Workers = 1,
    dask: Dask = False,
    dask_scheduler: DaskScheduler = None,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Simulate ULM acquisitions: vessel network, bubble flow, echoes and ground truth.

    Writes a channel store (iq: movie, frame, transmit, sample, element, with
    the acquisition attribute that ulm beamform needs) or, with --level image,
    an image store (iq and corr: movie, t, z, x[, y], and the psf) like ulm
    beamform's. Every store carries truth/: each bubble's position per frame
    (metres) with its id, and per movie the binary projection of all tracks on
    the x8 grid. Defaults are the paper's presets: 2D L22-14 at 15.625 MHz,
    3 tilts, 1 kHz, 32x32 grid at lambda/4; 3D 32x32 matrix at 7.8125 MHz,
    5 tilts, 750 Hz, 32^3 grid at lambda/2; 512 frames per movie.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools import api

    with progress("simulate") as report:
        result = api.simulate(
            output,
            dim=dim,
            movies=movies,
            frames=frames,
            concentration=concentration,
            vessels=vessels,
            network_seed=network_seed,
            engine=engine,
            level=level,
            snr=snr,
            clutter=clutter,
            preset=preset_name,
            sampling_frequency=sampling_frequency,
            seed=seed,
            workers=workers,
            dask=dask,
            dask_scheduler=dask_scheduler,
            force=force,
            progress=report,
            log=log.info,
        )
    emit(result, as_json=json, text=result.text)
