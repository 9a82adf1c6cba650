"""``ulm track``: conventional ULM (detect, localize, link, render) on an image store."""

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


def track(
    input: InputStore,
    output: OutputStore,
    signal: Annotated[
        str | None,
        typer.Option(
            "--signal",
            help="What to detect bubbles in: iq (the beamformed IQ after the clutter filter; "
            "the default when the store has it) or corr (the PSF correlation).",
            show_default=False,
        ),
    ] = None,
    detect: Annotated[
        str,
        typer.Option(
            "--detect",
            help="Which regional maxima are bubbles: max-per-frame:N (the N brightest per "
            "frame), snr:DB (DB above the noise floor, the median envelope) or peak:DB "
            "(within DB of the movie's brightest echoes, its 99.9th envelope percentile).",
        ),
    ] = "peak:10",
    localize: Annotated[
        str,
        typer.Option(
            "--localize",
            help="Sub-pixel method: none, centroid, gaussian (log-envelope least squares), "
            "radial-symmetry or spline (cubic interpolation).",
        ),
    ] = "gaussian",
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="Localization window in pixels per axis, odd, e.g. 3x7 (default: the "
            "PSF's full width at half maximum, at least 3).",
            show_default=False,
        ),
    ] = None,
    max_speed: Annotated[
        float | None,
        typer.Option(
            "--max-speed",
            help="Fastest bubble to link, m/s (converted with the frame rate).",
            show_default=False,
        ),
    ] = None,
    max_link_distance: Annotated[
        float | None,
        typer.Option(
            "--max-link-distance",
            help="Longest link between consecutive frames, metres (default: 2 pixels).",
            show_default=False,
        ),
    ] = None,
    max_gap: Annotated[
        int, typer.Option("--max-gap", help="Missed frames a track may bridge.")
    ] = 2,
    min_track_length: Annotated[
        int,
        typer.Option("--min-track-length", help="Tracks with fewer localizations are dropped."),
    ] = 10,
    smooth: Annotated[
        int,
        typer.Option("--smooth", help="Moving-average length along each track, frames."),
    ] = 3,
    render_factor: Annotated[
        int,
        typer.Option(
            "--render-factor",
            help="Render grid refinement over the image grid (8: the networks' output grid).",
        ),
    ] = 8,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Movies tracked at once (threads); 0 uses every core. With --dask: the "
            "number of Dask workers.",
        ),
    ] = 1,
    dask: Dask = False,
    dask_scheduler: DaskScheduler = None,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Conventional ULM: detect, localize and track bubbles; render tracks and velocities.

    Reads an image store (beamformed IQ after the clutter filter, or the PSF
    correlation) movie by movie: regional maxima of the envelope (3x3, 3x3x3) are
    detected, localized to sub-pixel precision and linked frame to frame by the
    Hungarian method with gap closing. Writes a tracks store: the localization table
    (positions in metres, frame, intensity, track id, velocity), per-movie track maps
    on the grid --render-factor times finer (the layout of a prediction store, so ulm
    score treats both alike), the angiogram, track density, mean speed and axial
    velocity maps, and the input's truth. Prints a summary.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools import api

    with progress("track") as report:
        result = api.track(
            input,
            output,
            signal=signal,
            detect=detect,
            localize=localize,
            window=window,
            max_speed=max_speed,
            max_link_distance=max_link_distance,
            max_gap=max_gap,
            min_track_length=min_track_length,
            smooth=smooth,
            render_factor=render_factor,
            workers=workers,
            dask=dask,
            dask_scheduler=dask_scheduler,
            force=force,
            progress=report,
        )
    log.debug("track took %.2f s", result["seconds"])
    emit(result, as_json=json, text=result.text)
