"""``ulm train`` as one library call: :func:`train`.

The command line and this function are the same thing: the CLI parses its options,
calls :func:`train` and prints the summary it returns.  Each keyword is the option of
the same name (``batch_size`` is ``--batch-size``), errors are the CLI's
(:mod:`ulmtools.errors`, each with its exit code), and progress goes to a
``progress(done, total, message)`` callback; per-epoch lines go to the ``ulmtools``
logger.

Under ``torchrun --nproc-per-node N`` (``RANK``/``WORLD_SIZE`` set, N > 1) the sparse
network trains with DistributedDataParallel over N processes
(:mod:`ulmtools.train.distributed`); process 0 writes the model store and returns
the summary, the others return None.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ulmtools.errors import OutputError, UsageError
from ulmtools.progress import ProgressCallback, no_progress

log = logging.getLogger(__name__)

ARCHITECTURES = ("sparse-deepstulm", "deepstulm", "mspcn", "mask-cnn")
DENSE = ("deepstulm", "mspcn")
#: The model store is rewritten at most this often during a run (and at its end);
#: the resume state is written after every epoch.
MODEL_WRITE_SECONDS = 60.0
SCHEDULE_NAMES = "auto, paper-2d, paper-3d, cpu-2d, cpu-3d, finetune"

PathLike = str | os.PathLike[str]


def train(
    train_store: PathLike,
    model_store: PathLike,
    *,
    arch: str = "sparse-deepstulm",
    also: Sequence[PathLike] = (),
    val: PathLike | None = None,
    schedule: str = "auto",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    channels: int | None = None,
    input_kernel: int | None = None,
    time_pool: str | Sequence[int] | None = None,
    deep_supervision: bool = False,
    pruning: bool = False,
    cascade: bool = False,
    mirror: str | Sequence[str] | None = None,
    init: PathLike | None = None,
    input_mask: PathLike | None = None,
    input_threshold: float | None = None,
    backend: str = "builtin",
    device: str = "auto",
    seed: int | None = None,
    resume: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any] | None:
    """Train a network on a store with ground truth; write the model store ``model_store``.

    ``arch`` is ``sparse-deepstulm`` (``train_store``: a sparse store), ``deepstulm``
    or ``mspcn`` (the dense 2D baselines) or ``mask-cnn`` (the learned mask of ulm
    sparsify), the last three on an image store.  Returns the summary ``ulm train
    --json`` prints (None in the processes of a torchrun launch other than process 0).

    ``init`` (a model store or ``shipped:2d|3d``) starts the sparse network from that
    model's weights instead of a random initialisation (fine-tuning, e.g. on a lab's
    own data or with noise added); its architecture is kept: width, input kernel and
    classifiers come from it (``channels`` and ``input_kernel`` may only repeat them),
    and a pruned model stays pruned.  ``channels`` defaults to 16, or ``init``'s.

    ``time_pool`` (``"4,4,2,32"`` or four integers) sets the network's time pooling at
    down 1, down 2, transition 1 and transition 2 (default the paper's 4, 4, 8, 8, or
    ``init``'s; pooling has no weights, so ``init``'s may be changed).

    ``mirror`` (``"x"``, ``"x,y"`` or a sequence of lateral axis names) mirrors each
    training movie at random along those axes, every epoch (data augmentation, for
    acquisitions symmetric about the probe's centre, as the presets are).
    """
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}", f"use one of {', '.join(ARCHITECTURES)}")
    progress = progress or no_progress
    train_store, model_store = Path(train_store), Path(model_store)
    also = [Path(p) for p in also or ()]
    val = Path(val) if val is not None else None
    input_mask = Path(input_mask) if input_mask is not None else None
    masked = {
        "--input-mask": input_mask is not None,
        "--input-threshold": input_threshold is not None,
    }
    # options of the sparse network only, refused by the image-store architectures
    sparse_only = {
        "--val": val is not None,
        "--also": bool(also),
        "--schedule": schedule != "auto",
        "--input-kernel": input_kernel is not None,
        "--time-pool": time_pool is not None,
        "--deep-supervision": deep_supervision,
        "--pruning": pruning,
        "--cascade": cascade,
        "--mirror": bool(mirror),
        "--resume": resume,
        "--backend": backend != "builtin",
        "--init": init is not None,
    }
    from ulmtools.train.config import time_pool_factors
    from ulmtools.train.data import mirror_names
    from ulmtools.train.distributed import torchrun_env

    launch = torchrun_env()
    if arch in DENSE:
        _refuse(
            {k: v for k, v in sparse_only.items() if k not in ("--also", "--val")},
            arch,
            "it takes --also, --val, --epochs, --batch-size, --lr, --channels, --input-mask, "
            "--input-threshold, --seed and --device",
        )
        _one_process(launch, arch)
        return _train_baseline(
            arch,
            train_store,
            model_store,
            also=also,
            val=val,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            channels=16 if channels is None else channels,
            seed=seed,
            device=device,
            input_mask=input_mask,
            input_threshold=input_threshold,
            force=force,
            progress=progress,
        )
    if any(masked.values()):
        flags = ", ".join(flag for flag, on in masked.items() if on)
        raise UsageError(
            f"{flags} apply to the dense baselines (--arch deepstulm or mspcn)",
            "the sparse model's input is masked by ulm sparsify",
        )
    if arch == "mask-cnn":
        _refuse(
            sparse_only,
            "mask-cnn",
            "it takes --epochs, --batch-size, --lr, --channels, --seed and --device",
        )
        _one_process(launch, arch)
        return _train_mask_cnn(
            train_store, model_store, epochs, batch_size, lr,
            16 if channels is None else channels, seed, device, force, progress,
        )  # fmt: skip

    world = None
    if launch is not None:
        from ulmtools.train import distributed

        world = distributed.start(launch, distributed.process_device(device, launch))
    try:
        return _train_sparse(
            train_store,
            model_store,
            also=also,
            val=val,
            schedule=schedule,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            channels=channels,
            input_kernel=input_kernel,
            time_pool=time_pool_factors(time_pool),
            deep_supervision=deep_supervision,
            pruning=pruning,
            cascade=cascade,
            mirror=mirror_names(mirror),
            init=init,
            backend=backend,
            device=device,
            seed=seed,
            resume=resume,
            force=force,
            progress=progress,
            world=world,
        )
    finally:
        if world is not None:
            world.close()


def _one_process(launch: Any, arch: str) -> None:
    if launch is not None:
        raise UsageError(
            f"--arch {arch} trains in one process; under torchrun only --arch "
            "sparse-deepstulm runs (on several processes)",
            "start it without torchrun",
        )


def _train_sparse(
    train_store: Path,
    model_store: Path,
    *,
    also: list[Path],
    val: Path | None,
    schedule: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    channels: int | None,
    input_kernel: int | None,
    time_pool: tuple[int, ...] | None,
    deep_supervision: bool,
    pruning: bool,
    cascade: bool,
    mirror: tuple[str, ...],
    init: PathLike | None,
    backend: str,
    device: str,
    seed: int | None,
    resume: bool,
    force: bool,
    progress: ProgressCallback,
    world: Any,
) -> dict[str, Any] | None:
    """Sparse Deep-stULM on sparse stores, in one process or (``world``) several."""
    main = world is None or world.is_main
    # before training, every process checks; under torchrun they agree on the outcome
    with world.together() if world is not None else contextlib.nullcontext():
        import numpy as np

        from ulmtools import sparse as sp
        from ulmtools.device import resolve_device
        from ulmtools.store import check_output, lineage, provenance_entry
        from ulmtools.train.checkpoint import load_resume, resume_path
        from ulmtools.train.config import TrainConfig, resolve_schedule
        from ulmtools.train.data import MovieSet, SparseMovies, mirror_axes

        data: Any = SparseMovies(train_store, need_truth=True)
        if also:
            data = MovieSet([data, *(SparseMovies(p, need_truth=True) for p in also)])
        val_data = (
            SparseMovies(val, need_truth=True, purpose="validate on") if val is not None else None
        )
        if val_data is not None and val_data.dimension != data.dimension:
            raise UsageError(
                f"the validation store is {val_data.space_ndim}D+t but the training store "
                f"is {data.space_ndim}D+t"
            )
        if val_data is not None:
            val_data.use_channels(data.channels, what="the training store")
        mirror_axes(mirror, data.grid)  # refuse a mirror the data do not allow
        sp.get_backend(backend)  # refuse an unavailable backend before any work
        torch_device = world.device if world is not None else resolve_device(device)
        init_model = _init_model(init, data.dimension) if init is not None else None
        inputs = [train_store, *also] + ([val] if val is not None else [])
        if init_model is not None:
            inputs.append(init_model.path)
            kw = init_model.kwargs
            if int(kw.get("in_channels", 2)) != data.in_channels:
                raise UsageError(
                    f"--init {init} takes {kw.get('in_channels', 2)} input features per site "
                    f"but {data.store.path} has {data.in_channels} "
                    f"({', '.join(data.channels)})",
                    "train on stores sparsified as the model's were (ulm sparsify --features), "
                    "or from scratch without --init",
                )
            channels, input_kernel, deep_supervision, pruning = _init_architecture(
                kw, channels, input_kernel, deep_supervision, pruning, cascade
            )
            # pooling has no weights: a new run keeps the model's unless told
            init_pool = tuple(int(p) for p in kw.get("time_pool", (4, 4, 8, 8)))

        state = None
        if resume:
            # the model store and its resume state are rewritten: neither may hold an input
            check_output(model_store, force=True, inputs=inputs)
            check_output(resume_path(model_store), force=True, inputs=inputs)
            state, config, stored = load_resume(model_store, torch_device)
            _check_same(
                config, stored, data, schedule, epochs, batch_size, lr, channels,
                input_kernel, time_pool, deep_supervision, pruning, cascade, mirror, backend,
                seed,
            )  # fmt: skip
            if init_model is not None and (stored.get("init") or {}).get("id") != init_model.id:
                raise UsageError(
                    "--resume needs the --init model of the interrupted run",
                    f"it started from {(stored.get('init') or {}).get('path', 'random weights')}",
                )
            if main:
                log.info(
                    "resuming %s after epoch %d of %d",
                    model_store,
                    state.epoch,
                    config.total_epochs,
                )
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
            name = schedule
            if schedule == "auto":
                name = "finetune" if init_model is not None else f"cpu-{data.space_ndim}d"
            sched = resolve_schedule(name, epochs=epochs, lr=lr, batch_size=batch_size)
            if seed is None:
                seed = int(np.random.SeedSequence().entropy % (2**31))
            config = TrainConfig(
                arch="sparse-deepstulm",
                schedule=sched,
                channels=16 if channels is None else channels,
                input_kernel=5 if input_kernel is None else input_kernel,
                time_pool=time_pool or (init_pool if init_model is not None else (4, 4, 8, 8)),
                deep_supervision=deep_supervision,
                pruning=pruning,
                cascade=cascade,
                mirror=mirror,
                backend=backend,
                seed=seed,
                features=tuple(data.channels),
            )
    if world is not None and not resume:
        config = replace(config, seed=world.first(config.seed))  # one drawn seed for all

    from ulmtools.train.checkpoint import save_checkpoint
    from ulmtools.train.loop import fit, memory_kind, new_state, peak_memory_mb

    if state is None:
        state = new_state(config, data.dimension, torch_device)
        if init_model is not None:
            _load_init(state, init_model)
    training: dict[str, Any] = {
        "config": config.to_dict(),
        "model": {},
        "train": data.store.describe(),
        "also": [st.describe() for st in data.stores[1:]] if also else [],
        "val": val_data.store.describe() if val_data is not None else None,
        "init": init_model.describe() if init_model is not None else None,
        "device": str(torch_device),
        "dimension": data.dimension,
        "grid": data.grid.to_attrs(),
        "fine_grid": data.fine_grid.to_attrs(),
    }
    parameters: dict[str, Any] = {
        "config": config.to_dict(),
        "device": str(torch_device),
        "resume": resume,
        "init": str(init) if init is not None else None,
    }
    if world is not None:
        training["processes"] = world.size
        parameters["processes"] = world.size
    stores = [*getattr(data, "stores", [data.store])]
    from ulmtools.store import open_store

    # the --init model's own record (its data and training) comes first in the lineage
    ancestry = [open_store(init_model.path, "model")] if init_model is not None else []
    entry = provenance_entry(
        "train",
        parameters,
        stores + ([val_data.store] if val_data is not None else []) + ancestry,
    )
    prov = lineage(ancestry + stores, entry)
    if resume:
        from ulmtools.models.store import info as model_info

        # keep the interrupted run's own record: its command line and inputs
        prov = [*model_info(resume_path(model_store)).provenance, entry]
    total = config.total_epochs
    write_force = [force or resume]
    last_model_write = [time.perf_counter()]
    start = time.perf_counter()
    done_at_start = state.epoch

    def on_epoch(st: Any, record: dict[str, Any]) -> None:
        training["model"] = st.model.architecture_kwargs
        complete = st.epoch >= total
        now = time.perf_counter()
        write_model = now - last_model_write[0] >= MODEL_WRITE_SECONDS
        # process 0 writes; the others wait for it (and stop with it if it fails)
        with world.together() if world is not None else contextlib.nullcontext():
            if main:
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
        if not main:
            return
        elapsed = time.perf_counter() - start
        per = elapsed / max(st.epoch - done_at_start, 1)
        eta = per * (total - st.epoch)
        val_text = f", val Dice {record['val_dice']:.4f}" if record["val_dice"] is not None else ""
        loss = record["loss"]
        log.info(
            "epoch %d/%d: loss %s%s, %.1f s, peak %.0f MiB, ETA %s",
            st.epoch,
            total,
            f"{loss:.4f}" if loss is not None else "n/a",
            val_text,
            record["seconds"],
            record["peak_memory_mb"],
            _duration(eta),
        )

    def per_step(done: int, steps: int, message: str = "") -> None:
        progress(done, steps, f"epoch {state.epoch + 1}/{total} {message}")

    state = fit(
        config,
        data,
        val=val_data,
        device=torch_device,
        state=state,
        on_epoch=on_epoch,
        progress=per_step if main else no_progress,
        world=world,
    )
    last = state.history[-1] if state.history else {}
    vals = [h["val_dice"] for h in state.history if h.get("val_dice") is not None]
    peak = peak_memory_mb(torch_device)
    if world is not None:
        peak = world.max(peak)
    # a resumed run's peak may have been set before the interruption, in another process
    kind = memory_kind(torch_device)
    earlier = [h["peak_memory_mb"] for h in state.history if h.get("memory") == kind]
    peak = max([peak, *earlier])
    if not main:
        return None
    result: dict[str, Any] = {
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
        "peak_memory_mb": round(peak, 1),
        "device": str(torch_device),
        "seed": config.seed,
    }
    if world is not None:
        result["processes"] = world.size
    return result


def _train_mask_cnn(
    train_store: Path,
    model_store: Path,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    channels: int,
    seed: int | None,
    device: str,
    force: bool,
    progress: ProgressCallback,
) -> dict[str, Any]:
    """``--arch mask-cnn``: train the learned mask of ``ulm sparsify --method mask``."""
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
    model, history = train_mask_cnn(src, config, device=torch_device, progress=progress)
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
    return result


def _train_baseline(
    arch: str,
    train_store: Path,
    model_store: Path,
    *,
    also: list[Path],
    val: Path | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    channels: int,
    seed: int | None,
    device: str,
    input_mask: Path | None,
    input_threshold: float | None,
    force: bool,
    progress: ProgressCallback,
) -> dict[str, Any]:
    """``--arch deepstulm|mspcn``: train a dense baseline on image stores.

    ``also``'s movies join ``train_store``'s; ``val`` is validated after every epoch.
    ``input_threshold`` masks every store's input; ``input_mask`` (the sites of one
    sparse store of ``train_store``'s movies) takes neither ``also`` nor ``val``.
    """
    import numpy as np

    from ulmtools.device import resolve_device
    from ulmtools.models.store import save_model
    from ulmtools.store import check_output, lineage, provenance_entry
    from ulmtools.train.baselines import (
        BaselineTrainConfig,
        ImageMovies,
        ImageMovieSet,
        train_baseline,
    )
    from ulmtools.train.config import check_channels, check_epochs, check_lr

    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if epochs is not None:
        check_epochs(epochs)
    if lr is not None:
        check_lr(lr)
    check_channels(channels)
    if input_mask is not None and input_threshold is not None:
        raise UsageError("give --input-mask or --input-threshold, not both")
    if input_mask is not None and (also or val is not None):
        given = (("--also", bool(also)), ("--val", val is not None))
        flags = " and ".join(flag for flag, on in given if on)
        raise UsageError(
            f"--input-mask masks TRAIN's movies only (one sparse store of them), so it does "
            f"not combine with {flags}",
            "mask every store with --input-threshold instead, or train on TRAIN alone",
        )

    def movies(path: Path, mask: Path | None = None) -> ImageMovies:
        return ImageMovies(
            path, need_truth=True, input_threshold=input_threshold, input_mask=mask, arch=arch
        )

    first = movies(train_store, input_mask)
    data: ImageMovies | ImageMovieSet = first
    if also:
        data = ImageMovieSet([first, *(movies(p) for p in also)])
    val_data = movies(val) if val is not None else None
    inputs = [train_store, *also] + ([val] if val is not None else [])
    inputs += [input_mask] if input_mask is not None else []
    check_output(model_store, force=force, inputs=inputs)
    torch_device = resolve_device(device)
    config = BaselineTrainConfig(arch=arch, channels=channels)
    overrides = {"epochs": epochs, "batch": batch_size, "lr": lr}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config = replace(
        config, seed=int(np.random.SeedSequence().entropy % (2**31)) if seed is None else seed
    )

    def on_epoch(record: dict[str, Any]) -> None:
        val_text = f", val Dice {record['val_dice']:.4f}" if record["val_dice"] is not None else ""
        log.info(
            "epoch %d/%d: loss %.4f%s, %.1f s, peak %.0f MiB",
            record["epoch"],
            config.epochs,
            record["loss"],
            val_text,
            record["seconds"],
            record["peak_memory_mb"],
        )

    start = time.perf_counter()
    model, history = train_baseline(
        data, config, val=val_data, device=torch_device, progress=progress, on_epoch=on_epoch
    )
    stores = [*getattr(data, "stores", [data.store])]
    sources = stores + ([first.mask.store] if first.mask is not None else [])
    entry = provenance_entry(
        "train",
        {
            "arch": arch,
            "config": config.to_dict(),
            "input_masking": data.masking,
            "device": str(torch_device),
        },
        sources + ([val_data.store] if val_data is not None else []),
    )
    last = history[-1] if history else {}
    vals = [h["val_dice"] for h in history if h.get("val_dice") is not None]
    result: dict[str, Any] = {
        "output": str(model_store),
        "architecture": arch,
        "parameters": model.num_parameters(),
        "dimension": 3,
        "epochs": config.epochs,
        "movies": len(data),
        "input_masking": data.masking,
        "loss": last.get("loss"),
        "dice": last.get("dice"),
        "val_dice": last.get("val_dice"),
        "best_val_dice": max(vals) if vals else None,
        "seconds": round(time.perf_counter() - start, 3),
        "peak_memory_mb": round(max(h["peak_memory_mb"] for h in history), 1),
        "device": str(torch_device),
        "seed": config.seed,
    }
    save_model(
        model_store,
        model,
        training={
            "config": config.to_dict(),
            "complete": True,
            "device": str(torch_device),
            "train": data.store.describe(),
            "also": [st.describe() for st in stores[1:]],
            "val": val_data.store.describe() if val_data is not None else None,
            "movies": len(data),
            "input_masking": data.masking,
            "grid": data.grid.to_attrs(),
            "fine_grid": data.fine_grid.to_attrs(),
        },
        history=history,
        provenance=lineage(sources, entry),
        force=force,
        inputs=inputs,
    )
    return result


def _check_same(
    config: Any,
    stored: dict[str, Any],
    data: Any,
    schedule: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    channels: int | None,
    input_kernel: int | None,
    time_pool: tuple[int, ...] | None,
    deep_supervision: bool,
    pruning: bool,
    cascade: bool,
    mirror: tuple[str, ...],
    backend: str,
    seed: int | None,
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
    if channels is not None and channels != config.channels:
        clashes.append(f"--channels {channels} (stored {config.channels})")
    if input_kernel is not None and input_kernel != config.input_kernel:
        clashes.append(f"--input-kernel {input_kernel} (stored {config.input_kernel})")
    if time_pool is not None and tuple(time_pool) != tuple(config.time_pool):
        have = ",".join(map(str, config.time_pool))
        clashes.append(f"--time-pool {','.join(map(str, time_pool))} (stored {have})")
    for flag, given, have in (
        ("--deep-supervision", deep_supervision, config.deep_supervision),
        ("--pruning", pruning, config.pruning),
        ("--cascade", cascade, config.cascade),
    ):
        if given and not have:
            clashes.append(f"{flag} (not in the stored run)")
    if mirror and mirror != tuple(config.mirror):
        stored_mirror = ",".join(config.mirror) or "none"
        clashes.append(f"--mirror {','.join(mirror)} (stored {stored_mirror})")
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


def _refuse(given: dict[str, bool], arch: str, takes: str) -> None:
    """A usage error naming every option given that ``--arch ARCH`` does not take."""
    unused = [flag for flag, on in given.items() if on]
    if unused:
        raise UsageError(
            f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to "
            f"--arch {arch}",
            takes,
        )


def _init_model(init: PathLike, dimension: int) -> Any:
    """The metadata of the --init model, checked to be a Sparse Deep-stULM of ``dimension``."""
    from ulmtools.infer.weights import resolve
    from ulmtools.models.deepstulm import ARCHITECTURE
    from ulmtools.models.store import info

    meta = info(resolve(init))
    if meta.name != ARCHITECTURE:
        raise UsageError(
            f"--init {init} holds a {meta.name!r} model; ulm train starts only a "
            f"{ARCHITECTURE!r} model from trained weights",
            "give a model made by 'ulm train' (or shipped:2d|3d)",
        )
    have = meta.kwargs.get("dimension")
    if have != dimension:
        raise UsageError(
            f"--init {init} is a {int(have or 1) - 1}D+t model but the training data are "
            f"{dimension - 1}D+t",
            "start from a model of the data's dimension",
        )
    return meta


def _init_architecture(
    kw: dict[str, Any],
    channels: int | None,
    input_kernel: int | None,
    deep_supervision: bool,
    pruning: bool,
    cascade: bool,
) -> tuple[int, int, bool, bool]:
    """Width, input kernel, classifiers and pruning of a run started from ``kw``'s model."""
    clashes = []
    if channels is not None and channels != kw.get("channels"):
        clashes.append(f"--channels {channels} (the model's {kw.get('channels')})")
    if input_kernel is not None and input_kernel != kw.get("input_kernel", 5):
        clashes.append(f"--input-kernel {input_kernel} (the model's {kw.get('input_kernel', 5)})")
    classifiers = bool(kw.get("deep_supervision"))
    if (deep_supervision or pruning or cascade) and not classifiers:
        clashes.append(
            "--deep-supervision/--pruning/--cascade (the model has no intermediate classifiers)"
        )
    if clashes:
        raise UsageError(
            "--init keeps the model's architecture; these options contradict it: "
            + "; ".join(clashes),
            "drop them, or train from scratch without --init",
        )
    pruning = pruning or bool(kw.get("pruning"))
    # a model with classifiers keeps training them (as deep supervision unless pruned)
    deep_supervision = deep_supervision or (classifiers and not pruning and not cascade)
    return int(kw["channels"]), int(kw.get("input_kernel", 5)), deep_supervision, pruning


def _load_init(state: Any, meta: Any) -> None:
    """Put the --init model's weights into the new network (same architecture)."""
    from ulmtools.models.store import load_state

    weights, _ = load_state(meta.path, device="cpu")
    try:
        state.model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise UsageError(f"--init {meta.path}: its weights do not fit ({detail})") from None
    # the optimizer holds references to the parameters, which load_state_dict filled in place
