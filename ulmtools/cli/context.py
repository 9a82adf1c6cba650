"""Per-invocation CLI state: where logs, warnings and progress go.

Results go to stdout and nothing else does. Everything else (progress bars,
logs, warnings) goes to a rich console on stderr; progress is shown only when
stderr is a terminal and ``--quiet`` is off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ulmtools.progress import ProgressCallback

log = logging.getLogger("ulmtools")


class State:
    verbose: bool = False
    quiet: bool = False
    console: Console = Console(stderr=True)


state = State()


def setup(*, verbose: bool = False, quiet: bool = False) -> None:
    """Configure stderr logging for one command invocation."""
    state.verbose = verbose or os.environ.get("ULM_VERBOSE", "") not in ("", "0")
    state.quiet = quiet and not state.verbose
    state.console = Console(stderr=True)
    root = logging.getLogger("ulmtools")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(
            console=state.console, show_time=False, show_path=state.verbose, markup=False
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # cluster logs and pipes: one unwrapped line per record, with a time stamp
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root.addHandler(handler)
    root.propagate = False
    # Dask's own INFO and WARNING lines (workers starting, closing) are not ours to show
    logging.getLogger("distributed").setLevel(logging.INFO if state.verbose else logging.ERROR)
    if state.verbose:
        root.setLevel(logging.DEBUG)
    elif state.quiet:
        root.setLevel(logging.WARNING)
    else:
        root.setLevel(logging.INFO)


def progress_enabled() -> bool:
    return not state.quiet and sys.stderr.isatty()


def progress_interval() -> float:
    """Seconds between plain progress lines when stderr is not a terminal."""
    try:
        return max(0.0, float(os.environ.get("ULM_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


@contextlib.contextmanager
def progress(description: str) -> Iterator[ProgressCallback]:
    """A progress callback for library code; draws a bar on stderr when enabled.

    When stderr is not a terminal (a cluster job's log, a pipe) and ``--quiet`` is
    off, a plain line ``DESCRIPTION: done/total ...`` is logged at most every
    ``ULM_PROGRESS_INTERVAL`` seconds (30 by default) instead of a bar.
    """
    if state.quiet:
        yield lambda done, total, message="": None
        return
    if not progress_enabled():
        interval = progress_interval()
        start = last = time.monotonic()

        def line(done: int, total: int, message: str = "") -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < interval or done == 0:
                return
            last = now
            pct = f" ({100 * done / total:.0f} %)" if total else ""
            extra = f", {message}" if message else ""
            log.info("%s: %d/%d%s%s, %.0f s", description, done, total, pct, extra, now - start)

        yield line
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=state.console,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=None, message="")

        def update(done: int, total: int, message: str = "") -> None:
            bar.update(task, completed=done, total=total, message=message)

        yield update


def emit(result: Any, *, as_json: bool, text: str | None = None) -> None:
    """Write a command's result to stdout: one JSON object, or human text."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=None, sort_keys=False, default=str) + "\n")
    elif text is not None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
