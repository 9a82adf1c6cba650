"""Docs cannot drift: every command has help, a man page with the same options,
a mention in ulm(1) and the README; the exit codes are documented where users look."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from ulmtools.cli.app import app
from ulmtools.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
MAN = ROOT / "man"
GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)  # type: ignore[attr-defined]


def man_options(page: Path) -> set[str]:
    """Flags named on the tag line after each .TP in the OPTIONS section."""
    text = page.read_text()
    section = re.search(r"^\.SH OPTIONS\n(.*?)(?=^\.SH )", text, re.S | re.M)
    assert section, f"{page.name} has no OPTIONS section"
    lines = section.group(1).splitlines()
    flags: set[str] = set()
    for i, line in enumerate(lines):
        if line.startswith(".TP") and i + 1 < len(lines):
            tag = lines[i + 1].replace("\\-", "-")
            flags.update(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*|-[a-zA-Z])\b", tag))
    return flags


def cli_options(name: str) -> set[str]:
    cmd = GROUP.commands[name]  # type: ignore[attr-defined]
    flags: set[str] = set()
    for p in cmd.params:
        if p.param_type_name == "option":
            flags.update(p.opts)
            flags.update(p.secondary_opts)
    return flags | {"--help", "-h"}


def test_there_are_commands() -> None:
    assert "info" in COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_each_option_too(name: str) -> None:
    cmd = GROUP.commands[name]  # type: ignore[attr-defined]
    assert cmd.help and cmd.help.strip(), f"ulm {name} has no help"
    for p in cmd.params:
        if p.param_type_name == "option":
            assert p.help, f"ulm {name} {p.opts[0]} has no help text"


@pytest.mark.parametrize("name", COMMANDS)
def test_man_page_options_match_help(name: str) -> None:
    page = MAN / f"ulm-{name}.1"
    assert page.is_file(), f"man/ulm-{name}.1 is missing"
    in_man, in_cli = man_options(page), cli_options(name)
    assert in_man - in_cli == set(), f"man page documents options ulm {name} lacks"
    assert in_cli - in_man == set(), f"ulm {name} has options its man page lacks"
    assert page.read_text().startswith(f".TH ULM-{name.upper()} 1")


@pytest.mark.parametrize("name", COMMANDS)
def test_command_listed_in_ulm1_and_readme(name: str) -> None:
    assert f"ulm\\-{name}" in (MAN / "ulm.1").read_text(), f"ulm(1) does not list {name}"
    assert f"ulm {name}" in (ROOT / "README.md").read_text(), f"README shows no ulm {name}"


def test_no_man_page_for_a_missing_command() -> None:
    pages = {p.name[len("ulm-") : -2] for p in MAN.glob("ulm-*.1")}
    assert pages == set(COMMANDS)


def test_exit_codes_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    ulm1 = (MAN / "ulm.1").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"^\| *{code} *\|", readme, re.M), f"README lacks exit code {code}"
        assert re.search(rf"^\.IP {code}\b", ulm1, re.M), f"ulm(1) lacks exit code {code}"


def test_store_format_page_names_every_kind() -> None:
    from ulmtools.store import KINDS

    page = (MAN / "ulm-stores.5").read_text()
    for kind in KINDS:
        assert f".B {kind}" in page, f"ulm-stores(5) does not describe the {kind} kind"
