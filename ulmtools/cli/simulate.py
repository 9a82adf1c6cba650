"""``ulm simulate``: vessel networks -> bubble flow -> channel or image IQ, with ground truth."""

from __future__ import annotations

from typing import Annotated

import typer

from ulmtools.cli.context import emit, log, progress, setup
from ulmtools.cli.options import (
    SEED_MAX,
    Force,
    Json,
    OutputStore,
    Quiet,
    Seed,
    Verbose,
    Workers,
)
from ulmtools.store import check_output, create_store, lineage, provenance_entry


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
    from ulmtools.limits import check_disk
    from ulmtools.simulate.run import SimulationConfig, output_bytes, plan, run, validate

    config = SimulationConfig(
        dim=dim,
        preset=preset_name,
        movies=movies,
        frames=frames,
        concentration=(5.0 if dim == 2 else 30.0) if concentration is None else concentration,
        vessels=vessels,
        network_seed=network_seed,
        engine=engine.lower(),
        level=level.lower(),
        snr=snr,
        clutter=clutter,
        seed=seed,
        sampling_frequency=sampling_frequency,
        workers=workers,
    )
    config = validate(config)  # refuse bad values before touching the output
    # a network file is an input: never write over it or into its directory
    inputs = [vessels] if vessels not in ("tree", "random") else []
    check_output(output, force=force, inputs=inputs)
    work = plan(config)
    check_disk(
        output_bytes(work),
        output,
        f"{work.config.movies} movie(s) of {work.n_frames} frames",
        "simulate fewer --movies or --frames, or write to a larger disk",
    )
    params = work.parameters
    acq = work.acquisition
    if params["network_edges"]:
        lo_r, hi_r = (r * 1e6 for r in params["network_radius_range_m"])
        vessel_text = f"{params['network_edges']} pieces, radii {lo_r:.1f}-{hi_r:.1f} um"
    else:
        vessel_text = "random trajectories"
    log.info(
        f"{params['dim']}D {acq.probe}, {acq.n_transmits} transmits, {acq.n_samples} samples "
        f"from {acq.t0 * 1e6:.2f} us at {acq.sampling_frequency / 1e6:.3f} MHz; "
        f"vessels: {vessel_text}"
    )
    entry = provenance_entry("simulate", params, [])
    if work.config.level == "channel":
        kind = "channel"
        axes = ("movie", "frame", "transmit", "sample", "element")
    else:
        kind = "image"
        axes = ("movie", "t", *work.grid.axes)
    attrs = {"acquisition": work.acquisition.to_attrs(), "simulation": params}
    with create_store(
        output,
        kind,
        provenance=lineage([], entry),
        grid=work.grid,
        axes=axes,
        attrs=attrs,
        force=force,
        inputs=inputs,
    ) as root:
        with progress("simulate") as report:
            summary = run(work, root, progress=report, log=log.info)
        root.attrs["simulation"] = {**params, "result": summary}
        # made before the rename: a failure here leaves no finished output behind an error
        result = {"output": str(output), "kind": kind, "seed": params["seed"], **summary}
        text = (
            f"{output}: {summary['movies']} movie(s) x {summary['frames']} frames, "
            f"{kind} store ({work.config.engine}), {params['dim']}D, "
            f"mean {summary['mean_bubbles_in_fov']} bubbles in the field of view "
            f"(asked {params['concentration']}), {summary['seconds']} s, seed {params['seed']}"
        )
    emit(result, as_json=json, text=text)
