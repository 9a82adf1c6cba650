"""``ulm export``: angiograms, velocity maps, track maps and movies for viewers and MATLAB."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ulmtools.cli.context import emit, setup
from ulmtools.cli.options import Force, InputStore, Json, Quiet, Verbose


def export(
    input: InputStore,
    output: Annotated[
        Path,
        typer.Argument(
            help="File to write: .png, .tif/.tiff, .nii.gz/.nii, .mat or .npy (by its suffix).",
            show_default=False,
        ),
    ],
    array: Annotated[
        str | None,
        typer.Option(
            "--array",
            help="What to export: angiogram, density, speed, velocity_z, tracks (a movie's "
            "map), truth (a movie's true tracks), iq or corr (a movie). Default: angiogram, "
            "or iq (corr) for an image store.",
            show_default=False,
        ),
    ] = None,
    movie: Annotated[
        int | None,
        typer.Option(
            "--movie",
            min=0,
            help="Movie to export for tracks, truth, iq and corr (default 0).",
            show_default=False,
        ),
    ] = None,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Export a map or a movie of a store as PNG, ImageJ TIFF, NIfTI, MATLAB .mat or .npy.

    PNG: a colour-mapped picture with axes in mm and a scale bar (3D: three
    projections). TIFF: ImageJ-readable, pixel size in um. NIfTI: an affine in mm.
    .mat (MATLAB v5, read with load): the array and its axis vectors in metres (and
    seconds). .npy: the array in the store's axis order. The file is written under a
    temporary name and renamed into place; an existing one is refused without --force.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools.io.export import export as write
    from ulmtools.io.export import output_format, select
    from ulmtools.store import open_store

    output_format(output)
    store = open_store(input, ["image", "prediction", "tracks", "angiogram"])
    start = time.perf_counter()
    selected = select(store, array, movie)
    info = write(selected, output, force=force)
    result: dict[str, Any] = {
        "output": str(output),
        "input": str(input),
        "array": selected.name,
        "movie": (movie or 0) if selected.name in ("tracks", "truth", "iq", "corr") else None,
        "grid_shape": list(selected.grid.shape),
        "spacing_um": [s * 1e6 for s in selected.grid.spacing],
        **info,
        "seconds": round(time.perf_counter() - start, 3),
    }
    emit(result, as_json=json, text=None if json else _text(result))


def _text(r: dict[str, Any]) -> str:
    what = r["array"] + (f" of movie {r['movie']}" if r["movie"] is not None else "")
    if r["format"] == "png":
        detail = f"{r['width']}x{r['height']} px, {r['colormap']}"
    else:
        detail = f"{'x'.join(map(str, r['shape']))} {r['dtype']}"
    pitch = ", ".join(f"{s:.2f}" for s in r["spacing_um"])
    return (
        f"{r['output']}: {r['format']}, {what} of {r['input']} "
        f"({'x'.join(map(str, r['grid_shape']))} grid at {pitch} um), {detail}, "
        f"{r['bytes']:,} bytes"
    )
