"""Benchmark the paper's Table I memory comparison: sparse vs dense Deep-stULM vs mSPCN-ULM.

Data: ``ulm simulate --level image`` (2D preset: 32x32 pixels, 5 MB/FOV) and its
``ulm sparsify`` store (threshold 0.10, the sparse network's input and the
"dense model with masked input"'s mask). The paper's movies have 512 frames; on
this 2-core CPU the default is 128 (``--frames 256`` fits too), and the table
says which was used.

Each case runs in a fresh process with one thread (so the peak resident set
size is its own): the network at the paper's width (16 channels), batch of one
movie (mSPCN: 64 of its frames per step), one warm-up step, then the median of
``--steps`` training steps (forward, backward, Adam) and of as many inference
passes over the whole movie. Peak memory is the process's peak RSS; "activations"
is that peak minus the RSS once data and model are loaded (the memory the step
itself took: intermediate maps, gradients, Adam state).

The dense 3D+t estimate is the paper's kind: the measured 2D dense activation
memory scaled by the ratio of the dense network's intermediate map sizes in
3D+t (32^3 input, 512 frames) to 2D+t (32^2, the measured frames), from
:func:`ulmtools.models.dense_deepstulm.activation_elements`, printed next to the
paper's 694 GB, with the paper's own 2D figure (12.6 GB) scaled the same way.

    python bench/bench_baselines.py               # ~5 min on 2 cores
    python bench/bench_baselines.py --frames 256 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ULM = str(Path(sys.executable).parent / "ulm")
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")
CASES = ("sparse", "dense", "dense-masked", "mspcn")
LABEL = {
    "sparse": "Sparse Deep-stULM",
    "dense": "Dense Deep-stULM",
    "dense-masked": "Dense, masked input",
    "mspcn": "mSPCN-ULM",
}
PAPER = {  # Table I, 2D at 5 MB/FOV on a V100: train memory (GB), inference ms
    "sparse": (6.8, 19),
    "dense": (12.6, 34),
    "dense-masked": (None, None),
    "mspcn": (22.7, 77),
}
PAPER_DENSE_3D_GB = 694
MSPCN_FRAMES_PER_STEP = 64


def make_data(tmp: Path, frames: int, movies: int = 2) -> tuple[Path, Path]:
    img, sparse = tmp / f"img2d-{frames}.zarr", tmp / f"sparse2d-{frames}.zarr"
    if not sparse.exists():
        run = dict(check=True, env=ENV, stdout=subprocess.DEVNULL)
        subprocess.run(
            [ULM, "simulate", str(img), "--dim", "2", "--movies", str(movies), "--frames",
             str(frames), "--level", "image", "--seed", "7", "-q"],
            **run,
        )  # fmt: skip
        subprocess.run([ULM, "sparsify", str(img), str(sparse), "-q"], **run)
    return img, sparse


def rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(spec: dict) -> dict:
    """In a child process: training steps and inference of one case on one movie."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    case, steps = spec["case"], spec["steps"]
    torch.manual_seed(0)
    times, infer = [], []
    if case == "sparse":
        from ulmtools.infer.core import predict
        from ulmtools.models.deepstulm import SparseDeepStulm
        from ulmtools.train.data import SparseMovies
        from ulmtools.train.loss import sparse_dice_loss

        data = SparseMovies(spec["sparse"], need_truth=True)
        net = SparseDeepStulm(dimension=3)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        movie, target = data.movie(0), torch.from_numpy(data.targets([0]))
        setup = rss_mb()
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            net.train()
            out = net(net.make_input([movie[0]], [movie[1]]))
            loss = sparse_dice_loss(out.final, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            predict(net, [movie])
            infer.append(time.perf_counter() - t0)
        extra = {"input_sites": len(movie[0])}
    elif case in ("dense", "dense-masked"):
        from ulmtools.infer.dense import predict_deepstulm
        from ulmtools.models.dense_deepstulm import DenseDeepStulm
        from ulmtools.models.mask_cnn import as_input, soft_dice_loss
        from ulmtools.train.baselines import ImageMovies

        mask = spec["sparse"] if case == "dense-masked" else None
        data = ImageMovies(spec["img"], need_truth=True, input_mask=mask)
        net = DenseDeepStulm()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        movie = data.movie(0)
        x, y = as_input(movie[None]), torch.from_numpy(data.target(0)[None]).float()
        setup = rss_mb()
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            net.train()
            loss = soft_dice_loss(net.probabilities(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            predict_deepstulm(net, [movie])
            infer.append(time.perf_counter() - t0)
        extra = {"input_sites": int(np.count_nonzero(movie))}
    else:
        from ulmtools.infer.dense import mspcn_movie, predict_mspcn
        from ulmtools.models.mask_cnn import as_input
        from ulmtools.models.mspcn import MSPCN, blurred_l1
        from ulmtools.train.baselines import ImageMovies

        data = ImageMovies(spec["img"], need_truth=True, arch="mspcn")
        net = MSPCN()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        movie = data.movie(0)
        n = min(MSPCN_FRAMES_PER_STEP, len(movie))
        x = as_input(movie[:n, None])[:, :, 0]
        y = torch.from_numpy(data.frame_targets(0)[:n]).float()
        setup = rss_mb()
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            net.train()
            loss = blurred_l1(net(x), y, net.sigma)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            mspcn_movie(predict_mspcn(net, movie), 0.5)
            infer.append(time.perf_counter() - t0)
        extra = {"input_sites": int(np.prod(movie.shape)), "frames_per_step": n}
    peak = rss_mb()
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "step_s": statistics.median(times[1:]),
        "infer_s": statistics.median(infer[1:]),
        "peak_mb": peak,
        "setup_mb": setup,
        "activation_mb": peak - setup,
        **extra,
    }


def run_child(spec: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate_3d(dense: dict, frames: int) -> dict:
    """The paper's kind of estimate of dense 3D+t Deep-stULM's training memory."""
    from ulmtools.models.dense_deepstulm import activation_elements

    measured = activation_elements(frames, (32, 32))
    ratio_3d = activation_elements(512, (32, 32, 32)) / measured
    ratio_2d_512 = activation_elements(512, (32, 32)) / measured
    per_3d = activation_elements(512, (32, 32, 32)) / activation_elements(512, (32, 32))
    return {
        "dense_2d_512_gb": dense["activation_mb"] * ratio_2d_512 / 1024,
        "dense_3d_512_gb": dense["activation_mb"] * ratio_3d / 1024,
        "map_ratio_3d_over_2d": per_3d,
        "paper_2d_scaled_gb": PAPER["dense"][0] * per_3d,
    }


def table(results: dict[str, dict], frames: int) -> str:
    head = (
        f"| 2D, 5 MB/FOV, {frames} frames, CPU 1 thread | parameters | peak train RSS (MiB) | "
        "step activations (MiB) | train step (s) | inference (s/movie) | input pixels | "
        "paper: train GB, ms |"
    )
    lines = [head, "|" + "---|" * 8]
    for case in CASES:
        r = results[case]
        paper = PAPER[case]
        ptxt = f"{paper[0]}, {paper[1]}" if paper[0] is not None else "-"
        if "error" in r:
            lines.append(f"| {LABEL[case]} | {r['error']} |  |  |  |  |  | {ptxt} |")
            continue
        step = f"{r['step_s']:.2f}"
        if "frames_per_step" in r:
            step += f" ({r['frames_per_step']} frames)"
        lines.append(
            f"| {LABEL[case]} | {r['parameters']:,} | {r['peak_mb']:.0f} | "
            f"{r['activation_mb']:.0f} | {step} | {r['infer_s']:.2f} | {r['input_sites']:,} | "
            f"{ptxt} |"
        )
    out = "\n".join(lines)
    s, d = results["sparse"], results["dense"]
    if "error" not in s and "error" not in d and s["activation_mb"] > 0:
        out += (
            "\n\nsparse / dense training memory in 2D: "
            f"peak RSS {s['peak_mb'] / d['peak_mb']:.2f}, "
            f"step activations {s['activation_mb'] / d['activation_mb']:.2f} "
            f"(paper: 6.8 / 12.6 = {6.8 / 12.6:.2f})"
        )
    if "error" not in d:
        e = estimate_3d(d, frames)
        out += (
            f"\ndense Deep-stULM, estimated from the measured {d['activation_mb']:.0f} MiB of "
            f"2D activations at {frames} frames (intermediate map sizes, batch 1):\n"
            f"  2D+t at 512 frames: {e['dense_2d_512_gb']:.1f} GiB\n"
            f"  3D+t at 512 frames (32^3): {e['dense_3d_512_gb']:.0f} GiB "
            f"(maps {e['map_ratio_3d_over_2d']:.0f}x those of 2D+t)\n"
            f"  the paper's 12.6 GB scaled by the same {e['map_ratio_3d_over_2d']:.0f}x: "
            f"{e['paper_2d_scaled_gb']:.0f} GB; the paper's estimate: ~{PAPER_DENSE_3D_GB} GB "
            "(never trainable; PyTorch has no 4D convolution)"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=128, help="frames per movie (paper: 512)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after a warm-up")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per case")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-baselines-") as tmp:
        img, sparse = make_data(Path(tmp), args.frames)
        results = {}
        for case in CASES:
            spec = {"case": case, "img": str(img), "sparse": str(sparse), "steps": args.steps}
            results[case] = run_child(spec, args.timeout)
            print(f"{case}: {results[case]}", file=sys.stderr)
    print(table(results, args.frames))
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
