"""``ulm beamform``: channel IQ to beamformed IQ and PSF correlation."""

from __future__ import annotations

from typing import Annotated

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import Force, InputStore, Json, OutputStore, Quiet, Verbose, Workers
from ulmtools.store import check_output, create_store, lineage, open_store, provenance_entry
from ulmtools.truth import copy_truth


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
    workers: Workers = 0,
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
    from ulmtools.beamform.pipeline import (
        BeamformConfig,
        parse_clutter,
        plan,
        return_large_buffers_to_os,
        run,
    )

    config = BeamformConfig(
        grid_step=grid_step,
        grid_size=grid_size,
        depth=depth,
        clutter=parse_clutter(clutter),
        correlate=correlate,
        frames_per_chunk=frames_per_chunk,
        interp=interp,
        fnumber=fnumber,
        psf_model=psf_model,
        workers=workers,
        psf=psf,
    )
    src = open_store(input, ["channel", "image"])
    work = plan(src, config)
    check_output(output, force=force, inputs=[input])
    return_large_buffers_to_os()  # memory stays flat however many movies stream through
    entry = provenance_entry("beamform", work.parameters, [src])
    attrs = {"beamform": work.parameters}
    if "acquisition" in src.attrs:
        attrs["acquisition"] = dict(src.attrs["acquisition"])
    if "wavelength" in src.attrs:
        attrs["wavelength"] = src.attrs["wavelength"]
    with create_store(
        output,
        "image",
        provenance=lineage([src], entry),
        grid=work.grid,
        axes=work.dims,
        attrs=attrs,
        force=force,
        inputs=[input],
    ) as root:
        with progress("beamform") as report:
            summary = run(work, root, progress=report, log=log.info)
        summary["truth"] = copy_truth(src, root, grid=work.grid)
        root.attrs["beamform"] = {**work.parameters, "result": summary}
        # made before the rename: a failure here leaves no finished output behind an error
        result = {"output": str(output), "input": str(input), "mode": work.mode, **summary}
        das = summary.get("das", {})
        text = (
            f"{output}: {work.n_movies} movie(s) x {work.n_frames} frames on a "
            f"{'x'.join(map(str, work.grid.shape))} grid "
            f"({', '.join(f'{s * 1e6:.1f} um' for s in work.grid.spacing)}), "
            f"{summary['frames_per_second']} frames/s"
            + (f", DAS {das['nnz']:,} weights" if das else ", input already beamformed")
            + (f", clutter svd:{work.clutter}" if work.clutter else "")
            + (f", PSF {'x'.join(map(str, summary['psf_shape']))}" if work.correlate else "")
            + (
                f" estimated from {summary['psf_estimate']['patches']} isolated bubbles"
                if "psf_estimate" in summary
                else f" ({work.psf_source})"
                if work.psf_source in ("gaussian", "file")
                else ""
            )
            + (", truth copied" if summary["truth"] else "")
        )
    emit(result, as_json=json, text=text)
