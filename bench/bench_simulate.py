"""Benchmark ``ulm simulate``: seconds per 512-frame movie, fast vs pymust, peak memory.

Each case runs in a fresh process (so its peak RSS is its own) after a tiny
warm-up run (numba caches loaded, DAS operator built): the whole stage for one
movie (bubble flow, echoes or PSF splatting, correlation, Zarr writes, truth).
pymust is timed on a few frames and scaled to 512 (it is linear in frames).
The fast-vs-pymust correlation is computed on the same bubbles (the pymust
case's frames), after delay-and-sum with ulm beamform's operator.

    .venv/bin/python bench/bench_simulate.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

FRAMES = 512


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _case(dim: int, level: str, engine: str, frames: int, conc: float, seed: int) -> dict:
    import numpy as np

    from ulmtools.simulate.run import SimulationConfig, plan, run
    from ulmtools.store import create_store, provenance_entry

    tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    try:
        cfg = SimulationConfig(
            dim=dim, frames=frames, concentration=conc, seed=seed, engine=engine, level=level
        )
        p = plan(cfg)
        # warm-up: numba caches, pulse table, DAS operator / PSF tables
        warm = plan(replace(cfg, frames=2))
        with create_store(
            tmp / "w.zarr",
            "channel" if level == "channel" else "image",
            provenance=[provenance_entry("bench", {})],
        ) as root:
            run(warm, root)
        kind = "channel" if level == "channel" else "image"
        t = time.perf_counter()
        with create_store(tmp / "o.zarr", kind, provenance=[provenance_entry("bench", {})]) as root:
            summary = run(p, root)
        seconds = time.perf_counter() - t
        out = {
            "seconds": seconds,
            "per_frame": seconds / frames,
            "mean_bubbles": summary["mean_bubbles_in_fov"],
            "store_mb": _store_bytes(tmp / "o.zarr") / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if engine == "pymust":
            # the same bubbles through the fast engine, both beamformed
            import zarr

            from ulmtools.beamform.das import DASOperator
            from ulmtools.simulate import echoes
            from ulmtools.simulate.run import bubbles

            ref = np.asarray(zarr.open_array(str(tmp / "o.zarr" / "iq"))[0])
            bm = bubbles(p, 0)
            t = time.perf_counter()
            fast = echoes.movie_echoes(
                p.acquisition, bm.frames, bm.positions, bm.amplitudes, frames
            )
            out["fast_echo_seconds"] = time.perf_counter() - t
            op = DASOperator(p.acquisition, p.grid)
            a, b = op.apply(fast), op.apply(ref)
            out["correlation"] = float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_case(*args) -> dict:
    # a fresh process per case: its peak RSS is the case's own
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_case, *args).result()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames (a smoke run)")
    args = ap.parse_args()
    frames = 64 if args.quick else FRAMES
    cases = [
        # name, dim, level, engine, frames, concentration
        ("2D channel fast", 2, "channel", "fast", frames, 5.0),
        ("2D image fast", 2, "image", "fast", frames, 5.0),
        ("2D channel pymust", 2, "channel", "pymust", 8 if args.quick else 16, 5.0),
        ("3D channel fast", 3, "channel", "fast", frames // 4 if args.quick else frames, 30.0),
        ("3D image fast", 3, "image", "fast", frames, 30.0),
        ("3D channel pymust", 3, "channel", "pymust", 2, 30.0),
    ]
    print(
        f"# ulm simulate, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
        f"times scaled to {FRAMES}-frame movies",
        flush=True,
    )
    results = {}
    for name, dim, level, engine, nf, conc in cases:
        r = _run_case(dim, level, engine, nf, conc, 1)
        results[name] = r
        print(f"  done {name}: {r['seconds']:.2f} s for {nf} frames", file=sys.stderr, flush=True)
    hdr = (
        f"| case | s per {FRAMES}-frame movie | ms/frame | MB in FOV (this movie) "
        "| store MB/movie | peak RSS MB | stage vs pymust | corr. after DAS |"
    )
    print(hdr)
    print("|" + "---|" * 8)
    for name, dim, _level, engine, nf, conc in cases:
        r = results[name]
        per_movie = r["per_frame"] * FRAMES
        ref = results.get(f"{dim}D channel pymust")
        ratio = ""
        if engine == "fast" and ref is not None:
            ratio = f"{ref['per_frame'] / r['per_frame']:.0f}x faster"
        corr = f"{r['correlation']:.4f}" if "correlation" in r else ""
        print(
            f"| {name} | {per_movie:.2f}{' (scaled)' if nf != FRAMES else ''} "
            f"| {1e3 * r['per_frame']:.2f} | {r['mean_bubbles']:.1f} (asked {conc:g}) "
            f"| {r['store_mb'] * FRAMES / nf:.0f} | {r['peak_rss_mb']:.0f} | {ratio} | {corr} |"
        )
    target = results["2D channel fast"]["per_frame"] * FRAMES
    print(f"\n2D 512-frame movie at 5 MB/FOV, channel level: {target:.2f} s (target < 5 s)")
    for dim in (2, 3):
        r = results[f"{dim}D channel pymust"]
        print(
            f"{dim}D echo model alone, same bubbles: fast {1e3 * r['fast_echo_seconds']:.1f} ms "
            f"vs pymust stage {1e3 * r['seconds']:.0f} ms "
            f"({r['seconds'] / r['fast_echo_seconds']:.0f}x), correlation {r['correlation']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
