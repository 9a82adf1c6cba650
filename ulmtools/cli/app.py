"""The ``ulm`` application: command registry and the single error handler."""

from __future__ import annotations

# (the OpenMP wait policy is set by `import ulmtools`, before torch loads)
import errno
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from ulmtools import __version__, interrupts
from ulmtools.cli import beamform as beamform_cmd
from ulmtools.cli import export as export_cmd
from ulmtools.cli import importer as import_cmd
from ulmtools.cli import infer as infer_cmd
from ulmtools.cli import info
from ulmtools.cli import score as score_cmd
from ulmtools.cli import simulate as simulate_cmd
from ulmtools.cli import sparsify as sparsify_cmd
from ulmtools.cli import track as track_cmd
from ulmtools.cli import train as train_cmd
from ulmtools.cli.context import state
from ulmtools.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_USAGE, UlmError

app = typer.Typer(
    name="ulm",
    help=(
        "Deep-learning Ultrasound Localization Microscopy in 2D and 3D. Each stage reads "
        "and writes Zarr stores; see 'man ulm' and 'man 5 ulm-stores'."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ulm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Deep-learning Ultrasound Localization Microscopy in 2D and 3D."""


app.command("info")(info.info)
app.command("simulate")(simulate_cmd.simulate)
app.command("beamform")(beamform_cmd.beamform)
app.command("sparsify")(sparsify_cmd.sparsify)
app.command("train")(train_cmd.train)
app.command("infer")(infer_cmd.infer)
app.command("track")(track_cmd.track)
app.command("score")(score_cmd.score)
app.command("import")(import_cmd.import_)
app.command("export")(export_cmd.export)


def _on_sigterm(signum: int, frame: object) -> None:
    # Turn SIGTERM into the same path as Ctrl-C, so atomic writers clean up; held back
    # while a temporary is removed and once the output is complete (ulmtools.interrupts).
    interrupts.on_signal()


def _fail(message: str, code: int) -> int:
    # escaped: an error naming e.g. 'ulm-toolchain[cluster]' is text, not rich markup
    state.console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return code


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run ``ulm`` with ``argv``; return the exit code instead of raising.

    ``exiting``: the process ends after this; SIGTERM and Ctrl-C stay ignored
    afterwards, so interpreter shutdown cannot turn a reported result into 143.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-v", "--verbose") for a in args):
        state.verbose = True
    interrupts.reset()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigterm)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="ulm", standalone_mode=False)
        if result == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130)
            return _fail("interrupted; no output was left behind", EXIT_INTERRUPTED)
        return result if isinstance(result, int) else 0
    except UlmError as exc:
        if state.verbose:
            traceback.print_exc(file=sys.stderr)
        return _fail(str(exc), exc.exit_code)
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click's completion scripts end with sys.exit
        return exc.code if isinstance(exc.code, int) else 0
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted; no output was left behind", EXIT_INTERRUPTED)
    except TyperException as exc:
        # Usage errors: click's own one-line message, plus where help is.
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return _fail(f"{exc.format_message()}{where}", getattr(exc, "exit_code", EXIT_USAGE))
    except BrokenPipeError:
        return 0
    except OSError as exc:
        # a full disk or read-only file system met outside an output store's writer
        # (which maps its own): an output problem, not a bug
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            return _internal(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"cannot write: {exc.strerror or exc}{where}", EXIT_OUTPUT)
    except Exception as exc:
        return _internal(exc)
    finally:
        if exiting:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def _internal(exc: BaseException) -> int:
    if state.verbose:
        traceback.print_exception(exc, file=sys.stderr)
        return EXIT_INTERNAL
    return _fail(
        f"internal error: {exc.__class__.__name__}: {exc} "
        "(rerun with --verbose for the traceback, and please report it)",
        EXIT_INTERNAL,
    )


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(exiting=True))
