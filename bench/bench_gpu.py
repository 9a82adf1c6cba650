"""The CUDA benchmark of `make gpu-check`: 3D+t training steps and inference on a GPU.

Run on a machine with a CUDA GPU (``python bench/bench_gpu.py``; ``--device cpu
--quick`` dry-runs the same code here). Data: ``ulm simulate --level image`` 3D
movies (32^3 at lambda/2, 30 bubbles per field of view, 750 Hz), sparsified at the
paper's 0.25 with the IQ at each site too (``--features corr,iq``: the untrained network
takes the four channels; a model reads the channels it was trained on). Built-in sparse
engine, width 16 (the paper's), batch 1.

Prints one table: the median time of a training step (forward, backward, Adam)
over ``--steps`` steps and the peak GPU memory of training; the time to infer a
512-frame movie and its peak memory, untrained (every generative site kept) and
with the shipped 3D weights (pruned), plain and with the 4 mirror images x 2 delays
(0, 8 frames) ``ulm infer`` averages by default for that model; beside the paper's
V100 figures (70 ms per movie, 9.9 GB of training memory).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PAPER = {"train_memory_gb": 9.9, "infer_ms": 70.0}


def simulate(path: Path, frames: int, movies: int, seed: int) -> Path:
    ulm = [sys.executable, "-m", "ulmtools"]
    img = path.with_name(path.stem + "-img.zarr")
    args = ["simulate", str(img), "--dim", "3", "--level", "image", "--movies", str(movies),
            "--frames", str(frames), "--concentration", "30", "--seed", str(seed)]  # fmt: skip
    args.append("-q")
    subprocess.run([*ulm, *args], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*ulm, "sparsify", str(img), str(path), "--features", "corr,iq", "-q"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float:
    if device.type != "cuda":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_steps(
    data_path: Path, steps: int, device: torch.device, channels: int = 16
) -> tuple[float, float]:
    from ulmtools.train.config import TrainConfig
    from ulmtools.train.data import SparseMovies
    from ulmtools.train.loop import new_state, train_step

    data = SparseMovies(data_path, need_truth=True)
    cfg = TrainConfig(channels=channels, features=data.channels)
    state = new_state(cfg, data.dimension, device)
    phase = cfg.phase(cfg.schedule.dilate_epochs) | {"batch_size": 1}
    train_step(state, data, [0], cfg, phase, device)  # warm-up: kernel maps, allocator
    reset_peak(device)
    times = []
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        train_step(state, data, [i % len(data)], cfg, phase, device)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_gb(device)


def infer_movie(
    data_path: Path,
    model: str | None,
    device: torch.device,
    channels: int = 16,
    mirror: tuple[int, ...] = (),
    delays: tuple[int, ...] = (),
) -> tuple[float, float, int]:
    from ulmtools.infer.core import predict
    from ulmtools.infer.weights import load_model
    from ulmtools.models.deepstulm import SparseDeepStulm
    from ulmtools.train.data import SparseMovies, model_channels

    data = SparseMovies(data_path)
    if model:
        net, meta = load_model(model, device=device)
        data.use_channels(model_channels(meta), what=model)
    else:
        torch.manual_seed(0)
        net = SparseDeepStulm(
            dimension=data.dimension, in_channels=data.in_channels, channels=channels
        )
        net = net.to(device).eval()
    movie = data.movie(0)
    kw = {"mirror": mirror, "shape": data.shape[1:], "delays": delays}
    predict(net, [movie], device=device, **kw)  # warm-up
    reset_peak(device)
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        ((coords, _),) = predict(net, [movie], device=device, **kw)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_gb(device), len(coords)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--device", default="auto", help="auto (CUDA, else skip), cuda, or cpu for a dry run"
    )
    ap.add_argument("--steps", type=int, default=200, help="training steps timed")
    ap.add_argument("--train-frames", type=int, default=128, help="frames per training movie")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a dry run of the code)")
    a = ap.parse_args()
    if a.device == "auto":
        if not torch.cuda.is_available():
            print("bench_gpu: no CUDA device here, nothing measured (run make gpu-check on one)")
            return
        a.device = "cuda"
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here (use --device cpu --quick for a dry run)")
    # --quick: a dry run of the code on a CPU (width 4, a multiple of the 4 input channels:
    # an unpruned width-16 3D step takes minutes there)
    steps, train_frames, infer_frames = (1, 8, 8) if a.quick else (a.steps, a.train_frames, 512)
    width = 4 if a.quick else 16
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        train = simulate(Path(tmp) / "train.zarr", train_frames, 2, seed=11)
        test = simulate(Path(tmp) / "test.zarr", infer_frames, 1, seed=12)
        step_s, train_gb = train_steps(train, steps, device, width)
        rows = [(f"train step, plain, width {width}", f"{train_frames} fr", step_s, train_gb, None)]
        for label, model, mirror, delays in (
            (f"infer, untrained width {width}", None, (), ()),
            ("infer, shipped:3d, plain", "shipped:3d", (), ()),
            ("infer, shipped:3d, 4 mirror images x delays 0, 8 (its default)", "shipped:3d",
             (1, 2), (0, 8)),
        ):  # fmt: skip
            sec, gb, sites = infer_movie(test, model, device, width, mirror, delays)
            rows.append((label, f"{infer_frames} fr", sec, gb, sites))
    unit = "GPU GiB" if device.type == "cuda" else "RSS GiB"
    print(
        f"\n3D+t on {name} (built-in engine, torch {torch.__version__}, {steps} training steps)\n"
    )
    print(f"| case | movie | time | peak {unit} | output sites | paper (V100) |")
    print("|---|---|---|---|---|---|")
    for label, movie, sec, gb, sites in rows:
        paper = (f"{PAPER['train_memory_gb']} GB" if label.startswith("train")
                 else f"{PAPER['infer_ms']:.0f} ms per movie")  # fmt: skip
        print(f"| {label} | {movie} | {1000 * sec:.1f} ms | {gb:.2f} | {sites or '-'} | {paper} |")


if __name__ == "__main__":
    main()
