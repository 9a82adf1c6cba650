"""``ulm train``: train Sparse Deep-stULM on a sparse store with truth (or a baseline or
the mask CNN on an image store)."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ulmtools.cli.context import emit, log, progress, setup
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
from ulmtools.errors import OutputError, UsageError


class Arch(StrEnum):
    sparse_deepstulm = "sparse-deepstulm"
    deepstulm = "deepstulm"
    mspcn = "mspcn"
    mask_cnn = "mask-cnn"


#: The model store is rewritten at most this often during a run (and at its end);
#: the resume state is written after every epoch.
MODEL_WRITE_SECONDS = 60.0
SCHEDULE_NAMES = "auto, paper-2d, paper-3d, cpu-2d, cpu-3d"


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
            help="Another training sparse store (repeatable): its movies join TRAIN's, e.g. "
            "other vessel networks, concentrations or noise levels (same dimension and grid).",
            show_default=False,
        ),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option(
            "--val",
            help="Validation sparse store with truth: its angiogram Dice is computed every epoch.",
            show_default=False,
        ),
    ] = None,
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule",
            help=f"Named schedule ({SCHEDULE_NAMES}): the paper's 2D/3D schedules or small CPU "
            "ones; auto picks cpu-2d or cpu-3d by the data's dimension.",
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
            "--batch-size", help="Movies per step (all epochs).", show_default="schedule's"
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
        int,
        typer.Option(
            "--channels", help="Width of the first level (16 in the paper; 32 and 64 follow)."
        ),
    ] = 16,
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
    """
    setup(verbose=verbose, quiet=quiet)
    import numpy as np

    masked = {
        "--input-mask": input_mask is not None,
        "--input-threshold": input_threshold is not None,
    }
    # options of the sparse network only, refused by the image-store architectures
    sparse_only = {
        "--val": val is not None,
        "--also": bool(also),
        "--schedule": schedule != "auto",
        "--deep-supervision": deep_supervision,
        "--pruning": pruning,
        "--cascade": cascade,
        "--resume": resume,
        "--backend": backend is not Backend.builtin,
    }
    if arch in (Arch.deepstulm, Arch.mspcn):
        from ulmtools.cli.baselines import train_baseline

        _refuse(
            sparse_only,
            arch.value,
            "it takes --epochs, --batch-size, --lr, --channels, --input-mask, "
            "--input-threshold, --seed and --device",
        )
        train_baseline(
            arch.value,
            train_store,
            model_store,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            channels=channels,
            seed=seed,
            device=device,
            input_mask=input_mask,
            input_threshold=input_threshold,
            force=force,
            as_json=json,
        )
        return
    if any(masked.values()):
        flags = ", ".join(flag for flag, on in masked.items() if on)
        raise UsageError(
            f"{flags} apply to the dense baselines (--arch deepstulm or mspcn)",
            "the sparse model's input is masked by ulm sparsify",
        )

    if arch is Arch.mask_cnn:
        _refuse(
            sparse_only,
            "mask-cnn",
            "it takes --epochs, --batch-size, --lr, --channels, --seed and --device",
        )
        _train_mask_cnn(
            train_store, model_store, epochs, batch_size, lr, channels, seed, device, force, json
        )
        return

    from ulmtools import sparse as sp
    from ulmtools.device import resolve_device
    from ulmtools.store import check_output, lineage, provenance_entry
    from ulmtools.train.checkpoint import load_resume, resume_path, save_checkpoint
    from ulmtools.train.config import TrainConfig, resolve_schedule
    from ulmtools.train.data import MovieSet, SparseMovies
    from ulmtools.train.loop import fit, new_state, peak_memory_mb

    more = list(also or [])
    data = SparseMovies(train_store, need_truth=True)
    if more:
        data = MovieSet([data, *(SparseMovies(p, need_truth=True) for p in more)])
    val_data = SparseMovies(val, need_truth=True) if val is not None else None
    if val_data is not None and val_data.dimension != data.dimension:
        raise UsageError(
            f"the validation store is {val_data.space_ndim}D+t but the training store "
            f"is {data.space_ndim}D+t"
        )
    sp.get_backend(backend.value)  # refuse an unavailable backend before any work
    torch_device = resolve_device(device)
    inputs = [train_store, *more] + ([val] if val is not None else [])

    state = None
    if resume:
        # the model store and its resume state are rewritten: neither may hold an input
        check_output(model_store, force=True, inputs=inputs)
        check_output(resume_path(model_store), force=True, inputs=inputs)
        state, config, stored = load_resume(model_store, torch_device)
        _check_same(
            config,
            stored,
            data,
            schedule,
            epochs,
            batch_size,
            lr,
            channels,
            deep_supervision,
            pruning,
            cascade,
            backend.value,
            seed,
        )
        log.info("resuming %s after epoch %d of %d", model_store, state.epoch, config.total_epochs)
        if stored.get("val") and val is None:
            log.warning(
                "the interrupted run validated on %s; give --val to keep doing so",
                stored["val"].get("path"),
            )
    else:
        if resume_path(model_store).exists() and not force:
            raise OutputError(
                f"an interrupted run of {model_store} can be resumed "
                f"({resume_path(model_store)} exists)",
                "use --resume to continue it, or --force to start over",
            )
        check_output(model_store, force=force, inputs=inputs)
        check_output(resume_path(model_store), force=True, inputs=inputs)
        name = schedule if schedule != "auto" else f"cpu-{data.space_ndim}d"
        sched = resolve_schedule(name, epochs=epochs, lr=lr, batch_size=batch_size)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**31))
        config = TrainConfig(
            arch=arch.value,
            schedule=sched,
            channels=channels,
            deep_supervision=deep_supervision,
            pruning=pruning,
            cascade=cascade,
            backend=backend.value,
            seed=seed,
        )

    if state is None:
        state = new_state(config, data.dimension, torch_device)
    training: dict[str, Any] = {
        "config": config.to_dict(),
        "model": {},
        "train": data.store.describe(),
        "also": [st.describe() for st in data.stores[1:]] if more else [],
        "val": val_data.store.describe() if val_data is not None else None,
        "device": str(torch_device),
        "dimension": data.dimension,
        "grid": data.grid.to_attrs(),
        "fine_grid": data.fine_grid.to_attrs(),
    }
    entry = provenance_entry(
        "train",
        {"config": config.to_dict(), "device": str(torch_device), "resume": resume},
        [*getattr(data, "stores", [data.store])]
        + ([val_data.store] if val_data is not None else []),
    )
    prov = lineage([*getattr(data, "stores", [data.store])], entry)
    if resume:
        from ulmtools.models.store import info as model_info

        # keep the interrupted run's own record: its command line and inputs
        prov = [*model_info(resume_path(model_store)).provenance, entry]
    total = config.total_epochs
    write_force = [force or resume]
    last_model_write = [time.perf_counter()]
    start = time.perf_counter()
    done_at_start = state.epoch

    def on_epoch(st, record: dict[str, Any]) -> None:
        training["model"] = st.model.architecture_kwargs
        complete = st.epoch >= total
        now = time.perf_counter()
        write_model = now - last_model_write[0] >= MODEL_WRITE_SECONDS
        save_checkpoint(
            model_store,
            st,
            config,
            training=training,
            provenance=prov,
            complete=complete,
            force=write_force[0],
            write_model=write_model,
            inputs=inputs,
        )
        if write_model or complete:
            write_force[0] = True
            last_model_write[0] = now
        elapsed = time.perf_counter() - start
        per = elapsed / max(st.epoch - done_at_start, 1)
        eta = per * (total - st.epoch)
        val_text = f", val Dice {record['val_dice']:.4f}" if record["val_dice"] is not None else ""
        loss = record["loss"]
        log.info(
            "epoch %d/%d: loss %s%s, %.1f s, peak %.0f MB, ETA %s",
            st.epoch,
            total,
            f"{loss:.4f}" if loss is not None else "n/a",
            val_text,
            record["seconds"],
            record["peak_memory_mb"],
            _duration(eta),
        )

    with progress("train") as report:

        def per_step(done: int, steps: int, message: str = "") -> None:
            report(done, steps, f"epoch {state.epoch + 1}/{total} {message}")

        state = fit(
            config,
            data,
            val=val_data,
            device=torch_device,
            state=state,
            on_epoch=on_epoch,
            progress=per_step,
        )
    last = state.history[-1] if state.history else {}
    vals = [h["val_dice"] for h in state.history if h.get("val_dice") is not None]
    result = {
        "output": str(model_store),
        "architecture": config.arch,
        "parameters": state.model.num_parameters(),
        "dimension": data.dimension,
        "epochs": state.epoch,
        "schedule": config.schedule.name,
        "loss": last.get("loss"),
        "val_dice": last.get("val_dice"),
        "best_val_dice": max(vals) if vals else None,
        "seconds": round(sum(h["seconds"] for h in state.history), 3),
        "peak_memory_mb": round(peak_memory_mb(torch_device), 1),
        "device": str(torch_device),
        "seed": config.seed,
    }
    emit(result, as_json=json, text=None if json else _text(result))


def _train_mask_cnn(
    train_store, model_store, epochs, batch_size, lr, channels, seed, device, force, as_json
) -> None:
    """``--arch mask-cnn``: train the learned mask of ``ulm sparsify --method mask``."""
    from dataclasses import replace

    import numpy as np

    from ulmtools.device import resolve_device
    from ulmtools.models.mask_cnn import MaskTrainConfig, train_mask_cnn
    from ulmtools.models.store import save_model
    from ulmtools.store import check_output, lineage, open_store, provenance_entry
    from ulmtools.train.config import check_channels, check_epochs, check_lr

    overrides = {"epochs": epochs, "batch": batch_size, "lr": lr, "channels": channels}
    for name, value in overrides.items():
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise UsageError(f"--{name.replace('batch', 'batch-size')} must be positive")
    if epochs is not None:
        check_epochs(epochs)
    if lr is not None:
        check_lr(lr)
    check_channels(channels, even=False)
    src = open_store(train_store, "image")
    check_output(model_store, force=force, inputs=[train_store])
    torch_device = resolve_device(device)
    config = MaskTrainConfig()
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config = replace(
        config, seed=int(np.random.SeedSequence().entropy % (2**31)) if seed is None else seed
    )
    start = time.perf_counter()
    with progress("train mask-cnn") as report:
        model, history = train_mask_cnn(src, config, device=torch_device, progress=report)
    entry = provenance_entry(
        "train",
        {"arch": "mask-cnn", "config": config.to_dict(), "device": str(torch_device)},
        [src],
    )
    # the summary is made before the model is written: a failure in it leaves no model
    last = history[-1] if history else {}
    result = {
        "output": str(model_store),
        "architecture": "mask-cnn",
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": config.epochs,
        "loss": last.get("loss"),
        "dice": last.get("dice"),
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(torch_device),
        "seed": config.seed,
    }
    text = (
        f"{model_store}: mask-cnn ({result['parameters']} parameters), {_epochs(config.epochs)} "
        f"on {torch_device}; final loss {_num(result['loss'])}, "
        f"training Dice {_num(result['dice'])}"
    )
    save_model(
        model_store,
        model,
        training={
            "config": config.to_dict(),
            "complete": True,
            "device": str(torch_device),
            "train": src.describe(),
        },
        history=history,
        provenance=lineage([src], entry),
        force=force,
        inputs=[train_store],
    )
    emit(result, as_json=as_json, text=None if as_json else text)


def _num(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"


def _check_same(
    config,
    stored,
    data,
    schedule,
    epochs,
    batch_size,
    lr,
    channels,
    deep_supervision,
    pruning,
    cascade,
    backend,
    seed,
) -> None:
    """With --resume the stored configuration rules; refuse flags that contradict it."""
    if stored.get("train", {}).get("id") not in (None, data.store.id):
        raise UsageError(
            "--resume needs the same training store as the interrupted run",
            f"it trained on {stored['train'].get('path')}",
        )
    s = config.schedule
    clashes = []
    if schedule not in ("auto", s.name):
        clashes.append(f"--schedule {schedule} (stored {s.name})")
    if epochs is not None and epochs != s.epochs:
        clashes.append(f"--epochs {epochs} (stored {s.epochs})")
    if batch_size is not None and s.batch_size != ((0, batch_size),):
        clashes.append(f"--batch-size {batch_size}")
    if lr is not None and abs(lr - s.lr[0][1]) > 1e-12 * max(lr, 1):
        clashes.append(f"--lr {lr} (stored {s.lr[0][1]})")
    if channels != 16 and channels != config.channels:
        clashes.append(f"--channels {channels} (stored {config.channels})")
    for flag, given, have in (
        ("--deep-supervision", deep_supervision, config.deep_supervision),
        ("--pruning", pruning, config.pruning),
        ("--cascade", cascade, config.cascade),
    ):
        if given and not have:
            clashes.append(f"{flag} (not in the stored run)")
    if backend != "builtin" and backend != config.backend:
        clashes.append(f"--backend {backend} (stored {config.backend})")
    if seed is not None and seed != config.seed:
        clashes.append(f"--seed {seed} (stored {config.seed})")
    if clashes:
        raise UsageError(
            "--resume continues with the stored configuration; these options differ: "
            + "; ".join(clashes),
            "drop them, or start a new run",
        )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _text(r: dict[str, Any]) -> str:
    val = f", validation Dice {r['val_dice']:.4f}" if r["val_dice"] is not None else ""
    loss = f"{r['loss']:.4f}" if r["loss"] is not None else "n/a"
    return (
        f"{r['output']}: {r['architecture']} ({r['parameters']} parameters, "
        f"{r['dimension'] - 1}D+t), {_epochs(r['epochs'])} of {r['schedule']} on {r['device']}\n"
        f"final loss {loss}{val}; {r['seconds']:.1f} s, peak memory {r['peak_memory_mb']:.0f} MB"
    )


def _refuse(given: dict[str, bool], arch: str, takes: str) -> None:
    """A usage error naming every option given that ``--arch ARCH`` does not take."""
    unused = [flag for flag, on in given.items() if on]
    if unused:
        raise UsageError(
            f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to "
            f"--arch {arch}",
            takes,
        )
