"""Up-front limits: refuse a run whose memory or disk needs cannot be met.

Stages estimate what a request implies (bytes held in memory at once, bytes
written) and refuse it with a :class:`UsageError` naming the estimate and the
limit, instead of running out of memory or disk hours later.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ulmtools.errors import UsageError

#: Share of the machine's physical memory one run may plan to hold.
MEMORY_SHARE = 0.5
#: Simulated and beamformed data compress, but not better than this on average.
COMPRESSION_BOUND = 10.0


def physical_memory() -> int:
    """Bytes of physical memory (16 GiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def memory_budget() -> int:
    """Bytes a run may plan to hold at once: ``ULM_MEMORY_LIMIT`` or half the memory."""
    env = os.environ.get("ULM_MEMORY_LIMIT", "").strip()
    if env:
        try:
            return int(float(env))
        except ValueError:
            pass
    return int(physical_memory() * MEMORY_SHARE)


def human(nbytes: float) -> str:
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= size:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes / 2**10:,.1f} KiB"


def check_memory(need: float, what: str, hint: str) -> None:
    """Refuse when ``need`` bytes (held at once for ``what``) exceed the budget."""
    budget = memory_budget()
    if need > budget:
        raise UsageError(
            f"{what} needs about {human(need)} of memory; the limit is {human(budget)} "
            "(half this machine's memory, or ULM_MEMORY_LIMIT)",
            hint,
        )


def check_disk(need: float, out: str | os.PathLike[str], what: str, hint: str) -> None:
    """Refuse when ``need`` uncompressed bytes cannot fit beside ``out`` even compressed."""
    parent = Path(out).resolve().parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return  # check_output reports a missing directory
    if need > free * COMPRESSION_BOUND:
        raise UsageError(
            f"{what} is about {human(need)} uncompressed; {parent} has {human(free)} free, "
            f"too little even at {COMPRESSION_BOUND:g}:1 compression",
            hint,
        )
