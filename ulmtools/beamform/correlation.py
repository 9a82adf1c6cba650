"""The system PSF and the local normalised complex correlation with it.

Public API (stable; ``ulm simulate`` imports it)::

    from ulmtools.beamform.correlation import psf_correlation, system_psf
    psf, psf_grid = system_psf(acq, grid)     # complex64 (*psf_space), its own Grid
    corr = psf_correlation(iq, psf)           # iq (t, *space) or (movie, t, *space)

``system_psf`` images one point scatterer placed on the central pixel of
``grid`` (index ``n // 2`` on each axis) by the same chain as the data: a
point-echo model of the channel IQ, then the
:class:`~ulmtools.beamform.das.DASOperator` with the same options. The echo
model is the simulator's (``ulmtools.simulate.echoes.point_echoes``) when that
module is importable, else the analytic model of
:mod:`ulmtools.beamform.pointecho` (``model="auto"``); both take
``(acq, positions (n, 3) z/x/y metres)`` and return (T, S, E) channel IQ. It is
computed on a window of +-3 wavelengths with the grid's spacing, then cropped
(symmetrically, odd sizes) to where its magnitude exceeds ``threshold_db``
below the peak, plus one pixel. The PSF's centre pixel is the scatterer.

``psf_correlation`` computes, for each frame ``I`` and each pixel ``r``::

    corr[r] = sum_u I[r + u] conj(P[u]) / (||P|| * sqrt(sum_u |I[r + u]|^2))

over the PSF's support ``u`` (offsets about its centre pixel), with zero
outside the image. By Cauchy-Schwarz ``|corr| <= 1``, with equality exactly
where the frame locally equals a complex multiple of the PSF; pixels whose
local energy is below ``rel_eps`` of the frame's peak energy get 0. The
numerator is an FFT convolution, the energy a box sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.fft
import scipy.ndimage

from ulmtools.acquisition import Acquisition
from ulmtools.beamform.das import DASOperator
from ulmtools.beamform.pointecho import as_zxy, point_channel_iq
from ulmtools.errors import InputError
from ulmtools.grid import Grid

__all__ = [
    "PSF_HALF_WIDTH_WAVELENGTHS",
    "echo_model",
    "peak_position",
    "psf_correlation",
    "psf_window",
    "system_psf",
]

PSF_HALF_WIDTH_WAVELENGTHS = 3.0


def psf_window(grid: Grid, shape: Sequence[int], centre_index: Sequence[int] | None = None) -> Grid:
    """A grid of odd ``shape`` with ``grid``'s spacing, centred on one of its pixels."""
    centre = [n // 2 for n in grid.shape] if centre_index is None else list(centre_index)
    shape = [int(n) | 1 for n in shape]  # odd
    origin = [
        o + c * s - (n // 2) * s for o, c, s, n in zip(grid.origin, centre, grid.spacing, shape)
    ]
    return Grid(grid.axes, tuple(shape), tuple(origin), grid.spacing, grid.frame_rate)


EchoModel = Callable[[Acquisition, np.ndarray], np.ndarray]


def echo_model(name: str = "auto") -> tuple[EchoModel, str]:
    """The point-echo model for the PSF, and its qualified name.

    ``auto``: the simulator's when importable, else the analytic one;
    ``simulate`` or ``analytic`` choose.
    """
    if name in ("auto", "simulate"):
        try:
            from ulmtools.simulate.echoes import point_echoes
        except ImportError:
            if name == "simulate":
                raise InputError("the simulator's echo model is not available") from None
        else:
            return point_echoes, "ulmtools.simulate.echoes.point_echoes"
    elif name != "analytic":
        raise InputError(f"unknown echo model {name!r}", "use auto, simulate or analytic")
    return point_channel_iq, "ulmtools.beamform.pointecho.point_channel_iq"


def system_psf(
    acq: Acquisition,
    grid: Grid,
    *,
    interp: str = "linear",
    fnumber: float | Sequence[float] | str | None = None,
    shape: Sequence[int] | None = None,
    threshold_db: float = -20.0,
    model: str | EchoModel = "auto",
) -> tuple[np.ndarray, Grid]:
    """The PSF (complex64, odd shape) of a point on ``grid``'s central pixel, and its grid.

    ``shape`` fixes the PSF's shape (made odd); otherwise it is the support
    above ``threshold_db`` (plus one pixel) within +-3 wavelengths.
    """
    if shape is None:
        half = [
            max(1, math.ceil(PSF_HALF_WIDTH_WAVELENGTHS * acq.wavelength / s)) for s in grid.spacing
        ]
        window = psf_window(grid, [2 * h + 1 for h in half])
    else:
        window = psf_window(grid, shape)
    centre = np.array([window.coordinates(i)[n // 2] for i, n in enumerate(window.shape)])
    echoes = echo_model(model)[0] if isinstance(model, str) else model
    channel = np.asarray(echoes(acq, as_zxy(centre[None], acq.dim)))
    psf = DASOperator(acq, window, interp=interp, fnumber=fnumber).apply(channel)
    if shape is None:
        psf = crop_psf(psf, threshold_db)
        window = psf_window(grid, psf.shape)
    peak = psf[tuple(n // 2 for n in psf.shape)]
    if abs(peak) == 0:
        raise InputError(
            "the system PSF is zero at the grid centre",
            "check that the acquisition's sample window covers the grid's depths",
        )
    # unit norm and zero phase at the centre: the correlation does not care,
    # but stored PSFs of different stores then compare directly
    psf = psf * (abs(peak) / peak) / np.linalg.norm(psf)
    return psf.astype(np.complex64), window


def crop_psf(psf: np.ndarray, threshold_db: float) -> np.ndarray:
    """The centred odd window of ``psf`` holding every sample above ``threshold_db``."""
    mag = np.abs(psf)
    keep = mag >= mag.max() * 10 ** (threshold_db / 20)
    slices = []
    for axis, n in enumerate(psf.shape):
        other = tuple(a for a in range(psf.ndim) if a != axis)
        idx = np.flatnonzero(keep.any(axis=other))
        c = n // 2
        h = min(c, max(c - idx.min(), idx.max() - c) + 1)
        slices.append(slice(c - h, c + h + 1))
    return psf[tuple(slices)]


def psf_correlation(
    iq: np.ndarray,
    psf: np.ndarray,
    *,
    rel_eps: float = 1e-6,
    workers: int | None = None,
) -> np.ndarray:
    """Local normalised complex correlation of each frame with ``psf`` (complex64).

    ``iq`` is (..., *space) with ``space`` the last ``psf.ndim`` axes (so
    (t, z, x), (movie, t, z, x, y), ...); ``psf`` must have an odd size on
    every axis (its centre pixel is the reference point).
    """
    psf = np.asarray(psf)
    x = np.asarray(iq)
    d = psf.ndim
    if x.ndim < d:
        raise InputError(f"images of shape {x.shape} have fewer axes than the {d}D PSF")
    if any(n % 2 == 0 for n in psf.shape):
        raise InputError(f"the PSF must have an odd size on every axis, got {psf.shape}")
    space = x.shape[-d:]
    axes = tuple(range(x.ndim - d, x.ndim))
    half = [n // 2 for n in psf.shape]
    full = [scipy.fft.next_fast_len(n + k - 1) for n, k in zip(space, psf.shape)]
    kernel = np.conj(psf[(slice(None, None, -1),) * d]).astype(np.complex64)
    fk = scipy.fft.fftn(kernel, s=full, axes=tuple(range(d)), workers=workers)
    fx = scipy.fft.fftn(x.astype(np.complex64, copy=False), s=full, axes=axes, workers=workers)
    fx *= fk
    num = scipy.fft.ifftn(fx, axes=axes, workers=workers, overwrite_x=True)
    del fx
    crop = (Ellipsis, *[slice(h, h + n) for h, n in zip(half, space)])
    num = num[crop]
    power = (x.real.astype(np.float64) ** 2) + (x.imag.astype(np.float64) ** 2)
    size = (1,) * (x.ndim - d) + tuple(psf.shape)
    energy = scipy.ndimage.uniform_filter(power, size=size, mode="constant") * np.prod(psf.shape)
    peak = power.max(axis=axes, keepdims=True) if power.size else power
    norm_p = float(np.linalg.norm(psf))
    valid = energy > rel_eps * peak * max(1, np.prod(psf.shape))
    denom = np.sqrt(np.where(valid, energy, 1.0)) * norm_p
    out = np.where(valid, num / denom, 0)
    mag = np.abs(out)
    over = mag > 1
    if np.any(over):  # round-off only
        out[over] /= mag[over]
    return out.astype(np.complex64)


def peak_position(image: np.ndarray, grid: Grid) -> np.ndarray:
    """Position (metres, grid axis order) of the largest ``|image|``, refined to sub-pixel.

    A parabola through the peak and its two neighbours on each axis.
    """
    mag = np.abs(np.asarray(image))
    if mag.shape != tuple(grid.shape):
        raise InputError(f"an image of shape {mag.shape} on a grid of shape {grid.shape}")
    idx = np.array(np.unravel_index(int(np.argmax(mag)), mag.shape), dtype=np.float64)
    centre = tuple(int(i) for i in idx)
    for axis in range(mag.ndim):
        i = centre[axis]
        if 0 < i < mag.shape[axis] - 1:
            lo = list(centre)
            hi = list(centre)
            lo[axis] -= 1
            hi[axis] += 1
            a, b, c = mag[tuple(lo)], mag[centre], mag[tuple(hi)]
            den = a - 2 * b + c
            if den < 0:
                idx[axis] += 0.5 * (a - c) / den
    return grid.to_position(idx)
