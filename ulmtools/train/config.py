"""Training configuration: named schedules (the paper's and small CPU ones) and options."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ulmtools.errors import UsageError, whole_numbers

ARCHITECTURES = ("sparse-deepstulm",)

#: Up-front limits. Every epoch adds a history record and a checkpoint; the paper's
#: schedules run 20-30 epochs.
MAX_EPOCHS = 10_000
#: Weights grow with the square of the width: 2.8 M parameters at 16 channels, so 256
#: channels already need ~11 GiB for weights, gradients and Adam's two moments.
MAX_CHANNELS = 256
PARAMETERS_AT_16 = 2_834_489


def check_epochs(epochs: int) -> None:
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    if epochs > MAX_EPOCHS:
        raise UsageError(
            f"--epochs {epochs} is above the limit of {MAX_EPOCHS}",
            "the paper's schedules run 20-30 epochs",
        )


def check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be a positive finite number, got {lr}")


def check_channels(channels: int, *, even: bool = True) -> None:
    """Refuse a width the network cannot have, or one whose weights would not fit."""
    if even and (channels < 2 or channels % 2):
        raise UsageError(f"--channels must be an even number >= 2, got {channels}")
    if channels < 1:
        raise UsageError(f"--channels must be at least 1, got {channels}")
    if channels > MAX_CHANNELS:
        size = ""
        if even:  # Sparse Deep-stULM: the weights are the memory that grows
            gib = 16 * PARAMETERS_AT_16 * (channels / 16) ** 2 / 2**30
            size = f" (about {gib:,.0f} GiB for weights, gradients and optimizer state)"
        raise UsageError(
            f"--channels {channels} is above the limit of {MAX_CHANNELS}{size}",
            "the paper uses 16",
        )


def check_time_pool(time_pool: tuple[int, ...]) -> None:
    """Refuse a time pooling the network cannot have."""
    if len(time_pool) != 4 or any(int(p) != p or p < 1 for p in time_pool):
        raise UsageError(
            f"--time-pool needs 4 positive whole factors, got {','.join(map(str, time_pool))}",
            "down 1, down 2, transition 1, transition 2; the paper's is 4,4,8,8",
        )


def time_pool_factors(spec: str | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``--time-pool``'s four factors from "4,4,2,32" (None: not given)."""
    if spec is None:
        return None
    hint = "give 4 whole numbers separated by commas, e.g. 4,4,2,32; the paper's is 4,4,8,8"
    out = whole_numbers(spec, "--time-pool", hint)
    check_time_pool(out)
    return out


@dataclass(frozen=True)
class Schedule:
    """A training schedule: epochs, piecewise-constant learning rate and batch size.

    ``lr`` and ``batch_size`` are ``(first_epoch, value)`` pairs, sorted; the
    value holds from that epoch on.  The first ``dilate_epochs`` epochs train
    on targets dilated by ``dilate_radius`` fine pixels (the paper's first phase).
    """

    name: str
    epochs: int
    lr: tuple[tuple[int, float], ...]
    batch_size: tuple[tuple[int, int], ...]
    dilate_epochs: int = 0
    dilate_radius: int = 2
    description: str = ""

    def lr_at(self, epoch: int) -> float:
        return _piecewise(self.lr, epoch)

    def batch_size_at(self, epoch: int) -> int:
        return int(_piecewise(self.batch_size, epoch))

    def dilation_at(self, epoch: int) -> int:
        return self.dilate_radius if epoch < self.dilate_epochs else 0

    def stretched(self, epochs: int) -> Schedule:
        """The same schedule over ``epochs`` epochs: learning-rate and dilation milestones
        scale proportionally (batch-size milestones do not: they are about memory)."""
        if epochs == self.epochs:
            return self
        f = epochs / self.epochs
        lr = tuple((0 if i == 0 else max(1, round(e * f)), v) for i, (e, v) in enumerate(self.lr))
        dil = min(epochs, round(self.dilate_epochs * f)) if self.dilate_epochs else 0
        return replace(self, epochs=epochs, lr=lr, dilate_epochs=dil)

    def scaled_lr(self, lr: float) -> Schedule:
        """The same decays starting from ``lr``."""
        f = lr / self.lr[0][1]
        return replace(self, lr=tuple((e, v * f) for e, v in self.lr))

    def with_batch_size(self, batch_size: int) -> Schedule:
        return replace(self, batch_size=((0, int(batch_size)),))


def _piecewise(pairs: tuple[tuple[int, Any], ...], epoch: int) -> Any:
    value = pairs[0][1]
    for start, v in pairs:
        if epoch >= start:
            value = v
    return value


SCHEDULES: dict[str, Schedule] = {
    "paper-2d": Schedule(
        "paper-2d",
        epochs=300,
        lr=(
            (0, 0.1),
            (15, 0.01),
            (45, 1e-3),
            (75, 1e-4),
            (100, 1e-5),
            (150, 1e-3),
            (160, 1e-4),
            (200, 1e-5),
            (250, 1e-6),
        ),
        batch_size=((0, 8),),
        dilate_epochs=150,
        description="the paper's 2D schedule: 150 epochs on targets dilated by 2, "
        "150 on plain targets, batch 8 (GPU, days)",
    ),
    "paper-3d": Schedule(
        "paper-3d",
        epochs=20,
        lr=((0, 0.1), (15, 0.01), (17, 1e-3)),
        batch_size=((0, 2), (1, 4)),
        description="the paper's 3D schedule: 20 epochs, decays at 15 and 17, batch 2 then 4 (GPU)",
    ),
    "cpu-2d": Schedule(
        "cpu-2d",
        epochs=30,
        lr=((0, 1e-2), (15, 3e-3), (25, 1e-3)),
        batch_size=((0, 4),),
        dilate_epochs=10,
        description="a small 2D schedule that trains a narrow model on small movies "
        "in minutes on a CPU",
    ),
    "cpu-3d": Schedule(
        "cpu-3d",
        epochs=20,
        lr=((0, 1e-2), (10, 3e-3), (16, 1e-3)),
        batch_size=((0, 2),),
        dilate_epochs=6,
        description="a small 3D schedule for narrow pruned models on small volumes (CPU)",
    ),
    "finetune": Schedule(
        "finetune",
        epochs=5,
        lr=((0, 1e-3), (3, 3e-4)),
        batch_size=((0, 2),),
        description="continuing a trained model (ulm train --init): plain targets, "
        "lr 1e-3 then 3e-4",
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's result (recorded in the model store)."""

    arch: str = "sparse-deepstulm"
    schedule: Schedule = field(default_factory=lambda: SCHEDULES["cpu-2d"])
    channels: int = 16
    #: kernel size of the input convolution (the paper's 5; 3 costs 81 instead of 625
    #: taps per site in 3D+t, where the 5^4 input convolution dominates a step)
    input_kernel: int = 5
    deep_supervision: bool = False
    pruning: bool = False
    cascade: bool = False
    #: lateral axes ("x", "y") along which training movies are mirrored at random
    #: (each with probability 1/2 per movie and epoch): data augmentation for
    #: acquisitions symmetric about the probe's centre
    mirror: tuple[str, ...] = ()
    #: time pooling of down 1, down 2, transition 1, transition 2 (the paper's 4, 4, 8, 8:
    #: a 128-frame movie has one time index left at the high-resolution levels, a
    #: 512-frame one four)
    time_pool: tuple[int, ...] = (4, 4, 8, 8)
    backend: str = "builtin"
    seed: int = 0
    dice_smooth: float = 1e-3
    #: the training store's feature channels (``ulm sparsify --features``): the network
    #: takes one input channel per name
    features: tuple[str, ...] = ("real", "imag")

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UsageError(
                f"unknown architecture {self.arch!r}", f"use one of {', '.join(ARCHITECTURES)}"
            )
        check_epochs(self.schedule.epochs)
        if any(b < 1 for _, b in self.schedule.batch_size):
            raise UsageError("--batch-size must be at least 1")
        if any(not (math.isfinite(v) and v > 0) for _, v in self.schedule.lr):
            raise UsageError("--lr must be a positive finite number")
        check_channels(self.channels)
        if self.channels % len(self.features):
            raise UsageError(
                f"--channels {self.channels} is not a multiple of the {len(self.features)} "
                f"input features ({', '.join(self.features)})",
                f"use a multiple of {2 * len(self.features)}",
            )
        check_time_pool(self.time_pool)
        if self.input_kernel not in (1, 3, 5, 7):
            raise UsageError(
                f"--input-kernel must be 1, 3, 5 or 7, got {self.input_kernel}",
                "an odd size, centred on the site (the paper's is 5)",
            )

    @property
    def classifiers(self) -> bool:
        """Intermediate classifiers are trained with deep supervision, pruning or cascade."""
        return self.deep_supervision or self.pruning or self.cascade

    @property
    def cascade_epochs(self) -> int:
        """Cascaded learning adds one epoch per intermediate level before the schedule."""
        from ulmtools.models.deepstulm import HR_LEVELS

        return HR_LEVELS if self.cascade else 0

    @property
    def total_epochs(self) -> int:
        return self.cascade_epochs + self.schedule.epochs

    def phase(self, epoch: int) -> dict[str, Any]:
        """Learning rate, batch size, dilation and active levels of one epoch."""
        c = self.cascade_epochs
        if epoch < c:
            # Cascade: levels switched on one epoch at a time, on dilated targets.
            s = self.schedule
            return {
                "lr": s.lr_at(0),
                "batch_size": s.batch_size_at(0),
                "dilation": s.dilation_at(0),
                "levels": epoch + 1,
            }
        e = epoch - c
        return {
            "lr": self.schedule.lr_at(e),
            "batch_size": self.schedule.batch_size_at(e),
            "dilation": self.schedule.dilation_at(e),
            "levels": None,
        }

    def model_kwargs(self, dimension: int) -> dict[str, Any]:
        return {
            "dimension": dimension,
            "in_channels": len(self.features),
            "channels": self.channels,
            "input_kernel": self.input_kernel,
            "time_pool": list(self.time_pool),
            "deep_supervision": self.classifiers,
            "pruning": self.pruning,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        s = dict(d["schedule"])
        s["lr"] = tuple((int(e), float(v)) for e, v in s["lr"])
        s["batch_size"] = tuple((int(e), int(v)) for e, v in s["batch_size"])
        rest = {k: v for k, v in d.items() if k != "schedule"}
        if "mirror" in rest:
            rest["mirror"] = tuple(rest["mirror"])
        if "time_pool" in rest:
            rest["time_pool"] = tuple(int(p) for p in rest["time_pool"])
        if "features" in rest:
            rest["features"] = tuple(str(n) for n in rest["features"])
        return cls(schedule=Schedule(**s), **rest)


def resolve_schedule(
    name: str,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
) -> Schedule:
    """A named schedule with the command line's overrides applied."""
    if name not in SCHEDULES:
        raise UsageError(f"unknown schedule {name!r}", f"use one of {', '.join(SCHEDULES)}")
    s = SCHEDULES[name]
    if epochs is not None:
        check_epochs(epochs)
        s = s.stretched(epochs)
    if lr is not None:
        check_lr(lr)
        s = s.scaled_lr(lr)
    if batch_size is not None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        s = s.with_batch_size(batch_size)
    return s
