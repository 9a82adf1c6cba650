"""``ulm track``: conventional ULM (detect, localize, link, render) on an image store."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import Force, InputStore, Json, OutputStore, Quiet, Verbose
from ulmtools.errors import UsageError


def _window(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UsageError(
            f"--window {text!r} is not understood", "give sizes like 3x7 or 3x3x3"
        ) from None
    return sizes


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
        typer.Option("--workers", help="Movies tracked at once (threads); 0 uses every core."),
    ] = 1,
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
    from ulmtools.store import check_output, create_store, lineage, open_store, provenance_entry
    from ulmtools.track.core import TrackConfig, resolve, track_store
    from ulmtools.truth import copy_truth

    config = TrackConfig(
        signal=signal,
        detect=detect,
        localize=localize,
        max_speed=max_speed,
        max_link_distance=max_link_distance,
        max_gap=max_gap,
        min_track_length=min_track_length,
        smooth=smooth,
        render_factor=render_factor,
        window=_window(window),
        workers=workers,
    )
    src = open_store(input, "image")
    res = resolve(config, src)
    check_output(output, force=force, inputs=[input])
    wavelength = src.attrs.get("wavelength")  # ulm import records it without an acquisition
    if "acquisition" in src.attrs:
        from ulmtools.acquisition import Acquisition

        wavelength = Acquisition.from_attrs(src.attrs["acquisition"]).wavelength
    parameters = {**config.to_dict(), "resolved": res.to_dict()}
    entry = provenance_entry("track", parameters, [src])
    fine = res.fine_grid
    n_movies = int(src.array(res.signal).shape[0])
    attrs: dict[str, Any] = {
        "input_grid": res.grid.to_attrs(),
        "factor": config.render_factor,
        "movies": n_movies,
        "columns": list(fine.axes),
        "source": src.describe() | {"array": res.signal},
        "track": parameters,
    }
    if wavelength is not None:
        attrs["wavelength"] = wavelength
    start = time.perf_counter()
    with (
        create_store(
            output,
            "tracks",
            provenance=lineage([src], entry),
            grid=fine,
            axes=tuple(fine.axes),
            attrs=attrs,
            force=force,
            inputs=[input],
        ) as out,
        progress("track") as report,
    ):
        stats = track_store(src, out, config, res, progress=report)
        summary = stats.summary()
        out.attrs["stats"] = summary
        copy_truth(src, out)
        result = {
            "output": str(output),
            **summary,
            "detect": config.detect,
            "localize": config.localize,
            "signal": res.signal,
            "max_link_distance": res.max_link_distance,
            "window": list(res.window),
        }
        text = None if json else _text(result)
    result["seconds"] = round(time.perf_counter() - start, 3)
    log.debug("track took %.2f s", result["seconds"])
    emit(result, as_json=json, text=None if json else text)


def _text(r: dict[str, Any]) -> str:
    return (
        f"{r['output']}: {r['movies']} movies, {r['localizations']} localizations "
        f"({r['localizations_per_frame']:.2f} per frame; {r['detect']}, {r['localize']} on "
        f"{r['signal']}), {r['tracks']} tracks of mean length {r['mean_track_length']:.1f}, "
        f"{100 * r['tracked_fraction']:.1f} % of localizations tracked\n"
        f"link up to {r['max_link_distance'] * 1e6:.1f} um per frame, window "
        f"{'x'.join(str(w) for w in r['window'])}; "
        f"{r['seconds_detect_localize_per_movie']:.3f} s detect+localize and "
        f"{r['seconds_link_per_movie']:.3f} s link per movie"
    )
