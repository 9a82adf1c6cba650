"""Training on several processes or GPUs: ``torchrun`` and DistributedDataParallel.

``torchrun --nproc-per-node N ulm train ...`` starts N copies of the same command;
each finds its place in the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) and joins one
process group: gloo on the CPU, NCCL on CUDA (process ``LOCAL_RANK`` takes GPU
``LOCAL_RANK``).

What stays the same as one process -- the point is that the command line, the
schedule and the result do not change with N:

* ``--batch-size`` is the *global* batch.  Every process draws the same seeded
  movie order (``numpy.random.default_rng([seed, epoch])``) and cuts it into the same
  batches; process ``r`` of ``N`` takes movies ``batch[r::N]`` of each.  So an epoch
  has the same steps as in one process, and more processes make each step shorter.
* The loss is the soft Dice of the *whole* batch: the processes add their three Dice
  sums (:func:`ulmtools.train.loss.dice_sums`) before dividing, and the sums travel
  back in the backward pass, so the gradient DistributedDataParallel averages is the
  one-process gradient.
* Batch norm normalises over the whole batch's sites (the processes add their
  per-channel sums, then their squared deviations), and the running statistics the
  model keeps for inference are the same in every process.
* A process whose share of a batch is empty (the last, short batch of an epoch, or
  fewer movies than processes) runs the batch's largest movie with weight 0: it
  takes part in every collective without adding to any sum.
* Validation: each process predicts its share of the validation movies; the binary
  angiograms are combined (logical or) before the Dice.

Only process 0 writes (the model store, ``MODEL.resume.zarr``) and prints; the others
wait for it.  Checks before training run in every process and the processes agree
on the outcome, so a bad input stops all of them with the same one-line error.

Results agree with one process up to floating-point summation order (measured in
``tests/test_train_distributed.py``), not bit for bit.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ulmtools import sparse as sp
from ulmtools.errors import BackendError, UlmError, UsageError
from ulmtools.train.config import TrainConfig
from ulmtools.train.data import SparseMovies
from ulmtools.train.loop import (
    TrainState,
    batch_targets,
    guide_from,
    loss_terms,
    take_step,
)
from ulmtools.train.loss import dice_from_sums, dice_sums

T = TypeVar("T")

#: How long a process waits for the others (process 0 writing a large model store,
#: a slow validation) before the run is declared failed.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun launch."""

    rank: int
    size: int
    local_rank: int
    local_size: int


def torchrun_env(environ: dict[str, str] | None = None) -> Launch | None:
    """This process's place when torchrun started it with more than one process.

    None when not under torchrun (no ``RANK``/``WORLD_SIZE``), or with one process:
    that run is the ordinary single-process one.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        size = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError:
        raise UsageError(
            "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers "
            f"(got RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r})",
            "start several processes with torchrun, which sets them",
        ) from None
    if size <= 1:
        return None
    if not 0 <= rank < size or not 0 <= local_rank < local_size:
        raise UsageError(
            f"RANK={rank} LOCAL_RANK={local_rank} do not fit WORLD_SIZE={size}, "
            f"LOCAL_WORLD_SIZE={local_size}",
            "start several processes with torchrun, which sets them",
        )
    return Launch(rank, size, local_rank, local_size)


def process_device(spec: str, launch: Launch) -> torch.device:
    """The device of this process: ``auto``/``cuda`` mean the GPU numbered ``LOCAL_RANK``."""
    from ulmtools.device import resolve_device

    device = resolve_device(spec)  # refuses CUDA where there is none (exit 5)
    if device.type != "cuda":
        return device
    if ":" in spec and launch.local_size > 1:
        raise UsageError(
            f"--device {spec} would put all {launch.local_size} processes of this machine "
            "on one GPU",
            "give --device cuda (or auto): process LOCAL_RANK takes GPU LOCAL_RANK",
        )
    if ":" in spec:
        return device
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise BackendError(
            f"process {launch.rank} (LOCAL_RANK {launch.local_rank}) has no GPU: this "
            f"machine has {count}",
            "start at most one process per GPU (torchrun --nproc-per-node)",
        )
    return torch.device("cuda", launch.local_rank)


class _SumAcross(torch.autograd.Function):
    """All-reduce (sum) that also sums the gradients on the way back."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=ctx.group)
        return out, None


class _SyncedBatchNorm(sp.BatchNorm):
    """:class:`ulmtools.sparse.BatchNorm` whose training statistics are the whole batch's.

    Installed on the model's batch norms for the run (the class is swapped back after
    it), so the weights, buffers and state dict are those of the plain layer.  The mean
    and the variance are reduced in two passes (sums, then squared deviations) in
    float64, so they match one process's to float32 rounding.
    """

    _world: World

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)
        world, f = self._world, x.feats
        w = world.weight
        count = f.new_full((1,), f.shape[0] * w, dtype=torch.float64)
        local = torch.cat([f.sum(0, dtype=torch.float64) * w, count])
        total = _SumAcross.apply(local, world.group)
        n = float(total[-1].detach())
        if n == 0:
            return x  # no site anywhere: nothing to normalise, nothing to record
        if n == 1:
            raise ValueError("Expected more than 1 value per channel when training")
        mean = total[:-1] / n
        dev = f - mean.to(f.dtype)
        var = _SumAcross.apply((dev * dev).sum(0, dtype=torch.float64) * w, world.group) / n
        y = dev * torch.rsqrt(var + self.eps).to(f.dtype)
        if self.affine:
            y = y * self.weight + self.bias
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.mul_(1 - factor).add_(mean.to(f.dtype), alpha=factor)
                unbiased = (var * (n / (n - 1))).to(f.dtype)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return x.replace_feats(y)


class _Loss(nn.Module):
    """The network and its whole-batch loss in one module, for DistributedDataParallel
    to see the tensor it reduces gradients for (the network's own output holds sparse
    tensors it cannot look into)."""

    def __init__(self, model: nn.Module, world: World, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.world = world
        self.config = config

    def forward(
        self,
        x: sp.SparseTensor,
        target: Tensor,
        pooled: dict[int, Tensor],
        levels: int | None,
        truth_sums: Callable[[list[int]], Tensor] | None,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        terms, has_final, out = loss_terms(
            self.model, x, target, pooled, self.config, levels, guide_from(pooled)
        )
        local = torch.stack([dice_sums(logits, t) for logits, t in terms])
        strides = [logits.tensor_stride[1] for logits, _ in terms]
        w = self.world.weight
        if w != 1.0:  # a stand-in movie: only the truth of this share counts
            assert truth_sums is not None
            local = torch.cat([local[:, :2] * w, truth_sums(strides).to(local)[:, None]], 1)
        total = _SumAcross.apply(local, self.world.group)
        losses = [dice_from_sums(total[i], self.config.dice_smooth) for i in range(len(terms))]
        sites = torch.tensor([float(sum(out.sites)) * w], dtype=torch.float64)
        return torch.stack(losses).sum(), (losses[-1] if has_final else None), sites


@dataclass
class World:
    """The process group of a torchrun launch, and the collective steps of training."""

    launch: Launch
    device: torch.device
    #: reductions inside forward and backward (the device's backend), kept apart from
    #: the default group, on which DistributedDataParallel reduces gradients
    group: Any
    #: CPU (gloo) group for flags, objects and barriers
    control: Any
    #: this process's weight in the current step's sums: 1, or 0 for a stand-in movie
    weight: float = 1.0
    _ddp: Any = None
    _swapped: list[nn.Module] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def size(self) -> int:
        return self.launch.size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    # -- agreement --------------------------------------------------------------------

    def agree(self, error: BaseException | None) -> None:
        """Every process learns whether any failed; then all raise the first failure.

        The process that failed re-raises its own exception; the others raise a
        :class:`UlmError` with the same exit code and message, naming the process.
        """
        mine = None
        if error is not None:
            code = error.exit_code if isinstance(error, UlmError) else 1
            mine = (code, str(error))
        every: list[Any] = [None] * self.size
        dist.all_gather_object(every, mine, group=self.control)
        failed = [(r, e) for r, e in enumerate(every) if e is not None]
        if not failed:
            return
        if error is not None:
            raise error
        rank, (code, message) = failed[0]
        raise ElsewhereError(f"process {rank} of {self.size} failed: {message}", code=code)

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run the block in every process; if it fails in any, fail in all."""
        try:
            yield
        except Exception as exc:
            self.agree(exc)
            raise
        self.agree(None)

    def first(self, value: T) -> T:
        """Process 0's ``value``, in every process (a seed drawn at random, say)."""
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    def max(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return float(t[0])

    def sum(self, value: Tensor) -> Tensor:
        t = value.detach().to("cpu", torch.float64).clone()
        dist.all_reduce(t, group=self.control)
        return t

    # -- training ---------------------------------------------------------------------

    def shard(self, movies: list[int]) -> list[int]:
        """This process's movies of a batch: ``movies[rank::size]``."""
        return movies[self.rank :: self.size]

    def attach(self, model: nn.Module, config: TrainConfig) -> None:
        """Synchronise the model's batch norms and wrap it for the run."""
        from torch.nn.parallel import DistributedDataParallel

        for m in model.modules():
            if type(m) is sp.BatchNorm:
                m.__class__ = _SyncedBatchNorm
                m._world = self  # type: ignore[attr-defined]
                self._swapped.append(m)
        # the synchronised batch norms keep the buffers equal everywhere: no broadcast
        # before each forward (the keyword was renamed in torch 2.13)
        no_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        self._ddp = DistributedDataParallel(
            _Loss(model, self, config),
            # inputs are made on the device already; DDP need not move (or look into)
            # the sparse tensors
            device_ids=None,
            # cascaded learning leaves the finer levels out of its first epochs
            find_unused_parameters=config.cascade,
            **no_sync,
        )

    def detach(self) -> None:
        for m in self._swapped:
            m.__class__ = sp.BatchNorm
            del m._world  # type: ignore[attr-defined]
        self._swapped.clear()
        self._ddp = None

    def train_step(
        self,
        state: TrainState,
        data: SparseMovies,
        movies: list[int],
        config: TrainConfig,
        phase: dict[str, Any],
        device: torch.device,
    ) -> dict[str, float] | None:
        """One optimizer step on the global batch ``movies``, this process's share of it."""
        if sum(data.sites(m) for m in movies) == 0:
            return None  # the same decision in every process
        mine = self.shard(movies)
        dilation = phase["dilation"]
        if sum(data.sites(m) for m in mine):
            run, self.weight, truth_sums = mine, 1.0, None
        else:
            # nothing to run here: a stand-in movie keeps this process in every collective
            run, self.weight = [max(movies, key=data.sites)], 0.0
            truth_sums = _truth_sums(data, mine, dilation, device)
        inputs = [data.movie(m) for m in run]
        target, pooled = batch_targets(data, run, dilation, device)
        model = state.model
        x = model.make_input([c for c, _ in inputs], [f for _, f in inputs], device=device,
                             backend=config.backend)  # fmt: skip
        model.train()
        try:
            loss, final, sites = self._ddp(x, target, pooled, phase["levels"], truth_sums)
            take_step(state, loss)
        finally:
            self.weight = 1.0
        return {
            "loss": float(loss.detach()),
            "final": float(final.detach()) if final is not None else float("nan"),
            "sites": float(self.sum(sites)[0]),
        }

    def angiogram_dice(
        self, model: nn.Module, val: SparseMovies, *, backend: str | None, batch_size: int
    ) -> float:
        """The validation Dice of one process (:func:`ulmtools.infer.core.angiogram_dice`),
        each process predicting its share of the movies."""
        from ulmtools.infer.core import accumulate, predict
        from ulmtools.score.maps import dice

        ids = self.shard(list(range(len(val))))
        acc = np.zeros(val.fine_grid.shape, dtype=np.uint32)
        for b0 in range(0, len(ids), batch_size):
            batch = ids[b0 : b0 + batch_size]
            for c, p in predict(
                model,  # type: ignore[arg-type]
                [val.movie(m) for m in batch],
                device=self.device,
                backend=backend,
            ):
                accumulate(acc, c, p, 0.5)
        hit = torch.from_numpy((acc > 0).astype(np.uint8))
        dist.all_reduce(hit, op=dist.ReduceOp.MAX, group=self.control)
        return dice(hit.numpy() > 0, val.truth_angiogram())

    def close(self) -> None:
        self.detach()
        if dist.is_initialized():
            dist.destroy_process_group()


class ElsewhereError(UlmError):
    """Another process of the launch failed; this one stops with the same exit code."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def _truth_sums(
    data: SparseMovies, movies: list[int], dilation: int, device: torch.device
) -> Callable[[list[int]], Tensor]:
    """For a share with no active site: the truth pixels of its movies at each stride
    (they still count in the whole batch's Dice)."""
    if not movies:
        return lambda strides: torch.zeros(len(strides), dtype=torch.float32)
    _, pooled = batch_targets(data, movies, dilation, device)
    return lambda strides: torch.stack([pooled[s].sum().float() for s in strides])


def start(launch: Launch, device: torch.device) -> World:
    """Join the launch's process group (gloo on the CPU, NCCL on CUDA)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise BackendError(
            "this torch build has no NCCL, needed to train on several GPUs",
            "install a CUDA build of torch, or train on the CPU (--device cpu)",
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UsageError(
            f"{', '.join(missing)} not set: cannot find the other processes",
            "start several processes with torchrun, which sets them",
        )
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(
            f"could not join the torchrun process group ({backend}): {first}",
            "check that every process was started by the same torchrun",
        ) from None
    group = dist.new_group(backend=backend)
    control = dist.new_group(backend="gloo") if backend != "gloo" else group
    return World(launch, device, group, control)
