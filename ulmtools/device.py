"""``--device auto|cpu|cuda[:N]`` resolved once, the same way for every stage."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ulmtools.errors import BackendError, UsageError

if TYPE_CHECKING:
    import torch

_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_spec(spec: str | None) -> str:
    """``spec`` normalised; a :class:`UsageError` unless it is auto, cpu, cuda or cuda:N."""
    spec = (spec or "auto").strip().lower()
    if not _SPEC.match(spec):
        raise UsageError(f"unknown device {spec!r}", "use auto, cpu, cuda or cuda:N")
    return spec


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device for ``spec``; refuses CUDA when none is usable."""
    spec = check_spec(spec)
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendError(
            f"device {spec} was asked for but CUDA is not available",
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU",
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise BackendError(
            f"device {spec} does not exist; this machine has {torch.cuda.device_count()} GPU(s)",
            "use cuda:0 .. cuda:N-1",
        )
    return torch.device("cuda", index)
