"""Conventional ULM benchmark: time per 512-frame movie, ours against trackpy.

Run ``python bench/bench_track.py`` (``--quick`` for fewer frames; ``make bench``
runs every bench file). Data: ``ulm simulate --level image`` movies with the
paper's presets, 2D (32 x 32, 5 bubbles per field of view, 1 kHz) and 3D (32^3,
30 bubbles, 750 Hz), 512 frames each.

Per movie (medians of repeats, one process, alternating):

- ``detect+localize``: regional maxima, the default ``peak:10`` selection and the
  Gaussian fit (numba) on the movie's envelope;
- ``link``: our Hungarian linking with gap closing, smoothing and velocities;
- ``trackpy link``: ``trackpy.link`` on the same localizations with the same
  search range and memory (gap), the usual Python peer; it links only, so the
  comparison flatters it;
- ``total``: ours, detect to velocities, against the targets (2D <= 0.05 s, 3D <= 1 s).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ulmtools.cli.app import main as ulm  # noqa: E402
from ulmtools.store import open_store  # noqa: E402
from ulmtools.track.core import TrackConfig, resolve, track_movie  # noqa: E402
from ulmtools.track.detect import detect  # noqa: E402
from ulmtools.track.link import kinematics, link  # noqa: E402
from ulmtools.track.localize import localize  # noqa: E402

CASES = {"2D": (2, 5.0, 0.05), "3D": (3, 30.0, 1.0)}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def trackpy_link(frames: np.ndarray, positions: np.ndarray, search: float, memory: int):
    import pandas as pd
    import trackpy

    trackpy.quiet()
    cols = ["z", "x", "y"][: positions.shape[1]]
    df = pd.DataFrame(positions, columns=cols)
    df["frame"] = frames
    return trackpy.link(df, search_range=search, memory=memory, pos_columns=cols)


def run_case(name: str, frames: int, repeats: int, workdir: Path) -> dict:
    dim, conc, target = CASES[name]
    path = workdir / f"{name}.zarr"
    args = ["simulate", str(path), "--dim", str(dim), "--level", "image", "--movies", "1",
            "--frames", str(frames), "--concentration", str(conc), "--seed", "7",
            "--network-seed", "7", "-q"]  # fmt: skip
    if ulm(args) != 0:
        raise SystemExit(f"simulate failed for {name}")
    store = open_store(path, "image")
    config = TrackConfig()
    res = resolve(config, store)
    env = np.abs(np.asarray(store.array("iq")[0])).astype(np.float32)
    track_movie(env, config, res)  # compile

    state: dict = {}

    def ours_detect() -> None:
        idx, _, _ = detect(env, config.detection)
        frac = localize(env, idx, config.localize, window=res.window, psf_width=res.psf_width)
        state["frames"] = idx[:, 0]
        state["positions"] = res.grid.to_position(frac)

    def ours_link() -> None:
        labels = link(state["frames"], state["positions"], max_distance=res.max_link_distance,
                      max_gap=config.max_gap, min_length=config.min_track_length)  # fmt: skip
        kinematics(state["frames"], state["positions"], labels, frame_rate=res.frame_rate,
                   smooth=config.smooth)  # fmt: skip

    def peer_link() -> None:
        trackpy_link(state["frames"], state["positions"], res.max_link_distance, config.max_gap)

    ours_detect()
    t_det, t_link, t_peer = [], [], []
    for _ in range(repeats):  # alternate so both see the same machine load
        t_det.append(median_time(ours_detect, 1))
        t_link.append(median_time(ours_link, 1))
        t_peer.append(median_time(peer_link, 1))
    det, lnk, peer = (statistics.median(t) for t in (t_det, t_link, t_peer))
    return {
        "case": name,
        "frames": frames,
        "localizations": len(state["frames"]),
        "detect": det,
        "link": lnk,
        "peer": peer,
        "total": det + lnk,
        "target": target * frames / 512,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 frames, fewer repeats")
    a = ap.parse_args()
    logging.getLogger("ulmtools").setLevel(logging.WARNING)
    frames, repeats = (128, 3) if a.quick else (512, 7)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            rows.append(run_case(name, frames, repeats, Path(tmp)))
    print(f"\nulm track per movie ({frames} frames, medians of {repeats}, 1 thread)\n")
    print(
        "| case | localizations | detect+localize | link (ours) | trackpy link | ours/trackpy "
        "| total (ours) | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['localizations']} | {r['detect']:.4f} s | {r['link']:.4f} s "
              f"| {r['peer']:.4f} s | {r['peer'] / r['link']:.2f}x faster "
              f"| {r['total']:.4f} s | <= {r['target']:.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
