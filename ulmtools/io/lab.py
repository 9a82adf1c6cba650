"""Parameter structs of lab scripts (PALA, Verasonics) in SI units.

PALA (Heiles et al. 2022) stores beamformed IQ as ``IQ`` (nz, nx, nt) with
``PData`` in wavelengths, Verasonics' convention: ``PDelta`` = [dx, dy, dz]
(or [dx, dz]), ``Origin`` = [x, y, z] of the first pixel (or [x, z]), ``Size``
= [rows (z), columns (x), sections (y)]; the frame rate is ``UF.FrameRateUF``
and the wavelength ``UF.Lambda`` (metres) where those exist.

Verasonics channel data (best effort): ``Trans.frequency`` (MHz),
``Trans.ElementPos`` (columns x, y, z in ``Trans.units``, wavelengths unless
``'mm'``), ``Trans.elementWidth``, ``TX(i).Delay`` (wavelengths),
``TX(i).Steer`` ([theta, alpha], radians), ``Receive(1).demodFrequency`` and
``decimSampleRate`` (MHz; else ``samplesPerWave`` times the centre
frequency), ``Receive(1).startDepth`` (wavelengths, t0 = its round trip),
``Resource.Parameters.speedOfSound`` (m/s). The lens correction and the
transmit waveform are not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ulmtools.acquisition import SPEED_OF_SOUND, Acquisition
from ulmtools.errors import InputError
from ulmtools.io.sources import scalar


def first(struct: Any) -> Mapping[str, Any] | None:
    """A struct, or the first element of a struct array."""
    if isinstance(struct, list):
        struct = struct[0] if struct else None
    return struct if isinstance(struct, Mapping) else None


def field(struct: Mapping[str, Any] | None, name: str) -> Any:
    if struct is None:
        return None
    for k, v in struct.items():
        if str(k).lower() == name.lower():
            return v
    return None


def vector(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    a = np.asarray(value, dtype=np.float64).ravel()
    return a if a.size else None


def speed_of_sound(resource: Any) -> float | None:
    params = first(field(first(resource), "Parameters"))
    return scalar(params, "speedOfSound")


def pala_wavelength(uf: Any, trans: Any, c: float) -> float | None:
    """UF.Lambda (metres), else c / Trans.frequency (MHz)."""
    lam = scalar(first(uf), "Lambda")
    if lam and lam > 0:
        return lam
    f = scalar(first(trans), "frequency")
    if f and f > 0:
        return c / (f * 1e6)
    return None


def pdata_grid(
    pdata: Any, wavelength: float, dim: int
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...] | None]:
    """Spacing and origin (metres, (z, x[, y])) and the size PData states."""
    p = first(pdata)
    delta = vector(field(p, "PDelta"))
    origin = vector(field(p, "Origin"))
    size = vector(field(p, "Size"))
    if delta is None:
        raise InputError("PData has no PDelta", "pass --grid-step")

    def zxy(v: np.ndarray) -> list[float]:
        if len(v) >= 3:
            x, y, z = v[0], v[1], v[2]
        elif len(v) == 2:
            x, y, z = v[0], 0.0, v[1]
        else:
            x = y = z = v[0]
        return [z, x, y][:dim]

    spacing = tuple(float(s) * wavelength for s in zxy(np.abs(delta)))
    org = tuple(float(o) * wavelength for o in zxy(origin)) if origin is not None else (0.0,) * dim
    shape = None
    if size is not None:
        s = [round(float(n)) for n in size] + [1, 1]
        shape = tuple([s[0], s[1], s[2]][:dim])
    return spacing, org, shape


def pdata_dim(pdata: Any) -> int | None:
    size = vector(field(first(pdata), "Size"))
    if size is None:
        return None
    return 3 if len(size) >= 3 and size[2] > 1 else 2


def verasonics_acquisition(
    structs: Mapping[str, Any],
    *,
    n_samples: int,
    n_elements: int,
    frame_rate: float,
    center_frequency: float | None,
    c: float | None,
) -> Acquisition:
    """An :class:`Acquisition` from Trans, TX, Receive and Resource structs."""
    trans = first(structs.get("Trans"))
    if trans is None:
        raise InputError("no Trans struct to describe the probe", "pass --probe-file")
    c = c or speed_of_sound(structs.get("Resource")) or SPEED_OF_SOUND
    fc = center_frequency or (scalar(trans, "frequency") or 0.0) * 1e6
    if not fc > 0:
        raise InputError("Trans has no frequency", "pass --fc (Hz)")
    lam = c / fc
    units = field(trans, "units")
    scale = 1e-3 if isinstance(units, str) and units.lower().startswith("mm") else lam
    pos = field(trans, "ElementPos")
    if pos is None:
        raise InputError("Trans has no ElementPos", "pass --probe-file with element positions")
    pos = np.atleast_2d(np.asarray(pos, dtype=np.float64))
    if pos.shape[0] < pos.shape[1] and pos.shape[0] in (3, 4, 5):
        pos = pos.T
    xyz = pos[:, :3] * scale
    zxy = np.stack([xyz[:, 2], xyz[:, 0], xyz[:, 1]], axis=1)
    if len(zxy) != n_elements:
        raise InputError(
            f"Trans describes {len(zxy)} elements but the data has {n_elements} channels",
            "pass --layout naming the element axis, or a --probe-file for this data",
        )
    tx = structs.get("TX")
    txs = tx if isinstance(tx, list) else [tx] if isinstance(tx, Mapping) else []
    if not txs:
        raise InputError("no TX struct to describe the transmits", "pass --probe-file")
    delays, tilts = [], []
    for t in txs:
        d = vector(field(t, "Delay"))
        d = np.zeros(n_elements) if d is None else d
        if len(d) != n_elements:
            raise InputError(f"TX.Delay has {len(d)} values for {n_elements} elements")
        delays.append(d * lam / c)
        steer = vector(field(t, "Steer"))
        tilts.append([0.0, 0.0] if steer is None else [steer[0], steer[1] if len(steer) > 1 else 0])
    rx = first(structs.get("Receive"))
    fd = (scalar(rx, "demodFrequency") or 0.0) * 1e6 or fc
    fs = (scalar(rx, "decimSampleRate") or 0.0) * 1e6
    if not fs > 0:
        spw = scalar(rx, "samplesPerWave")
        fs = spw * fc if spw else 4 * fc
    start = scalar(rx, "startDepth") or 0.0
    width = scalar(trans, "elementWidth")
    dim = 3 if np.ptp(zxy[:, 2]) > 0 else 2
    return Acquisition(
        dim=dim,
        probe=str(field(trans, "name") or "verasonics"),
        element_positions=zxy,
        element_width=float(width * scale) if width else 0.0,
        element_height=0.0,
        center_frequency=fc,
        bandwidth=0.67,
        sampling_frequency=fs,
        demodulation_frequency=fd,
        n_samples=int(n_samples),
        t0=2 * start * lam / c,
        transmit_delays=np.asarray(delays),
        tilts=np.asarray(tilts, dtype=np.float64),
        frame_rate=frame_rate,
        speed_of_sound=c,
    )
