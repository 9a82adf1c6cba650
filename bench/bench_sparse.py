"""Sparse engine benchmark: a Sparse Deep-stULM training step, built-in vs MinkowskiEngine.

Run ``python bench/bench_sparse.py`` (``make bench`` runs every bench file).  The
network is the one ``ulm train`` trains and ``ulm infer`` runs
(``ulmtools.models.SparseDeepStulm``, the paper's width 16, with the intermediate
classifiers), on the input path ``ulm train`` uses (``make_input``).  For each case
(2D+t movie with D=3 convs, 3D+t movie with D=4 convs), backend and thread count, a
fresh worker process builds the same network with the same seed (so the same
weights) and the same synthetic movie, then times

* ``train``: forward + backward + Adam step of the whole network with the training
  loss (soft Dice of the final map and of each classifier, as ``ulm train``), and,
  within its forward, the three generative high-resolution levels (``hires_fwd_s``),
* ``infer``: forward without gradients,

and reports medians and the worker's peak RSS.  Each (backend, threads) pair
runs in its own process so peak memory and thread pools do not leak between
them.  MinkowskiEngine is skipped when not installed (``make minkowski``).
"""

from __future__ import annotations

import argparse
import copy
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
    """Time (or, with one backend and one step, measure the memory of) one case."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from ulmtools.models.deepstulm import HR_LEVELS, SparseDeepStulm
    from ulmtools.sparse.synthetic import synthetic_movie
    from ulmtools.train.loss import pooled_targets, sparse_dice_loss

    d, grid, frames, bubbles, sigma, thr = json.loads(args.case)
    coords, feats, _ = synthetic_movie(
        tuple(grid), frames, bubbles, sigma=sigma, threshold=thr, seed=1
    )
    # (batch, *space x 8, t) -> one movie's pixel coordinates (t, *space), as stored
    pixels = torch.cat([coords[:, -1:], coords[:, 1:-1] // 8], dim=1)
    # a track-like target on the x8 grid: every fine pixel under an active input pixel
    fine = torch.zeros((1, *(g * 8 for g in grid)), dtype=torch.bool)
    fine[(torch.zeros(len(pixels), dtype=torch.long), *(pixels[:, 1:].long() * 8 + 4).T)] = True
    pooled = pooled_targets(fine, [8 >> i for i in range(HR_LEVELS)])
    backends = args.backend.split(",")
    torch.manual_seed(0)
    net0 = SparseDeepStulm(dimension=d, deep_supervision=True, pruning=args.prune)
    # one copy of the same initial weights per backend, each with its own optimiser
    nets = {b: copy.deepcopy(net0) for b in backends}
    opts = {b: torch.optim.Adam(nets[b].parameters(), lr=1e-3) for b in backends}
    del net0
    hires: list[float] = []
    for net in nets.values():
        for block in net.hr:
            block.register_forward_pre_hook(lambda *_: hires.append(-time.perf_counter()))
            block.register_forward_hook(lambda *_: hires.append(time.perf_counter()))

    def train_step(b: str) -> dict:
        net, opt = nets[b], opts[b]
        hires.clear()
        t0 = time.perf_counter()
        out = net(net.make_input([pixels], [feats], backend=b))
        t1 = time.perf_counter()
        hr = sum(hires)
        loss = sparse_dice_loss(out.final, fine)
        for logits in out.levels:
            loss = loss + sparse_dice_loss(logits, pooled[logits.tensor_stride[1]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return {
            "fwd": t1 - t0,
            "hires_fwd": hr,
            "bwd": t2 - t1,
            "total": t3 - t0,
            "out_sites": out.final.num_sites,
            "level_sites": [lv.num_sites for lv in out.levels],
        }

    def infer_step(b: str) -> dict:
        t0 = time.perf_counter()
        with torch.no_grad():
            net = nets[b]
            net(net.make_input([pixels], [feats], backend=b))
        return {"total": time.perf_counter() - t0}

    fn = {"train": train_step, "infer": infer_step}[args.mode]
    for net in nets.values():
        net.train(args.mode != "infer")
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    for i in range(args.warmup + args.repeats):
        # alternate the order so neither backend always runs on a warmer (or busier) machine
        for b in backends if i % 2 == 0 else reversed(backends):
            r = fn(b)
            if i >= args.warmup:
                runs[b].append(r)
    for b in backends:
        rb = runs[b]
        result = {
            "mode": args.mode,
            "backend": b,
            "threads": args.threads,
            "sites": int(coords.shape[0]),
            "params": nets[b].num_parameters(),
            "median_s": statistics.median(r["total"] for r in rb),
            "min_s": min(r["total"] for r in rb),
            "runs": len(rb),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        for key in ("fwd", "hires_fwd", "bwd"):
            if key in rb[0]:
                result[key + "_s"] = statistics.median(r[key] for r in rb)
        for key in ("out_sites", "level_sites"):
            if key in rb[0]:
                result[key] = rb[0][key]
        print(json.dumps(result))


def _run_worker(
    case: tuple,
    backends: list[str],
    threads: int,
    mode: str,
    repeats: int,
    warmup: int,
    ns: argparse.Namespace,
) -> list[dict]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    # Idle OpenMP threads that spin instead of sleeping turned 2-thread steps from ~1.5 s
    # into 40+ s whenever other processes shared the cores; both engines use OpenMP.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, __file__, "--worker", "--case", json.dumps(case),
        "--backend", ",".join(backends), "--threads", str(threads), "--mode", mode,
        "--repeats", str(repeats), "--warmup", str(warmup),
    ]  # fmt: skip
    if ns.prune:
        cmd.append("--prune")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=ns.timeout)
    if proc.returncode != 0:
        print(
            f"  worker {backends} {threads}t {mode} failed:\n{proc.stderr[-2000:]}", file=sys.stderr
        )
        return []
    return [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]


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
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--infer-3d", action="store_true", help="also time 3D+t inference")
    p.add_argument("--repeats", type=int, default=3)
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
    results: list[dict] = []
    memory: dict[tuple[str, str, str], float] = {}
    for name in ns.cases:
        modes = [m for m in ns.modes if m != "infer" or cases[name][0] == 3 or ns.infer_3d]
        for mode in modes:
            for threads in ns.thread_counts:
                for r in _run_worker(
                    cases[name], backends, threads, mode, ns.repeats, ns.warmup, ns
                ):
                    r["case"] = name
                    results.append(r)
                    hr = (
                        f", high-res levels' forward {r['hires_fwd_s']:.3f} s"
                        if ("hires_fwd_s" in r)
                        else ""
                    )
                    print(
                        f"  {name:5s} {mode:5s} {r['backend']:9s} {threads}t  "
                        f"{r['median_s']:.3f} s (median of {r['runs']}){hr}",
                        file=sys.stderr,
                    )
            # peak memory: one step per backend in a fresh process (1 thread)
            for b in backends:
                for r in _run_worker(cases[name], [b], 1, mode, 1, 0, ns):
                    memory[(name, mode, b)] = r["peak_rss_mb"]
                    print(f"  {name:5s} {mode:5s} {b:9s} peak RSS {r['peak_rss_mb']:.0f} MB",
                          file=sys.stderr)  # fmt: skip
    for r in results:
        r["peak_rss_mb"] = memory.get((r["case"], r["mode"], r["backend"]))
    _print_table(results, backends)
    load_after = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs; 1-min load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (timings are only comparable within one run); "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}"
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
        mems = [f"{x['peak_rss_mb']:.0f}" if x and x.get("peak_rss_mb") else "-" for x in row]
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
