"""Arrays in lab files, read lazily in blocks along one axis.

A :class:`SourceArray` has a *logical* shape: the shape MATLAB or NumPy shows
for the variable. MATLAB v7.3 files are HDF5 written column-major, so the
HDF5 dataset's axes are the MATLAB axes reversed; the reader reverses them
back, so a MATLAB ``IQ`` of size (nz, nx, nt) has logical shape (nz, nx, nt)
whichever version wrote it. Complex MATLAB data in v7.3 is an HDF5 compound
of ``real`` and ``imag``; plain HDF5 files may hold the same compound or a
native complex type.

What streams and what does not:

* ``.npy`` and uncompressed ``.npz`` members: memory-mapped; the pages a block
  touched are released after each block (``madvise(MADV_DONTNEED)``), so the
  resident size stays at one block whatever the file size;
* ``.mat`` v7.3 and ``.h5``/``.hdf5``: HDF5 hyperslabs, one block at a time;
* ``.mat`` v5 (at most 2 GB per variable) and compressed ``.npz`` members: read
  whole, as scipy and numpy offer no partial reads of them.

Blocks are cheapest along the axis that varies slowest on disk: the last
MATLAB axis (frames in PALA's (nz, nx, nt)) and the first NumPy axis.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ulmtools.errors import InputError

FORMATS = ("npy", "npz", "mat-v5", "mat-v7.3", "hdf5")
MAT73_HEADER = b"MATLAB 7.3 MAT-file"


def detect_format(path: Path) -> str:
    """The format of ``path`` from its suffix and, for .mat, its header."""
    if not path.exists():
        raise InputError(f"no such file: {path}", "check the path")
    if path.is_dir():
        raise InputError(
            f"{path} is a directory, not a file to import",
            "ulm import reads .mat, .h5/.hdf5, .npy or .npz files",
        )
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix == ".npz":
        return "npz"
    if suffix in (".h5", ".hdf5", ".he5"):
        return "hdf5"
    if suffix == ".mat":
        with open(path, "rb") as fh:
            head = fh.read(128)
        if head.startswith(MAT73_HEADER) or _is_hdf5(path):
            return "mat-v7.3"
        if head[:6] == b"MATLAB":
            return "mat-v5"
        raise InputError(f"{path} is not a MATLAB file (no MATLAB header)")
    raise InputError(
        f"{path}: unknown file type {suffix or '(no suffix)'!r}",
        "ulm import reads .mat (v5, v7.3), .h5/.hdf5, .npy and .npz",
    )


def _is_hdf5(path: Path) -> bool:
    import h5py

    return bool(h5py.is_hdf5(str(path)))


def sha256(path: Path, block: int = 8 * 2**20) -> str:
    """The file's SHA-256, read in blocks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SourceArray:
    """One array of a file, read block by block along one logical axis."""

    path: Path
    format: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    streamed: bool
    _read: Any = field(repr=False, default=None)
    _release: Any = field(repr=False, default=None)
    _close: Any = field(repr=False, default=None)

    @property
    def complex(self) -> bool:
        return self.dtype.kind == "c"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The block ``index`` (one slice per logical axis), in memory.

        Memory-mapped pages the block touched are released afterwards.
        """
        out = self._read(tuple(index))
        if self._release is not None:
            self._release()
        return out

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


# ---------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------


def _memmap_reader(mm: np.ndarray) -> tuple[Any, Any]:
    raw = getattr(mm, "_mmap", None)

    def read(index: tuple[slice, ...]) -> np.ndarray:
        return np.array(mm[index])

    def release() -> None:
        # the mapped pages a block touched would otherwise count as resident until unmapped
        if raw is not None and hasattr(mmap, "MADV_DONTNEED"):
            raw.madvise(mmap.MADV_DONTNEED)

    return read, release


def _open_npy(path: Path) -> SourceArray:
    try:
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {path} as a .npy array: {exc}") from None
    read, release = _memmap_reader(mm)
    return SourceArray(path, "npy", path.stem, tuple(mm.shape), mm.dtype, True, read, release)


def _npz_shapes(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """Member names and shapes from their .npy headers (no member is read whole)."""
    out = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if not name.endswith(".npy"):
                continue
            with z.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            if dtype.kind in "iufc":
                out.append((name[:-4], tuple(shape)))
    return out


def _open_npz(path: Path, var: str) -> SourceArray:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot read {path} as a .npz archive: {exc}") from None
    with zf:
        info = zf.getinfo(var + ".npy")
        stored = info.compress_type == zipfile.ZIP_STORED
    if stored:
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
        if dtype.hasobject:
            raise InputError(f"{path}:{var} holds Python objects, not numbers")
        mm = np.memmap(
            path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
        )
        read, release = _memmap_reader(mm)
        return SourceArray(path, "npz", var, tuple(shape), dtype, True, read, release)
    data = np.load(path, allow_pickle=False)[var]
    return SourceArray(
        path, "npz", var, tuple(data.shape), data.dtype, False, lambda i: np.array(data[i])
    )


# ---------------------------------------------------------------------------
# MATLAB v5
# ---------------------------------------------------------------------------


def _mat5_names(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    import scipy.io

    try:
        return [(n, tuple(s), c) for n, s, c in scipy.io.whosmat(str(path))]
    except Exception as exc:
        raise InputError(f"cannot read {path} as a MATLAB v5 file: {exc}") from None


def _open_mat5(path: Path, var: str) -> SourceArray:
    import scipy.io

    data = scipy.io.loadmat(str(path), variable_names=[var])[var]
    if data.dtype.kind not in "iufc":
        raise InputError(f"{path}:{var} is a MATLAB {data.dtype} value, not a numeric array")
    return SourceArray(
        path, "mat-v5", var, tuple(data.shape), data.dtype, False, lambda i: np.array(data[i])
    )


def mat5_struct(path: Path, name: str) -> dict[str, Any] | None:
    """A MATLAB v5 struct (or struct array) as nested dicts / lists of dicts."""
    import scipy.io

    if name not in {n for n, _, _ in _mat5_names(path)}:
        return None
    value = scipy.io.loadmat(str(path), variable_names=[name], simplify_cells=True)[name]
    return value if isinstance(value, (dict, list)) else {"value": value}


# ---------------------------------------------------------------------------
# HDF5 (MATLAB v7.3 and plain)
# ---------------------------------------------------------------------------


def _h5_complex(dtype: np.dtype) -> bool:
    return dtype.names is not None and {"real", "imag"} <= set(dtype.names)


def _h5_datasets(path: Path) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    import h5py

    out: list[tuple[str, tuple[int, ...], np.dtype]] = []
    with h5py.File(path, "r") as f:

        def visit(name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset) and not name.startswith("#refs#"):
                out.append((name, tuple(node.shape), node.dtype))

        f.visititems(visit)
    return out


def _open_h5(path: Path, var: str, matlab: bool) -> SourceArray:
    import h5py

    f = h5py.File(path, "r")
    if var not in f or not isinstance(f[var], h5py.Dataset):
        f.close()
        raise InputError(f"{path} has no dataset {var!r}", "name one with --var")
    ds = f[var]
    raw = ds.dtype
    if _h5_complex(raw):
        dtype = np.result_type(raw["real"], raw["imag"], np.complex64)
    elif raw.kind in "iufc":
        dtype = raw
    else:
        f.close()
        raise InputError(f"{path}:{var} has the type {raw}, not a numeric array")
    shape = tuple(ds.shape[::-1]) if matlab else tuple(ds.shape)

    def read(index: tuple[slice, ...]) -> np.ndarray:
        a = ds[index[::-1] if matlab else index]
        if _h5_complex(raw):
            a = a["real"] + 1j * a["imag"].astype(dtype)
            a = a.astype(dtype, copy=False)
        return np.ascontiguousarray(a.T) if matlab else a

    fmt = "mat-v7.3" if matlab else "hdf5"
    return SourceArray(path, fmt, var, shape, np.dtype(dtype), True, read, None, f.close)


def h5_struct(path: Path, name: str, *, matlab: bool = True) -> dict[str, Any] | None:
    """A group of a v7.3 file as a dict (MATLAB structs; struct arrays as lists)."""
    import h5py

    with h5py.File(path, "r") as f:
        if name not in f:
            return None
        return _h5_value(f, f[name], matlab)  # type: ignore[no-any-return]


def _h5_value(f: Any, node: Any, matlab: bool) -> Any:
    import h5py

    if isinstance(node, h5py.Group):
        fields = {k: _h5_value(f, node[k], matlab) for k in node}
        lists = [v for v in fields.values() if isinstance(v, _RefList)]
        if lists and len(lists) == len(fields):  # a struct array: one reference per element
            n = len(lists[0])
            return [{k: v[i] for k, v in fields.items()} for i in range(n)]
        return {k: (list(v) if isinstance(v, _RefList) else v) for k, v in fields.items()}
    data = node[()]
    if node.dtype == h5py.ref_dtype or (
        isinstance(data, np.ndarray) and data.dtype == object and data.size
    ):
        return _RefList(_h5_value(f, f[r], matlab) for r in np.asarray(data).ravel())
    cls = node.attrs.get("MATLAB_class")
    cls = cls.decode() if isinstance(cls, bytes) else cls
    if cls == "char":
        return "".join(chr(c) for c in np.asarray(data).ravel())
    a = np.asarray(data)
    if _h5_complex(a.dtype):
        a = a["real"] + 1j * a["imag"]
    if matlab:
        a = a.T
    return _squeeze(a)


class _RefList(list):  # type: ignore[type-arg]
    """Values behind an array of HDF5 object references (MATLAB cell or struct array)."""


def _squeeze(a: np.ndarray) -> Any:
    a = np.squeeze(a)
    return a.item() if a.ndim == 0 else a


# ---------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------


@dataclass
class SourceFile:
    """An opened lab file: its format, its arrays and its parameter structs."""

    path: Path
    format: str

    def arrays(self) -> list[tuple[str, tuple[int, ...]]]:
        """Numeric arrays with their logical shapes, file order."""
        if self.format == "npy":
            return [(self.path.stem, tuple(np.load(self.path, mmap_mode="r").shape))]
        if self.format == "npz":
            try:
                return _npz_shapes(self.path)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise InputError(f"cannot read {self.path} as a .npz archive: {exc}") from None
        if self.format == "mat-v5":
            numeric = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                       "int64", "uint64"}  # fmt: skip
            return [(n, s) for n, s, c in _mat5_names(self.path) if c in numeric]
        matlab = self.format == "mat-v7.3"
        return [
            (n, s[::-1] if matlab else s)
            for n, s, d in _h5_datasets(self.path)
            if d.kind in "iufc" or _h5_complex(d)
        ]

    def choose(self, var: str | None, preferred: tuple[str, ...]) -> str:
        """The variable to import: ``var``, else a preferred name, else the largest >= 3-D."""
        names = self.arrays()
        if var is not None:
            if var not in {n for n, _ in names}:
                listed = ", ".join(f"{n} {_shape(s)}" for n, s in names) or "none"
                raise InputError(
                    f"{self.path} has no numeric array {var!r}",
                    f"its arrays: {listed}; name one with --var",
                )
            return var
        if self.format == "npy":
            return names[0][0]
        for p in preferred:
            for n, _ in names:
                if n == p or n.lower() == p.lower():
                    return n
        big = [(int(np.prod(s)), n) for n, s in names if len(s) >= 3]
        if len(big) == 1:
            return big[0][1]
        listed = ", ".join(f"{n} {_shape(s)}" for n, s in names) or "none"
        raise InputError(
            f"{self.path}: cannot tell which array to import (arrays: {listed})",
            "name it with --var",
        )

    def open(self, var: str) -> SourceArray:
        if self.format == "npy":
            return _open_npy(self.path)
        if self.format == "npz":
            return _open_npz(self.path, var)
        if self.format == "mat-v5":
            return _open_mat5(self.path, var)
        return _open_h5(self.path, var, matlab=self.format == "mat-v7.3")

    def struct(self, name: str) -> Any:
        """A MATLAB struct (PData, UF, Trans, TX, Receive, Resource...) or None."""
        if self.format == "mat-v5":
            return mat5_struct(self.path, name)
        if self.format == "mat-v7.3":
            return h5_struct(self.path, name, matlab=True)
        if self.format == "hdf5":
            return h5_struct(self.path, name, matlab=False)
        return None  # .npy and .npz carry no parameter structs


def open_source(path: str | os.PathLike[str]) -> SourceFile:
    p = Path(path)
    return SourceFile(p, detect_format(p))


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in s) if s else "scalar"


def iter_blocks(n: int, block: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, block):
        yield a, min(n, a + block)


def scalar(struct: Mapping[str, Any] | None, *names: str) -> float | None:
    """The first of ``names`` present in ``struct`` as a float (case-insensitive)."""
    if not isinstance(struct, Mapping):
        return None
    lower = {str(k).lower(): v for k, v in struct.items()}
    for n in names:
        v = lower.get(n.lower())
        if v is None:
            continue
        a = np.asarray(v, dtype=np.float64).ravel()
        if a.size:
            return float(a[0])
    return None
