"""SIGTERM and Ctrl-C held back where an interruption would do harm.

The CLI turns SIGTERM (and SIGINT) into ``KeyboardInterrupt``, so atomic
writers remove their temporaries. Two moments must not be interrupted:

- cleaning up after an error or an interruption (a second signal there would
  leave the temporary behind): :func:`held` holds signals for a block;
- the end of a run, from just before the final output is renamed into place
  until its result is printed: :func:`finishing` holds them until the command
  returns, and the run counts as a success, since its output is complete.

A held signal is remembered; :func:`held` raises it as ``KeyboardInterrupt``
when the block ends (unless told not to), and :func:`interrupted_while_finishing`
tells the CLI one arrived after the output was complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _State:
    holds: int = 0
    finishing: bool = False
    pending: bool = False


_state = _State()


def reset() -> None:
    """Forget holds and pending signals (the CLI calls this at the start of a command)."""
    _state.holds = 0
    _state.finishing = False
    _state.pending = False


def on_signal() -> None:
    """What the CLI's SIGTERM/SIGINT handler does: interrupt now, or note it for later."""
    if _state.holds or _state.finishing:
        _state.pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def held(*, reraise: bool = True) -> Iterator[None]:
    """Hold signals during the block; one that arrived interrupts at its end.

    With ``reraise=False`` a held signal is dropped at the end (for cleanup code
    that is already propagating an interruption or an error).
    """
    _state.holds += 1
    try:
        yield
    except BaseException:
        _state.holds -= 1  # the exception on its way out ends the command anyway
        raise
    _state.holds -= 1
    if not _state.holds and _state.pending and not _state.finishing:
        _state.pending = False
        if reraise:
            raise KeyboardInterrupt


def finishing() -> None:
    """From now until the command returns, signals are held: the output is complete."""
    _state.finishing = True


def is_finishing() -> bool:
    return _state.finishing


def interrupted_while_finishing() -> bool:
    return _state.finishing and _state.pending
