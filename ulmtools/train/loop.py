"""The training loop: Adam, soft Dice, per-epoch validation, checkpoints and resume.

Determinism: the network is initialised from ``torch.manual_seed(seed)``; the
movie order of epoch ``e`` comes from ``numpy.random.default_rng([seed, e])`` (and
movie ``m``'s mirroring, with ``--mirror``, from ``[seed, e, m]``);
the built-in sparse engine is deterministic.  A checkpoint holds the weights,
the optimizer state and the history, so a resumed run continues exactly where
an uninterrupted one would be.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ulmtools import sparse as sp
from ulmtools.errors import InputError
from ulmtools.models.deepstulm import FACTOR, HR_LEVELS, DeepStulmOutput, Guide, SparseDeepStulm
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.train.config import TrainConfig
from ulmtools.train.data import Mirrored, SparseMovies, mirror_axes
from ulmtools.train.loss import lookup, pooled_targets, sparse_dice_loss

if TYPE_CHECKING:
    from ulmtools.train.distributed import World


class Diverged(InputError):
    """A non-finite loss or gradient: the step is not taken, so the weights stay finite."""


@dataclass
class TrainState:
    """Everything a run needs to continue: model, optimizer, finished epochs, history."""

    model: SparseDeepStulm
    optimizer: torch.optim.Optimizer
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)


def new_state(config: TrainConfig, dimension: int, device: torch.device | str) -> TrainState:
    torch.manual_seed(config.seed)
    model = SparseDeepStulm(**config.model_kwargs(dimension)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.phase(0)["lr"])
    return TrainState(model, opt)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU, else the process's peak resident set size, in MiB
    (2**20 bytes; the history's key ``peak_memory_mb`` keeps its first name)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def memory_kind(device: torch.device) -> str:
    """What :func:`peak_memory_mb` measures on ``device`` (the history's ``memory`` key)."""
    return "cuda_max_allocated" if device.type == "cuda" else "peak_rss"


def level_strides(levels: int) -> list[int]:
    """Spatial strides of the intermediate classifiers, coarse to fine: 8, 4, 2."""
    return [FACTOR >> i for i in range(levels)]


def loss_terms(
    model: torch.nn.Module,
    x: sp.SparseTensor,
    target: torch.Tensor,
    pooled: dict[int, torch.Tensor],
    config: TrainConfig,
    levels: int | None,
    guide: Guide | None,
) -> tuple[list[tuple[sp.SparseTensor, torch.Tensor]], bool, DeepStulmOutput]:
    """Run the network on ``x``: the (logits, target) pair of every Dice loss term (the
    classifiers', coarse to fine, then the final map's), whether the last is the final
    map, and the network's output."""
    out = model(x, levels=levels, guide=guide)
    terms = []
    if config.classifiers:
        for logits in out.levels:
            terms.append((logits, pooled[logits.tensor_stride[1]]))
    if out.final is not None:
        terms.append((out.final, target))
    return terms, out.final is not None, out


def batch_targets(
    data: SparseMovies, movies: list[int], dilation: int, device: torch.device
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The movies' fine-grid targets (B, *fine) and their max-pools per classifier stride."""
    target = torch.from_numpy(data.targets(movies, dilation)).to(device)
    return target, pooled_targets(target, level_strides(HR_LEVELS))


def guide_from(pooled: dict[int, torch.Tensor]) -> Guide:
    """The training-time pruning guide: is there truth in each site's cell."""

    def guide(coords: torch.Tensor, stride: int) -> torch.Tensor:
        return lookup(pooled[stride], coords, stride)

    return guide


def take_step(state: TrainState, loss: torch.Tensor) -> None:
    """Backward and one Adam step, refusing a non-finite loss or gradient first."""
    if not torch.isfinite(loss):
        raise Diverged(f"the loss is {float(loss.detach())}")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in state.model.parameters() if p.grad is not None and p.grad.numel()]
    if grads and not torch.isfinite(torch.stack([g.abs().max() for g in grads]).max()):
        raise Diverged("a gradient is not finite")
    state.optimizer.step()


def train_step(
    state: TrainState,
    data: SparseMovies,
    movies: list[int],
    config: TrainConfig,
    phase: dict[str, Any],
    device: torch.device,
) -> dict[str, float] | None:
    """One optimizer step on ``movies``; None when the batch has no active site."""
    model = state.model
    inputs = [data.movie(m) for m in movies]
    if sum(len(c) for c, _ in inputs) == 0:
        return None
    target, pooled = batch_targets(data, movies, phase["dilation"], device)
    x = model.make_input([c for c, _ in inputs], [f for _, f in inputs], device=device,
                         backend=config.backend)  # fmt: skip
    model.train()
    terms, has_final, out = loss_terms(
        model, x, target, pooled, config, phase["levels"], guide_from(pooled)
    )
    losses = [sparse_dice_loss(logits, t, config.dice_smooth) for logits, t in terms]
    loss = torch.stack(losses).sum()
    take_step(state, loss)
    return {
        "loss": float(loss.detach()),
        "final": float(losses[-1].detach()) if has_final else float("nan"),
        "sites": float(sum(out.sites)),
    }


def run_epoch(
    state: TrainState,
    data: SparseMovies,
    config: TrainConfig,
    device: torch.device,
    *,
    val: SparseMovies | None = None,
    progress: ProgressCallback = no_progress,
    world: World | None = None,
) -> dict[str, Any]:
    """Train one epoch (epoch index ``state.epoch``), validate, return its history record.

    With ``world`` (several processes under torchrun) every process takes its share of
    each batch and the step's loss, gradients and batch statistics are those of the
    whole batch (:mod:`ulmtools.train.distributed`)."""
    epoch = state.epoch
    phase = config.phase(epoch)
    for g in state.optimizer.param_groups:
        g["lr"] = phase["lr"]
    order = np.random.default_rng([config.seed, epoch]).permutation(len(data)).tolist()
    if config.mirror:
        data = Mirrored(data, mirror_axes(config.mirror, data.grid), config.seed, epoch)
    bs = phase["batch_size"]
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses, finals, sites = [], [], []
    for i, batch in enumerate(batches):
        try:
            if world is None:
                r = train_step(state, data, batch, config, phase, device)
            else:
                r = world.train_step(state, data, batch, config, phase, device)
        except Diverged as exc:
            kept = f"the checkpoint after epoch {epoch} is kept" if epoch else "nothing was written"
            raise Diverged(
                f"training diverged in epoch {epoch + 1}, step {i + 1}: {exc.message}; {kept}",
                "lower --lr or check the training data, and start again",
            ) from None
        if r is not None:
            losses.append(r["loss"])
            finals.append(r["final"])
            sites.append(r["sites"])
        progress(i + 1, len(batches), f"loss {np.mean(losses):.4f}" if losses else "")
    seconds = time.perf_counter() - t0
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": phase["lr"],
        "batch_size": bs,
        "dilation": phase["dilation"],
        "levels": phase["levels"] if phase["levels"] is not None else "all",
        "loss": float(np.mean(losses)) if losses else None,
        "final_loss": float(np.nanmean(finals))
        if finals and not all(map(math.isnan, finals))
        else None,
        "sites_before_upsampling": float(np.mean(sites)) if sites else None,
        "seconds": seconds,
        "steps": len(batches),
    }
    record["val_dice"] = None
    if val is not None and phase["levels"] is None:
        if world is None:
            from ulmtools.infer.core import angiogram_dice

            record["val_dice"] = angiogram_dice(
                state.model, val, device=device, backend=config.backend, batch_size=bs
            )
        else:
            record["val_dice"] = world.angiogram_dice(
                state.model, val, backend=config.backend, batch_size=bs
            )
    record["peak_memory_mb"] = peak_memory_mb(device)
    if world is not None:  # the largest process's
        record["peak_memory_mb"] = world.max(record["peak_memory_mb"])
    record["memory"] = memory_kind(device)
    state.epoch += 1
    state.history.append(record)
    return record


def fit(
    config: TrainConfig,
    data: SparseMovies,
    *,
    val: SparseMovies | None = None,
    device: torch.device | str = "cpu",
    state: TrainState | None = None,
    stop_after: int | None = None,
    on_epoch: Callable[[TrainState, dict[str, Any]], None] | None = None,
    progress: ProgressCallback = no_progress,
    world: World | None = None,
) -> TrainState:
    """Train (or continue ``state``) up to ``config.total_epochs`` epochs.

    ``on_epoch(state, record)`` runs after every epoch (checkpointing, logging);
    ``stop_after`` ends early after that many epochs in total (tests of resume);
    ``world`` trains under torchrun with DistributedDataParallel (every process calls
    ``fit`` with the same arguments).
    """
    device = torch.device(device)
    if state is None:
        state = new_state(config, data.dimension, device)
    end = config.total_epochs if stop_after is None else min(stop_after, config.total_epochs)
    if world is not None:
        world.attach(state.model, config)
    try:
        while state.epoch < end:
            record = run_epoch(state, data, config, device, val=val, progress=progress, world=world)
            if on_epoch is not None:
                on_epoch(state, record)
    finally:
        if world is not None:
            world.detach()
    return state
