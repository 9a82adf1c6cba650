"""``ulm info``: what a store holds and where it came from."""

from __future__ import annotations

from ulmtools.cli.context import emit, setup
from ulmtools.cli.options import InputStore, Json, Quiet, Verbose
from ulmtools.inspect import format_summary, summarize


def info(
    store: InputStore,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Show a store's kind, version, arrays, grid, truth and provenance lineage."""
    setup(verbose=verbose, quiet=quiet)
    summary = summarize(store)
    emit(summary, as_json=json, text=format_summary(summary))
