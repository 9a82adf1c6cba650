"""A system PSF for beamformed IQ that comes without an acquisition.

Three sources, chosen with ``ulm beamform --psf``:

``gaussian:FWHM_Z,FWHM_X[,FWHM_Y]``
    a real Gaussian with those full widths at half maximum (metres, or with a
    unit: ``50um``, ``0.05mm``, ``0.5lambda`` when a wavelength is known), on
    the image grid's pitch, out to where it falls below -20 dB.
``FILE``
    a ``.npy`` complex (or real) array of odd size per axis on the image grid's
    pitch, centred on its middle pixel; or an image store (``.zarr``) whose
    ``psf`` array has the same pitch.
``estimate`` (the default for an image store with neither an acquisition nor a ``psf``)
    estimated from isolated bubbles in the data, after the clutter filter:

    1. the width: the mean spatial autocorrelation of the frames (through their
       power spectra) has a full width at half maximum of about sqrt(2) times
       the PSF's; the patch half-size per axis is 0.75 times that width plus one
       pixel (a Gaussian PSF falls to -20 dB at 0.64 of it);
    2. candidates: regional maxima of the envelope (3x3 or 3x3x3 per frame)
       whose patch lies inside the image and that are *isolated*: no other
       maximum brighter than -10 dB of them within twice the patch half-size;
    3. the brightest :data:`MAX_PATCHES` candidates, from the first movies (up
       to :data:`MAX_MOVIES`), each centred on its peak pixel, rotated to zero
       phase at the peak and scaled to unit norm, are averaged; the mean is
       cropped symmetrically to where it exceeds -20 dB (plus one pixel).

    Fewer than :data:`MIN_PATCHES` isolated bubbles is refused (exit 3) with
    ``--psf gaussian:...`` named as the way out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage

from ulmtools.beamform.correlation import crop_psf
from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid

MAX_PATCHES = 400
MIN_PATCHES = 5
MAX_MOVIES = 4
ISOLATION_DB = -10.0
CROP_DB = -20.0


def parse_spec(text: str | None) -> tuple[str, Any]:
    """``None``/``estimate`` -> ("estimate", None); ``gaussian:...``; else ("file", path)."""
    if text is None or text.strip().lower() in ("", "estimate", "auto"):
        return "estimate", None
    t = text.strip()
    if t.lower().startswith("gaussian:"):
        parts = [p for p in t.split(":", 1)[1].split(",") if p.strip()]
        if not parts:
            raise UsageError(f"--psf {text!r} names no widths", "write gaussian:FWHM_Z,FWHM_X")
        return "gaussian", parts
    path = Path(t)
    if not path.exists():
        raise InputError(
            f"--psf {text!r}: no such file",
            "give a .npy array or an image store, gaussian:FWHM_Z,FWHM_X, or estimate",
        )
    return "file", path


def gaussian_fwhm(parts: list[str], dim: int, wavelength: float | None) -> tuple[float, ...]:
    from ulmtools.beamform.pipeline import _parse_length

    if len(parts) not in (1, dim):
        raise UsageError(f"--psf gaussian: needs 1 or {dim} widths (z,x[,y]), got {len(parts)}")
    lam = wavelength if wavelength is not None else math.nan
    values = []
    for p in parts:
        if re.search(r"lambda|λ|wl", p) and wavelength is None:
            raise UsageError(
                f"--psf gaussian: {p!r} is in wavelengths but the store states no wavelength",
                "give the width in um or mm, or metres",
            )
        values.append(_parse_length(p.strip(), lam))
    return tuple(values) * dim if len(values) == 1 else tuple(values)


def gaussian_psf(fwhm: tuple[float, ...], grid: Grid) -> np.ndarray:
    """A real Gaussian PSF (complex64, odd shape, unit norm) on ``grid``'s pitch."""
    sigma = [f / (2 * math.sqrt(2 * math.log(2))) for f in fwhm]
    half = [max(1, math.ceil(2.15 * s / d)) for s, d in zip(sigma, grid.spacing)]
    axes = [np.arange(-h, h + 1) * d for h, d in zip(half, grid.spacing)]
    mesh = np.meshgrid(*axes, indexing="ij")
    psf = np.exp(-sum(m**2 / (2 * s**2) for m, s in zip(mesh, sigma)))
    return (psf / np.linalg.norm(psf)).astype(np.complex64)


def load_psf(path: Path, grid: Grid) -> np.ndarray:
    """A PSF from a .npy file or an image store's ``psf`` array, on ``grid``'s pitch."""
    if path.is_dir():
        from ulmtools.store import open_store

        store = open_store(path, "image", require_arrays=("psf",))
        arr = store.array("psf")
        psf = np.asarray(arr[...])
        attrs = arr.attrs.get("grid")
        if attrs:
            pitch = Grid.from_attrs(attrs).spacing
            if not np.allclose(pitch, grid.spacing, rtol=1e-3):
                raise InputError(
                    f"the PSF in {path} has a pitch of {[p * 1e6 for p in pitch]} um, "
                    f"the image grid {[p * 1e6 for p in grid.spacing]} um",
                    "give a PSF sampled on the image grid's pitch",
                )
    elif path.suffix.lower() == ".npy":
        psf = np.load(path, allow_pickle=False)
    else:
        raise InputError(
            f"--psf {path}: a PSF file is a .npy array or an image store (.zarr)",
            "or use gaussian:FWHM_Z,FWHM_X",
        )
    if psf.ndim != grid.ndim or any(n % 2 == 0 for n in psf.shape) or psf.dtype.kind not in "fc":
        raise InputError(
            f"the PSF in {path} has shape {psf.shape} ({psf.dtype}); a {grid.ndim}-D numeric "
            "array of odd sizes, centred on its middle pixel, is needed"
        )
    if not np.all(np.isfinite(psf)) or not np.any(psf):
        raise InputError(f"the PSF in {path} is zero or not finite")
    psf = psf.astype(np.complex64)
    peak = psf[tuple(n // 2 for n in psf.shape)]
    if abs(peak) > 0:
        psf = psf * (abs(peak) / peak)
    return (psf / np.linalg.norm(psf)).astype(np.complex64)


def autocorrelation_fwhm(frames: np.ndarray) -> np.ndarray:
    """Full width at half maximum (pixels) per spatial axis of the frames' mean autocorrelation."""
    x = np.asarray(frames, dtype=np.complex64)
    d = x.ndim - 1
    axes = tuple(range(1, d + 1))
    spec = np.abs(np.fft.fftn(x, s=[2 * n for n in x.shape[1:]], axes=axes)) ** 2
    acf = np.abs(np.fft.ifftn(spec.mean(axis=0)))
    acf = np.fft.fftshift(acf)
    centre = tuple(n // 2 for n in acf.shape)
    acf /= acf[centre]
    widths = []
    for axis in range(d):
        index = list(centre)
        index[axis] = slice(None)
        profile = acf[tuple(index)]
        above = profile >= 0.5
        c = centre[axis]
        lo = c
        while lo > 0 and above[lo - 1]:
            lo -= 1
        hi = c
        while hi < len(profile) - 1 and above[hi + 1]:
            hi += 1
        widths.append(hi - lo + 1)
    return np.asarray(widths, dtype=np.float64)


def estimate_psf(movies: Iterable[np.ndarray], grid: Grid) -> tuple[np.ndarray, dict[str, Any]]:
    """The PSF averaged over isolated bubbles of ``movies`` ((t, *space), clutter-filtered)."""
    d = grid.ndim
    patches: list[np.ndarray] = []
    levels: list[float] = []
    half: list[int] | None = None
    frames_seen = 0
    for movie in movies:
        movie = np.asarray(movie)
        if half is None:
            width = autocorrelation_fwhm(movie[: min(len(movie), 256)])
            half = [
                int(min(max(1, math.ceil(0.75 * w) + 1), (n - 1) // 3))
                for w, n in zip(width, grid.shape)
            ]
        env = np.abs(movie)
        frames_seen += len(movie)
        local_max = env == scipy.ndimage.maximum_filter(env, size=(1,) + (3,) * d)
        local_max &= env > 0
        # brightest other maximum within the isolation neighbourhood
        others = np.where(local_max, env, 0)
        t_idx, *s_idx = np.nonzero(local_max)
        inside = np.ones(len(t_idx), bool)
        for idx, h, n in zip(s_idx, half, grid.shape):
            inside &= (idx >= h) & (idx < n - h)
        t_idx = t_idx[inside]
        s_idx = [i[inside] for i in s_idx]
        amp = env[(t_idx, *s_idx)]
        order = np.argsort(-amp)
        limit = 10 ** (ISOLATION_DB / 20)
        for k in order:
            if len(patches) >= MAX_PATCHES:
                break
            t = int(t_idx[k])
            centre = [int(i[k]) for i in s_idx]
            lo = [max(0, c - 2 * h) for c, h in zip(centre, half)]
            hi = [min(n, c + 2 * h + 1) for c, h, n in zip(centre, half, grid.shape)]
            hood = others[(t, *[slice(a, b) for a, b in zip(lo, hi)])].copy()
            hood[tuple(c - a for c, a in zip(centre, lo))] = 0
            if hood.max(initial=0) > limit * amp[k]:
                continue
            patch = movie[(t, *[slice(c - h, c + h + 1) for c, h in zip(centre, half)])]
            peak = patch[tuple(half)]
            patch = patch * (np.conj(peak) / abs(peak))
            patches.append(patch / np.linalg.norm(patch))
            levels.append(float(amp[k]))
        if len(patches) >= MAX_PATCHES:
            break
    if len(patches) < MIN_PATCHES:
        raise InputError(
            f"only {len(patches)} isolated bubbles found in {frames_seen} frames to estimate "
            "the PSF from",
            "pass --psf gaussian:FWHM_Z,FWHM_X (e.g. gaussian:100um,200um) or --psf FILE",
        )
    mean = np.mean(patches, axis=0)
    psf = crop_psf(mean, CROP_DB)
    peak = psf[tuple(n // 2 for n in psf.shape)]
    psf = psf * (abs(peak) / peak) / np.linalg.norm(psf)
    info = {
        "patches": len(patches),
        "frames_searched": frames_seen,
        "window": [2 * h + 1 for h in half or []],
        "fwhm_pixels": _fwhm_pixels(np.abs(psf)),
    }
    return psf.astype(np.complex64), info


def _fwhm_pixels(mag: np.ndarray) -> list[int]:
    centre = tuple(n // 2 for n in mag.shape)
    out = []
    for axis in range(mag.ndim):
        index = list(centre)
        index[axis] = slice(None)
        out.append(int(np.count_nonzero(mag[tuple(index)] >= 0.5 * mag[centre])))
    return out
