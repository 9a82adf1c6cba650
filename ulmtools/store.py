"""Versioned Zarr stores: the on-disk contract between pipeline stages.

Every store is one Zarr (format 3) group whose root attributes say what it is:

``ulm``
    ``{"kind": KIND, "version": "MAJOR.MINOR"}``. Readers accept any minor
    version of the major version they know and refuse other majors by name.
``id``
    A random identifier, so provenance can name the stores a result came from.
``axes``
    For the main arrays: ``[{"name", "type", "unit"}, ...]`` (see :mod:`ulmtools.grid`).
``grid``
    The sampling grid: axes, shape, origin and spacing in metres, frame rate in Hz.
``provenance``
    One entry per stage that touched the data, oldest first. Each stage copies
    its input's list and appends its own entry (command line, resolved
    parameters, package version, time, input store ids).

Ground truth, where known, lives in a ``truth/`` group (see :mod:`ulmtools.truth`).

Writes are atomic: :func:`create_store` builds the store under a hidden
temporary name beside the target and renames it into place only when the
writing code finished without error, so an output appears whole or not at all.
An existing output is refused unless ``force`` is set.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.registry import register_pipeline

from ulmtools import __version__, conventions, interrupts
from ulmtools.errors import InputError, OutputError, UsageError
from ulmtools.grid import Grid, axes_metadata

# ---------------------------------------------------------------------------
# One guarded reader: a chunk that cannot be decoded is bad input, not a bug
# ---------------------------------------------------------------------------


class GuardedCodecPipeline(BatchedCodecPipeline):
    """zarr's codec pipeline, with decode failures turned into :class:`InputError`.

    Every chunk any ulmtools code reads (through ``Store.array`` or straight from
    a group) is decoded here, so a truncated or garbage chunk (zstd, blosc, a wrong
    decoded size) gives exit code 3 naming the store, the array and the chunk.
    """

    async def read_batch(self, batch_info, out, drop_axes=()):  # type: ignore[no-untyped-def]
        batch_info = list(batch_info)
        try:
            await super().read_batch(batch_info, out, drop_axes)
        except InputError:
            raise
        except Exception as exc:
            keys = [_chunk_name(getter) for getter, *_ in batch_info]
            where = keys[0] if len(keys) == 1 else f"{keys[0]} (one of {len(keys)} chunks)"
            raise InputError(
                f"{where} is damaged and cannot be decoded ({exc.__class__.__name__}: {exc})",
                "the store is corrupt: restore it from a copy or recreate it",
            ) from None


def _chunk_name(getter: Any) -> str:
    root = getattr(getattr(getter, "store", None), "root", None)
    path = str(getattr(getter, "path", getter))
    return f"{root}/{path}" if root is not None else path


register_pipeline(GuardedCodecPipeline)
zarr.config.set({"codec_pipeline.path": "ulmtools.store.GuardedCodecPipeline"})


# ---------------------------------------------------------------------------
# Kinds and their schema
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KindSpec:
    """What a store of one kind must hold for a reader to accept it."""

    name: str
    version: str
    description: str
    required_arrays: tuple[str, ...] = ()
    any_of_arrays: tuple[str, ...] = ()
    required_attrs: tuple[str, ...] = ()
    extra_check: Callable[[zarr.Group, str], None] | None = field(default=None, compare=False)


KINDS: dict[str, KindSpec] = {
    "channel": KindSpec(
        "channel",
        "1.1",
        "element IQ per transmit, (movie, frame, transmit, sample, element)",
        required_arrays=("iq",),
        required_attrs=("acquisition",),
    ),
    "image": KindSpec(
        "image",
        "1.1",
        "beamformed IQ and/or PSF correlation, (movie, t, z, x[, y])",
        any_of_arrays=("iq", "corr"),
        required_attrs=("grid",),
    ),
    "sparse": KindSpec(
        "sparse",
        "1.1",
        "active sites: coords (n, 1+D), feats (n, C), per-movie offsets",
        required_arrays=("coords", "feats", "offsets"),
        required_attrs=("grid",),
    ),
    "model": KindSpec(
        "model",
        "1.1",
        "a trained network: architecture, constructor arguments, weights, history",
        required_attrs=("architecture",),
    ),
    "prediction": KindSpec(
        "prediction",
        "1.1",
        "per-movie super-resolved maps and the accumulated angiogram",
        required_arrays=("angiogram",),
        required_attrs=("grid",),
    ),
    "tracks": KindSpec(
        "tracks",
        "1.1",
        "localizations and linked tracks from conventional ULM",
        required_attrs=("grid",),
    ),
    "angiogram": KindSpec(
        "angiogram",
        "1.1",
        "a rendered density map on a super-resolved grid",
        required_arrays=("angiogram",),
        required_attrs=("grid",),
    ),
}


def major(version: str) -> int:
    return int(str(version).split(".", 1)[0])


# ---------------------------------------------------------------------------
# Opening stores for reading
# ---------------------------------------------------------------------------


@dataclass
class Store:
    """An opened, validated store: the Zarr group plus its decoded root attributes."""

    path: Path
    group: zarr.Group
    kind: str
    version: str

    @property
    def attrs(self) -> Mapping[str, Any]:
        return self.group.attrs

    @property
    def id(self) -> str | None:
        return self.group.attrs.get("id")

    @property
    def provenance(self) -> list[dict[str, Any]]:
        return list(self.group.attrs.get("provenance", []))

    @property
    def grid(self) -> Grid:
        if "grid" not in self.group.attrs:
            raise InputError(f"{self.path} has no grid attribute", "describe its sampling grid")
        try:
            return Grid.from_attrs(self.group.attrs["grid"])
        except InputError as exc:
            raise InputError(f"{self.path}: {exc.message}", exc.hint) from None

    @property
    def has_truth(self) -> bool:
        return "truth" in self.group and isinstance(self.group["truth"], zarr.Group)

    def array(self, name: str) -> zarr.Array:
        try:
            node = self.group[name]
        except KeyError:
            raise InputError(
                f"{self.path} has no array {name!r}",
                f"this {self.kind} store lacks what the stage needs",
            ) from None
        except Exception as exc:
            raise InputError(
                f"{self.path}/{name}: the array's metadata cannot be read "
                f"({exc.__class__.__name__}: {exc})",
                "the store is corrupt: restore it from a copy or recreate it",
            ) from None
        if not isinstance(node, zarr.Array):
            raise InputError(f"{self.path}/{name} is a group, not an array")
        return node

    def describe(self) -> dict[str, Any]:
        """An input reference for provenance."""
        return {"id": self.id, "path": str(self.path), "kind": self.kind, "version": self.version}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def open_store(
    path: str | os.PathLike[str],
    kind: str | Sequence[str] | None = None,
    *,
    require_arrays: Sequence[str] = (),
    require_attrs: Sequence[str] = (),
) -> Store:
    """Open a ulmtools store read-only and check it is what the caller needs.

    Refuses with an :class:`InputError` (one line, exit code 3) when the path
    is missing, is not a Zarr format 3 group, is not a ulmtools store, is of
    the wrong kind or major version, or lacks a required array or attribute.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such store: {p}", "check the path")
    if not p.is_dir():
        raise InputError(
            f"{p} is a file, not a Zarr store", "stores are directories ending in .zarr"
        )
    meta_path = p / "zarr.json"
    if not meta_path.is_file():
        if (p / ".zgroup").is_file() or (p / ".zarray").is_file():
            raise InputError(
                f"{p} is a Zarr format 2 store; ulmtools reads Zarr format 3",
                "copy its arrays and attributes into a zarr_format=3 group with zarr-python 3 "
                "and describe it as in the EXAMPLES of 'man 5 ulm-stores', or bring the data "
                "in with ulm import",
            )
        raise InputError(f"{p} is not a Zarr store (no zarr.json)", "check the path")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        raise InputError(f"{p} is not a Zarr format 3 store")
    if meta.get("node_type") != "group":
        raise InputError(f"{p} is a Zarr array, not a ulmtools store (a group)")
    ulm = meta.get("attributes", {}).get("ulm")
    if not isinstance(ulm, dict) or "kind" not in ulm or "version" not in ulm:
        raise InputError(
            f"{p} is a Zarr store but not a ulmtools store (no 'ulm' kind/version attribute)",
            "see 'man 5 ulm-stores' for how to describe your own data",
        )
    found_kind, found_version = str(ulm["kind"]), str(ulm["version"])
    wanted = [kind] if isinstance(kind, str) else list(kind or [])
    if wanted and found_kind not in wanted:
        raise InputError(
            f"{p} is {_a(found_kind)} store; this needs {_a(' or '.join(wanted))} store",
            _kind_hint(wanted),
        )
    spec = KINDS.get(found_kind)
    if spec is None:
        raise InputError(f"{p} has unknown kind {found_kind!r}; known: {', '.join(KINDS)}")
    try:
        found_major = major(found_version)
    except ValueError:
        raise InputError(f"{p} has a malformed version {found_version!r}") from None
    if found_major != major(spec.version):
        newer = found_major > major(spec.version)
        raise InputError(
            f"{p} is a {found_kind} store of version {found_version}; "
            f"this ulmtools {__version__} reads version {major(spec.version)}.x",
            "upgrade ulmtools" if newer else "recreate the store with this ulmtools",
        )
    _check_attribute_types(p, meta.get("attributes", {}), found_kind)
    _check_nodes(p)
    try:
        # the nodes' own metadata, not the consolidated copy: a store edited by hand since
        # it was written would otherwise be read as it was
        group = zarr.open_group(str(p), mode="r", zarr_format=3, use_consolidated=False)
    except Exception as exc:
        raise InputError(
            f"{p}: the group's metadata is invalid ({exc.__class__.__name__}: {exc})"
        ) from None
    store = Store(p, group, found_kind, found_version)
    for name in require_attrs or spec.required_attrs:
        if name not in group.attrs:
            raise InputError(f"{p} lacks the required attribute {name!r} of a {found_kind} store")
    for name in tuple(spec.required_arrays) + tuple(require_arrays):
        if name not in group or not isinstance(group[name], zarr.Array):
            raise InputError(f"{p} lacks the required array {name!r} of a {found_kind} store")
    if spec.any_of_arrays and not any(
        n in group and isinstance(group[n], zarr.Array) for n in spec.any_of_arrays
    ):
        raise InputError(
            f"{p} holds none of the arrays {', '.join(spec.any_of_arrays)} "
            f"that a {found_kind} store needs"
        )
    if spec.extra_check is not None:
        spec.extra_check(group, str(p))
    return store


#: Root attributes whose JSON type is fixed by the store format (``man 5 ulm-stores``).
_ATTRIBUTE_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "axes": (list,),
    "grid": (dict,),
    "provenance": (list,),
    "acquisition": (dict,),
}
#: Those of sparse stores (the dense movie shape and the movie count).
_SPARSE_ATTRIBUTE_TYPES: dict[str, tuple[type, ...]] = {"shape": (list,), "movies": (int,)}
_JSON_NAME = {str: "a string", list: "a list", dict: "an object", int: "an integer"}


def _json_type(value: Any) -> str:
    for t, name in ((bool, "a boolean"), (str, "a string"), (int, "an integer"),
                    (float, "a number"), (list, "a list"), (dict, "an object")):  # fmt: skip
        if isinstance(value, t):
            return name
    return "null"


def _check_attribute_types(p: Path, attrs: Any, kind: str) -> None:
    """Refuse root attributes of the wrong JSON type before any stage reads them."""
    if not isinstance(attrs, dict):
        raise InputError(f"{p}: the root attributes are not a JSON object")
    types_of = _ATTRIBUTE_TYPES | (_SPARSE_ATTRIBUTE_TYPES if kind == "sparse" else {})
    for name, types in types_of.items():
        if name not in attrs:
            continue
        value = attrs[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise InputError(
                f"{p}: the {name!r} attribute is {_json_type(value)}; "
                f"it must be {_JSON_NAME[types[0]]}",
                "see 'man 5 ulm-stores' for the store format",
            )
    for i, entry in enumerate(attrs.get("provenance", [])):
        if not isinstance(entry, dict):
            raise InputError(
                f"{p}: provenance entry {i} is {_json_type(entry)}; each entry must be an object",
                "see 'man 5 ulm-stores' for the store format",
            )
    shape = attrs.get("shape") if kind == "sparse" else None
    if shape is not None and not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise InputError(
            f"{p}: the 'shape' attribute {shape!r} is not a list of non-negative integers"
        )


def _check_nodes(root: Path) -> None:
    """Read every node's zarr.json under ``root`` and check each array's metadata.

    Walks groups only (an array's folders hold chunks), so the cost does not grow
    with the number of chunks. Refuses with the node's path named.
    """
    pending = [root]
    while pending:
        node = pending.pop()
        for child in sorted(node.iterdir()):
            meta_path = child / "zarr.json"
            if not child.is_dir() or not meta_path.is_file():
                continue
            meta = _read_json(meta_path)
            if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
                raise InputError(
                    f"{child}: invalid Zarr metadata (zarr.json is not Zarr format 3)",
                    "the store is corrupt: restore it from a copy or recreate it",
                )
            kind = meta.get("node_type")
            if kind == "group":
                pending.append(child)
            elif kind == "array":
                try:
                    zarr.open_array(str(child), mode="r", zarr_format=3)
                except Exception as exc:
                    raise InputError(
                        f"{child}: invalid array metadata ({exc.__class__.__name__}: {exc})",
                        "the store is corrupt: restore it from a copy or recreate it",
                    ) from None
            else:
                raise InputError(f"{child}: zarr.json has an unknown node_type {kind!r}")


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


_PRODUCER = {
    "channel": "ulm simulate --level channel, or ulm import --kind channel",
    "image": "ulm beamform, ulm simulate --level image, or ulm import --kind image",
    "sparse": "ulm sparsify",
    "model": "ulm train",
    "prediction": "ulm infer",
    "tracks": "ulm track",
    "angiogram": "a map of your own described as in 'man 5 ulm-stores'",
}


def _kind_hint(wanted: Sequence[str]) -> str:
    makers = [_PRODUCER[k] for k in wanted if k in _PRODUCER]
    return f"make one with {' or '.join(makers)}" if makers else "check the input path"


def check_finite(
    data: np.ndarray, what: str, *, movie: int | None = None, first_frame: int = 0
) -> None:
    """Refuse NaN or infinite values in ``data`` (a movie, or a block of its frames).

    ``what`` names the array (``STORE/ARRAY``); with ``movie`` the message names
    the movie and the first bad frame (axis 0 of ``data`` is frames from ``first_frame``).
    A single sum finds finite data fast; only a non-finite sum (or an overflow) looks closer.
    """
    a = np.asarray(data)
    if a.size == 0 or a.dtype.kind not in "fc":
        return
    with np.errstate(all="ignore"):
        if np.isfinite(a.sum()):
            return
    bad = ~np.isfinite(a)
    if not bad.any():  # the sum overflowed; every value is finite
        return
    where = ""
    if movie is not None:
        where = f" in movie {movie}"
        if a.ndim > 1:
            frame = first_frame + int(np.flatnonzero(bad.reshape(len(a), -1).any(axis=1))[0])
            where += f", frame {frame}"
    raise InputError(
        f"{what} holds {int(bad.sum())} non-finite (NaN or infinite) value(s){where}",
        "repair or drop the bad data and rerun",
    )


# ---------------------------------------------------------------------------
# Writing stores atomically
# ---------------------------------------------------------------------------


def check_output(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Refuse an output path early, before any work is done.

    Raises :class:`OutputError` (exit code 4) when the output exists and
    ``force`` is not set, when it would overwrite one of the inputs, or when
    its parent directory is missing or not writable.
    """
    out = Path(path)
    if str(path) == "-":
        raise UsageError(
            "'-' is not an output store: stores are directories, not stdout",
            "give a path such as out.zarr (results go to stdout anyway; use --json for them)",
        )
    where = out.resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if src == where:
            raise OutputError(f"the output {out} is also an input", "write to another path")
        if where.is_relative_to(src):
            raise OutputError(
                f"the output {out} is inside the input {inp}; writing there would change it",
                "write outside the input store",
            )
        if src.is_relative_to(where):
            raise OutputError(
                f"the input {inp} is inside the output {out}; replacing it would destroy it",
                "write to another path",
            )
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputError(f"{out} exists", "use --force to overwrite it")
        if out.is_dir() and not (out / "zarr.json").exists() and any(out.iterdir()):
            raise OutputError(
                f"{out} is a non-empty directory that is not a Zarr store; refusing to replace it",
                "choose another output path",
            )
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"the directory {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"the directory {parent} is not writable", "choose another output path")
    return out


def store_id() -> str:
    return uuid.uuid4().hex


def provenance_entry(
    stage: str,
    parameters: Mapping[str, Any],
    inputs: Sequence[Store] = (),
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One provenance record: what ran, with which resolved parameters, on what."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return {
        "stage": stage,
        "command": shlex.join(argv),
        "parameters": _jsonable(dict(parameters)),
        "version": __version__,
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "libraries": _library_versions(),
        "inputs": [s.describe() for s in inputs],
    }


def lineage(inputs: Sequence[Store], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The provenance list of a new store: its inputs' lists, then ``entry``.

    With several inputs, entries already present (same stage, time and
    command) are kept once, so shared ancestry is not repeated.
    """
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for s in inputs:
        for e in s.provenance:
            key = json.dumps([e.get("stage"), e.get("time"), e.get("command")])
            if key not in seen:
                seen.add(key)
                out.append(e)
    out.append(dict(entry))
    return out


def _library_versions() -> dict[str, str]:
    versions = {"numpy": np.__version__, "zarr": zarr.__version__}
    for mod in ("torch", "scipy", "numba", "pymust", "MinkowskiEngine"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            versions[mod] = str(m.__version__)
    return versions


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars, tuples, paths and dataclasses to plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


jsonable = _jsonable


def _temporary_sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(out: Path) -> None:
    """Remove temporaries left beside ``out`` by writers that were killed (kill -9)."""
    prefix = f".{out.name}."
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        name = p.name
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("-")
        if len(parts) != 3 or parts[0] not in ("partial", "old") or not parts[1].isdigit():
            continue
        if int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def create_store(
    path: str | os.PathLike[str],
    kind: str,
    *,
    provenance: Sequence[Mapping[str, Any]],
    grid: Grid | None = None,
    axes: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    force: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    final: bool = True,
) -> Iterator[zarr.Group]:
    """Create a store of ``kind`` atomically; yield its writable root group.

    The store is written under a hidden temporary name beside ``path`` and
    renamed into place when the ``with`` block ends without an exception. On
    any exception (including KeyboardInterrupt) the temporary store is
    removed and an existing output is left as it was. An OS error while
    writing (a full disk, a read-only file system) becomes an
    :class:`OutputError` (exit code 4).

    ``final`` marks the command's result: from just before its rename until the
    command returns, SIGTERM and Ctrl-C are held (see :mod:`ulmtools.interrupts`),
    so a finished run is never reported as interrupted. Intermediate stores
    (training checkpoints) pass ``final=False``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown store kind {kind!r}")
    out = check_output(path, force=force, inputs=inputs)
    _sweep_stale(out)
    tmp = _temporary_sibling(out, "partial")
    root_attrs: dict[str, Any] = {
        "ulm": {"kind": kind, "version": KINDS[kind].version},
        "id": store_id(),
        "provenance": _jsonable(list(provenance)),
    }
    if axes is not None:
        root_attrs["axes"] = axes_metadata(axes)
    if grid is not None:
        root_attrs["grid"] = grid.to_attrs()
    if attrs:
        root_attrs.update(_jsonable(dict(attrs)))
    try:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        group.attrs.update(root_attrs)
        yield group
        conventions.finish(group, str(tmp))
        if final:  # from here the run is complete: a signal no longer interrupts it
            interrupts.finishing()
        with interrupts.held():
            _replace(tmp, out, force=force)
    except OSError as exc:
        _discard(tmp)
        error = write_error(exc, out, tmp)
        if error is None:
            raise
        raise error from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary store for good, whatever signal arrives meanwhile.

    Writes still in flight on zarr's I/O thread are waited for first: one that
    landed after the removal would re-create the folder with a stray chunk in it.
    """
    with interrupts.held(reraise=False):
        _drain_zarr_io()
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():  # a write raced the removal
            _drain_zarr_io()
            shutil.rmtree(tmp, ignore_errors=True)


def _drain_zarr_io(timeout: float = 30.0) -> None:
    """Wait for the tasks on zarr's event loop (writes an interruption left running)."""
    import asyncio

    from zarr.core import sync as zsync

    loop = zsync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def drain() -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    with contextlib.suppress(Exception):  # a stuck loop must not turn cleanup into a crash
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout + 5)


#: errno values that only a write can cause: always an output problem.
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on {dir}",
    errno.EDQUOT: "disk quota exceeded on {dir}",
    errno.EROFS: "{dir} is on a read-only file system",
    errno.EFBIG: "a file grew too large for the file system of {dir}",
}


def write_error(exc: OSError, out: Path, tmp: Path | None = None) -> OutputError | None:
    """The :class:`OutputError` (exit 4) for an OS error met while writing ``out``.

    A full disk, a quota, a read-only file system or a file-size limit always is
    one; any other OS error is when it names a file of the output (or its
    temporary). Returns None for an OS error about something else (an input).
    """
    where = out.resolve().parent
    template = _WRITE_ERRNOS.get(exc.errno) if exc.errno is not None else None
    if template is not None:
        return OutputError(
            f"{template.format(dir=where)} while writing {out}; nothing was left behind",
            "free some space, or write the output elsewhere",
        )
    names = [exc.filename, getattr(exc, "filename2", None)]
    ours = [out.resolve()] + ([tmp.resolve()] if tmp is not None else [])
    for name in names:
        if name is None:
            continue
        path = Path(os.fsdecode(name)).resolve()
        if any(path == o or path.is_relative_to(o) for o in ours):
            return OutputError(
                f"cannot write {out}: {exc.strerror or exc}; nothing was left behind",
                "check the output directory's permissions and space",
            )
    return None


def _replace(tmp: Path, out: Path, *, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:  # appeared while we were writing
            raise OutputError(f"{out} exists", "use --force to overwrite it")
        old = _temporary_sibling(out, "old")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.rename(tmp, out)


# ---------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------

CHUNK_TARGET_BYTES = 32 * 2**20


def default_chunks(
    shape: Sequence[int], dtype: Any, *, target_bytes: int = CHUNK_TARGET_BYTES
) -> tuple[int, ...]:
    """One movie per chunk, or part of one when a movie is large.

    The leading axis is the movie axis (chunk 1); if a movie exceeds
    ``target_bytes``, the second axis (frames) is split into equal blocks
    so a chunk stays near the target. Other axes are never split, so a
    reader of a block of frames gets whole images.
    """
    shape = tuple(int(n) for n in shape)
    if not shape:
        return ()
    itemsize = np.dtype(dtype).itemsize
    chunks = [1] + [max(n, 1) for n in shape[1:]]
    if len(shape) == 1:
        return (max(1, min(shape[0], target_bytes // itemsize)),)
    movie_bytes = itemsize * int(np.prod(chunks[1:]))
    if movie_bytes > target_bytes and len(shape) > 1:
        per_frame = movie_bytes // max(shape[1], 1)
        chunks[1] = max(1, min(shape[1], target_bytes // max(per_frame, 1)))
    return tuple(chunks)


def create_array(
    group: zarr.Group,
    name: str,
    *,
    shape: Sequence[int],
    dtype: Any,
    dims: Sequence[str],
    chunks: Sequence[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
    fill_value: Any = None,
) -> zarr.Array:
    """Create an array with named dimensions and the default movie chunking."""
    if len(dims) != len(shape):
        raise ValueError(f"{name}: {len(dims)} dimension names for a {len(shape)}-d shape")
    arr = group.create_array(
        name,
        shape=tuple(int(n) for n in shape),
        dtype=dtype,
        chunks=tuple(chunks) if chunks is not None else default_chunks(shape, dtype),
        dimension_names=list(dims),
        fill_value=fill_value,
    )
    meta: dict[str, Any] = {"axes": axes_metadata(dims)}
    if attrs:
        meta.update(_jsonable(dict(attrs)))
    arr.attrs.update(meta)
    return arr


def write_array(
    group: zarr.Group,
    name: str,
    data: np.ndarray,
    *,
    dims: Sequence[str],
    chunks: Sequence[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> zarr.Array:
    """Create an array and fill it with ``data`` in one go."""
    data = np.asarray(data)
    arr = create_array(
        group, name, shape=data.shape, dtype=data.dtype, dims=dims, chunks=chunks, attrs=attrs
    )
    if data.size:
        arr[...] = data
    return arr
