"""A CLI that behaves like a Unix tool: completion, plain logs and progress off a terminal,
man pages installed with the package."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ULM = [sys.executable, "-m", "ulmtools"]


def test_completion_options_are_offered() -> None:
    # (--show-completion itself detects the calling shell, so it is not run here)
    import typer

    from ulmtools.cli.app import app

    root = typer.main.get_command(app)
    flags = {opt for p in root.params for opt in p.opts}
    assert {"--install-completion", "--show-completion"} <= flags


@pytest.mark.parametrize(("shell", "needle"), [("zsh", '"score":"Score'), ("fish", "score\tScore")])
def test_zsh_and_fish_completion_protocols(shell: str, needle: str) -> None:
    env = dict(os.environ, _ULM_COMPLETE=f"complete_{shell}", _TYPER_COMPLETE_ARGS="ulm sc")
    env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"  # what fish's script asks first
    out = subprocess.run(ULM, env=env, capture_output=True, text=True).stdout
    assert needle in out


def test_completion_completes_commands_and_flags() -> None:
    env = dict(os.environ, _ULM_COMPLETE="complete_bash", COMP_WORDS="ulm tr", COMP_CWORD="1")
    out = subprocess.run(ULM, env=env, capture_output=True, text=True).stdout.split()
    assert {"track", "train"} <= set(out)
    env.update(COMP_WORDS="ulm track --de", COMP_CWORD="2")
    out = subprocess.run(ULM, env=env, capture_output=True, text=True).stdout.split()
    assert out == ["--detect"]


def test_logs_and_progress_are_plain_lines_off_a_terminal(tmp_path: Path) -> None:
    env = dict(os.environ, ULM_PROGRESS_INTERVAL="0", COLUMNS="40")
    args = [*ULM, "simulate", str(tmp_path / "s.zarr"), "--level", "image", "--movies", "2",
            "--frames", "16", "--seed", "1"]  # fmt: skip
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    # the preset line is long: it stays one line, with a time stamp and a level
    preset = [line for line in lines if "transmits" in line]
    assert len(preset) == 1 and "vessels" in preset[0] and " INFO " in preset[0]
    assert any("simulate: 2/2 (100 %)" in line for line in lines)
    assert not any("\x1b[" in line for line in lines)  # no terminal escapes in a log
    quiet = subprocess.run([*args, "-q", "-f"], env=env, capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.slow
def test_man_pages_installed_with_the_package(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    wheel = next(wheels.glob("*.whl"))
    subprocess.run([str(pip), "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True)  # fmt: skip
    env = dict(os.environ, PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("MANPATH", None)
    for page, section in (("ulm", "1"), ("ulm-track", "1"), ("ulm-stores", "5")):
        r = subprocess.run(["man", "-w", section, page], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(
            env_dir / "share" / "man" / f"man{section}" / f"{page}.{section}"
        )


def test_hints_name_only_commands_that_exist() -> None:
    import re

    import typer

    from ulmtools.cli.app import app
    from ulmtools.store import _PRODUCER

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    for kind, hint in _PRODUCER.items():
        for name in re.findall(r"\bulm ([a-z]+)", hint):
            assert name in commands, f"the hint for {kind} stores names ulm {name}"


def test_ctrl_c_through_the_real_entry_point_says_nothing_was_left(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "big.zarr"
    args = [*ULM, "simulate", str(out), "--movies", "50", "--frames", "512", "--seed", "1"]
    # a background job (CI, nohup) may start with SIGINT ignored: give the child Ctrl-C back
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    # interrupt once the run is writing its temporary store
    while time.monotonic() < deadline and not list(tmp_path.glob(".big.zarr.partial-*")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "Error: interrupted; no output was left behind"
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_a_library_import_sets_the_openmp_wait_policy(given, expected) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, ulmtools; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == expected
