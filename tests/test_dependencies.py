"""Declare what you import, import what you declare."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# optional engines that have no PyPI wheel to declare: built by `make minkowski`
NOT_DECLARABLE = {"MinkowskiEngine", "MinkowskiEngineBackend"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return core, extras


def imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "ulmtools"}


def distributions(modules: set[str]) -> dict[str, str]:
    table = packages_distributions()
    out = {}
    for m in modules - NOT_DECLARABLE:
        dists = table.get(m)
        assert dists, f"{m} is imported but not installed: declare it in pyproject.toml"
        out[m] = dists[0].lower().replace("_", "-")
    return out


def test_every_import_of_the_package_is_declared() -> None:
    core, extras = declared()
    for module, dist in distributions(imported_modules(ROOT / "ulmtools")).items():
        assert dist in core | extras, f"ulmtools imports {module} ({dist}), not declared"


def test_every_core_dependency_is_imported() -> None:
    core, _ = declared()
    used = set(distributions(imported_modules(ROOT / "ulmtools")).values())
    assert core - used == set(), f"declared but never imported: {sorted(core - used)}"


def test_tests_and_benches_import_only_declared_packages() -> None:
    core, extras = declared()
    modules = imported_modules(ROOT / "tests") | imported_modules(ROOT / "bench")
    modules -= {"tests", "reference", "conftest"}
    for module, dist in distributions(modules).items():
        assert dist in core | extras, f"tests or benches import {module} ({dist}), not declared"
