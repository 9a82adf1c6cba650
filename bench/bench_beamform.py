"""Beamforming benchmark: DAS throughput, ours vs pymust's DAS matrices, and memory.

Run ``python bench/bench_beamform.py`` (``--quick`` for a smaller run; ``make
bench`` runs every bench file). Data: the paper's presets (2D L22-14, 3 tilts,
32x32 at lambda/4; 3D 32x32 matrix, 5 tilts, 32^3 at lambda/2), IQ sampled at
the centre frequency over the sample window that covers the grid (what ``ulm
simulate`` writes), filled with seeded complex noise (the DAS cost does not
depend on the content). Cases run in worker processes so that peak memory
(max RSS) is each method's own; timings alternate ours and pymust's in one
process and report medians, because this 2-core machine is shared.

Tables:

1. DAS + compounding, frames per second on the same data: ``ours`` is
   :class:`ulmtools.beamform.das.DASOperator` (one compacted CSR matrix over all
   transmits, numba kernel over blocks of frames) with 2 threads and with 1;
   ``pymust`` is ``pymust.dasmtx``/``dasmtx3`` per transmit (complex128 CSR)
   applied the straightforward way, ``M_t @ X_t`` with ``X_t`` the frames'
   (samples x elements, Fortran order) columns, summed over transmits. The same
   f-number (the directivity-based default) and linear interpolation for both;
   ``rel. err`` is ||ours - pymust|| / ||pymust||. Speed: both in one process,
   alternating; build time and peak RSS: each alone in its own process.
2. The rest of the chain on a 512-frame movie in memory: DAS, SVD clutter
   filter (K = 10), PSF correlation, and DAS + correlation together.
3. ``ulm beamform`` store to store (2D, 512-frame movies): wall time and peak
   RSS for 1 and 3 movies: the memory does not grow with the number of movies.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

C = 1540.0


def acquisition(dim: int):
    from ulmtools.acquisition import preset
    from ulmtools.beamform.das import grid_points

    p = preset(f"{dim}d")
    grid = p.grid()
    pos = p.element_positions()
    fs = p.center_frequency
    pts = grid_points(grid)
    far = np.sqrt(((pts[:, None, :] - pos[None]) ** 2).sum(-1)).max()
    t0 = max(0.0, 2 * pts[:, 0].min() / C - 3e-6)
    n = int(np.ceil(((far + pts[:, 0].max()) / C + 3e-6 - t0) * fs))
    return p.acquisition(sampling_frequency=fs, n_samples=n, t0=t0), grid


def channel(acq, frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (frames, acq.n_transmits, acq.n_samples, acq.n_elements)
    out = np.empty(shape, np.complex64)
    out.real = rng.standard_normal(shape, dtype=np.float32)
    out.imag = rng.standard_normal(shape, dtype=np.float32)
    return out


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# Workers (one process per case)
# ---------------------------------------------------------------------------


def pymust_matrices(acq, grid) -> list:
    """pymust's DAS matrix per transmit (CSR, complex128), the same options as ours."""
    import pymust

    from ulmtools.acquisition import preset
    from ulmtools.beamform.das import _resolve_fnumber, grid_points

    fx, fy = _resolve_fnumber(acq, None)
    param = pymust.utils.Param()
    param.fc = acq.center_frequency
    param.fs = acq.sampling_frequency
    param.c = acq.speed_of_sound
    param.t0 = np.array([acq.t0])
    param.bandwidth = 100 * acq.bandwidth
    pts = grid_points(grid)
    size = 1j * np.array([acq.n_samples, acq.n_elements])
    mats = []
    for d in acq.transmit_delays:
        if acq.dim == 2:
            param.pitch = preset("2d").pitch
            param.kerf = preset("2d").kerf
            param.Nelements = acq.n_elements
            param.fnumber = fx
            m = pymust.dasmtx(size, pts[:, 1].copy(), pts[:, 0].copy(), d[None], param.copy())
        else:
            param.width = acq.element_width
            param.height = acq.element_height
            param.fnumber = np.array([fx, fy])
            param.elements = acq.element_positions[:, [1, 2]].T.copy()
            m = pymust.dasmtx3(
                size, pts[:, 1].copy(), pts[:, 2].copy(), pts[:, 0].copy(), d[None], param.copy()
            )
        mats.append(m.tocsr())
        del m
    return mats


def pymust_apply(mats, x: np.ndarray, grid) -> np.ndarray:
    """The straightforward way: per transmit, M_t @ (samples x elements, Fortran order) columns."""
    frames = x.shape[0]
    total = 0
    for t, m in enumerate(mats):
        total = total + m @ x[:, t].transpose(0, 2, 1).reshape(frames, -1).T
    return np.asarray(total).T.reshape(frames, *grid.shape)


def worker_memory(dim: int, method: str, frames: int, out: str) -> dict:
    """Build and apply once, alone in this process: build time and peak RSS."""
    from ulmtools.beamform.das import DASOperator

    acq, grid = acquisition(dim)
    x = channel(acq, frames)
    t = time.perf_counter()
    if method == "ours":
        op = DASOperator(acq, grid)
        build = time.perf_counter() - t
        result = op.apply(x)
    else:
        mats = pymust_matrices(acq, grid)
        build = time.perf_counter() - t
        result = pymust_apply(mats, x, grid)
    np.save(out, result.astype(np.complex64))
    return {"build_s": build, "max_rss_mib": max_rss_mib()}


def worker_speed(dim: int, frames: int, repeats: int) -> dict:
    """Both methods in one process, alternating, so a busy machine slows both alike."""
    import numba

    from ulmtools.beamform.das import DASOperator

    acq, grid = acquisition(dim)
    x = channel(acq, frames)
    op = DASOperator(acq, grid)
    mats = pymust_matrices(acq, grid)
    op.apply(x[:2])
    threads = numba.get_num_threads()
    times: dict[str, list[float]] = {"ours": [], "ours1": [], "pymust": []}
    for _ in range(repeats):
        for key in times:
            numba.set_num_threads(1 if key == "ours1" else threads)
            t = time.perf_counter()
            if key == "pymust":
                pymust_apply(mats, x, grid)
            else:
                op.apply(x)
            times[key].append(time.perf_counter() - t)
    ratio = [p / o for p, o in zip(times["pymust"], times["ours"])]
    ratio1 = [p / o for p, o in zip(times["pymust"], times["ours1"])]
    return {
        "frames": frames,
        "threads": threads,
        "nnz": op.nnz,
        "fnumber": list(op.fnumber),
        **{f"fps_{k}": frames / statistics.median(v) for k, v in times.items()},
        "ratio": statistics.median(ratio),
        "ratio1": statistics.median(ratio1),
    }


def worker_chain(frames: int, repeats: int) -> dict:
    from ulmtools.beamform.clutter import svd_filter
    from ulmtools.beamform.correlation import psf_correlation, system_psf
    from ulmtools.beamform.das import DASOperator

    acq, grid = acquisition(2)
    x = channel(acq, frames)
    op = DASOperator(acq, grid)
    psf, _ = system_psf(acq, grid)
    iq = op.apply(x)
    psf_correlation(iq[:4], psf)
    das = median_time(lambda: op.apply(x), repeats)
    svd = median_time(lambda: svd_filter(iq, 10), repeats)
    corr = median_time(lambda: psf_correlation(iq, psf), repeats)
    both = median_time(lambda: psf_correlation(op.apply(x), psf), repeats)
    out = {"frames": frames, "das": das, "svd10": svd, "corr": corr, "das_corr": both}
    acq3, grid3 = acquisition(3)
    rng = np.random.default_rng(0)
    iq3 = (rng.standard_normal((frames, *grid3.shape)) + 0j).astype(np.complex64)
    iq3.imag = rng.standard_normal(iq3.shape)
    psf3, _ = system_psf(acq3, grid3)
    out["svd10_3d"] = median_time(lambda: svd_filter(iq3, 10), max(1, repeats - 1))
    out["corr_3d"] = median_time(lambda: psf_correlation(iq3, psf3), max(1, repeats - 1))
    return out


def run_worker(args: list[str], threads: int = 0) -> dict:
    env = dict(os.environ)
    if threads:
        env["NUMBA_NUM_THREADS"] = str(threads)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Store to store
# ---------------------------------------------------------------------------


def cli_case(tmp: Path, movies: int, frames: int) -> dict:
    from ulmtools.store import create_array, create_store, provenance_entry

    acq, grid = acquisition(2)
    src = tmp / f"ch{movies}.zarr"
    with create_store(
        src, "channel", provenance=[provenance_entry("bench", {})], grid=grid,
        attrs={"acquisition": acq.to_attrs()},
    ) as root:  # fmt: skip
        arr = create_array(
            root, "iq", shape=(movies, frames, acq.n_transmits, acq.n_samples, acq.n_elements),
            dtype="complex64", dims=("movie", "frame", "transmit", "sample", "element"),
        )  # fmt: skip
        for m in range(movies):
            arr[m] = channel(acq, frames, seed=m)
    out = tmp / f"img{movies}.zarr"
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:]); "
        "print(r.returncode, time.perf_counter() - t, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    ulm = str(Path(sys.executable).parent / "ulm")
    cmd = [sys.executable, "-c", wrapper, ulm, "beamform", str(src), str(out), "-q", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    code, wall, rss = lines[-1].split()
    if int(code) != 0:
        raise SystemExit(f"ulm beamform failed: {done.stderr}")
    summary = json.loads(lines[0])
    return {"movies": movies, "frames": frames, "wall": float(wall), "rss": float(rss), **summary}


# ---------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        kind = args.worker[0]
        if kind == "memory":
            dim, method, frames, out = args.worker[1:]
            res = worker_memory(int(dim), method, int(frames), out)
        elif kind == "speed":
            res = worker_speed(*(int(a) for a in args.worker[1:]))
        else:
            res = worker_chain(int(args.worker[1]), int(args.worker[2]))
        print(json.dumps(res))
        return

    frames = {2: 128 if args.quick else 512, 3: 8 if args.quick else 64}
    repeats = 2 if args.quick else 3
    print(f"# ulm beamform benchmark ({os.cpu_count()} cores; load {os.getloadavg()[0]:.1f})\n")
    print("## 1. DAS + compounding, frames per second, same data\n")
    header = (
        "| case | frames | weights | ours, 2 threads | ours, 1 thread | pymust | ours/pymust "
        "(2 thr, 1 thr) | rel. err | build ours / pymust (s) | peak RSS ours / pymust (MiB) |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fnums: dict[int, float] = {}
        for dim in (2, 3):
            f = frames[dim]
            mem = {
                m: run_worker(["memory", str(dim), m, str(f), str(tmp / f"{dim}{m}.npy")])
                for m in ("ours", "pymust")
            }
            ours = np.load(tmp / f"{dim}ours.npy")
            ref = np.load(tmp / f"{dim}pymust.npy")
            err = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
            sp = run_worker(["speed", str(dim), str(f), str(repeats)])
            fnums[dim] = sp["fnumber"][0]
            mo, mp = mem["ours"], mem["pymust"]
            print(
                f"| {dim}D preset | {f} | {sp['nnz']:,} | {sp['fps_ours']:.0f} "
                f"| {sp['fps_ours1']:.0f} | {sp['fps_pymust']:.1f} "
                f"| **{sp['ratio']:.1f}x**, {sp['ratio1']:.1f}x | {err:.1e} "
                f"| {mo['build_s']:.2f} / {mp['build_s']:.2f} "
                f"| {mo['max_rss_mib']:.0f} / {mp['max_rss_mib']:.0f} |"
            )
        print(
            "\nfps = frames per second (median of the repeats; the ratio is the median of "
            "per-repeat ratios, ours and pymust alternating in one process). f-number: the "
            f"directivity default for both (2D F = {fnums[2]:.2f}, 3D F = {fnums[3]:.2f}); "
            "linear interpolation; pymust single-threaded (scipy)."
        )

        print("\n## 2. The chain on one movie in memory (2 threads, median seconds)\n")
        ch = run_worker(["chain", str(frames[2]), str(repeats)])
        print(f"| step | 2D, {ch['frames']} frames (s) | 3D, {ch['frames']} frames of 32^3 (s) |")
        print("|---|---|---|")
        print(f"| DAS + compounding | {ch['das']:.3f} | see table 1 |")
        print(f"| SVD clutter filter, K = 10 | {ch['svd10']:.3f} | {ch['svd10_3d']:.3f} |")
        print(f"| PSF correlation | {ch['corr']:.3f} | {ch['corr_3d']:.3f} |")
        print(f"| DAS + correlation | **{ch['das_corr']:.3f}** | |")

        print("\n## 3. ulm beamform, store to store (2D, random channel data, zstd)\n")
        print(
            "| movies x frames | wall (s) | frames/s in the stage | peak RSS (MiB) | timings (s) |"
        )
        print("|---|---|---|---|---|")
        n_frames = 128 if args.quick else 512
        for movies in (1, 3):
            r = cli_case(tmp, movies, n_frames)
            tm = r["timings"]
            print(
                f"| {movies} x {n_frames} | {r['wall']:.1f} | {r['frames_per_second']:.0f} "
                f"| {r['rss']:.0f} | read {tm['read']}, das {tm['das']}, corr {tm['correlate']}, "
                f"write {tm['write']}, psf {tm['psf']} |"
            )


if __name__ == "__main__":
    main()
