"""An analytic channel-IQ model of point scatterers, for the system PSF.

Public API (stable)::

    from ulmtools.beamform.pointecho import point_channel_iq, pulse_sigma
    iq = point_channel_iq(acq, positions, amplitudes)   # (T, S, E) complex64

Each scatterer adds to every element of every transmit the two-way pulse
envelope (Gaussian, with the acquisition's -6 dB fractional bandwidth taken
as pulse-echo) at its round-trip delay, with the carrier phase that remains
after demodulation, 1/r spreading on receive and (optionally) the receive
directivity of a rectangular element, ``cos(th) * sinc(w sin(th) / lambda)``
in x and, on matrix arrays, ``sinc(h sin(th_y) / lambda)`` in y.

The transmit and receive times are those of :mod:`ulmtools.beamform.das`
(:func:`~ulmtools.beamform.das.transmit_times`), so DAS of this model puts the
scatterer exactly where it is: the simulator and the beamformer share one
geometry.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ulmtools.acquisition import Acquisition
from ulmtools.beamform.das import transmit_times
from ulmtools.errors import InputError

__all__ = ["as_zxy", "point_channel_iq", "pulse_sigma"]

ENVELOPE_SPAN = 4.0  # envelope evaluated within +-4 sigma


def pulse_sigma(acq: Acquisition) -> float:
    """Standard deviation (s) of the Gaussian two-way pulse envelope.

    Its amplitude spectrum ``exp(-(2 pi df)^2 sigma^2 / 2)`` falls to one half
    at ``df = bandwidth * fc / 2``.
    """
    bw = acq.bandwidth if acq.bandwidth > 0 else 0.67
    return math.sqrt(2 * math.log(2)) / (math.pi * bw * acq.center_frequency)


def as_zxy(positions: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) positions in grid axis order (z, x[, y]) -> (N, 3) (z, x, y)."""
    p = np.asarray(positions, dtype=np.float64)
    p = p.reshape(-1, p.shape[-1]) if p.ndim else p.reshape(1, -1)
    if p.shape[1] not in (dim, 3):
        raise InputError(f"positions must be (N, {dim}) in metres, got shape {p.shape}")
    out = np.zeros((len(p), 3))
    out[:, : p.shape[1]] = p
    return out


@numba.njit(parallel=True, cache=True)
def _render(
    tx_time,
    elems,
    pts,
    amps,
    c,
    t0,
    fs,
    n_samples,
    fc,
    fdemod,
    sigma,
    span,
    width,
    height,
    directivity,
    out,
):  # pragma: no cover - compiled
    n_tx = tx_time.shape[0]
    n_el = elems.shape[0]
    n_pts = pts.shape[0]
    lam = c / fc
    w_c = 2.0 * np.pi * fc
    w_d = 2.0 * np.pi * fdemod
    half = span * sigma
    for e in numba.prange(n_el):
        for q in range(n_pts):
            dz = pts[q, 0] - elems[e, 0]
            dx = pts[q, 1] - elems[e, 1]
            dy = pts[q, 2] - elems[e, 2]
            r = math.sqrt(dx * dx + dy * dy + dz * dz)
            if r <= 0:
                continue
            g = amps[q] / r
            if directivity:
                sx = dx / r
                cz = abs(dz) / r
                g *= cz
                if width > 0:
                    u = math.pi * width * sx / lam
                    if u != 0:
                        g *= math.sin(u) / u
                if height > 0:
                    u = math.pi * height * (dy / r) / lam
                    if u != 0:
                        g *= math.sin(u) / u
            for t in range(n_tx):
                tau = tx_time[t, q] + r / c
                k0 = max(0, math.ceil((tau - half - t0) * fs))
                k1 = min(n_samples - 1, math.floor((tau + half - t0) * fs))
                for k in range(k0, k1 + 1):
                    tk = t0 + k / fs
                    d = tk - tau
                    env = g * math.exp(-0.5 * (d / sigma) ** 2)
                    ph = w_c * d - w_d * tk
                    out[t, k, e] += complex(env * math.cos(ph), env * math.sin(ph))


def point_channel_iq(
    acq: Acquisition,
    positions: np.ndarray,
    amplitudes: np.ndarray | None = None,
    *,
    directivity: bool = True,
) -> np.ndarray:
    """Channel IQ (transmits, samples, elements) complex64 of point scatterers.

    ``positions`` is (N, D) metres in the grid's axis order (z, x[, y]) or
    (N, 3) as (z, x, y); ``amplitudes`` (N,) complex or real, default 1.
    """
    pts = as_zxy(positions, acq.dim)
    amps = np.ones(len(pts)) if amplitudes is None else np.asarray(amplitudes)
    if amps.shape != (len(pts),):
        raise InputError(f"{amps.shape} amplitudes for {len(pts)} positions")
    out = np.zeros((acq.n_transmits, acq.n_samples, acq.n_elements), dtype=np.complex128)
    if len(pts) == 0:
        return out.astype(np.complex64)
    tx = transmit_times(acq, pts)
    elems = np.ascontiguousarray(acq.element_positions)
    height = acq.element_height if acq.dim == 3 else 0.0
    for scale, part in ((1.0, amps.real), (1j, amps.imag)):
        if not np.any(part):
            continue
        buf = np.zeros_like(out)
        _render(
            tx,
            elems,
            pts,
            np.ascontiguousarray(part, dtype=np.float64),
            acq.speed_of_sound,
            acq.t0,
            acq.sampling_frequency,
            acq.n_samples,
            acq.center_frequency,
            acq.demodulation_frequency,
            pulse_sigma(acq),
            ENVELOPE_SPAN,
            acq.element_width,
            height,
            directivity,
            buf,
        )
        out += scale * buf
    return out.astype(np.complex64)
