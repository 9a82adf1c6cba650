"""Benchmark Sparse Deep-stULM training and inference: built-in engine vs MinkowskiEngine.

Data: ``ulm simulate --level image`` (the paper's presets: 2D 32x32 at 5 MB/FOV,
3D 32^3 at 30 MB/FOV) thresholded by ``ulm sparsify`` (0.10 in 2D, 0.25 in 3D).
Each measurement runs in a fresh process (so peak RSS belongs to it), one
thread, batch of one movie; times are medians of a few steps after a warm-up.

    python bench/bench_train.py            # the table (a few minutes on 2 cores)
    python bench/bench_train.py --quick    # smaller movies

Rows follow the paper's Table II: the plain network, deep supervision and
pruning (a pruned model's cost depends on its classifiers: untrained ones keep
only the truth-guided sites while training, so its training figure is a lower
bound; inference with pruning is measured with the shipped weights when built).
Peak memory is the process's peak resident set size (torch itself is ~0.4 GB).
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

ROOT = Path(__file__).resolve().parents[1]
ULM = str(Path(sys.executable).parent / "ulm")
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def make_data(tmp: Path, dim: int, frames: int, movies: int = 2) -> Path:
    img, sparse = tmp / f"img{dim}d-{frames}.zarr", tmp / f"sparse{dim}d-{frames}.zarr"
    if not sparse.exists():
        subprocess.run(
            [
                ULM,
                "simulate",
                str(img),
                "--dim",
                str(dim),
                "--movies",
                str(movies),
                "--frames",
                str(frames),
                "--level",
                "image",
                "--seed",
                "7",
                "-q",
            ],
            check=True,
            env=ENV,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [ULM, "sparsify", str(img), str(sparse), "-q"],
            check=True,
            env=ENV,
            stdout=subprocess.DEVNULL,
        )
    return sparse


def measure(spec: dict) -> dict:
    """Run in a child process: time training steps or inference of one configuration."""
    import resource

    import torch

    torch.set_num_threads(1)
    from ulmtools.infer.core import predict
    from ulmtools.infer.weights import load_model
    from ulmtools.train.config import TrainConfig
    from ulmtools.train.data import SparseMovies
    from ulmtools.train.loop import new_state, train_step

    data = SparseMovies(spec["data"], need_truth=True)
    steps = spec.get("steps", 3)
    times = []
    info: dict = {}
    if spec["mode"] == "train":
        cfg = TrainConfig(
            channels=16,
            deep_supervision=spec["variant"] == "deep supervision",
            pruning=spec["variant"] == "pruning",
            backend=spec["backend"],
        )
        state = new_state(cfg, data.dimension, "cpu")
        phase = cfg.phase(cfg.schedule.dilate_epochs) | {"batch_size": 1}
        for i in range(steps + 1):
            t0 = time.perf_counter()
            r = train_step(state, data, [i % len(data)], cfg, phase, torch.device("cpu"))
            times.append(time.perf_counter() - t0)
            info = r or {}
    else:
        if spec.get("model"):
            net, _ = load_model(spec["model"])
        else:
            from ulmtools.models.deepstulm import SparseDeepStulm

            torch.manual_seed(0)
            net = SparseDeepStulm(dimension=data.dimension).eval()
        for i in range(steps + 1):
            movie = data.movie(i % len(data))
            t0 = time.perf_counter()
            ((c, _p),) = predict(net, [movie], backend=spec["backend"])
            times.append(time.perf_counter() - t0)
            info = {"sites": len(c)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": statistics.median(times[1:]),
        "peak_mb": rss,
        "input_sites": statistics.mean(data.sites(m) for m in range(len(data))),
        **{k: v for k, v in info.items() if k in ("sites",)},
    }


def run_child(spec: dict, timeout: float) -> dict | None:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available_backends() -> list[str]:
    from ulmtools.sparse import available_backends as av

    return av()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smaller movies (128 frames 2D, 32 3D)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per measurement")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return

    backends = available_backends()
    frames2, frames3 = (128, 32) if args.quick else (512, 64)
    shipped = ROOT / "ulmtools" / "weights"
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        d2 = make_data(Path(tmp), 2, frames2)
        d3 = make_data(Path(tmp), 3, frames3)
        rows = []
        plan = []
        for variant in ("plain", "deep supervision", "pruning"):
            plan.append(("train", f"2D+t {frames2} fr", d2, variant, None))
        for variant in ("pruning", "plain"):
            plan.append(("train", f"3D+t {frames3} fr", d3, variant, None))
        plan.append(("infer", f"2D+t {frames2} fr", d2, "plain", None))
        if (shipped / "deepstulm-2d.zarr").exists():
            plan.append(
                (
                    "infer",
                    f"2D+t {frames2} fr",
                    d2,
                    "shipped 2d",
                    str(shipped / "deepstulm-2d.zarr"),
                )
            )
        if (shipped / "deepstulm-3d.zarr").exists():
            plan.append(
                (
                    "infer",
                    f"3D+t {frames3} fr",
                    d3,
                    "shipped 3d",
                    str(shipped / "deepstulm-3d.zarr"),
                )
            )
        for mode, data_name, path, variant, model in plan:
            res: dict = {}
            for be in ("builtin", "minkowski"):
                if be not in backends or "timeout" in (res.get("builtin") or {}):
                    res[be] = None  # not installed, or the built-in run already timed out
                    continue
                spec = {
                    "mode": mode,
                    "data": str(path),
                    "variant": variant,
                    "backend": be,
                    "model": model,
                    "steps": 2 if "3D" in data_name else 3,
                }
                res[be] = run_child(
                    spec,
                    args.timeout / 2 if variant == "plain" and "3D" in data_name else args.timeout,
                )
            rows.append((mode, data_name, variant, res))
            print_row(rows[-1], header=len(rows) == 1, flush=True)
    print(
        "\nseconds: median per movie (train: forward + backward + Adam step; infer: forward).\n"
        "peak MB: the child process's peak RSS. ratio = minkowski / builtin time "
        "(> 1: the built-in engine is faster)."
    )
    for name in ("deepstulm-2d.zarr", "deepstulm-3d.zarr"):
        p = shipped / name
        if p.exists():
            from ulmtools.models.store import info

            meta = info(p)
            h = meta.history
            best = max((r["val_dice"] for r in h if r.get("val_dice") is not None), default=None)
            secs = sum(r["seconds"] for r in h)
            print(
                f"shipped {name}: {len(h)} epochs, {secs / 60:.1f} min, validation Dice "
                f"{h[-1].get('val_dice')} (best {best})"
            )


def _fmt(r: dict | None) -> tuple[str, str]:
    if r is None:
        return "n/a", "n/a"
    if "timeout" in r:
        return f">{r['timeout']:.0f}", "-"
    if "error" in r:
        return "error", "-"
    return f"{r['seconds']:.3f}", f"{r['peak_mb']:.0f}"


def print_row(row, header: bool, flush: bool) -> None:
    mode, data, variant, res = row
    if header:
        cols = f"{'builtin s':>10} {'MB':>6} {'minkowski s':>12} {'MB':>6} {'ratio':>6}"
        print(f"{'mode':6} {'data':14} {'variant':17} {'sites in':>9} {cols}")
    b, m = res.get("builtin"), res.get("minkowski")
    bs, bm = _fmt(b)
    ms, mm = _fmt(m)
    sites = next((r["input_sites"] for r in (b, m) if r and "input_sites" in r), None)
    ratio = "-"
    if b and m and "seconds" in b and "seconds" in m:
        ratio = f"{m['seconds'] / b['seconds']:.2f}"
    print(
        f"{mode:6} {data:14} {variant:17} {sites or 0:9.0f} {bs:>10} {bm:>6} {ms:>12} {mm:>6} "
        f"{ratio:>6}",
        flush=flush,
    )


if __name__ == "__main__":
    main()
