"""``ulm score``: every metric of one or more reconstructions against ground truth."""

from __future__ import annotations

import json as _json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ulmtools.cli.context import log, progress, setup
from ulmtools.cli.options import Force, Json, Quiet, Verbose


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
    from ulmtools import api

    to_stdout = json or output == "-"
    with progress("score") as report_progress:
        report = api.score(
            preds,
            truth,
            output=None if output in (None, "-") else output,
            figure=figure,
            movies=movies,
            pairing=pairing.value,
            wavelength=wavelength,
            force=force,
            progress=report_progress,
            log=log.info,
        )
    if to_stdout:
        sys.stdout.write(_json.dumps(report, allow_nan=False) + "\n")
    else:
        sys.stdout.write(report.text)
    sys.stdout.flush()
