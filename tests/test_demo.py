"""The README's main command: examples/demo.sh end to end on a tiny configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_demo(tmp_path: Path, dim: int, movies: int, frames: int) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DEMO_DIR=str(tmp_path), DEMO_DIM=str(dim), DEMO_MOVIES=str(movies),
        DEMO_FRAMES=str(frames),
    )  # fmt: skip
    return subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check(result: subprocess.CompletedProcess, tmp_path: Path, dim: int, movies: int) -> None:
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    # the comparison table comes last, then where the figure is
    assert lines[-1].startswith(f"figure: {tmp_path}/score{dim}.png")
    table = "\n".join(lines)
    assert f"network{dim}.zarr  prediction" in table and f"tracks{dim}.zarr" in table
    report = json.loads((tmp_path / f"score{dim}.json").read_text())
    kinds = [m["kind"] for m in report["methods"]]
    assert kinds == ["prediction", "tracks"]
    assert all(m["movies"] == movies for m in report["methods"])
    assert all(m["dice"] > 0 for m in report["methods"])
    png = (tmp_path / f"score{dim}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_2d_tiny(tmp_path: Path) -> None:
    check(run_demo(tmp_path, 2, 1, 96), tmp_path, 2, 1)


@pytest.mark.slow
def test_demo_3d_tiny(tmp_path: Path) -> None:
    check(run_demo(tmp_path, 3, 1, 32), tmp_path, 3, 1)
