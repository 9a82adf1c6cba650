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

import os
from collections.abc import Callable, Sequence
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
    summary = run_stage(stage, output, force=force, executor=executor, progress=progress)
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
    return Summary(result, text)


def train(
    train_store: PathLike,
    model_store: PathLike,
    *,
    also: Sequence[PathLike] = (),
    val: PathLike | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``ulm train``: train a network on ``train_store`` (and ``also``), write ``model_store``.

    ``options`` are ``ulm train``'s long options (``arch``, ``epochs``, ``batch_size``,
    ``lr``, ``seed``, ``device``, ...); see :func:`ulmtools.train.run.train`.
    """
    from ulmtools.train.run import train as run_train

    return run_train(
        train_store, model_store, also=also, val=val, force=force, progress=progress, **options
    )
