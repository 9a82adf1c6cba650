"""Shared fixtures: run the CLI in-process, hash trees to prove inputs untouched, torch
on one thread."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ulmtools.cli.app import main


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``ulm ARGS`` in-process; return exit code, stdout and stderr apart."""

    def run(*args: str | os.PathLike[str]) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def tree_digest(path: Path) -> str:
    """A digest of every file name, size and content under ``path``."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def digest() -> Callable[[Path], str]:
    return tree_digest


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, as make weights' 'ulm train' runs
    (OMP_NUM_THREADS_3D=1): two competing threads stall for seconds on a 2-core machine,
    one is steady. Modules use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
