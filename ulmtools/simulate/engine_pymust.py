"""The ``pymust`` engine: SIMUS (pymust) as the physics reference.

Each frame and transmit runs ``simus`` (linear array, with the elevation lens)
or ``simus3`` (matrix array) on the bubbles of that frame, demodulates the RF
with ``rf2iq`` and resamples the IQ onto the store's sample times, so the
result has exactly the layout and time origin of the ``fast`` engine.
pymust is imported lazily: it is an optional dependency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ulmtools.acquisition import Acquisition
from ulmtools.errors import BackendError


def _pymust() -> Any:
    try:
        import pymust
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendError(
            f"the pymust engine needs the pymust package ({exc})",
            "pip install 'ulm-toolchain[reference]', or use --engine fast",
        ) from None
    return pymust


def pymust_param(acq: Acquisition) -> Any:
    """A pymust ``Param`` describing the acquisition's probe (built by hand)."""
    pm = _pymust()
    p = pm.utils.Param()
    p.fc = float(acq.center_frequency)
    p.bandwidth = float(acq.bandwidth * 100)
    p.c = float(acq.speed_of_sound)
    p.fs = float(4 * acq.center_frequency)
    p.width = float(acq.element_width)
    p.attenuation = 0.0
    p.baffle = "soft"
    p.radius = np.inf
    p.TXnow = 1
    if acq.dim == 2:
        x = acq.element_positions[:, 1]
        p.Nelements = len(x)
        p.pitch = float(np.median(np.diff(x)))
        p.kerf = p.pitch - p.width
        p.height = float(acq.element_height)
        p.focus = float(acq.elevation_focus or np.inf)
    else:
        p.elements = np.ascontiguousarray(acq.element_positions[:, 1:3].T)
        p.Nelements = acq.n_elements
        p.height = float(acq.element_height)
    return p


def pymust_frame(acq: Acquisition, positions: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Channel IQ (transmits, samples, elements) of one frame by SIMUS."""
    pm = _pymust()
    param = pymust_param(acq)
    out = np.zeros((acq.n_transmits, acq.n_samples, acq.n_elements), dtype=np.complex64)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(pos) == 0:
        return out
    z, x, y = (pos[:, i].reshape(1, -1).copy() for i in range(3))
    rc = np.asarray(amplitudes, dtype=np.float64).reshape(1, -1)
    fs_rf = param.fs
    t_store = acq.sample_times
    for t in range(acq.n_transmits):
        delays = acq.transmit_delays[t].reshape(1, -1)
        prm = param.copy()
        if acq.dim == 2:
            rf, _ = pm.simus(x, y, z, rc, delays, prm)
        else:
            rf, _ = pm.simus3(x, y, z, rc, delays, prm)
        rf = np.asarray(rf, dtype=np.float64).reshape(-1, acq.n_elements)
        iq = pm.rf2iq(rf, fs_rf, acq.center_frequency)
        if acq.demodulation_frequency != acq.center_frequency:
            tt = np.arange(len(iq)) / fs_rf
            df = acq.center_frequency - acq.demodulation_frequency
            iq = iq * np.exp(2j * np.pi * df * tt)[:, None]
        # resample onto the store's sample times (iq is 4x oversampled baseband)
        j = t_store * fs_rf
        j0 = np.floor(j).astype(np.int64)
        w = (j - j0)[:, None]
        n = len(iq)
        ok = (j0 >= 0) & (j0 + 1 < n)
        a = np.zeros((len(j), acq.n_elements), dtype=np.complex128)
        a[ok] = iq[j0[ok]] * (1 - w[ok]) + iq[j0[ok] + 1] * w[ok]
        out[t] = a
    return out


def pymust_movie(
    acq: Acquisition,
    frames: np.ndarray,
    positions: np.ndarray,
    amplitudes: np.ndarray,
    n_frames: int,
    *,
    frame_offset: int = 0,
) -> np.ndarray:
    """Channel IQ (n_frames, T, S, E) of a block of frames by SIMUS (slow)."""
    out = np.zeros((n_frames, acq.n_transmits, acq.n_samples, acq.n_elements), np.complex64)
    fr = np.asarray(frames) - frame_offset
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    for f in range(n_frames):
        sel = fr == f
        if np.any(sel):
            out[f] = pymust_frame(acq, pos[sel], np.asarray(amplitudes)[sel])
    return out
