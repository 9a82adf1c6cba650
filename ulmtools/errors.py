"""One exception family for everything a user can get wrong.

Each class carries the process exit code the CLI returns and a fix-it hint, so
library code raises a precise error and the CLI's single handler turns it into
one line on stderr. Tracebacks are for bugs, not for bad input.

Exit codes (documented in README.md and ``man ulm``):

====  =====================================================================
0     success
1     internal error (a bug: rerun with ``--verbose`` and report it)
2     usage error: unknown option, bad option value, missing argument, a
      request above an up-front limit (memory or disk it implies)
3     bad input: missing path, not a Zarr store, wrong kind or version,
      missing array or attribute, inconsistent shapes, a corrupt store,
      NaN or infinite data, a training loss that became non-finite
4     output problem: the output exists (use ``--force``), is inside an
      input, or cannot be written (no space left, read-only, other OS error)
5     backend or device unavailable (CUDA, MinkowskiEngine, pymust)
130   interrupted (Ctrl-C or SIGTERM); no output is left behind
====  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_BACKEND = 5
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug: rerun with --verbose and report it)",
    EXIT_USAGE: "usage error: unknown option, bad option value, missing argument "
    "or a request above an up-front limit",
    EXIT_INPUT: "bad input: missing, unreadable or corrupt store, wrong kind or version, "
    "missing array or attribute, inconsistent shapes, non-finite data",
    EXIT_OUTPUT: "output problem: the output exists (use --force), is inside an input, "
    "or cannot be written (e.g. no space left)",
    EXIT_BACKEND: "backend or device unavailable (CUDA, MinkowskiEngine, pymust)",
    EXIT_INTERRUPTED: "interrupted; no output is left behind",
}


class UlmError(Exception):
    """Base of all errors meant for the user.

    ``message`` says what is wrong, ``hint`` how to fix it; both are one line.
    """

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(UlmError):
    """An option value or a combination of options that makes no sense."""

    exit_code = EXIT_USAGE


class InputError(UlmError):
    """An input store or file is missing, unreadable or not what was expected."""

    exit_code = EXIT_INPUT


class OutputError(UlmError):
    """The output exists already or cannot be written."""

    exit_code = EXIT_OUTPUT


class BackendError(UlmError):
    """A device or optional backend that was asked for is not available."""

    exit_code = EXIT_BACKEND


def whole_numbers(spec: str | object, flag: str, hint: str) -> tuple[int, ...]:
    """An option's comma-separated whole numbers ("0,8"), or a sequence of them, in order;
    a part that is not a whole number is a :class:`UsageError` naming it, with ``hint``."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)  # type: ignore[call-overload]
    out = []
    for p in parts:
        try:
            out.append(int(str(p).strip()))
        except ValueError:
            raise UsageError(
                f"{flag} {spec!r}: {str(p).strip()!r} is not a whole number", hint
            ) from None
    return tuple(out)
