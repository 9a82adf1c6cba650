"""Progress reporting from library code, without knowing who displays it.

Stages take an optional ``progress`` callable ``(done, total, message)``;
the CLI passes one that draws a bar on stderr, notebooks can pass their own.
"""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: int, message: str = "") -> None: ...


def no_progress(done: int, total: int, message: str = "") -> None:
    """The default: report nothing."""
