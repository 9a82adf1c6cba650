"""``ulm score``: every metric of one or more reconstructions against ground truth."""

from __future__ import annotations

import json as _json
import os
import sys
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ulmtools.cli.context import log, progress, setup
from ulmtools.cli.options import Force, Json, Quiet, Verbose
from ulmtools.errors import OutputError, UsageError


class Pairing(StrEnum):
    greedy = "greedy"
    hungarian = "hungarian"


def score(
    preds: Annotated[
        list[Path],
        typer.Argument(
            help="Reconstructions to score: prediction (ulm infer), tracks (ulm track) "
            "or angiogram stores.",
            show_default=False,
        ),
    ],
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="Store whose truth/ group is the reference. Default: the first PRED that "
            "carries truth/.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the JSON report to this file ('-': to stdout instead of the table).",
            show_default=False,
        ),
    ] = None,
    figure: Annotated[
        Path | None,
        typer.Option(
            "--figure",
            help="Write a PNG figure: truth, each reconstruction and the TP/FP/FN overlay "
            "(3D: three projections), speed maps of tracks stores.",
            show_default=False,
        ),
    ] = None,
    movies: Annotated[
        int | None,
        typer.Option(
            "--movies",
            min=1,
            help="Score the first N movies of every store. Default: all (counts must agree).",
            show_default=False,
        ),
    ] = None,
    pairing: Annotated[
        Pairing,
        typer.Option(
            "--pairing",
            help="Localization pairing: greedy (PALA's) or hungarian (optimal assignment).",
            case_sensitive=False,
        ),
    ] = Pairing.greedy,
    wavelength: Annotated[
        float | None,
        typer.Option(
            "--wavelength",
            help="Wavelength in metres for localization metrics; overrides the tracks "
            "store's wavelength attribute and an acquisition attribute (c / f).",
            show_default=False,
        ),
    ] = None,
    force: Force = False,
    json: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score reconstructions against ground truth: Dice, PALA metrics, saturation, figure.

    Dice is the paper's: each movie's map above 0.5, summed over movies, binarized,
    against the same accumulation of truth/tracks; also per-movie Dice (the trajectory
    Dice of random-trajectory sets), Dice after 1, 2, 4, ... movies, pixel counts, and
    in 3D the Dice of maximum-intensity projections along z, x and y. Tracks stores
    add PALA's localization metrics. Grids are matched by physical coordinates; an
    integer refinement is reduced by a block OR. Several PREDs give one table.
    """
    setup(verbose=verbose, quiet=quiet)
    from ulmtools.score.core import score as run_score
    from ulmtools.score.report import format_report

    if wavelength is not None and not wavelength > 0:
        raise UsageError(f"--wavelength must be positive (metres), got {wavelength}")
    to_stdout = json or output == "-"
    report_path = None if output in (None, "-") else Path(output)
    inputs = [*preds, *([truth] if truth is not None else [])]
    for path in (report_path, figure):
        if path is not None:
            _check_file_output(path, force=force, inputs=inputs)
    if report_path is not None and figure is not None and _same(report_path, figure):
        raise UsageError("--output and --figure name the same file", "give two paths")
    with progress("score") as report_progress:
        report = run_score(
            [str(p) for p in preds],
            truth,
            movies=movies,
            pairing=pairing.value,
            wavelength=wavelength,
            progress=report_progress,
            log=log.info,
        )
    doc = report.document
    if figure is not None:
        from ulmtools.score.figure import write_figure

        width, height = write_figure(report.methods, figure)
        doc["figure"] = {"path": str(figure), "width": width, "height": height}
        log.info(f"figure: {figure} ({width} x {height} px)")
    from ulmtools.store import jsonable

    text = _json.dumps(jsonable(doc), allow_nan=False)
    if report_path is not None:
        _write_atomic(report_path, text + "\n")
        log.info(f"report: {report_path}")
    if to_stdout:
        sys.stdout.write(text + "\n")
    else:
        sys.stdout.write(format_report(doc))
    sys.stdout.flush()


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _check_file_output(path: Path, *, force: bool, inputs: list[Path]) -> None:
    for inp in inputs:
        if _same(path, inp):
            raise OutputError(f"the output {path} is also an input", "write to another path")
    if path.is_dir():
        raise OutputError(f"{path} is a directory", "give a file name")
    if path.exists() and not force:
        raise OutputError(f"{path} exists", "use --force to overwrite it")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"the directory {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"the directory {parent} is not writable", "choose another path")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
