"""``ulm info``: what a store holds and where it came from."""

from __future__ import annotations

from typing import Annotated

import typer

from ulmtools.cli.context import emit, setup
from ulmtools.cli.options import InputStore, Json, Quiet, Verbose
from ulmtools.errors import InputError
from ulmtools.inspect import format_summary, summarize


def info(
    store: InputStore,
    validate: Annotated[
        bool,
        typer.Option(
            "--validate",
            help="Check the store against the store schema shipped with ulmtools and as "
            "every stage opens it; list every problem (exit 3 if there is one).",
        ),
    ] = False,
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
    if validate:
        from ulmtools.schema import validate as check

        problems = check(store)
        result = {"store": str(store), "valid": not problems, "problems": problems}
        text = (
            f"{store}: valid"
            if not problems
            else "\n".join(
                [f"{store}: {len(problems)} problem(s)", *(f"  - {p}" for p in problems)]
            )
        )
        emit(result, as_json=json, text=text)
        if problems:
            raise InputError(
                f"{store} is not a valid ulmtools store ({len(problems)} problem(s) listed)",
                "see 'man 5 ulm-stores' for what each kind holds",
            )
        return
    summary = summarize(store)
    emit(summary, as_json=json, text=format_summary(summary))
