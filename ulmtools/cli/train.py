"""``ulm train``: train Sparse Deep-stULM on a sparse store with truth (or a baseline or
the mask CNN on an image store).  Options in, summary out: the training itself is
:func:`ulmtools.train.run.train`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ulmtools.cli.context import emit, progress, setup
from ulmtools.cli.options import (
    Backend,
    Device,
    Force,
    InputStore,
    Json,
    OutputStore,
    Quiet,
    Seed,
    SparseBackend,
    Verbose,
)
from ulmtools.train.run import SCHEDULE_NAMES


class Arch(StrEnum):
    sparse_deepstulm = "sparse-deepstulm"
    deepstulm = "deepstulm"
    mspcn = "mspcn"
    mask_cnn = "mask-cnn"


def train(
    train_store: InputStore,
    model_store: OutputStore,
    arch: Annotated[
        Arch,
        typer.Option(
            "--arch",
            help="sparse-deepstulm (TRAIN: a sparse store); the 2D baselines deepstulm (dense "
            "Deep-stULM) and mspcn (mSPCN-ULM, frame by frame), or mask-cnn, the learned "
            "dense-to-sparse mask of ulm sparsify (TRAIN: an image store with corr and truth).",
            case_sensitive=False,
        ),
    ] = Arch.sparse_deepstulm,
    also: Annotated[
        list[Path] | None,
        typer.Option(
            "--also",
            help="Another training store (repeatable): its movies join TRAIN's, e.g. other "
            "vessel networks, concentrations or noise levels. sparse-deepstulm: a sparse store "
            "of the same dimension and grid; deepstulm, mspcn: an image store with truth on "
            "the same grid with as many frames per movie (--input-threshold masks it too; "
            "refused with --input-mask). Not for mask-cnn.",
            show_default=False,
        ),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option(
            "--val",
            help="Validation store with truth (sparse; an image store for deepstulm and mspcn, "
            "masked by --input-threshold, refused with --input-mask): its angiogram Dice, as "
            "ulm infer reports it, is computed after every epoch. Not for mask-cnn.",
            show_default=False,
        ),
    ] = None,
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule",
            help=f"Named schedule ({SCHEDULE_NAMES}): the paper's 2D/3D schedules, small CPU "
            "ones, or finetune (5 epochs at lr 1e-3 then 3e-4, plain targets); auto picks "
            "finetune with --init, else cpu-2d or cpu-3d by the data's dimension.",
        ),
    ] = "auto",
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Epochs; the schedule's milestones are stretched to fit.",
            show_default="schedule's",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Movies per step (all epochs; under torchrun, over all processes).",
            show_default="schedule's",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="Initial learning rate; the schedule's decays follow.",
            show_default="schedule's",
        ),
    ] = None,
    channels: Annotated[
        int | None,
        typer.Option(
            "--channels",
            help="Width of the first level (16 in the paper; 32 and 64 follow).",
            show_default="16, or --init's",
        ),
    ] = None,
    input_kernel: Annotated[
        int | None,
        typer.Option(
            "--input-kernel",
            help="Size of the input convolution (sparse-deepstulm; the paper's 5). In 3D+t "
            "its 5^4 taps take most of a training step; 3 (3^4) is several times cheaper.",
            show_default="5",
        ),
    ] = None,
    time_pool: Annotated[
        str | None,
        typer.Option(
            "--time-pool",
            metavar="A,B,C,D",
            help="sparse-deepstulm: time pooling of down 1, down 2, transition 1 and "
            "transition 2 (the paper's 4,4,8,8 leaves a 128-frame movie one time index at "
            "the high-resolution levels; 4,4,2,32 leaves it four). Pooling has no weights: "
            "with --init it may differ from the model's.",
            show_default="4,4,8,8, or --init's",
        ),
    ] = None,
    deep_supervision: Annotated[
        bool,
        typer.Option(
            "--deep-supervision",
            help="Add a classifier per high-resolution level; their Dice losses are added.",
        ),
    ] = False,
    pruning: Annotated[
        bool,
        typer.Option(
            "--pruning",
            help="Remove sites with classifier probability <= 0.5 before each up-sampling "
            "(implies the classifiers).",
        ),
    ] = False,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade",
            help="Cascaded learning: one extra epoch per intermediate level, switched on "
            "coarse to fine, before the schedule (implies the classifiers).",
        ),
    ] = False,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            metavar="AXES",
            help="sparse-deepstulm: mirror each training movie at random along these lateral "
            "axes (x, or x,y in 3D), with probability 1/2 per axis, movie and epoch: data "
            "augmentation for acquisitions symmetric about the probe's centre (the presets "
            "are); the grid must be centred on the probe.",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            metavar="MODEL",
            help="sparse-deepstulm: start from this model's weights (a model store or "
            "shipped:2d|3d), e.g. to fine-tune the shipped model on your own data; its "
            "width, input kernel and classifiers are kept.",
            show_default=False,
        ),
    ] = None,
    input_mask: Annotated[
        Path | None,
        typer.Option(
            "--input-mask",
            help="deepstulm, mspcn: keep only the input pixels that are active sites of this "
            "sparse store of the same movies (the dense model with masked input).",
            show_default=False,
        ),
    ] = None,
    input_threshold: Annotated[
        float | None,
        typer.Option(
            "--input-threshold",
            help="deepstulm, mspcn: set input pixels with abs(corr)^2 at or below T to 0 "
            "(the threshold dense-to-sparse rule on a dense model).",
            show_default=False,
        ),
    ] = None,
    backend: SparseBackend = Backend.builtin,
    device: Device = "auto",
    seed: Seed = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run from MODEL.resume.zarr (same configuration).",
        ),
    ] = False,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train a network on a store with ground truth; write a model store.

    The loss is the soft Dice between the predicted map on the x8 grid and the truth's
    track projection (dilated by 2 pixels in the schedule's first phase); Adam. After
    every epoch MODEL.resume.zarr is checkpointed (weights, optimizer state, history), so
    --resume continues an interrupted run exactly; it is removed when the run completes.
    The model store (weights, resolved configuration, per-epoch history of loss,
    validation Dice, seconds and peak memory) is written at the end, and at most once a
    minute during the run.

    Several processes or GPUs: the same command under torchrun (torchrun
    --nproc-per-node N --no-python ulm train ...) trains the sparse network with
    DistributedDataParallel (gloo on the CPU, NCCL on CUDA with one GPU per process).
    --batch-size stays the global batch, each process takes its share of every batch,
    the loss and the batch norms see the whole batch, and process 0 alone writes the
    model store and MODEL.resume.zarr and prints the result; --resume works the same.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools.train.distributed import torchrun_env
    from ulmtools.train.run import train as run_train

    launch = torchrun_env()
    if launch is not None and launch.rank != 0 and not verbose:
        setup(quiet=True)  # process 0 reports for the whole torchrun launch
    description = "train" if arch is Arch.sparse_deepstulm else f"train {arch.value}"
    with progress(description) as report:
        result = run_train(
            train_store,
            model_store,
            arch=arch.value,
            also=also or (),
            val=val,
            schedule=schedule,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            channels=channels,
            input_kernel=input_kernel,
            time_pool=time_pool,
            deep_supervision=deep_supervision,
            pruning=pruning,
            cascade=cascade,
            mirror=mirror,
            init=init,
            input_mask=input_mask,
            input_threshold=input_threshold,
            backend=backend.value,
            device=device,
            seed=seed,
            resume=resume,
            force=force,
            progress=report,
        )
    if result is None:
        return  # another process of a torchrun launch: process 0 prints the result
    if json:
        emit(result, as_json=True)
    elif arch is Arch.mask_cnn:
        emit(result, as_json=False, text=_mask_cnn_text(result))
    elif arch in (Arch.deepstulm, Arch.mspcn):
        emit(result, as_json=False, text=_baseline_text(result, input_mask))
    else:
        emit(result, as_json=False, text=_text(result))


def _mask_cnn_text(r: dict[str, Any]) -> str:
    return (
        f"{r['output']}: mask-cnn ({r['parameters']} parameters), {_epochs(r['epochs'])} "
        f"on {r['device']}; final loss {_num(r['loss'])}, training Dice {_num(r['dice'])}"
    )


def _baseline_text(r: dict[str, Any], input_mask: Path | None) -> str:
    masked = ""
    how = r["input_masking"]
    if how is not None:
        masked = (
            f", input masked by abs(corr)^2 > {how['threshold']}"
            if how["method"] == "threshold"
            else f", input masked by the sites of {input_mask}"
        )
    dice = f", training Dice {r['dice']:.4f}" if r["dice"] is not None else ""
    if r.get("val_dice") is not None:
        dice += f", validation Dice {r['val_dice']:.4f} (best {r['best_val_dice']:.4f})"
    movies = f" of {r['movies']} movies" if "movies" in r else ""
    return (
        f"{r['output']}: {r['architecture']} ({r['parameters']} parameters, 2D+t), "
        f"{_epochs(r['epochs'])}{movies} on {r['device']}{masked}\n"
        f"final loss {r['loss']:.4f}{dice}; {r['seconds']:.1f} s, "
        f"peak memory {r['peak_memory_mb']:.0f} MiB"
    )


def _num(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _text(r: dict[str, Any]) -> str:
    val = f", validation Dice {r['val_dice']:.4f}" if r["val_dice"] is not None else ""
    loss = f"{r['loss']:.4f}" if r["loss"] is not None else "n/a"
    return (
        f"{r['output']}: {r['architecture']} ({r['parameters']} parameters, "
        f"{r['dimension'] - 1}D+t), {_epochs(r['epochs'])} of {r['schedule']} on {r['device']}\n"
        f"final loss {loss}{val}; {r['seconds']:.1f} s, peak memory {r['peak_memory_mb']:.0f} MiB"
    )
