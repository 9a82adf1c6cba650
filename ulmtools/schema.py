"""The store schema, shipped with the package: check a store someone wrote themselves.

``ulmtools/schemas/ulm-root.schema.json`` is a JSON Schema (draft 2020-12) of a
store's root ``zarr.json``: the ``ulm`` kind and version, ``id``, ``axes``,
``grid`` and ``provenance``. :func:`validate` checks a store against it and then
opens it as every stage does (kind, required arrays and attributes, attribute
types, every node's metadata), collecting what is wrong instead of stopping at
the first problem. ``ulm info --validate`` prints the result.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from ulmtools.errors import UlmError


@cache
def root_schema() -> dict[str, Any]:
    """The JSON Schema of a store's root zarr.json."""
    return json.loads((files("ulmtools") / "schemas" / "ulm-root.schema.json").read_text())


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def validate(path: str | os.PathLike[str]) -> list[str]:
    """Every problem found with the store at ``path`` (an empty list: it is valid)."""
    import jsonschema

    from ulmtools.store import open_store

    p = Path(path)
    problems: list[str] = []
    meta_path = p / "zarr.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            return [f"zarr.json is not JSON: {exc}"]
        validator = jsonschema.Draft202012Validator(root_schema())
        for error in sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path)):
            problems.append(f"zarr.json {_where(error.absolute_path)}: {error.message}")
    try:
        open_store(p)
    except UlmError as exc:
        problems.append(str(exc))
    return problems
