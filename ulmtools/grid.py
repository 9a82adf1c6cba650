"""Axes and sampling grids: units travel with the coordinates.

On disk every position is in metres and every time in seconds. Pixels exist
only inside a computation; :class:`Grid` converts at the edges.

Spatial axes are ordered ``(z, x)`` in 2D and ``(z, x, y)`` in 3D, with ``z``
the depth (axial) axis, as ultrasound images are usually shown. Image arrays
are laid out ``(movie, t, *space)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ulmtools.errors import InputError

SPACE_AXES = {2: ("z", "x"), 3: ("z", "x", "y")}

AXIS_TYPES: dict[str, tuple[str, str | None]] = {
    "movie": ("index", None),
    "t": ("time", "second"),
    "frame": ("index", None),
    "transmit": ("index", None),
    "sample": ("time", "second"),
    "element": ("index", None),
    "channel": ("channel", None),
    "z": ("space", "metre"),
    "x": ("space", "metre"),
    "y": ("space", "metre"),
}


def axes_metadata(names: Sequence[str]) -> list[dict[str, Any]]:
    """The ``axes`` attribute for arrays whose dimensions are ``names``.

    Each entry has a ``name``, a ``type`` (space, time, index, channel) and a
    ``unit`` (``metre``, ``second`` or null), in the manner of OME-NGFF.
    """
    out = []
    for name in names:
        kind, unit = AXIS_TYPES.get(name, ("index", None))
        out.append({"name": name, "type": kind, "unit": unit})
    return out


@dataclass(frozen=True)
class Grid:
    """A regular spatial grid plus, optionally, a frame rate.

    ``origin`` is the position of the first pixel's centre and ``spacing`` the
    pixel pitch, both in metres, one value per axis in ``axes``.
    """

    axes: tuple[str, ...]
    shape: tuple[int, ...]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    frame_rate: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.axes)
        if not (len(self.shape) == len(self.origin) == len(self.spacing) == n):
            raise InputError(
                f"grid has {n} axes but shape/origin/spacing of lengths "
                f"{len(self.shape)}/{len(self.origin)}/{len(self.spacing)}",
                "give one value per axis",
            )
        if not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise InputError(f"grid spacing must be positive and finite, got {list(self.spacing)}")
        if not all(math.isfinite(o) for o in self.origin):
            raise InputError(f"grid origin must be finite, got {list(self.origin)}")
        if self.frame_rate is not None and not (
            math.isfinite(self.frame_rate) and self.frame_rate > 0
        ):
            raise InputError(
                f"the grid's frame rate must be positive and finite, got {self.frame_rate}"
            )
        if any(int(s) < 1 for s in self.shape):
            raise InputError(f"grid shape must be at least 1 per axis, got {list(self.shape)}")

    @property
    def ndim(self) -> int:
        return len(self.axes)

    def coordinates(self, axis: int | str) -> np.ndarray:
        """Pixel-centre positions along one axis, in metres."""
        i = self.axes.index(axis) if isinstance(axis, str) else axis
        return self.origin[i] + self.spacing[i] * np.arange(self.shape[i])

    def to_index(self, positions: np.ndarray) -> np.ndarray:
        """Metres (n, ndim) to fractional pixel indices (n, ndim)."""
        p = np.asarray(positions, dtype=np.float64)
        return (p - np.asarray(self.origin)) / np.asarray(self.spacing)

    def to_position(self, indices: np.ndarray) -> np.ndarray:
        """Fractional pixel indices (n, ndim) to metres (n, ndim)."""
        i = np.asarray(indices, dtype=np.float64)
        return np.asarray(self.origin) + i * np.asarray(self.spacing)

    def refined(self, factor: int) -> Grid:
        """The grid ``factor`` times finer covering the same field of view.

        Pixel edges line up: the first fine pixel's centre sits half a fine
        pitch inside the first coarse pixel's outer edge.
        """
        spacing = tuple(s / factor for s in self.spacing)
        origin = tuple(o - s / 2 + f / 2 for o, s, f in zip(self.origin, self.spacing, spacing))
        shape = tuple(n * factor for n in self.shape)
        return Grid(self.axes, shape, origin, spacing, self.frame_rate, dict(self.extra))

    def to_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "axes": list(self.axes),
            "shape": [int(n) for n in self.shape],
            "origin": [float(o) for o in self.origin],
            "spacing": [float(s) for s in self.spacing],
            "unit": "metre",
        }
        if self.frame_rate is not None:
            attrs["frame_rate"] = float(self.frame_rate)
        attrs.update(self.extra)
        return attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Grid:
        if not isinstance(attrs, Mapping):
            raise InputError(
                f"the grid attribute is {type(attrs).__name__}, not an object",
                "it needs axes, shape, origin and spacing (metres), one value per axis",
            )
        try:
            known = {"axes", "shape", "origin", "spacing", "unit", "frame_rate"}
            unit = attrs.get("unit", "metre")
            if unit != "metre":
                raise InputError(f"grid unit is {unit!r}; ulmtools expects 'metre'")
            return cls(
                axes=tuple(attrs["axes"]),
                shape=tuple(int(n) for n in attrs["shape"]),
                origin=tuple(float(o) for o in attrs["origin"]),
                spacing=tuple(float(s) for s in attrs["spacing"]),
                frame_rate=(
                    float(attrs["frame_rate"]) if attrs.get("frame_rate") is not None else None
                ),
                extra={k: v for k, v in attrs.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"the grid attribute is malformed ({exc.__class__.__name__}: {exc})",
                "it needs axes, shape, origin and spacing (metres), one value per axis",
            ) from None
