"""Dense-to-sparse benchmark: time per movie and active sites, ours vs a torch peer.

Run ``python bench/bench_sparsify.py`` (``--quick`` for a smaller run; ``make
bench`` runs every bench file). Data: synthetic PSF-correlation movies
(:mod:`ulmtools.sparsify.synthetic`) at the paper's sizes: 2D 512 frames of
32 x 32 at 5 bubbles per field of view, 3D 512 frames of 32^3 at 30.

Tables:

1. time per movie. ``ours`` is the library's selection on an in-memory movie
   (numpy: power, mask, argwhere, gather); ``peer`` the same with torch tensors
   (``nonzero`` / ``topk``, the usual way a training script sparsifies a dense
   input); ``store`` is the whole ``sparsify_store`` path per movie (read the
   chunk, select, write coords/feats, truth statistics). Medians of repeats.
2. Mask CNN inference per movie (CPU, 1 and 2 torch threads).
3. active sites per movie at the paper's settings against the paper's counts
   (2D threshold about 21 k - 90 k sites of 524 k over thresholds 0.25 - 0.01;
   top-k 5 k - 100 k; CNN mask about 1.4 k), with the fraction of true bubble
   pixels kept.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import zarr  # noqa: E402

from ulmtools.models.mask_cnn import MaskCNN, MaskPredictor, MaskTrainConfig, train_mask_cnn  # noqa: E402
from ulmtools.sparsify import SparsifyConfig, movie_to_sites, select, sparsify_store  # noqa: E402
from ulmtools.sparsify.synthetic import SyntheticConfig, write_synthetic_store  # noqa: E402
from ulmtools.store import open_store  # noqa: E402

CASES = {
    # shape, bubbles, envelope sigma (px, per axis), carrier (rad/px), frames
    "2D": ((32, 32), 5, (1.3, 2.5), np.pi, 512),
    "3D": ((32, 32, 32), 30, (0.6, 1.2, 1.2), 2 * np.pi, 512),
}
PAPER_2D = {
    "threshold": "21 k - 90 k (thresholds 0.25 - 0.01)",
    "topk": "5 k - 100 k",
    "mask": "~1.4 k",
}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_peer(movie: torch.Tensor, config: SparsifyConfig):
    p = movie.real * movie.real + movie.imag * movie.imag
    if config.method == "topk":
        flat = torch.topk(p.reshape(-1), min(config.k, p.numel())).indices
        flat = torch.sort(flat).values
        coords = torch.stack(torch.unravel_index(flat, p.shape), dim=1).int()
        vals = movie.reshape(-1)[flat]
    else:
        mask = p > config.threshold
        coords = mask.nonzero().int()
        vals = movie[mask]
    return coords, torch.stack([vals.real, vals.imag], dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and movies")
    ap.add_argument("--movies", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        help="also count active sites on this image store (e.g. from ulm simulate --level image)",
    )
    args = ap.parse_args()
    movies = 2 if args.quick else args.movies
    tmp = Path(tempfile.mkdtemp(prefix="bench_sparsify_"))
    rows_time, rows_mask, rows_sites = [], [], []

    for name, (shape, bubbles, sigma, carrier, frames) in CASES.items():
        if args.quick:
            frames = 128
        cfg = SyntheticConfig(
            movies=movies, frames=frames, shape=shape, bubbles=bubbles, sigma=sigma,
            carrier=carrier, seed=7,
        )  # fmt: skip
        src = tmp / f"{name}.zarr"
        t0 = time.perf_counter()
        write_synthetic_store(src, cfg)
        gen = time.perf_counter() - t0
        size = "x".join(map(str, shape))
        print(f"# {name}: load {os.getloadavg()[0]:.1f}; {movies} synthetic movies {frames}x{size} "
              f"in {gen:.1f} s", file=sys.stderr)  # fmt: skip
        store = open_store(src, "image")
        movie = np.asarray(store.array("corr")[0])
        tmovie = torch.from_numpy(movie)
        default_t = 0.10 if len(shape) == 2 else 0.25
        configs = [
            SparsifyConfig(threshold=default_t),
            SparsifyConfig(method="topk", k=50_000),
        ]
        for c in configs:
            torch.set_num_threads(1)
            ours = median_time(
                lambda c=c, mv=movie: movie_to_sites(mv, select(mv, c)), args.repeats
            )
            peer = median_time(lambda c=c, tm=tmovie: torch_peer(tm, c), args.repeats)

            def whole(c=c, st=store):
                g = zarr.open_group(str(tmp / "out.zarr"), mode="w")
                sparsify_store(st, g, c)

            per_movie = median_time(whole, max(1, args.repeats // 2)) / movies
            label = f"threshold {c.threshold:g}" if c.method == "threshold" else f"top-k {c.k}"
            rows_time.append((name, label, ours, peer, per_movie))

        # Active sites at the paper's settings (all movies, through the store path).
        thresholds = [0.01, 0.05, 0.10, 0.25]
        ks = [5_000, 50_000, 100_000]
        for c in [SparsifyConfig(threshold=t) for t in thresholds] + [
            SparsifyConfig(method="topk", k=k) for k in ks
        ]:
            g = zarr.open_group(str(tmp / "out.zarr"), mode="w")
            s = sparsify_store(store, g, c).summary()
            label = f"threshold {c.threshold:g}" if c.method == "threshold" else f"top-k {c.k}"
            paper = PAPER_2D["threshold" if c.method == "threshold" else "topk"]
            rows_sites.append((name, label, s, paper if name == "2D" else "-"))

        # Mask CNN: inference time at the default size; a quickly trained one for counts.
        model = MaskCNN(spatial_dims=len(shape)).eval()
        mframes = frames if len(shape) == 2 else min(frames, 64)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            pred = MaskPredictor(model)
            clip = movie[:mframes]
            t = median_time(lambda p=pred, x=clip: p(x), 1 if len(shape) == 3 else 3)
            rows_mask.append((name, threads, t * frames / mframes, mframes != frames))
        if len(shape) == 2:
            torch.set_num_threads(2)
            tcfg = MaskTrainConfig(
                epochs=8 if not args.quick else 3, steps_per_epoch=15, batch=2, crop_frames=64
            )
            t0 = time.perf_counter()
            trained, _ = train_mask_cnn(store, tcfg)
            train_s = time.perf_counter() - t0
            predictor = MaskPredictor(trained)
            g = zarr.open_group(str(tmp / "out.zarr"), mode="w")
            s = sparsify_store(
                store, g, SparsifyConfig(method="mask").resolved(2), predictor=predictor
            ).summary()
            label = f"mask CNN ({tcfg.epochs}x{tcfg.steps_per_epoch} steps, {train_s:.0f} s)"
            rows_sites.append((name, label, s, PAPER_2D["mask"]))
        torch.set_num_threads(1)

    for path in args.image:
        store = open_store(path, "image")
        nd = store.grid.ndim
        for c in [SparsifyConfig(threshold=t) for t in (0.01, 0.05, 0.10, 0.25)] + [
            SparsifyConfig(method="topk", k=k) for k in (5_000, 50_000, 100_000)
        ]:
            g = zarr.open_group(str(tmp / "out.zarr"), mode="w")
            s = sparsify_store(store, g, c).summary()
            label = f"threshold {c.threshold:g}" if c.method == "threshold" else f"top-k {c.k}"
            paper = PAPER_2D["threshold" if c.method == "threshold" else "topk"]
            rows_sites.append((f"{nd}D {path.name}", label, s, paper if nd == 2 else "-"))

    cores = os.cpu_count()
    print(f"# {cores} cores; load average {os.getloadavg()[0]:.1f} at the end (others' jobs "
          "inflate the times)")  # fmt: skip
    print("\nTime per movie (CPU, 1 thread; medians)")
    print("| case | rule | ours (ms) | torch peer (ms) | ours/peer | store path (ms/movie) |")
    print("|---|---|---|---|---|---|")
    for name, label, ours, peer, whole in rows_time:
        print(f"| {name} | {label} | {1e3 * ours:.1f} | {1e3 * peer:.1f} | {ours / peer:.2f} "
              f"| {1e3 * whole:.1f} |")  # fmt: skip

    print("\nMask CNN inference per 512-frame movie (CPU, default size: 16 channels, 2 blocks)")
    print("| case | threads | seconds per movie |")
    print("|---|---|---|")
    for name, threads, t, extrapolated in rows_mask:
        note = " (timed on 64 frames, scaled)" if extrapolated else ""
        print(f"| {name} | {threads} | {t:.2f}{note} |")

    print("\nActive sites per movie (mean, min-max) and true bubble pixels kept")
    print(
        "| case | rule | active sites mean | min - max | of dense | kept bubble px | paper (2D) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, label, s, paper in rows_sites:
        kept = s["kept_bubble_fraction"]
        print(
            f"| {name} | {label} | {s['active_sites_mean']:,.0f} | {s['active_sites_min']:,} - "
            f"{s['active_sites_max']:,} | {100 * s['active_fraction']:.2f} % | "
            f"{'-' if kept is None else f'{100 * kept:.1f} %'} | {paper} |"
        )


if __name__ == "__main__":
    main()
