"""Where a 3D+t training step's time and memory go (issue 13), block by block.

Data: ``ulm simulate --level image`` 3D movies (32^3 at lambda/2, 750 Hz, 128
frames) at ``--concentration`` bubbles per field of view, sparsified at the 3D
default 0.25 with the IQ at each site too (``--features corr,iq``): the untrained
networks take its four channels, the shipped weights the channels they were trained on,
and one configuration takes the correlation's two alone (what the IQ costs). Built-in
engine, one thread, batch of one movie, pruning, width 8 (the first shipped recipe's;
the shipped model now has the paper's 16, so ``--widths 16`` adds it untrained). Each
configuration runs in a fresh process (so its peak RSS is its own); times are medians
over ``--steps`` steps after one warm-up step.

Configurations: the model with the shipped 3D weights (its stored width and
input kernel; trained classifiers prune as they would at the end of training),
the recipe's network untrained with the paper's 5^4 input convolution
(classifiers near 0.05, so only truth-guided sites survive each pruning: the
cost at the start of training), the same with a 3^4 instead of a 5^4 input
convolution (the block that dominates the step), and, with ``--unpruned``, the unpruned network
(every generated site kept; expensive). Printed per block: forward seconds,
sites out, and the share of the step spent building coordinate sets and kernel
maps (``CoordinateManager``); then backward, Adam and peak memory; last, the
bytes a training run keeps per movie for its targets (voxel indices) against
dense fine-grid copies.

    python bench/bench_train3d.py                  # ~2 minutes on one core
    python bench/bench_train3d.py --frames 64 --unpruned
    python bench/bench_train3d.py --widths 16   # + the paper's width, untrained, kernel 3
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
BLOCKS = ["inp", "down1", "down2", "up1", "up2", "trans1_in", "trans1", "hr.0", "hr.1", "hr.2",
          "trans2", "out2"]  # fmt: skip


def make_data(tmp: Path, frames: int, concentration: float) -> Path:
    img, sparse = tmp / "img3d.zarr", tmp / "sparse3d.zarr"
    subprocess.run(
        [ULM, "simulate", str(img), "--dim", "3", "--movies", "2", "--frames", str(frames),
         "--concentration", str(concentration), "--level", "image", "--network-seed", "21",
         "--seed", "5", "-q"],
        check=True, env=ENV, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run([ULM, "sparsify", str(img), str(sparse), "--features", "corr,iq", "-q"],
                   check=True, env=ENV, stdout=subprocess.DEVNULL)  # fmt: skip
    return sparse


def measure(spec: dict) -> dict:
    """One configuration, in this (fresh) process."""
    import resource

    import torch

    from ulmtools.models.deepstulm import SparseDeepStulm
    from ulmtools.models.store import load
    from ulmtools.sparse import coords as spc
    from ulmtools.train.config import TrainConfig, resolve_schedule
    from ulmtools.train.data import CORR, SparseMovies, model_channels
    from ulmtools.train.loop import TrainState, new_state, train_step

    torch.set_num_threads(1)
    data = SparseMovies(spec["data"], need_truth=True)
    if spec.get("corr_only"):
        data.use_channels(CORR, what="this configuration")
    cfg = TrainConfig(
        schedule=resolve_schedule("cpu-3d"),
        channels=spec.get("channels", 8),
        pruning=spec["pruning"],
        seed=0,
        features=data.channels[: data.in_channels],
    )
    if spec["weights"]:  # the stored architecture (its width, input kernel and channels)
        model, meta = load(spec["weights"])
        data.use_channels(model_channels(meta), what=spec["weights"])
        state = TrainState(model.train(), torch.optim.Adam(model.parameters(), lr=1e-3))
    elif spec["input_kernel"] != 5 or cfg.channels != 8:
        torch.manual_seed(0)
        kwargs = cfg.model_kwargs(data.dimension) | {"input_kernel": spec["input_kernel"]}
        model = SparseDeepStulm(**kwargs)
        state = TrainState(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    else:
        state = new_state(cfg, data.dimension, "cpu")
    model = state.model
    fwd: dict[str, list[float]] = {b: [] for b in BLOCKS}
    sites: dict[str, int] = {}
    starts: dict[str, float] = {}
    mods = dict(model.named_modules())
    for name in BLOCKS:
        if name not in mods:
            continue

        def pre(_m, _a, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _a, out, name=name):
            fwd[name].append(time.perf_counter() - starts[name])
            if hasattr(out, "coords"):
                sites[name] = int(out.coords.shape[0])

        mods[name].register_forward_pre_hook(pre)
        mods[name].register_forward_hook(post)
    # time spent building coordinate sets and kernel maps (the engine's index work)
    mapping = [0.0]
    for meth in ("conv_map", "transpose_map", "generate_set", "stride_set"):
        orig = getattr(spc.CoordinateManager, meth)

        def timed(self, *a, _orig=orig, **k):
            t = time.perf_counter()
            try:
                return _orig(self, *a, **k)
            finally:
                mapping[0] += time.perf_counter() - t

        setattr(spc.CoordinateManager, meth, timed)
    phase = cfg.phase(cfg.schedule.epochs - 1)  # plain targets, all levels
    steps, maps = [], []
    for i in range(spec["steps"] + 1):
        mapping[0] = 0.0
        for v in fwd.values():
            v.clear()
        t = time.perf_counter()
        train_step(state, data, [i % len(data)], cfg, phase, torch.device("cpu"))
        if i:  # the first step warms up
            steps.append(time.perf_counter() - t)
            maps.append(mapping[0])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "step_s": statistics.median(steps),
        "mapping_s": statistics.median(maps),
        "forward": {b: v[-1] for b, v in fwd.items() if v},
        "sites": sites,
        "peak_gb": rss,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--concentration", type=float, default=30)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--weights", default=str(ROOT / "ulmtools/weights/deepstulm-3d.zarr"))
    ap.add_argument("--unpruned", action="store_true", help="also the unpruned network")
    ap.add_argument("--widths", default="", help="also these widths, untrained, input kernel 3 "
                    "(e.g. 12,16: what a wider network costs per step)")  # fmt: skip
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = str(make_data(Path(tmp), args.frames, args.concentration))
        configs = [("pruned, shipped weights", True, args.weights, 5),
                   ("untrained, input kernel 5", True, None, 5),
                   ("untrained, input kernel 3", True, None, 3)]  # fmt: skip
        configs = [(*c, 8, False) for c in configs]
        configs.append(("untrained, kernel 3, corr only", True, None, 3, 8, True))
        if args.unpruned:
            configs.append(("unpruned, untrained", False, None, 5, 8, False))
        for w in (int(x) for x in args.widths.split(",") if x):
            configs.append((f"untrained, kernel 3, width {w}", True, None, 3, w, False))
        results = {}
        for label, pruning, weights, kernel, width, corr_only in configs:
            spec = {"data": data, "pruning": pruning, "weights": weights, "steps": args.steps,
                    "input_kernel": kernel, "channels": width, "corr_only": corr_only}  # fmt: skip
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                 env=ENV, capture_output=True, text=True)  # fmt: skip
            if out.returncode:
                print(f"{label}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        cache = target_cache(data)
    print(f"\n3D+t training step, 32^3 x {args.frames} frames, {args.concentration:g} MB/FOV, "
          "width 8 and the 4 channels of corr,iq unless stated, 1 thread, "
          "built-in engine")  # fmt: skip
    labels = list(results)
    print(f"{'block':<12}" + "".join(f"{lb:>34}" for lb in labels))
    for b in BLOCKS:
        cells = []
        for lb in labels:
            r = results[lb]
            if b in r["forward"]:
                cells.append(f"{r['forward'][b]:8.3f} s {r['sites'].get(b, 0):>10,} sites")
            else:
                cells.append("-")
        print(f"{b:<12}" + "".join(f"{c:>34}" for c in cells))
    for key, name, fmt in [("step_s", "step (fwd+bwd+Adam)", "{:.2f} s"),
                           ("mapping_s", "  of it: kernel maps", "{:.2f} s"),
                           ("peak_gb", "peak RSS", "{:.2f} GB"),
                           ("params", "parameters", "{:,}")]:  # fmt: skip
        print(f"{name:<22}" + "".join(f"{fmt.format(results[lb][key]):>28}" for lb in labels))
    pairs = [(labels[0], labels[1]), (labels[1], labels[2])] if len(labels) > 2 else []
    pairs += [(lb, labels[2]) for lb in labels[3:] if "width" in lb or "corr only" in lb]
    for la, lb in pairs:
        a, b = results[la], results[lb]
        print(f"step time ratio '{la}' / '{lb}': {a['step_s'] / b['step_s']:.2f}")
    print(f"training targets kept between epochs (plain and dilated by 2), per movie: "
          f"{cache['kept'] / 1e6:.2f} MB as voxel indices against {cache['dense'] / 1e6:.1f} MB "
          f"as dense volumes ({cache['dense'] / cache['kept']:.0f}x less)")  # fmt: skip


def target_cache(data: str) -> dict[str, float]:
    """Bytes a training run keeps per movie for its targets, against dense copies."""
    from ulmtools.train.data import SparseMovies

    movies = SparseMovies(data, need_truth=True)
    dense = 0
    for m in range(len(movies)):
        for dilation in (0, 2):
            dense += movies.target(m, dilation).nbytes
    return {"kept": movies.cached_target_bytes / len(movies), "dense": dense / len(movies)}


if __name__ == "__main__":
    main()
