"""``ulm import``: a lab's MATLAB, HDF5 or NumPy file to a channel or image store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import Force, Json, OutputStore, Quiet, Verbose


def import_(
    source: Annotated[
        Path,
        typer.Argument(help="File to import: .mat (v5, v7.3), .h5/.hdf5, .npy or .npz."),
    ],
    output: OutputStore,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="Store to make: image (beamformed IQ) or channel (element IQ or RF per transmit).",
        ),
    ] = "image",
    var: Annotated[
        str | None,
        typer.Option(
            "--var",
            help="Variable (.mat, .npz) or dataset path (.h5) to import. Default: IQ / "
            "RcvData / iq when present, else the only array of 3 or more dimensions.",
            show_default=False,
        ),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="The array's axes in the order MATLAB or NumPy shows them, e.g. z,x,t "
            "(default for images, PALA), t,z,x, z,x,y,t, z,x,t,movie; channel: "
            "sample,element,transmit,frame.",
            show_default=False,
        ),
    ] = None,
    frame_rate: Annotated[
        float | None,
        typer.Option(
            "--frame-rate",
            help="Frames per second. Default: UF.FrameRateUF or P.FrameRate in the file.",
            show_default=False,
        ),
    ] = None,
    grid_step: Annotated[
        str | None,
        typer.Option(
            "--grid-step",
            help="Pixel pitch, one value or z,x[,y]: 50um, 0.05mm, lambda/2, 5e-5 (metres). "
            "Default: PData.PDelta.",
            show_default=False,
        ),
    ] = None,
    origin: Annotated[
        str | None,
        typer.Option(
            "--origin",
            help="Centre of the first pixel, z,x[,y], with units as --grid-step. Default: "
            "PData.Origin, else 0.",
            show_default=False,
        ),
    ] = None,
    wavelength: Annotated[
        str | None,
        typer.Option(
            "--wavelength",
            help="Wavelength, for PData and lengths in lambda: 98.6um, 0.0986mm or 9.86e-5 "
            "(metres). Default: UF.Lambda, or c / Trans.frequency.",
            show_default=False,
        ),
    ] = None,
    fc: Annotated[
        float | None,
        typer.Option(
            "--fc",
            help="Centre frequency in Hz; the wavelength is 1540 m/s / fc (or the file's "
            "speed of sound).",
            show_default=False,
        ),
    ] = None,
    probe_file: Annotated[
        Path | None,
        typer.Option(
            "--probe-file",
            help="Channel data: the probe and sequence, as a JSON acquisition attribute "
            "(ulm-stores(5)) or a .mat with Verasonics Trans, TX, Receive structs.",
            show_default=False,
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="Bubble positions: a .csv with header frame,z,x[,y][,id] (metres, frames "
            "from 0) or a .npy with those columns; written as truth/ with track maps.",
            show_default=False,
        ),
    ] = None,
    movie_frames: Annotated[
        int | None,
        typer.Option(
            "--movie-frames",
            help="Cut the frames into movies of N frames (trailing frames dropped). Default: "
            "one movie.",
            show_default=False,
        ),
    ] = None,
    block_frames: Annotated[
        int | None,
        typer.Option(
            "--block-frames",
            help="Frames read and written at a time (and per chunk). Default: about 32 MiB "
            "of output.",
            show_default=False,
        ),
    ] = None,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Import a lab's acquisition (MATLAB, HDF5, NumPy) as an image or channel store.

    Reads beamformed IQ (PALA style: IQ (nz, nx, nt) with PData in wavelengths) or
    channel data (Verasonics style, with Trans, TX and Receive structs) from .mat v5,
    .mat v7.3 (HDF5, MATLAB's column-major axes), .h5/.hdf5, .npy or .npz, streaming
    blocks of frames so files larger than memory work. Lengths are converted to metres
    and times to seconds; a parameter the file does not state is refused with the flag
    that supplies it. Provenance records the file's path and SHA-256.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools.io.importer import ImportConfig, parse_length, plan, run
    from ulmtools.store import check_output, create_store, provenance_entry

    config = ImportConfig(
        kind=kind,
        var=var,
        layout=layout,
        frame_rate=frame_rate,
        grid_step=grid_step,
        origin=origin,
        wavelength=None if wavelength is None else parse_length(wavelength, None, "--wavelength"),
        fc=fc,
        probe_file=str(probe_file) if probe_file is not None else None,
        truth=str(truth) if truth is not None else None,
        movie_frames=movie_frames,
        block_frames=block_frames,
    )
    check_output(output, force=force, inputs=[source])
    from ulmtools.memory import return_large_buffers_to_os

    return_large_buffers_to_os()  # freed blocks go back to the OS: memory stays at one block
    start = time.perf_counter()
    work = plan(source, config)
    if layout is None and work.source.format in ("npy", "npz", "hdf5"):
        log.warning(
            "%s: axes taken as %s (the default); pass --layout if they are not",
            source,
            ",".join(work.layout),
        )
    entry = provenance_entry("import", work.parameters)
    entry["source"] = work.parameters["source"]
    attrs: dict[str, Any] = {"import": work.parameters}
    if work.wavelength is not None:
        attrs["wavelength"] = work.wavelength
    if work.acquisition is not None:
        attrs["acquisition"] = work.acquisition.to_attrs()
    with create_store(
        output,
        kind,
        provenance=[entry],
        grid=work.grid,
        axes=work.dims,
        attrs=attrs,
        force=force,
        inputs=[source],
    ) as root:
        with progress("import") as report:
            summary = run(work, root, progress=report, log=log.info)
        src = work.parameters["source"]
        result = {
            "output": str(output),
            "kind": kind,
            "source": src["path"],
            "format": src["format"],
            "variable": src["variable"],
            "source_shape": src["shape"],
            "layout": list(work.layout),
            "sha256": src["sha256"],
            "shape": list(work.out_shape),
            **summary,
            "frame_rate": work.parameters["frame_rate"],
            "wavelength": work.wavelength,
            "grid": work.grid.to_attrs() if work.grid is not None else None,
            "block_frames": work.block,
        }
    result["seconds"] = round(time.perf_counter() - start, 3)
    emit(result, as_json=json, text=None if json else _text(result, work))


def _text(r: dict[str, Any], work: Any) -> str:
    shape = "x".join(map(str, r["source_shape"]))
    line = (
        f"{r['output']}: {r['kind']} store, {r['movies']} movie(s) x {r['frames']} frames"
        f" at {r['frame_rate']:g} Hz"
    )
    if work.grid is not None and r["kind"] == "image":
        g = work.grid
        line += (
            f" on a {'x'.join(map(str, g.shape))} ({', '.join(g.axes)}) grid of "
            f"{', '.join(f'{s * 1e6:.2f}' for s in g.spacing)} um, origin "
            f"{', '.join(f'{o * 1e3:.3f}' for o in g.origin)} mm"
        )
    elif work.acquisition is not None:
        a = work.acquisition
        line += (
            f", {a.n_transmits} transmit(s) x {a.n_samples} samples x {a.n_elements} elements"
            f" at {a.sampling_frequency / 1e6:g} MHz"
        )
    line += (
        f"\nfrom {r['source']} ({r['format']} {r['variable']} {shape}, axes "
        f"{','.join(r['layout'])}), sha256 {r['sha256'][:16]}..., {r['seconds']:.2f} s"
    )
    if r["dropped_frames"]:
        line += f"; {r['dropped_frames']} trailing frames dropped"
    if r["truth_positions"] is not None:
        line += f"\ntruth: {r['truth_positions']} positions, track maps on the x8 grid"
    return line
