"""The acquisition: probe, transmit sequence and sampling, as stored with channel data.

A channel store's ``acquisition`` attribute holds everything needed to
beamform it, so ``ulm beamform`` works on any plane-wave data set whose
element positions and sequence are described here, not only on our presets.

Conventions (all SI units):

* positions are ``(z, x, y)`` in metres, ``z`` the depth; a linear array
  has ``y = 0``; the probe face is ``z = 0``;
* ``transmit_delays[t, e]`` is the firing time (s) of element ``e`` in
  transmit ``t``; time zero of the received samples is the instant the
  first element fires, so sample ``k`` of every receive is taken at
  ``t0 + k / sampling_frequency``;
* the IQ samples are baseband: ``iq = rf_analytic * exp(-2j*pi*demodulation_frequency*t)``;
* ``tilts[t] = (theta_x, theta_y)`` in radians is the plane-wave steering the
  delays realise (informative; beamforming uses the delays themselves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import SPACE_AXES, Grid

SPEED_OF_SOUND = 1540.0


@dataclass(frozen=True)
class Acquisition:
    """A plane-wave acquisition on a linear (2D) or matrix (3D) array."""

    dim: int
    probe: str
    element_positions: np.ndarray  # (E, 3) metres, columns z, x, y
    element_width: float  # metres, along x
    element_height: float  # metres, along y (elevation for a linear array)
    center_frequency: float  # Hz
    bandwidth: float  # fractional -6 dB bandwidth, e.g. 0.67
    sampling_frequency: float  # Hz, of the IQ samples
    demodulation_frequency: float  # Hz
    n_samples: int
    t0: float  # s, time of sample 0 after the first element fires
    transmit_delays: np.ndarray  # (T, E) seconds
    tilts: np.ndarray  # (T, 2) radians
    frame_rate: float  # Hz
    speed_of_sound: float = SPEED_OF_SOUND
    elevation_focus: float | None = None  # metres (linear arrays with a lens)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pos = np.asarray(self.element_positions, dtype=np.float64)
        delays = np.asarray(self.transmit_delays, dtype=np.float64)
        tilts = np.asarray(self.tilts, dtype=np.float64).reshape(-1, 2)
        object.__setattr__(self, "element_positions", pos)
        object.__setattr__(self, "transmit_delays", delays)
        object.__setattr__(self, "tilts", tilts)
        problems = []
        if self.dim not in (2, 3):
            problems.append(f"dim must be 2 or 3, got {self.dim}")
        if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) == 0:
            problems.append(f"element_positions must be (E, 3) with E >= 1, got {pos.shape}")
        if delays.ndim != 2 or delays.shape[1] != len(pos) or len(delays) == 0:
            problems.append(
                f"transmit_delays must be (transmits, {len(pos)} elements), got {delays.shape}"
            )
        if len(tilts) != len(delays):
            problems.append(f"{len(tilts)} tilts for {len(delays)} transmits")
        for name in ("center_frequency", "sampling_frequency", "frame_rate", "speed_of_sound"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.n_samples < 1:
            problems.append("n_samples must be at least 1")
        if problems:
            raise InputError("invalid acquisition: " + "; ".join(problems))

    # -- derived quantities -------------------------------------------------

    @property
    def wavelength(self) -> float:
        return self.speed_of_sound / self.center_frequency

    @property
    def n_elements(self) -> int:
        return len(self.element_positions)

    @property
    def n_transmits(self) -> int:
        return len(self.transmit_delays)

    @property
    def sample_times(self) -> np.ndarray:
        return self.t0 + np.arange(self.n_samples) / self.sampling_frequency

    @property
    def space_axes(self) -> tuple[str, ...]:
        return SPACE_AXES[self.dim]

    def with_samples(self, n_samples: int, t0: float) -> Acquisition:
        return replace(self, n_samples=int(n_samples), t0=float(t0))

    # -- (de)serialisation ---------------------------------------------------

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dim": self.dim,
            "probe": self.probe,
            "element_positions": self.element_positions.tolist(),
            "element_positions_axes": ["z", "x", "y"],
            "element_width": self.element_width,
            "element_height": self.element_height,
            "center_frequency": self.center_frequency,
            "bandwidth": self.bandwidth,
            "sampling_frequency": self.sampling_frequency,
            "demodulation_frequency": self.demodulation_frequency,
            "n_samples": int(self.n_samples),
            "t0": self.t0,
            "transmit_delays": self.transmit_delays.tolist(),
            "tilts": self.tilts.tolist(),
            "frame_rate": self.frame_rate,
            "speed_of_sound": self.speed_of_sound,
            "elevation_focus": self.elevation_focus,
            "units": {
                "positions": "metre",
                "frequencies": "hertz",
                "times": "second",
                "tilts": "radian",
                "speed_of_sound": "metre/second",
            },
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Acquisition:
        required = [
            "dim",
            "element_positions",
            "center_frequency",
            "sampling_frequency",
            "n_samples",
            "t0",
            "transmit_delays",
            "frame_rate",
        ]
        missing = [k for k in required if k not in attrs]
        if missing:
            raise InputError(
                f"the acquisition attribute lacks {', '.join(missing)}",
                "see 'man 5 ulm-stores' for the fields a channel store must describe",
            )
        fc = float(attrs["center_frequency"])
        known = {f for f in cls.__dataclass_fields__} | {"element_positions_axes", "units"}
        try:
            delays = np.asarray(attrs["transmit_delays"], dtype=np.float64)
            tilts = attrs.get("tilts")
            return cls(
                dim=int(attrs["dim"]),
                probe=str(attrs.get("probe", "unknown")),
                element_positions=np.asarray(attrs["element_positions"], dtype=np.float64),
                element_width=float(attrs.get("element_width", 0.0)),
                element_height=float(attrs.get("element_height", 0.0)),
                center_frequency=fc,
                bandwidth=float(attrs.get("bandwidth", 0.67)),
                sampling_frequency=float(attrs["sampling_frequency"]),
                demodulation_frequency=float(attrs.get("demodulation_frequency", fc)),
                n_samples=int(attrs["n_samples"]),
                t0=float(attrs["t0"]),
                transmit_delays=delays,
                tilts=np.zeros((len(delays), 2)) if tilts is None else np.asarray(tilts),
                frame_rate=float(attrs["frame_rate"]),
                speed_of_sound=float(attrs.get("speed_of_sound", SPEED_OF_SOUND)),
                elevation_focus=(
                    float(attrs["elevation_focus"]) if attrs.get("elevation_focus") else None
                ),
                extra={k: v for k, v in attrs.items() if k not in known},
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"the acquisition attribute is malformed: {exc}") from None


# ---------------------------------------------------------------------------
# Plane-wave sequences and the paper's presets
# ---------------------------------------------------------------------------


def plane_wave_delays(
    element_positions: np.ndarray, tilts: np.ndarray, speed_of_sound: float
) -> np.ndarray:
    """Transmit delays (T, E) that steer plane waves by ``tilts`` (T, 2) radians.

    The wave front leaves the probe with direction
    ``(cos tx cos ty, sin tx, sin ty)`` in (z, x, y); delays are shifted so
    the first element of each transmit fires at time zero.
    """
    pos = np.asarray(element_positions, dtype=np.float64)
    tilts = np.asarray(tilts, dtype=np.float64).reshape(-1, 2)
    tx, ty = tilts[:, 0:1], tilts[:, 1:2]
    d = (pos[None, :, 1] * np.sin(tx) + pos[None, :, 2] * np.sin(ty)) / speed_of_sound
    return d - d.min(axis=1, keepdims=True)


@dataclass(frozen=True)
class Preset:
    """A probe and sequence from the paper, plus its imaging region."""

    name: str
    dim: int
    probe: str
    n_elements: tuple[int, ...]  # (nx,) or (nx, ny)
    pitch: float
    kerf: float
    center_frequency: float
    bandwidth: float
    tilts_deg: tuple[tuple[float, float], ...]
    frame_rate: float
    grid_shape: tuple[int, ...]
    grid_step_wavelengths: float
    depth: float  # metres, centre of the imaging region
    element_height: float | None = None  # linear arrays: elevation aperture
    elevation_focus: float | None = None
    frames: int = 512

    @property
    def wavelength(self) -> float:
        return SPEED_OF_SOUND / self.center_frequency

    def element_positions(self) -> np.ndarray:
        if self.dim == 2:
            (nx,) = self.n_elements
            x = (np.arange(nx) - (nx - 1) / 2) * self.pitch
            return np.stack([np.zeros(nx), x, np.zeros(nx)], axis=1)
        nx, ny = self.n_elements
        x = (np.arange(nx) - (nx - 1) / 2) * self.pitch
        y = (np.arange(ny) - (ny - 1) / 2) * self.pitch
        xx, yy = np.meshgrid(x, y, indexing="ij")
        return np.stack([np.zeros(xx.size), xx.ravel(), yy.ravel()], axis=1)

    def grid(self, step: float | None = None, shape: Sequence[int] | None = None) -> Grid:
        """The beamforming grid: centred laterally, centred on ``depth`` axially."""
        step = step if step is not None else self.grid_step_wavelengths * self.wavelength
        shape = tuple(shape) if shape is not None else self.grid_shape
        centre = [self.depth] + [0.0] * (self.dim - 1)
        origin = tuple(c - (n - 1) / 2 * step for c, n in zip(centre, shape))
        return Grid(SPACE_AXES[self.dim], shape, origin, (step,) * self.dim, self.frame_rate)

    def acquisition(
        self, *, sampling_frequency: float | None = None, n_samples: int = 1, t0: float = 0.0
    ) -> Acquisition:
        """The preset's acquisition; the sample window is set by the simulator."""
        pos = self.element_positions()
        tilts = np.deg2rad(np.asarray(self.tilts_deg, dtype=np.float64))
        fc = self.center_frequency
        return Acquisition(
            dim=self.dim,
            probe=self.probe,
            element_positions=pos,
            element_width=self.pitch - self.kerf,
            element_height=(
                self.element_height if self.element_height is not None else self.pitch - self.kerf
            ),
            center_frequency=fc,
            bandwidth=self.bandwidth,
            sampling_frequency=sampling_frequency or fc,
            demodulation_frequency=fc,
            n_samples=n_samples,
            t0=t0,
            transmit_delays=plane_wave_delays(pos, tilts, SPEED_OF_SOUND),
            tilts=tilts,
            frame_rate=self.frame_rate,
            elevation_focus=self.elevation_focus,
        )


PRESETS: dict[str, Preset] = {
    # Linear L22-14 (Vermon): 128 elements, 0.10 mm pitch, 15.625 MHz, 3 tilts, 1 kHz.
    "2d": Preset(
        name="2d",
        dim=2,
        probe="L22-14",
        n_elements=(128,),
        pitch=0.10e-3,
        kerf=0.02e-3,
        center_frequency=15.625e6,
        bandwidth=0.67,
        tilts_deg=((-1.0, 0.0), (0.0, 0.0), (1.0, 0.0)),
        frame_rate=1000.0,
        grid_shape=(32, 32),
        grid_step_wavelengths=0.25,
        depth=8e-3,
        element_height=1.5e-3,
        elevation_focus=8e-3,
    ),
    # 32x32 matrix array (8 MHz class): 0.30 mm pitch, 7.8125 MHz, 5 tilts, 750 Hz.
    "3d": Preset(
        name="3d",
        dim=3,
        probe="matrix-32x32",
        n_elements=(32, 32),
        pitch=0.30e-3,
        kerf=0.03e-3,
        center_frequency=7.8125e6,
        bandwidth=0.67,
        tilts_deg=((-2.0, 0.0), (2.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, 0.0)),
        frame_rate=750.0,
        grid_shape=(32, 32, 32),
        grid_step_wavelengths=0.5,
        depth=10e-3,
    ),
}


def preset(name_or_dim: str | int) -> Preset:
    key = f"{name_or_dim}d" if isinstance(name_or_dim, int) else str(name_or_dim).lower()
    if key not in PRESETS:
        raise UsageError(
            f"unknown preset {name_or_dim!r}", f"choose one of {', '.join(sorted(PRESETS))}"
        )
    return PRESETS[key]
