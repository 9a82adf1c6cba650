"""ulm info --validate: the shipped schema and the stages' own checks, every problem listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ulmtools.schema import root_schema, validate


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ulmtools.cli.app import main

    path = tmp_path_factory.mktemp("v") / "img.zarr"
    assert (
        main(["simulate", str(path), "--level", "image", "--frames", "8", "--seed", "1", "-q"]) == 0
    )
    return path


def test_the_schema_ships_in_the_package() -> None:
    schema = root_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    kinds = schema["properties"]["attributes"]["properties"]["ulm"]["properties"]["kind"]["enum"]
    from ulmtools.store import KINDS

    assert set(kinds) == set(KINDS)


def test_a_store_ulm_wrote_is_valid(cli, good: Path) -> None:
    assert validate(good) == []
    r = cli("info", good, "--validate")
    assert r.code == 0 and r.out.strip() == f"{good}: valid"
    r = cli("info", good, "--validate", "--json")
    assert json.loads(r.out) == {"store": str(good), "valid": True, "problems": []}


def test_every_problem_is_listed(cli, good: Path, tmp_path: Path, digest) -> None:
    bad = tmp_path / "bad.zarr"
    shutil.copytree(good, bad)
    meta = json.loads((bad / "zarr.json").read_text())
    attrs = meta["attributes"]
    attrs["id"] = "not-an-id"
    del attrs["provenance"][0]["time"]
    attrs["grid"]["spacing"] = "25um"
    meta.pop("consolidated_metadata", None)
    (bad / "zarr.json").write_text(json.dumps(meta))
    before = digest(bad)
    problems = validate(bad)
    joined = "\n".join(problems)
    assert "attributes.id" in joined
    assert "attributes.provenance[0]" in joined and "'time'" in joined
    assert "attributes.grid.spacing" in joined
    r = cli("info", bad, "--validate", "--json")
    assert r.code == 3
    result = json.loads(r.out)
    assert result["valid"] is False and result["problems"] == problems
    assert r.err.strip().startswith("Error:") and len(r.err.strip().splitlines()) == 1
    assert digest(bad) == before  # validating changes nothing


def test_not_a_store_is_a_problem(cli, tmp_path: Path) -> None:
    (tmp_path / "empty.zarr").mkdir()
    r = cli("info", tmp_path / "empty.zarr", "--validate")
    assert r.code == 3 and "not a Zarr store" in r.out
