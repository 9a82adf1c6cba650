"""Executors of the stage runner: serial against 2 local Dask workers, and per-task overhead.

Run ``python bench/bench_executors.py`` (``--quick``: fewer frames and repeats;
``make bench`` runs every bench file). Data: ``ulm simulate`` 2D channel movies
(the paper's preset, 5 bubbles per field of view), beamformed, sparsified.

Rows (medians of ``--repeats`` runs, wall time of the whole stage call, output
written; the cluster is started once beforehand and its start-up reported apart):

- ``beamform`` on ``--movies`` movies: serial with 1 and with 2 compute threads
  (``--workers 1`` / ``2``), and a LocalCluster of 2 worker processes of one thread
  (``--dask-scheduler``);
- ``infer shipped:2d`` on their sparse store: serial (torch threads 1, then 2), and
  the same 2-process cluster (every worker uses the driver's torch thread count);
- per-task overhead: a stage whose task does nothing, 64 units, on each executor
  (serial, 2 threads, 2 processes, Dask): the runner's cost per movie.

Every Dask output is checked byte for byte against the serial one.

Measured here (2 cores, a training job keeping about one busy; 8 x 256 frames, 3
repeats): beamform 7.61 s serial on 1 thread, 9.49 s on 2, 13.26 s on 2 Dask workers;
infer 31.63 s serial (torch 1 thread), 39.43 s (2 threads), 35.25 s on 2 Dask workers;
per-task overhead 18.6 ms (Dask), 34.9 ms (2 local processes, start included), ~0
(serial, threads); LocalCluster start-up 2.8 s; outputs identical.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zarr  # noqa: E402

from ulmtools import api  # noqa: E402
from ulmtools.runner import (  # noqa: E402
    DaskExecutor,
    Executor,
    MovieStage,
    ProcessExecutor,
    SerialExecutor,
    ThreadExecutor,
    run_stage,
)


class NoOpStage(MovieStage):
    """``n`` units whose task returns at once: what the runner costs per movie."""

    name = "simulate"
    kind = "angiogram"

    def __init__(self, n: int) -> None:
        self.parameters, self.attrs, self.units = {}, {}, [[m] for m in range(n)]

    def create(self, root: zarr.Group) -> None:
        root.create_array("angiogram", shape=(len(self.units), 4), chunks=(1, 4), dtype="int32")

    def task(self, root_path: str | None) -> Callable[[Sequence[int]], list[Any]]:
        return NoOpTask()


class NoOpTask:
    def __call__(self, unit: Sequence[int]) -> list[Any]:
        return [None for _ in unit]


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def identical(a: Path, b: Path) -> bool:
    """Chunks byte for byte (metadata holds times and the executor, so it is left out)."""
    fa = {p.relative_to(a): p for p in a.rglob("*") if p.is_file() and p.name != "zarr.json"}
    fb = {p.relative_to(b): p for p in b.rglob("*") if p.is_file() and p.name != "zarr.json"}
    return fa.keys() == fb.keys() and all(fa[k].read_bytes() == fb[k].read_bytes() for k in fa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movies", type=int, default=8)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="64 frames, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.repeats = 64, 1
    logging.getLogger("distributed").setLevel(logging.ERROR)
    import torch
    from dask.distributed import LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    ch, img, sp = tmp / "ch.zarr", tmp / "img.zarr", tmp / "sp.zarr"
    api.simulate(ch, movies=args.movies, frames=args.frames, seed=1, network_seed=1, workers=2)
    api.beamform(ch, img, clutter="svd:2", psf_model="analytic")
    api.sparsify(img, sp)

    t = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    start_up = time.perf_counter() - t
    address = cluster.scheduler_address
    rows: list[tuple[str, str, float, str]] = []

    def bf(out: str, **kw: Any) -> Callable[[], Any]:
        return lambda: api.beamform(
            ch, tmp / out, clutter="svd:2", psf_model="analytic", force=True, **kw
        )

    # warm-up: numba compiles and the DAS matrix is built once per process
    bf("warm.zarr", dask_scheduler=address)()
    bf("warm.zarr", workers=1)()
    b1 = median_time(bf("b1.zarr", workers=1), args.repeats)
    b2 = median_time(bf("b2.zarr", workers=2), args.repeats)
    bd = median_time(bf("bd.zarr", dask_scheduler=address), args.repeats)
    same = identical(tmp / "b1.zarr", tmp / "bd.zarr")
    rows += [
        ("beamform", "serial, 1 thread", b1, "1.00"),
        ("beamform", "serial, 2 threads", b2, f"{b1 / b2:.2f}"),
        ("beamform", "Dask, 2 workers x 1 thread", bd, f"{b1 / bd:.2f}" + ("" if same else " !")),
    ]

    def inf(out: str, **kw: Any) -> Callable[[], Any]:
        return lambda: api.infer("shipped:2d", sp, tmp / out, force=True, **kw)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    inf("warm.zarr", dask_scheduler=address)()
    i1 = median_time(inf("i1.zarr"), args.repeats)
    idd = median_time(inf("id.zarr", dask_scheduler=address), args.repeats)
    same_i = identical(tmp / "i1.zarr", tmp / "id.zarr")
    torch.set_num_threads(2)
    i2 = median_time(inf("i2.zarr"), args.repeats)
    torch.set_num_threads(before)
    rows += [
        ("infer shipped:2d", "serial, torch 1 thread", i1, "1.00"),
        ("infer shipped:2d", "serial, torch 2 threads", i2, f"{i1 / i2:.2f}"),
        (
            "infer shipped:2d",
            "Dask, 2 workers x 1 thread",
            idd,
            f"{i1 / idd:.2f}" + ("" if same_i else " !"),
        ),
    ]

    n = 64
    executors: list[tuple[str, Executor]] = [
        ("serial", SerialExecutor()),
        ("2 threads", ThreadExecutor(2)),
        ("2 processes (incl. start)", ProcessExecutor(2)),
        ("Dask, 2 workers", DaskExecutor(address)),
    ]
    overhead = []
    for label, ex in executors:

        def noop(units: int, ex: Executor = ex) -> Callable[[], Any]:
            out = tmp / f"noop{units}.zarr"
            return lambda: run_stage(NoOpStage(units), out, executor=ex, force=True)

        base = median_time(noop(0), 3)
        full = median_time(noop(n), 3)
        overhead.append((label, (full - base) / n))
    cluster.close()

    print(
        f"\n{args.movies} movies x {args.frames} frames (2D preset), medians of {args.repeats}; "
        f"{os.cpu_count()} cores; LocalCluster start-up {start_up:.1f} s (not counted)"
    )
    print(f"{'stage':<18} {'executor':<30} {'seconds':>8} {'speed-up':>9}")
    for stage, how, secs, up in rows:
        print(f"{stage:<18} {how:<30} {secs:>8.2f} {up:>9}")
    print(f"\nper-task overhead ({n} no-op tasks, minus an empty run)")
    for label, secs in overhead:
        print(f"{label:<30} {secs * 1e3:>8.2f} ms")
    print(
        "\nDask output identical to serial: beamform "
        f"{'yes' if same else 'NO'}, infer {'yes' if same_i else 'NO'} ('!' marks a mismatch)"
    )


if __name__ == "__main__":
    main()
