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
    handler = RichHandler(
        console=state.console, show_time=False, show_path=state.verbose, markup=False
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.propagate = False
    if state.verbose:
        root.setLevel(logging.DEBUG)
    elif state.quiet:
        root.setLevel(logging.WARNING)
    else:
        root.setLevel(logging.INFO)


def progress_enabled() -> bool:
    return not state.quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str) -> Iterator[ProgressCallback]:
    """A progress callback for library code; draws a bar on stderr when enabled."""
    if not progress_enabled():
        yield lambda done, total, message="": None
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
