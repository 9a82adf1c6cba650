"""Sparse engine benchmark: a Sparse Deep-stULM training step, built-in vs MinkowskiEngine.

Run ``python bench/bench_sparse.py`` (``make bench`` runs every bench file).  For
each case (2D+t movie with D=3 convs, 3D+t movie with D=4 convs), backend and
thread count, a fresh worker process builds the same network with the same
seed (so the same weights) and the same synthetic movie, then times

* ``train``: forward + backward + Adam step of the whole network,
* ``hires``: forward + backward of the three generative high-resolution levels
  and the output head alone (their input computed once without gradients),
* ``infer``: forward without gradients,

and reports medians and the worker's peak RSS.  Each (backend, threads) pair
runs in its own process so peak memory and thread pools do not leak between
them.  MinkowskiEngine is skipped when not installed (``make minkowski``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    # name: (dimension, grid (pixels), frames, bubbles per frame, PSF sigma (px),
    #        threshold on |corr|^2)
    "2D+t": (3, (32, 32), 512, 6, 1.2, 0.10),
    "3D+t": (4, (16, 16, 16), 128, 30, 1.0, 0.25),
}
QUICK = {
    "2D+t": (3, (32, 32), 256, 4, 1.2, 0.10),
    "3D+t": (4, (12, 12, 12), 64, 10, 1.0, 0.25),
}


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from ulmtools import sparse as sp
    from ulmtools.sparse.blocks import DeepStULMSketch, count_parameters, soft_dice_loss
    from ulmtools.sparse.synthetic import synthetic_movie

    d, grid, frames, bubbles, sigma, thr = json.loads(args.case)
    coords, feats, stride = synthetic_movie(
        tuple(grid), frames, bubbles, sigma=sigma, threshold=thr, seed=1
    )
    torch.manual_seed(0)
    net = DeepStULMSketch(d, prune=args.prune)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    backend = sp.get_backend(args.backend)

    def make_input() -> sp.SparseTensor:
        return sp.sparse_tensor(coords, feats, stride, backend=backend, check=False)

    def target_of(pred: torch.Tensor) -> torch.Tensor:
        # A fixed pseudo-target: deterministic in the sites, independent of the weights.
        c = pred_coords[0].double()
        return (torch.sin(c[:, 1] * 0.37 + c[:, 2] * 0.11) > 0.6).float()

    pred_coords: list[torch.Tensor] = []

    def train_step() -> dict[str, float]:
        t0 = time.perf_counter()
        out = net(make_input())
        t1 = time.perf_counter()
        pred_coords[:] = [out.prediction.coords]
        loss = soft_dice_loss(out.prediction.feats[:, 0], target_of(out.prediction.feats))
        for m in out.level_maps:
            loss = loss + 0.1 * m.feats.mean()  # stand-in for the deep-supervision terms
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return {
            "fwd": t1 - t0,
            "bwd": t2 - t1,
            "total": t3 - t0,
            "out_sites": out.prediction.num_sites,
            "level_sites": [m.num_sites for m in out.level_maps],
        }

    def hires_step() -> dict[str, float]:
        x = make_input()
        with torch.no_grad():
            low = net.low_res(x)
        low = low.replace_feats(low.feats.detach().requires_grad_(True))
        t0 = time.perf_counter()
        out = net.high_res(low)
        loss = out.prediction.feats.sum() + sum(m.feats.sum() for m in out.level_maps)
        loss.backward()
        return {"total": time.perf_counter() - t0}

    def infer_step() -> dict[str, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            net(make_input())
        return {"total": time.perf_counter() - t0}

    fn = {"train": train_step, "hires": hires_step, "infer": infer_step}[args.mode]
    net.train(args.mode != "infer")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runs = [fn() for _ in range(args.warmup + args.repeats)][args.warmup :]
    result = {
        "mode": args.mode,
        "backend": args.backend,
        "threads": args.threads,
        "sites": int(coords.shape[0]),
        "params": count_parameters(net),
        "median_s": statistics.median(r["total"] for r in runs),
        "min_s": min(r["total"] for r in runs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0,
    }
    for key in ("fwd", "bwd"):
        if key in runs[0]:
            result[key + "_s"] = statistics.median(r[key] for r in runs)
    for key in ("out_sites", "level_sites"):
        if key in runs[0]:
            result[key] = runs[0][key]
    print(json.dumps(result))


def _run_case(
    name: str, case: tuple, backend: str, threads: int, mode: str, ns: argparse.Namespace
) -> dict | None:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--case",
        json.dumps(case),
        "--backend",
        backend,
        "--threads",
        str(threads),
        "--mode",
        mode,
        "--repeats",
        str(ns.repeats),
        "--warmup",
        str(ns.warmup),
    ]
    if ns.prune:
        cmd.append("--prune")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=ns.timeout)
    if proc.returncode != 0:
        print(
            f"  {name} {backend} {threads}t {mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr
        )
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _minkowski_available() -> bool:
    code = "from ulmtools.sparse import get_backend; get_backend('minkowski')"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="builtin", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--backends", nargs="+", default=["builtin", "minkowski"])
    p.add_argument("--thread-counts", nargs="+", type=int, default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["train", "hires", "infer"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--prune", action="store_true", help="prune high-res levels by their classifiers"
    )
    p.add_argument("--quick", action="store_true", help="smaller movies (a smoke run)")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", type=Path, help="also write all results to this file")
    ns = p.parse_args(argv)
    if ns.worker:
        _worker(ns)
        return 0

    backends = list(ns.backends)
    if "minkowski" in backends and not _minkowski_available():
        print(
            "MinkowskiEngine not installed: benchmarking the built-in backend only "
            "(make minkowski)",
            file=sys.stderr,
        )
        backends.remove("minkowski")
    cases = QUICK if ns.quick else CASES
    load_before = os.getloadavg()
    results = []
    for name in ns.cases:
        for mode in ns.modes:
            for threads in ns.thread_counts:
                for backend in backends:
                    r = _run_case(name, cases[name], backend, threads, mode, ns)
                    if r is not None:
                        r["case"] = name
                        results.append(r)
                        print(
                            f"  {name:5s} {mode:5s} {backend:9s} {threads}t  "
                            f"{r['median_s']:.3f} s  "
                            f"peak {r['peak_rss_mb']:.0f} MB",
                            file=sys.stderr,
                        )
    _print_table(results, backends)
    load_after = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs; 1-min load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (timings are only comparable within one run)"
    )
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=1))
    return 0


def _print_table(results: list[dict], backends: list[str]) -> None:
    by = {(r["case"], r["mode"], r["threads"], r["backend"]): r for r in results}
    print()
    print(
        "| case | step | threads | "
        + " | ".join(f"{b} (s)" for b in backends)
        + " | speed-up | "
        + " | ".join(f"{b} peak RSS (MB)" for b in backends)
        + " |"
    )
    print("|" + "---|" * (4 + 2 * len(backends)))
    seen = []
    for r in results:
        key = (r["case"], r["mode"], r["threads"])
        if key in seen:
            continue
        seen.append(key)
        row = [by.get((*key, b)) for b in backends]
        times = [f"{x['median_s']:.3f}" if x else "-" for x in row]
        mems = [f"{x['peak_rss_mb']:.0f}" if x else "-" for x in row]
        speed = "-"
        if len(row) == 2 and all(row):
            speed = f"{row[1]['median_s'] / row[0]['median_s']:.2f}x"
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | "
            + " | ".join(times)
            + f" | {speed} | "
            + " | ".join(mems)
            + " |"
        )
    print()
    for case in dict.fromkeys(r["case"] for r in results):
        info = next(r for r in results if r["case"] == case)
        sizes = next((r for r in results if r["case"] == case and "out_sites" in r), None)
        extra = (
            f", level sites {sizes['level_sites']}, output sites {sizes['out_sites']}"
            if sizes
            else ""
        )
        print(f"{case}: {info['sites']} input sites, {info['params']} parameters{extra}")
    print("speed-up = minkowski time / builtin time (same weights, same movie, medians)")


if __name__ == "__main__":
    raise SystemExit(main())
