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
    """Show a store's kind, version, arrays, grid, truth and provenance lineage.

    shipped:2d and shipped:3d name the models shipped in the package (their card).
    """
    setup(verbose=verbose, quiet=quiet)
    if str(store).startswith("shipped:"):
        from ulmtools.infer.weights import resolve

        store = resolve(store)
    summary = summarize(store)
    emit(summary, as_json=json, text=format_summary(summary))
