"""The command line: entry points, ulm info, conventions shared by all stages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_store import make_image_store
from ulmtools import __version__
from ulmtools.errors import EXIT_BACKEND, EXIT_USAGE, BackendError, UsageError


def test_info_text(tmp_path: Path, cli) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path)
    result = cli("info", path)
    assert result.code == 0, result.err
    out = result.out
    assert f"{path}: image store, version 1.1" in out
    assert "axes: movie (index), t (time, second), z (space, metre), x (space, metre)" in out
    assert "grid: z/x 8 x 6, spacing 25.00, 25.00 um, origin 7.900, -0.100 mm, 1000 Hz" in out
    assert "truth: yes (track maps 64 x 48)" in out
    assert "iq" in out and "complex64 2x4x8x6 (movie, t, z, x)  chunks 1x4x8x6" in out
    assert "simulate  ulmtools" in out and "$ ulm x" in out
    assert result.err == ""


def test_info_json_is_one_object_on_stdout(tmp_path: Path, cli) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path)
    result = cli("info", path, "--json")
    assert result.code == 0
    assert result.out.count("\n") == 1
    data = json.loads(result.out)
    assert data["kind"] == "image" and data["truth"] is True
    iq = next(a for a in data["arrays"] if a["path"] == "iq")
    assert iq["shape"] == [2, 4, 8, 6] and iq["chunks"] == [1, 4, 8, 6]
    assert iq["stored_bytes"] > 0
    assert [e["stage"] for e in data["provenance"]] == ["simulate"]
    assert data["grid"]["frame_rate"] == 1000.0


def test_usage_errors_exit_2_one_line(cli) -> None:
    for args in (["info"], ["info", "a", "--bogus"], ["nosuchcommand"]):
        result = cli(*args)
        assert result.code == EXIT_USAGE, args
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert result.out == ""


def test_version_and_help(cli) -> None:
    assert cli("--version").out.strip() == f"ulm {__version__}"
    result = cli("--help")
    assert result.code == 0 and "info" in result.out


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    """Both declared entry points exist and run (the DECODE lesson)."""
    path = tmp_path / "a.zarr"
    make_image_store(path)
    ulm = Path(sys.executable).parent / "ulm"
    for argv in ([str(ulm)], [sys.executable, "-m", "ulmtools"]):
        proc = subprocess.run(
            [*argv, "info", str(path), "--json"], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["kind"] == "image"
        proc = subprocess.run(
            [*argv, "info", str(tmp_path / "nope.zarr")], capture_output=True, text=True
        )
        assert proc.returncode == 3
        assert proc.stdout == ""
        assert proc.stderr.strip().startswith("Error: no such store")
        assert "Traceback" not in proc.stderr


def test_verbose_shows_traceback(tmp_path: Path, cli) -> None:
    result = cli("info", tmp_path / "nope.zarr", "--verbose")
    assert result.code == 3 and "Traceback" in result.err


def test_device_resolution() -> None:
    import torch

    from ulmtools.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UsageError):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError) as exc:
            resolve_device("cuda:0")
        assert exc.value.exit_code == EXIT_BACKEND and "--device cpu" in str(exc.value)
