"""Options shared by every stage, defined once so flags mean the same everywhere."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite the output if it exists.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or informational messages on stderr.")
]
Verbose = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Debug logging on stderr, and tracebacks on errors."),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")
]
#: Seeds are unsigned 64-bit integers (what numpy and torch accept).
SEED_MAX = 2**64 - 1

Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Random seed; the seed used is recorded in the output's provenance.",
        show_default="random",
        min=0,
        max=SEED_MAX,
    ),
]


def _device_spec(value: str) -> str:
    """Refuse an unknown --device before any work, whichever stage takes it."""
    from ulmtools.device import check_spec
    from ulmtools.errors import UsageError

    try:
        return check_spec(value)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="Compute device: auto (CUDA when present), cpu, cuda or cuda:N.",
        callback=_device_spec,
    ),
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        help="Worker processes over movies; 0 uses every core, 1 works in-process. With "
        "--dask: the number of Dask workers.",
    ),
]
Dask = Annotated[
    bool,
    typer.Option(
        "--dask",
        help="Run the movies as tasks on a Dask LocalCluster of --workers workers "
        "(needs the cluster extra: pip install 'ulm-toolchain[cluster]').",
    ),
]
DaskScheduler = Annotated[
    str | None,
    typer.Option(
        "--dask-scheduler",
        help="Run the movies as tasks on a running Dask cluster: its scheduler's address "
        "(tcp://host:8786) or scheduler file. Every worker must see the input and output paths.",
        show_default=False,
    ),
]
InputStore = Annotated[
    Path, typer.Argument(help="Input store (a .zarr directory).", show_default=False)
]
OutputStore = Annotated[
    Path, typer.Argument(help="Output store to create (a .zarr directory).", show_default=False)
]


class Backend(StrEnum):
    """The sparse-convolution engines (see ulmtools.sparse)."""

    builtin = "builtin"
    minkowski = "minkowski"


SparseBackend = Annotated[
    Backend,
    typer.Option(
        "--backend",
        help="Sparse engine backend: builtin (pure PyTorch) or minkowski "
        "(MinkowskiEngine, built with 'make minkowski').",
        case_sensitive=False,
    ),
]
