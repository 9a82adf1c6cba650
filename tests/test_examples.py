"""The example Makefiles: every stage they name exists with the flags they pass."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ulmtools.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def dry_run(makefile: str, tmp_path: Path, *variables: str) -> list[list[str]]:
    out = subprocess.run(
        ["make", "-n", "-f", str(EXAMPLES / makefile), f"OUT={tmp_path}/o", *variables],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    joined = out.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip().startswith("ulm ")]


def check_commands(commands: list[list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    """Each ulm command line parses: its stage exists and takes every flag given."""
    for argv in commands:
        stage = argv[1]
        capsys.readouterr()
        assert main([stage, "--help"]) == 0
        help_text = capsys.readouterr().out
        for flag in (a for a in argv[2:] if a.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", help_text), f"ulm {stage} has no {flag}"


@pytest.mark.parametrize("dim", ["2", "3"])
def test_pipeline_makefile_runs_every_stage(tmp_path, capsys, dim: str) -> None:
    commands = dry_run("pipeline.mk", tmp_path, f"DIM={dim}", "CONCENTRATIONS=5 10")
    stages = [c[1] for c in commands]
    assert stages == ["simulate", "beamform", "sparsify", "infer", "track", "score"] * 2
    assert all(f"shipped:{dim}d" in c for c in commands if c[1] == "infer")
    check_commands(commands, capsys)


def test_train_makefile_keeps_networks_apart(tmp_path, capsys) -> None:
    commands = dry_run("train.mk", tmp_path)
    seeds = {c[c.index("--network-seed") + 1] for c in commands if c[1] == "simulate"}
    assert seeds == {"31", "32", "41", "102"}
    assert [c[1] for c in commands][-1] == "score"
    check_commands(commands, capsys)


@pytest.mark.slow
def test_pipeline_makefile_end_to_end_and_resumes(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    args = ["make", "-j2", "-f", str(EXAMPLES / "pipeline.mk"), f"OUT={tmp_path}/o",
            "CONCENTRATIONS=5", "MOVIES=1", "FRAMES=48"]  # fmt: skip
    subprocess.run(args, env=env, check=True, capture_output=True, cwd=tmp_path)
    report = json.loads((tmp_path / "o" / "c5" / "score.json").read_text())
    assert [m["kind"] for m in report["methods"]] == ["prediction", "tracks"]
    again = subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout
