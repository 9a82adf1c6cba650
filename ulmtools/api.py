"""The pipeline from Python: one function per stage, with the CLI's semantics.

Each function takes what ``ulm STAGE`` takes (the same names as the long options,
with ``_`` for ``-``, and the same defaults), writes the same store, and returns
the summary the CLI prints with ``--json``; a :class:`Summary` is a ``dict`` whose
``text`` is the CLI's human-readable line. Bad input raises a
:mod:`ulmtools.errors` exception (its ``exit_code`` is what the CLI would return)::

    from ulmtools import api

    api.simulate("sim.zarr", movies=8, frames=512, seed=1)
    api.beamform("sim.zarr", "img.zarr", clutter="svd:2")
    api.sparsify("img.zarr", "sparse.zarr")
    api.infer("shipped:2d", "sparse.zarr", "pred.zarr")
    api.track("img.zarr", "tracks.zarr", workers=2)
    report = api.score(["pred.zarr", "tracks.zarr"])

Executors (per-movie stages): ``workers`` keeps each stage's meaning; ``dask=True``
runs the movies on a ``distributed.LocalCluster`` of ``workers`` workers and
``dask_scheduler="tcp://host:8786"`` on a running cluster (``pip install
'ulm-toolchain[cluster]'``). Results are the same bytes as a serial run.

``progress`` is a callback ``(done, total, message)``; ``log`` one for
informational lines (the CLI passes its stderr logger).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ulmtools.progress import ProgressCallback
from ulmtools.runner import Executor, make_executor

PathLike = str | os.PathLike[str]
Log = Callable[[str], None] | None

__all__ = [
    "Summary",
    "beamform",
    "infer",
    "score",
    "simulate",
    "sparsify",
    "track",
    "train",
]


class Summary(dict):
    """A stage's summary (what ``--json`` prints); ``text`` is the CLI's human output."""

    text: str = ""

    def __init__(self, data: dict[str, Any], text: str = "") -> None:
        super().__init__(data)
        self.text = text


def _executor(workers: int, local: str | None, dask: bool, dask_scheduler: str | None) -> Executor:
    return make_executor(workers, local=local, dask=dask, dask_scheduler=dask_scheduler)


def simulate(
    output: PathLike,
    *,
    dim: int = 2,
    movies: int = 1,
    frames: int | None = None,
    concentration: float | None = None,
    vessels: str = "tree",
    network_seed: int | None = None,
    engine: str = "fast",
    level: str = "channel",
    snr: float | None = None,
    clutter: float | None = None,
    preset: str | None = None,
    sampling_frequency: float | None = None,
    seed: int | None = None,
    workers: int = 1,
    dask: bool = False,
    dask_scheduler: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    log: Log = None,
) -> Summary:
    """``ulm simulate``: vessels, bubble flow, channel (or image) IQ and ground truth.

    ``workers``: movies simulated at once in worker processes (0: every core, 1: in this
    process); with ``dask``, the number of Dask workers.
    """
    from ulmtools.limits import check_disk
    from ulmtools.runner import run_stage
    from ulmtools.simulate.run import SimulateStage, SimulationConfig, output_bytes, plan, validate
    from ulmtools.store import check_output

    config = SimulationConfig(
        dim=dim,
        preset=preset,
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
    executor = _executor(config.workers, "process", dask, dask_scheduler)
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
    if log is not None:
        log(
            f"{params['dim']}D {acq.probe}, {acq.n_transmits} transmits, {acq.n_samples} "
            f"samples from {acq.t0 * 1e6:.2f} us at {acq.sampling_frequency / 1e6:.3f} MHz; "
            f"vessels: {vessel_text}"
        )
    stage = SimulateStage(work, inputs)

    def summarize(summary: dict[str, Any]) -> Summary:
        result = {"output": str(output), "kind": stage.kind, "seed": params["seed"], **summary}
        text = (
            f"{output}: {summary['movies']} movie(s) x {summary['frames']} frames, "
            f"{stage.kind} store ({work.config.engine}), {params['dim']}D, "
            f"mean {summary['mean_bubbles_in_fov']} bubbles in the field of view "
            f"(asked {params['concentration']}), {summary['seconds']} s, seed {params['seed']}"
        )
        return Summary(result, text)

    return run_stage(
        stage, output, force=force, executor=executor, progress=progress, summarize=summarize
    )


def beamform(
    input: PathLike,
    output: PathLike,
    *,
    grid_step: str | None = None,
    grid_size: str | None = None,
    depth: float | None = None,
    clutter: str = "none",
    correlate: bool = True,
    frames_per_chunk: int | None = None,
    interp: str = "linear",
    fnumber: str = "auto",
    psf_model: str = "auto",
    psf: str | None = None,
    workers: int = 0,
    dask: bool = False,
    dask_scheduler: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    log: Log = None,
) -> Summary:
    """``ulm beamform``: channel IQ (or beamformed IQ) to an image store.

    ``workers`` is the compute threads per movie (0: every core); with ``dask`` it is
    the number of Dask workers, each beamforming one movie at a time on one thread.
    """
    from ulmtools.beamform.pipeline import (
        BeamformConfig,
        BeamformStage,
        parse_clutter,
        plan,
        return_large_buffers_to_os,
    )
    from ulmtools.runner import run_stage
    from ulmtools.store import check_output, open_store

    executor = _executor(workers, None, dask, dask_scheduler)
    distributed = dask or dask_scheduler is not None
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
        workers=1 if distributed else workers,
        psf=psf,
    )
    src = open_store(input, ["channel", "image"])
    work = plan(src, config)
    check_output(output, force=force, inputs=[input])
    return_large_buffers_to_os()  # memory stays flat however many movies stream through
    stage = BeamformStage(work, log=log)
    return run_stage(
        stage,
        output,
        force=force,
        executor=executor,
        progress=progress,
        summarize=lambda summary: Summary(*_beamform_text(work, output, input, summary)),
    )


def _beamform_text(work: Any, output: PathLike, input: PathLike, summary: dict[str, Any]):
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
    return result, text


def sparsify(
    input: PathLike,
    output: PathLike,
    *,
    method: str = "threshold",
    threshold: float | None = None,
    k: int | None = None,
    mask_model: PathLike | None = None,
    corr_noise: float = 0.0,
    seed: int | None = None,
    features: str = "auto",
    device: str = "auto",
    workers: int = 1,
    dask: bool = False,
    dask_scheduler: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> Summary:
    """``ulm sparsify``: the active sites of every correlation movie, as a sparse store.

    ``features``: what each site carries, ``corr`` (real and imaginary correlation) or
    ``corr,iq`` (also the beamformed IQ there, normalised per movie; the sites are
    chosen on corr either way); ``auto``: what the shipped model of the store's
    dimension reads (``shipped:2d``, ``shipped:3d``), or ``corr`` when the store has
    no IQ.

    ``corr_noise``: standard deviation of complex Gaussian noise added to the real and
    the imaginary part of corr before the sites are chosen (seeded by ``seed``, drawn at
    random and recorded when None). ``workers``: movies sparsified at once in worker
    processes (0: every core, 1: in this process); with ``dask``, the number of Dask
    workers.
    """
    from ulmtools.errors import UsageError
    from ulmtools.runner import run_stage
    from ulmtools.sparsify.core import (
        FEATURES,
        METHODS,
        SparsifyConfig,
        SparsifyStage,
        check_image_store,
    )
    from ulmtools.store import check_output, open_store

    method = str(method).lower()
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}", f"use one of {', '.join(METHODS)}")
    executor = _executor(workers, "process", dask, dask_scheduler)
    if corr_noise and seed is None:
        import secrets

        seed = secrets.randbits(31)
    config = SparsifyConfig(
        method=method, threshold=threshold, k=k, corr_noise=float(corr_noise),
        seed=seed if corr_noise else None, features=str(features).replace(" ", ""),
    )  # fmt: skip
    if method == "mask" and mask_model is None:
        raise UsageError("--method mask needs a mask model (--mask-model MODEL.zarr)", MASK_HINT)
    if method != "mask" and mask_model is not None:
        raise UsageError(f"--mask-model applies only to --method mask, not {method}")
    src = open_store(input, "image")
    if config.features == "auto":
        config = dataclasses.replace(config, features=_auto_features(src))
    grid, shape = check_image_store(src, config.features)
    config = config.resolved(grid.ndim)
    inputs = [input] + ([mask_model] if mask_model is not None else [])
    check_output(output, force=force, inputs=inputs)

    predictor = None
    model_ref = None
    torch_device = None
    if method == "mask":
        from ulmtools.device import resolve_device
        from ulmtools.models.mask_cnn import predictor_from_model
        from ulmtools.models.store import load

        torch_device = resolve_device(device)
        model, meta = load(mask_model, device=torch_device)  # type: ignore[arg-type]
        predictor = predictor_from_model(model, grid.ndim, torch_device)
        model_ref = meta.describe() | {"kwargs": meta.kwargs}

    stage = SparsifyStage(
        src,
        config,
        predictor=predictor,
        mask_model=str(Path(mask_model).resolve()) if mask_model is not None else None,
        device=str(torch_device) if torch_device is not None else "cpu",
    )
    stage.input_paths = inputs
    stage.parameters = {
        "method": config.method,
        "threshold": config.threshold,
        "k": config.k,
        "mask_model": model_ref,
        "device": str(torch_device) if torch_device is not None else None,
        "rows_per_chunk": config.rows_per_chunk,
        "corr_noise": config.corr_noise,
        "seed": config.seed,
        "features": config.features,
        "power": "real**2 + imag**2 of corr, strictly greater than the threshold",
        "truth_rule": "nearest input pixel (rint of grid.to_index) of each truth position "
        "in its frame",
    }
    stage.attrs = {
        "shape": list(shape[1:]),
        "movies": shape[0],
        "columns": ["t", *grid.axes],
        "features": list(FEATURES[config.features]),
        "source": src.describe(),
    }
    stage.truth = src if src.has_truth else None

    def summarize(summary: dict[str, Any]) -> Summary:
        seconds = round(summary.pop("_seconds"), 3)
        summary.pop("truth", None)
        result = {"output": str(output), **summary, "seconds": seconds}
        return Summary(result, _sparsify_text(result))

    return run_stage(
        stage, output, force=force, executor=executor, progress=progress, summarize=summarize
    )


def _auto_features(src: Any) -> str:
    """``--features auto``: what the shipped model of the image store's dimension reads,
    or ``corr`` where the store has no IQ."""
    from ulmtools.infer.weights import shipped_features

    features = shipped_features(f"{src.grid.ndim}d")
    return features if "iq" not in features.split(",") or "iq" in src.group else "corr"


MASK_HINT = (
    "make one with 'ulm train IMAGE.zarr MASK.zarr --arch mask-cnn', "
    "then give --mask-model MASK.zarr"
)


def _sparsify_text(r: dict[str, Any]) -> str:
    if r["method"] == "topk":
        rule = f"top {r['k']} per movie"
    elif r["method"] == "mask":
        rule = f"mask model, probability cutoff {r['threshold']:g}"
    else:
        rule = f"threshold {r['threshold']:g} on abs(corr)^2"
    if r.get("features", "corr") != "corr":
        rule += f", features {r['features']}"
    if r.get("corr_noise"):
        rule += (
            f", after complex noise sigma {r['corr_noise']:g} on corr (seed {r['corr_noise_seed']})"
        )
    lines = [
        f"{r['output']}: {r['movies']} movies, {rule}",
        f"active sites per movie: mean {r['active_sites_mean']:.0f}, min {r['active_sites_min']}, "
        f"max {r['active_sites_max']} of {r['sites_per_movie']} "
        f"({100 * r['active_fraction']:.2f} %)",
    ]
    if r["empty_movies"]:
        lines.append(f"empty movies: {r['empty_movies']}")
    kept = r["kept_bubble_fraction"]
    if kept is not None:
        lines.append(f"true bubble pixels kept: {100 * kept:.2f} % of {r['truth_sites']}")
    elif r["truth_sites"] is None:
        lines.append("true bubble pixels kept: n/a (the input has no truth)")
    else:
        lines.append("true bubble pixels kept: n/a (no truth bubble inside the grid)")
    return "\n".join(lines)


def infer(
    model: str | PathLike,
    input: PathLike,
    output: PathLike,
    *,
    threshold: float | None = None,
    min_probability: float = 0.01,
    batch_size: int = 1,
    input_threshold: str = "auto",
    input_mask: PathLike | None = None,
    mirror: str | Sequence[str] = "auto",
    delays: str | Sequence[int] = "auto",
    backend: str = "builtin",
    device: str = "auto",
    workers: int = 1,
    dask: bool = False,
    dask_scheduler: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    log: Log = None,
) -> Summary:
    """``ulm infer``: per-movie maps and the angiogram from a model store or ``shipped:2d|3d``.

    The model's architecture decides the input: the sparse network reads a sparse store,
    deepstulm and mspcn an image store. ``workers``: batches predicted at once in worker
    processes (0: every core, 1: in this process), each loading the model once; with
    ``dask``, the number of Dask workers.

    ``threshold`` (None: the model's recommended one, else 0.5) binarizes each movie's
    map. ``mirror`` (sparse model): ``"x,y"`` averages each movie's map over its mirror
    images along those lateral axes (test-time mirroring, 2^k forward passes); ``auto``
    what the model recommends (its ``inference`` attribute), ``none`` no mirroring.
    ``delays`` (sparse model): ``"0,8"`` also runs each movie (and mirror image) delayed
    by these numbers of frames and averages every copy's map (test-time delays: the
    network pools time in fixed bins); ``auto`` what the model recommends, ``none`` the
    movie alone.
    """
    from ulmtools.errors import UsageError
    from ulmtools.infer.stage import model_input_kind

    executor = _executor(workers, "process", dask, dask_scheduler)
    mask = Path(input_mask) if input_mask is not None else None
    args = (str(model), Path(input), Path(output))
    kw: dict[str, Any] = dict(
        threshold=threshold,
        min_probability=min_probability,
        batch_size=batch_size,
        input_threshold=input_threshold,
        device=device,
        force=force,
        executor=executor,
        progress=progress,
        log=log,
    )
    if model_input_kind(str(model), input) == "image":
        if str(mirror).lower() not in ("auto", "none", "", "()"):
            raise UsageError(
                "--mirror applies to the sparse model (sparse-deepstulm)",
                "drop it for deepstulm and mspcn",
            )
        if str(delays).lower() not in ("auto", "none", "", "()", "0"):
            raise UsageError(
                "--delays applies to the sparse model (sparse-deepstulm)",
                "drop it for deepstulm and mspcn",
            )
        kw["threshold"] = 0.5 if threshold is None else threshold
        return _infer_dense(*args, input_mask=mask, **kw)
    if input_mask is not None:
        raise UsageError(
            "--input-mask applies to the dense models (deepstulm, mspcn)",
            "the sparse model reads the sites of its sparse input store",
        )
    return _infer_sparse(*args, backend=backend, mirror=mirror, delays=delays, **kw)


def _infer_sparse(
    model: str,
    input: Path,
    output: Path,
    *,
    threshold: float | None,
    min_probability: float,
    batch_size: int,
    input_threshold: str,
    backend: str,
    mirror: str | Sequence[str],
    delays: str | Sequence[int],
    device: str,
    force: bool,
    executor: Executor,
    progress: ProgressCallback | None,
    log: Log,
) -> Summary:
    from ulmtools import sparse as sp
    from ulmtools.device import resolve_device
    from ulmtools.errors import InputError
    from ulmtools.infer.core import InferConfig, delay_list, training_threshold
    from ulmtools.infer.core import input_threshold as pick_input_threshold
    from ulmtools.infer.stage import InferStage, InferTask
    from ulmtools.infer.weights import load_model
    from ulmtools.runner import run_stage
    from ulmtools.store import check_output
    from ulmtools.train.data import SparseMovies, mirror_axes, mirror_names, model_channels

    data = SparseMovies(input)
    sp.get_backend(str(backend))
    torch_device = resolve_device(device)
    net, meta = load_model(model, device=torch_device)
    data.use_channels(model_channels(meta), what=f"the model {model}")
    # what the model's maker recommends (chosen on validation data): threshold, mirroring
    advice = meta.attrs.get("inference") or {}
    if str(mirror).lower() == "auto":
        names = tuple(advice.get("mirror") or ())
        try:
            mirror_axes(names, data.grid)
        except InputError as exc:  # the advice is for data like the model's own
            _warn(f"not mirroring as the model recommends: {exc.message}")
            names = ()
    elif str(mirror).lower() == "none":
        names = ()
    else:
        names = mirror_names(mirror)
    mirror_axes(names, data.grid)
    if str(delays).lower() == "auto":
        frames = delay_list(advice.get("delays") or ())
    elif str(delays).lower() == "none":
        frames = ()
    else:
        frames = delay_list(delays)
    frames = () if frames == (0,) else frames
    config = InferConfig(
        threshold=float(advice.get("threshold", 0.5)) if threshold is None else threshold,
        min_probability=min_probability,
        batch_size=batch_size,
        backend=str(backend),
        mirror=names,
        delays=frames,
    )
    if log is not None and (names or frames or (threshold is None and "threshold" in advice)):
        mirrored = f"maps averaged over mirror images along {', '.join(names)}, " if names else ""
        delayed = f"over delays of {', '.join(map(str, frames))} frames, " if frames else ""
        log(f"{mirrored}{delayed}threshold {config.threshold:g}")
    data.min_power = pick_input_threshold(
        input_threshold, training_threshold(meta.provenance), data.input_rule
    )
    if data.min_power is not None and log is not None:
        log(f"input sites with abs(corr)^2 <= {data.min_power:g} left out")
    model_inputs = [Path(meta.path)] if not model.startswith("shipped:") else []
    inputs = [input, *model_inputs]
    check_output(output, force=force, inputs=inputs)
    task = InferTask(
        model=model if model.startswith("shipped:") else str(Path(meta.path).resolve()),
        input=str(Path(input).resolve()),
        device=str(torch_device),
        config=config,
        dense=False,
        arch=meta.name,
        min_power=data.min_power,
    )
    stage = InferStage(task, net, data, torch_device)
    stage.inputs = [data.store]
    stage.input_paths = inputs
    stage.parameters = {
        **config.to_dict(),
        "device": str(torch_device),
        "model": meta.describe() | {"kwargs": meta.kwargs, "spec": model},
        "input_threshold": data.min_power,
    }
    stage.attrs = {
        "input_grid": data.grid.to_attrs(),
        "factor": 8,
        "threshold": config.threshold,
        "min_probability": config.min_probability,
        "mirror": list(config.mirror),
        "delays": list(config.delays),
        "input_threshold": data.min_power,
        "model": meta.describe(),
        "movies": len(data),
        "columns": list(data.fine_grid.axes),
    }

    def summarize(summary: dict[str, Any]) -> Summary:
        seconds = round(summary.pop("_seconds"), 3)
        for key in ("truth", "_localizations"):
            summary.pop(key, None)
        result: dict[str, Any] = {
            "output": str(output),
            "model": model,
            **summary,
            "seconds": seconds,
            "device": str(torch_device),
        }
        dice = f", angiogram Dice {result['dice']:.4f}" if result["dice"] is not None else ""
        text = (
            f"{output}: {result['movies']} movies with {model} on {torch_device}{dice}\n"
            f"sites per movie: {result['input_sites_mean']:.0f} in, "
            f"{result['output_sites_mean']:.0f} out; "
            f"{result['seconds_per_movie']:.3f} s per movie"
        )
        return Summary(result, text)

    return run_stage(
        stage, output, force=force, executor=executor, progress=progress, summarize=summarize
    )


def _infer_dense(
    model: str,
    input: Path,
    output: Path,
    *,
    threshold: float,
    min_probability: float,
    batch_size: int,
    input_threshold: str,
    input_mask: Path | None,
    device: str,
    force: bool,
    executor: Executor,
    progress: ProgressCallback | None,
    log: Log,
) -> Summary:
    from ulmtools.device import resolve_device
    from ulmtools.infer.core import InferConfig
    from ulmtools.infer.stage import InferStage, InferTask, mask_for_inference
    from ulmtools.infer.weights import resolve
    from ulmtools.models.store import load
    from ulmtools.runner import run_stage
    from ulmtools.store import check_output
    from ulmtools.train.baselines import ImageMovies

    config = InferConfig(
        threshold=threshold, min_probability=min_probability, batch_size=batch_size
    )
    torch_device = resolve_device(device)
    net, meta = load(resolve(model), device=torch_device)
    t_in, mask = mask_for_inference(
        input_threshold, input_mask, meta.training.get("input_masking"), log=_warn
    )
    data = ImageMovies(input, input_threshold=t_in, input_mask=mask, arch=meta.name)
    if t_in is not None and log is not None:
        log(f"input pixels with abs(corr)^2 <= {t_in:g} set to 0")
    inputs = [input, Path(meta.path)] + ([mask] if mask is not None else [])
    check_output(output, force=force, inputs=inputs)
    task = InferTask(
        model=str(Path(resolve(model)).resolve()),
        input=str(Path(input).resolve()),
        device=str(torch_device),
        config=config,
        dense=True,
        arch=meta.name,
        input_threshold=t_in,
        input_mask=str(Path(mask).resolve()) if mask is not None else None,
    )
    stage = InferStage(task, net, data, torch_device)
    stage.inputs = [data.store]
    stage.input_paths = inputs
    stage.sources = [data.store] + ([data.mask.store] if data.mask is not None else [])
    stage.parameters = {
        **config.to_dict(),
        "device": str(torch_device),
        "model": meta.describe() | {"kwargs": meta.kwargs, "spec": model},
        "input_masking": data.masking,
    }
    stage.attrs = {
        "input_grid": data.grid.to_attrs(),
        "factor": 8,
        "threshold": config.threshold,
        "min_probability": config.min_probability,
        "input_threshold": t_in,
        "input_masking": data.masking,
        "model": meta.describe(),
        "movies": len(data),
        "frames": data.frames,
        "columns": list(data.fine_grid.axes),
    }
    wavelength = data.store.attrs.get("wavelength")  # as ulm track: for PALA's gates
    if "acquisition" in data.store.attrs:
        from ulmtools.acquisition import Acquisition

        wavelength = Acquisition.from_attrs(data.store.attrs["acquisition"]).wavelength
    if wavelength is not None:
        stage.attrs["wavelength"] = wavelength

    def summarize(summary: dict[str, Any]) -> Summary:
        seconds = round(summary.pop("_seconds"), 3)
        summary.pop("truth", None)
        locs = summary.pop("_localizations", None)
        result: dict[str, Any] = {
            "output": str(output),
            "model": model,
            "architecture": meta.name,
            **summary,
            "seconds": seconds,
            "device": str(torch_device),
        }
        if locs is not None:
            result["localizations"] = locs
        dice = f", angiogram Dice {result['dice']:.4f}" if result["dice"] is not None else ""
        loc_text = f"; {locs} localizations" if locs is not None else ""
        text = (
            f"{output}: {result['movies']} movies with {model} ({meta.name}) on "
            f"{torch_device}{dice}\n"
            f"{result['output_sites_mean']:.0f} map sites per movie{loc_text}; "
            f"{result['seconds_per_movie']:.3f} s per movie"
        )
        return Summary(result, text)

    return run_stage(
        stage,
        output,
        force=force,
        executor=executor,
        progress=progress,
        summarize=summarize,
    )


def _warn(message: str) -> None:
    import logging

    logging.getLogger("ulmtools").warning("%s", message)


def track(
    input: PathLike,
    output: PathLike,
    *,
    signal: str | None = None,
    detect: str = "peak:10",
    localize: str = "gaussian",
    window: str | Sequence[int] | None = None,
    max_speed: float | None = None,
    max_link_distance: float | None = None,
    max_gap: int = 2,
    min_track_length: int = 10,
    smooth: int = 3,
    render_factor: int = 8,
    workers: int = 1,
    dask: bool = False,
    dask_scheduler: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> Summary:
    """``ulm track``: conventional ULM (detect, localize, link, render) on an image store.

    ``workers``: movies tracked at once in threads (0: every core); with ``dask``, the
    number of Dask workers. ``window``: ``"3x7"`` or a sequence of odd sizes.
    """
    from ulmtools.runner import run_stage
    from ulmtools.store import check_output, open_store
    from ulmtools.track.core import TrackConfig, TrackStage, resolve

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
    executor = _executor(workers, "thread", dask, dask_scheduler)
    src = open_store(input, "image")
    res = resolve(config, src)
    check_output(output, force=force, inputs=[input])
    wavelength = src.attrs.get("wavelength")  # ulm import records it without an acquisition
    if "acquisition" in src.attrs:
        from ulmtools.acquisition import Acquisition

        wavelength = Acquisition.from_attrs(src.attrs["acquisition"]).wavelength
    stage = TrackStage(src, config, res)
    stage.parameters = {**config.to_dict(), "resolved": res.to_dict()}
    fine = res.fine_grid
    stage.attrs = {
        "input_grid": res.grid.to_attrs(),
        "factor": config.render_factor,
        "movies": stage.n_movies,
        "columns": list(fine.axes),
        "source": src.describe() | {"array": res.signal},
        "track": stage.parameters,
    }
    if wavelength is not None:
        stage.attrs["wavelength"] = wavelength
    stage.truth = src

    def summarize(summary: dict[str, Any]) -> Summary:
        seconds = round(summary.pop("_seconds"), 3)
        summary.pop("truth", None)
        result = {
            "output": str(output),
            **summary,
            "detect": config.detect,
            "localize": config.localize,
            "signal": res.signal,
            "max_link_distance": res.max_link_distance,
            "window": list(res.window),
        }
        text = _track_text(result)
        result["seconds"] = seconds
        return Summary(result, text)

    return run_stage(
        stage, output, force=force, executor=executor, progress=progress, summarize=summarize
    )


def _window(spec: str | Sequence[int] | None) -> tuple[int, ...] | None:
    from ulmtools.errors import UsageError

    if spec is None:
        return None
    if not isinstance(spec, str):
        return tuple(int(n) for n in spec)
    try:
        return tuple(int(p) for p in spec.lower().split("x"))
    except ValueError:
        raise UsageError(
            f"--window {spec!r} is not understood", "give sizes like 3x7 or 3x3x3"
        ) from None


def _track_text(r: dict[str, Any]) -> str:
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


def score(
    preds: Sequence[PathLike] | PathLike,
    truth: PathLike | None = None,
    *,
    output: PathLike | None = None,
    figure: PathLike | None = None,
    movies: int | None = None,
    pairing: str = "greedy",
    wavelength: float | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    log: Log = None,
) -> Summary:
    """``ulm score``: every metric of one or more reconstructions against ground truth.

    Returns the report (what ``ulm score --json`` prints); ``text`` is the table.
    ``output`` also writes the JSON report to that file, ``figure`` a PNG figure.
    """
    import json as _json

    from ulmtools.errors import UsageError
    from ulmtools.progress import no_progress
    from ulmtools.score.core import score as run_score
    from ulmtools.score.report import format_report
    from ulmtools.store import jsonable

    if isinstance(preds, (str, os.PathLike)):
        preds = [preds]
    preds = [Path(p) for p in preds]
    if wavelength is not None and not wavelength > 0:
        raise UsageError(f"--wavelength must be positive (metres), got {wavelength}")
    report_path = None if output is None else Path(output)
    figure_path = None if figure is None else Path(figure)
    inputs = [*preds, *([Path(truth)] if truth is not None else [])]
    for path in (report_path, figure_path):
        if path is not None:
            _check_file_output(path, force=force, inputs=inputs)
    same = report_path is not None and figure_path is not None
    if same and report_path.resolve() == figure_path.resolve():  # type: ignore[union-attr]
        raise UsageError("--output and --figure name the same file", "give two paths")
    report = run_score(
        [str(p) for p in preds],
        truth,
        movies=movies,
        pairing=str(pairing),
        wavelength=wavelength,
        progress=progress or no_progress,
        log=log or (lambda message: None),
    )
    doc = report.document
    if figure_path is not None:
        from ulmtools.score.figure import write_figure

        width, height = write_figure(report.methods, figure_path)
        doc["figure"] = {"path": str(figure_path), "width": width, "height": height}
        if log is not None:
            log(f"figure: {figure_path} ({width} x {height} px)")
    doc = jsonable(doc)
    if report_path is not None:
        _write_atomic(report_path, _json.dumps(doc, allow_nan=False) + "\n")
        if log is not None:
            log(f"report: {report_path}")
    return Summary(doc, format_report(doc))


def _check_file_output(path: Path, *, force: bool, inputs: list[Path]) -> None:
    from ulmtools.errors import OutputError

    for inp in inputs:
        if path.resolve() == inp.resolve():
            raise OutputError(f"the output {path} is also an input", "write to another path")
    if path.is_dir():
        raise OutputError(f"{path} is a directory", "give a file name")
    if path.exists() and not force:
        raise OutputError(f"{path} exists", "use --force to overwrite it")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"the directory {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"the directory {parent} is not writable", "choose another path")


def _write_atomic(path: Path, text: str) -> None:
    import uuid

    tmp = path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def train(
    train_store: PathLike,
    model_store: PathLike,
    *,
    also: Sequence[PathLike] = (),
    val: PathLike | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> dict[str, Any] | None:
    """``ulm train``: train a network on ``train_store`` (and ``also``), write ``model_store``.

    ``options`` are ``ulm train``'s long options (``arch``, ``epochs``, ``batch_size``,
    ``lr``, ``seed``, ``device``, ...); see :func:`ulmtools.train.run.train`. Returns
    the summary ``ulm train --json`` prints (None in a torchrun process other than 0).
    """
    from ulmtools.train.run import train as run_train

    return run_train(
        train_store, model_store, also=also, val=val, force=force, progress=progress, **options
    )
