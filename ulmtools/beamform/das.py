"""Delay-and-sum (DAS) beamforming of plane-wave channel IQ as one sparse matrix.

Public API (stable; ``ulm simulate`` imports it)::

    from ulmtools.beamform.das import DASOperator
    op = DASOperator(acq, grid)             # built once per geometry, then cached
    images = op.apply(channel_iq)           # (F, T, S, E) complex -> (F, *grid.shape) complex64
    op.matrix                               # scipy.sparse.csr_matrix (pixels, T*E*S)

The operator beamforms every transmit and compounds them coherently (a sum
over transmits) in one product with a sparse matrix: row ``p`` is the pixel
``p`` of ``grid`` in C order, column ``t*E*S + e*S + s`` is sample ``s`` of
element ``e`` in transmit ``t``. So ``op.matrix @ x`` with
``x = channel_iq.transpose(0, 1, 3, 2).reshape(F, -1).T`` equals ``op.apply``;
each transmit's block of columns is laid out as pymust's ``dasmtx`` matrix
(samples fastest).

Model (the conventions of :mod:`ulmtools.acquisition`, in SI units):

* transmit time to a point: the first arrival of the wavelets the elements
  fire, ``min_e(delay[t, e] + |r - r_e| / c)``. This is exact for plane waves
  inside the insonified region and holds for any delays (diverging, focused,
  sub-apertures with NaN delays). Along a linear array the wavelet sources are
  refined 4x by cubic interpolation along the element index, as pymust does;
  on a matrix array the element centres are used (likewise);
* receive time: ``|r - r_e| / c``;
* the sample at ``tau`` is interpolated (linear or nearest) in the IQ signal
  at fractional index ``(tau - t0) * fs`` and rotated back to RF phase by
  ``exp(2j*pi*f_demod*tau)``, which is folded into the complex weights;
* receive aperture: element ``e`` contributes to a point at depth ``dz`` only
  if ``|dx| <= |dz| / (2 F_x)`` and ``|dy| <= |dz| / (2 F_y)`` (F = 0: no limit).
  ``fnumber=None`` picks F from the element directivity (pymust's criterion:
  the angle where ``cos(th) sinc(w sin(th) / lambda_min)`` falls to 0.71).

With the same f-number and interpolation the matrix equals pymust's
``dasmtx``/``dasmtx3`` blocks (stacked over transmits) to float32 precision.

Operators are cached per (acquisition, grid, options) hash, so building a
second ``DASOperator`` for the same geometry costs a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import scipy.interpolate
import scipy.optimize
import scipy.sparse

from ulmtools.acquisition import Acquisition
from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid

__all__ = [
    "DASOperator",
    "auto_fnumber",
    "clear_cache",
    "grid_points",
    "receive_times",
    "transmit_sources",
    "transmit_times",
]

INTERPOLATIONS = ("nearest", "linear")
TX_REFINE = 4  # wavelet sources per element along a linear array (pymust's choice)
BLOCK_BYTES = 32 * 2**20  # largest copy of one thread's block of frames
TILE = 8  # pixels per tile edge in the apply kernel's visiting order
CACHE_SIZE = 4  # operators kept in memory at most...
CACHE_BYTES = 3 * 2**30  # ...and within this many bytes (a 3D one weighs 1-2 GB)


# ---------------------------------------------------------------------------
# Geometry helpers (shared with the point-echo model, so both use one physics)
# ---------------------------------------------------------------------------


def grid_points(grid: Grid) -> np.ndarray:
    """Pixel centres of ``grid`` as (P, 3) ``(z, x, y)`` metres, pixels in C order."""
    coords = np.meshgrid(*[grid.coordinates(i) for i in range(grid.ndim)], indexing="ij")
    pts = np.zeros((int(np.prod(grid.shape)), 3), dtype=np.float64)
    for axis, c in zip(grid.axes, coords):
        if axis not in ("z", "x", "y"):
            raise InputError(f"grid axis {axis!r} is not a spatial axis (z, x or y)")
        pts[:, "zxy".index(axis)] = c.ravel()
    return pts


def _is_linear_array(pos: np.ndarray) -> bool:
    """Elements on one line along x (z and y constant), in increasing x."""
    if len(pos) < 4:
        return False
    on_line = np.ptp(pos[:, 0]) == 0 and np.ptp(pos[:, 2]) == 0
    return bool(on_line and np.all(np.diff(pos[:, 1]) > 0))


def transmit_sources(acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Wavelet sources of each transmit: positions (T, N, 3) and firing times (T, N).

    Inactive elements (NaN delay) are dropped; transmits with fewer sources are
    padded with ``+inf`` firing times. Along a linear array the active
    elements are refined to ``4 * n`` sources by cubic interpolation along
    the element index.
    """
    pos = acq.element_positions
    delays = acq.transmit_delays
    refine = acq.dim == 2 and _is_linear_array(pos)
    srcs, times = [], []
    for d in delays:
        active = np.isfinite(d)
        p, t = pos[active], d[active]
        if len(p) == 0:
            raise InputError("a transmit has no active element (all delays are NaN)")
        if refine and len(p) >= 4:
            idx = np.linspace(0, len(p) - 1, TX_REFINE * len(p))
            along = np.arange(len(p))
            p = np.stack(
                [scipy.interpolate.interp1d(along, p[:, k], kind="cubic")(idx) for k in range(3)],
                axis=1,
            )
            t = scipy.interpolate.interp1d(along, t, kind="cubic")(idx)
        srcs.append(p)
        times.append(t)
    n = max(len(s) for s in srcs)
    src = np.zeros((len(srcs), n, 3))
    tim = np.full((len(srcs), n), np.inf)
    for i, (s, t) in enumerate(zip(srcs, times)):
        src[i, : len(s)] = s
        tim[i, : len(t)] = t
    return src, tim


@numba.njit(parallel=True, cache=True)
def _tx_distance(points, src, src_times, c):  # pragma: no cover - compiled
    n_tx, n_src = src_times.shape
    n_pts = points.shape[0]
    out = np.empty((n_tx, n_pts))
    for p in numba.prange(n_pts):
        z, x, y = points[p, 0], points[p, 1], points[p, 2]
        for t in range(n_tx):
            best = np.inf
            for s in range(n_src):
                dz = src[t, s, 0] - z
                dx = src[t, s, 1] - x
                dy = src[t, s, 2] - y
                d = src_times[t, s] * c + math.sqrt(dx * dx + dy * dy + dz * dz)
                if d < best:
                    best = d
            out[t, p] = best
    return out


def transmit_times(acq: Acquisition, points: np.ndarray) -> np.ndarray:
    """Arrival time (s) of each transmit's wave front at ``points`` (P, 3): (T, P)."""
    src, tim = transmit_sources(acq)
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    return _tx_distance(pts, src, tim, acq.speed_of_sound) / acq.speed_of_sound


def receive_times(acq: Acquisition, points: np.ndarray) -> np.ndarray:
    """Travel time (s) from ``points`` (P, 3) back to each element: (P, E)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 3)
    d = np.sqrt(((pts - acq.element_positions[None]) ** 2).sum(-1))
    return d / acq.speed_of_sound


def auto_fnumber(width: float, center_frequency: float, bandwidth: float, c: float) -> float:
    """Receive f-number from element directivity (0 when the width is unknown).

    The acceptance angle is where ``cos(th) * sinc(width * sin(th) / lambda_min)``
    falls to 0.71, with ``lambda_min`` the wavelength at the top of the -6 dB
    band; F = 1 / (2 tan(angle)). This is pymust's criterion, solved exactly.
    """
    if not width or width <= 0:
        return 0.0
    lam = c / (center_frequency * (1 + bandwidth / 2))

    def g(th: float) -> float:
        return math.cos(th) * np.sinc(width / lam * math.sin(th)) - 0.71

    if g(np.pi / 2 - 1e-9) >= 0:  # never falls that far: the element sees everything
        return 0.0
    th = scipy.optimize.brentq(g, 0.0, np.pi / 2 - 1e-9, xtol=1e-12)
    return float(1 / 2 / math.tan(th))


# ---------------------------------------------------------------------------
# Building the matrix
# ---------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _count(points, elems, tx_dist, c, t0, fs, n_samples, fx, fy, npts):  # pragma: no cover
    n_tx = tx_dist.shape[0]
    n_el = elems.shape[0]
    n_pix = points.shape[0]
    last = n_samples - npts  # highest valid (fractional) start index
    counts = np.zeros(n_pix, dtype=np.int64)
    for p in numba.prange(n_pix):
        z, x, y = points[p, 0], points[p, 1], points[p, 2]
        n = 0
        for e in range(n_el):
            dz = z - elems[e, 0]
            dx = x - elems[e, 1]
            dy = y - elems[e, 2]
            if fx > 0 and abs(dx) > abs(dz) / 2.0 / fx:
                continue
            if fy > 0 and abs(dy) > abs(dz) / 2.0 / fy:
                continue
            drx = math.sqrt(dx * dx + dy * dy + dz * dz)
            for t in range(n_tx):
                idx = ((tx_dist[t, p] + drx) / c - t0) * fs
                if idx >= 0 and idx <= last:
                    n += npts
        counts[p] = n
    return counts


@numba.njit(parallel=True, cache=True)
def _fill(
    points, elems, tx_dist, c, t0, fs, n_samples, fx, fy, npts, fdemod, indptr, indices, data
):  # pragma: no cover
    n_tx = tx_dist.shape[0]
    n_el = elems.shape[0]
    n_pix = points.shape[0]
    last = n_samples - npts
    w0 = 2.0 * np.pi * fdemod
    for p in numba.prange(n_pix):
        z, x, y = points[p, 0], points[p, 1], points[p, 2]
        j = indptr[p]
        # columns ascend: transmit, then element, then sample
        for t in range(n_tx):
            base = t * n_el * n_samples
            for e in range(n_el):
                dz = z - elems[e, 0]
                dx = x - elems[e, 1]
                dy = y - elems[e, 2]
                if fx > 0 and abs(dx) > abs(dz) / 2.0 / fx:
                    continue
                if fy > 0 and abs(dy) > abs(dz) / 2.0 / fy:
                    continue
                drx = math.sqrt(dx * dx + dy * dy + dz * dz)
                tau = (tx_dist[t, p] + drx) / c
                idx = (tau - t0) * fs
                if idx < 0 or idx > last:
                    continue
                ph = w0 * tau
                rot = complex(math.cos(ph), math.sin(ph))
                col = base + e * n_samples
                if npts == 1:
                    indices[j] = col + math.floor(idx + 0.5)
                    data[j] = rot
                    j += 1
                else:
                    i0 = math.floor(idx)
                    frac = idx - i0
                    indices[j] = col + i0
                    data[j] = rot * (1.0 - frac)
                    indices[j + 1] = col + i0 + 1
                    data[j + 1] = rot * frac
                    j += 2


@dataclass(frozen=True)
class _Built:
    indptr: np.ndarray  # int64 (P + 1,)
    indices: np.ndarray  # int32 (nnz,): rows of the compact column list ``cols``
    data: np.ndarray  # complex64 (nnz,)
    cols: np.ndarray  # int64 (K,): the matrix columns any weight touches, ascending
    offsets: np.ndarray  # int64 (K,): where each of them sits in one frame (T, S, E), C order
    order: np.ndarray  # int64 (P,): the order the kernel visits pixels (tile by tile)
    fnumber: tuple[float, float]
    seconds: float


def _resolve_fnumber(acq: Acquisition, fnumber: Any) -> tuple[float, float]:
    if fnumber is None or (isinstance(fnumber, str) and fnumber == "auto"):
        c, fc, bw = acq.speed_of_sound, acq.center_frequency, acq.bandwidth
        fx = auto_fnumber(acq.element_width, fc, bw, c)
        fy = auto_fnumber(acq.element_height, fc, bw, c) if acq.dim == 3 else 0.0
        return fx, fy
    vals = np.atleast_1d(np.asarray(fnumber, dtype=np.float64))
    if vals.size not in (1, 2) or not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise UsageError(
            f"f-number must be 'auto', one or two non-negative numbers, got {fnumber!r}",
            "use 0 for the full aperture",
        )
    fx = float(vals[0])
    fy = float(vals[-1])
    return fx, fy


def _build(acq: Acquisition, grid: Grid, interp: str, fnumber: tuple[float, float]) -> _Built:
    start = time.perf_counter()
    points = grid_points(grid)
    src, tim = transmit_sources(acq)
    c = acq.speed_of_sound
    tx_dist = _tx_distance(points, src, tim, c)
    npts = 1 if interp == "nearest" else 2
    # nearest needs idx <= S - 1, linear idx <= S - 2 (pymust's windows)
    elems = np.ascontiguousarray(acq.element_positions)
    args = (points, elems, tx_dist, c, acq.t0, acq.sampling_frequency, acq.n_samples)
    fx, fy = fnumber
    counts = _count(*args, fx, fy, npts)
    indptr = np.zeros(len(points) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    n_cols = acq.n_transmits * acq.n_elements * acq.n_samples
    idx_dtype = np.int32 if max(nnz, n_cols) < 2**31 - 1 else np.int64
    indices = np.empty(nnz, dtype=idx_dtype)
    data = np.empty(nnz, dtype=np.complex64)
    _fill(*args, fx, fy, npts, acq.demodulation_frequency, indptr, indices, data)
    # Keep only the columns (transmit, element, sample) some pixel uses: the
    # per-thread copy of a block of frames then holds just those, so it stays
    # in cache. ``indices`` is rewritten in place to point into that list.
    cols = _compact(indices, n_cols)
    t, rest = np.divmod(cols, acq.n_elements * acq.n_samples)
    e, smp = np.divmod(rest, acq.n_samples)
    offsets = (t * acq.n_samples + smp) * acq.n_elements + e
    if len(cols) < 2**31 - 1 and indices.dtype != np.int32:
        indices = indices.astype(np.int32)
    order = tile_order(grid.shape)
    return _Built(
        indptr, indices, data, cols, offsets, order, (fx, fy), time.perf_counter() - start
    )


@numba.njit(cache=True)
def _compact_inplace(indices, n_cols):  # pragma: no cover - compiled
    rank = np.full(n_cols, -1, dtype=np.int64)
    for j in range(indices.shape[0]):
        rank[indices[j]] = 0
    k = 0
    for c in range(n_cols):
        if rank[c] == 0:
            rank[c] = k
            k += 1
    cols = np.empty(k, dtype=np.int64)
    for c in range(n_cols):
        if rank[c] >= 0:
            cols[rank[c]] = c
    for j in range(indices.shape[0]):
        indices[j] = rank[indices[j]]
    return cols


def _compact(indices: np.ndarray, n_cols: int) -> np.ndarray:
    return _compact_inplace(indices, n_cols)


def geometry_key(acq: Acquisition, grid: Grid, interp: str, fnumber: tuple[float, float]) -> str:
    """A hash of everything the matrix depends on."""
    payload = {
        "acq": acq.to_attrs(),
        "grid": {k: v for k, v in grid.to_attrs().items() if k != "frame_rate"},
        "interp": interp,
        "fnumber": list(fnumber),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


_CACHE: OrderedDict[str, _Built] = OrderedDict()
_LOCK = threading.Lock()


def _nbytes(b: _Built) -> int:
    return sum(a.nbytes for a in (b.indptr, b.indices, b.data, b.cols, b.offsets, b.order))


def clear_cache() -> None:
    """Forget every cached DAS matrix."""
    with _LOCK:
        _CACHE.clear()


def _cached_build(
    acq: Acquisition, grid: Grid, interp: str, fn: tuple[float, float]
) -> tuple[_Built, bool]:
    key = geometry_key(acq, grid, interp, fn)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key], True
    built = _build(acq, grid, interp, fn)
    with _LOCK:
        _CACHE[key] = built
        while len(_CACHE) > CACHE_SIZE or (
            len(_CACHE) > 1 and sum(_nbytes(v) for v in _CACHE.values()) > CACHE_BYTES
        ):
            _CACHE.popitem(last=False)
    return built, False


# ---------------------------------------------------------------------------
# Applying it
# ---------------------------------------------------------------------------


# No fastmath: with it, the code numba loads from its cache rounded differently
# (FMA contraction) from the code it had just compiled (relative 2e-6 on a 2D movie),
# so a process with a cold cache and one with a warm cache (a Dask worker beside the
# driver) gave different bytes. Strict IEEE arithmetic measured as fast here.
@numba.njit(parallel=True, cache=True, nogil=True)
def _apply(indptr, indices, data, offsets, order, x, out, block):  # pragma: no cover - compiled
    # x: (F, T*S*E) complex64; out: (F, P) complex64. Each thread takes a
    # block of frames and copies the used samples into a (column, re/im,
    # frame) layout, so the innermost loop over frames vectorises and one
    # weight touches one contiguous run of memory; then it runs the sparse rows
    # over it, visiting pixels tile by tile (``order``) so that neighbouring
    # pixels, which use nearly the same samples, find them in cache.
    n_f = x.shape[0]
    n_cols = offsets.shape[0]
    n_pix = indptr.shape[0] - 1
    n_blocks = (n_f + block - 1) // block
    for b in numba.prange(n_blocks):
        f0 = b * block
        nb = min(block, n_f - f0)
        xb = np.zeros((n_cols, 2, block), dtype=np.float32)
        for i in range(nb):
            for k in range(n_cols):
                v = x[f0 + i, offsets[k]]
                xb[k, 0, i] = v.real
                xb[k, 1, i] = v.imag
        ar = np.empty(block, dtype=np.float32)
        ai = np.empty(block, dtype=np.float32)
        for q in range(n_pix):
            p = order[q]
            ar[:] = 0.0
            ai[:] = 0.0
            for j in range(indptr[p], indptr[p + 1]):
                k = indices[j]
                w = data[j]
                a = w.real
                c = w.imag
                for i in range(block):
                    vr = xb[k, 0, i]
                    vi = xb[k, 1, i]
                    ar[i] += a * vr - c * vi
                    ai[i] += a * vi + c * vr
            for i in range(nb):
                out[f0 + i, p] = complex(ar[i], ai[i])


def tile_order(shape: Sequence[int], tile: int = TILE) -> np.ndarray:
    """Pixel indices (C order) visited tile by tile: (tile x ... x tile) blocks."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    starts = np.meshgrid(*[np.arange(0, n, tile) for n in shape], indexing="ij")
    parts = []
    for corner in zip(*(s.ravel() for s in starts)):
        parts.append(idx[tuple(slice(c, c + tile) for c in corner)].ravel())
    return np.concatenate(parts).astype(np.int64)


class DASOperator:
    """Plane-wave DAS with coherent compounding over transmits, as a sparse matrix.

    ``DASOperator(acq, grid, interp="linear", fnumber=None)``: ``interp`` is
    ``"linear"`` or ``"nearest"``; ``fnumber`` is ``None``/``"auto"`` (from
    the element directivity), a number (0 = full aperture) or an
    ``(F_x, F_y)`` pair. The matrix is built on first use of a geometry and
    cached; later operators for the same (acquisition, grid, options) reuse it.
    """

    def __init__(
        self,
        acq: Acquisition,
        grid: Grid,
        interp: str = "linear",
        fnumber: float | Sequence[float] | str | None = None,
    ) -> None:
        if interp not in INTERPOLATIONS:
            raise UsageError(
                f"unknown interpolation {interp!r}", f"use one of {', '.join(INTERPOLATIONS)}"
            )
        if grid.ndim != acq.dim:
            raise InputError(
                f"a {grid.ndim}D grid cannot image a {acq.dim}D acquisition",
                "give a grid with axes z, x" + (", y" if acq.dim == 3 else ""),
            )
        self.acq = acq
        self.grid = grid
        self.interp = interp
        self.fnumber = _resolve_fnumber(acq, fnumber)
        self._built, self.from_cache = _cached_build(acq, grid, interp, self.fnumber)
        self._matrix: scipy.sparse.csr_matrix | None = None

    # -- description ----------------------------------------------------------

    @property
    def channel_shape(self) -> tuple[int, int, int]:
        """(transmits, samples, elements) of one frame of channel IQ."""
        return (self.acq.n_transmits, self.acq.n_samples, self.acq.n_elements)

    @property
    def shape(self) -> tuple[int, int]:
        t, s, e = self.channel_shape
        return (int(np.prod(self.grid.shape)), t * s * e)

    @property
    def nnz(self) -> int:
        return int(self._built.indptr[-1])

    @property
    def build_seconds(self) -> float:
        return self._built.seconds

    @property
    def nbytes(self) -> int:
        return _nbytes(self._built)

    def describe(self) -> dict[str, Any]:
        return {
            "interp": self.interp,
            "fnumber": list(self.fnumber),
            "nnz": self.nnz,
            "matrix_bytes": self.nbytes,
            "build_seconds": round(self.build_seconds, 3),
        }

    @property
    def matrix(self) -> scipy.sparse.csr_matrix:
        """The compounded matrix (pixels, T*E*S); columns (transmit, element, sample)."""
        if self._matrix is None:
            b = self._built
            cols = b.cols.astype(np.int32) if self.shape[1] < 2**31 - 1 else b.cols
            m = scipy.sparse.csr_matrix((b.data, cols[b.indices], b.indptr), shape=self.shape)
            m.has_sorted_indices = True
            self._matrix = m
        return self._matrix

    def transmit_matrix(self, t: int) -> scipy.sparse.csr_matrix:
        """Transmit ``t``'s block (pixels, E*S), laid out as pymust's dasmtx (samples fastest)."""
        n = self.acq.n_elements * self.acq.n_samples
        return self.matrix[:, t * n : (t + 1) * n].tocsr()

    # -- application ------------------------------------------------------------

    def apply(self, channel_iq: np.ndarray, *, block: int | None = None) -> np.ndarray:
        """Beamform and compound: (F, T, S, E) or (T, S, E) complex -> (F, *grid.shape)."""
        x = np.asarray(channel_iq)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.channel_shape:
            raise InputError(
                f"channel IQ of shape {tuple(np.shape(channel_iq))} does not match the "
                f"acquisition (frames, transmits={self.channel_shape[0]}, "
                f"samples={self.channel_shape[1]}, elements={self.channel_shape[2]})",
                "check the acquisition attribute against the iq array",
            )
        x = np.ascontiguousarray(x, dtype=np.complex64)
        n_f = x.shape[0]
        out = np.empty((n_f, self.shape[0]), dtype=np.complex64)
        if n_f:
            b = self._built
            blk = block or _block_size(n_f, len(b.cols))
            _apply(b.indptr, b.indices, b.data, b.offsets, b.order, x.reshape(n_f, -1), out, blk)
        out = out.reshape(n_f, *self.grid.shape)
        return out[0] if single else out

    __call__ = apply


def _block_size(n_frames: int, n_cols: int) -> int:
    """Frames per thread block: enough to amortise the matrix, few enough that
    each thread's copy of its frames (8 bytes per used sample) stays within
    ``BLOCK_BYTES`` (the caches) and that every thread gets work. Measured
    here: 32 frames best in 2D and in 3D (even when two such copies exceed L3)."""
    threads = max(numba.get_num_threads(), 1)
    per = -(-n_frames // threads)
    fit = max(8, (BLOCK_BYTES // max(8 * n_cols, 1)) // 8 * 8)
    for b in (32, 16, 8):
        if b <= fit and per >= b:
            return b
    return max(1, min(8, n_frames))
