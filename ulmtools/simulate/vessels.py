"""Vascular networks: a synthetic branching tree generator and external networks.

A network is a directed graph of straight pieces: ``nodes`` (N, 3) positions
in metres as ``(z, x, y)``, ``edges`` (M, 2) node indices with blood flowing
from the first node to the second, ``radii`` (M,) metres, and optionally a
volumetric ``flow`` (M,) per edge (any unit; only ratios matter). Bubbles
enter at the inflow roots (edges whose start node has no incoming edge),
choose among a node's outgoing edges with probability proportional to flow
and leave the network at dead ends.

The generator grows several inflow trunks from the faces of a box at
mouse-brain scale (half a millimetre, radii of a few to ~30 µm) by recursive
asymmetric bifurcation: children radii obey Murray's law
(r^3 = r1^3 + r2^3), branch angles follow Murray's minimum-work optimum,
each vessel runs 6-14 radii before it divides and meanders (tortuosity).
The tree is then dilated to fill the imaging region, as the reference paper
dilated its two-photon angiograms (x2 in 2D, x8 in 3D): node positions are
stretched, lumens keep their real radii (so track maps stay thin lines).
A different ``seed`` gives a different "animal".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ulmtools.errors import InputError


@dataclass(frozen=True)
class VesselNetwork:
    """A directed vessel graph in metres, ``(z, x, y)`` coordinates."""

    nodes: np.ndarray  # (N, 3) float64
    edges: np.ndarray  # (M, 2) int64, flow from edges[:, 0] to edges[:, 1]
    radii: np.ndarray  # (M,) float64 metres
    flow: np.ndarray  # (M,) float64, relative volumetric flow

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def lengths(self) -> np.ndarray:
        d = self.nodes[self.edges[:, 1]] - self.nodes[self.edges[:, 0]]
        return np.sqrt((d**2).sum(axis=1))

    def transformed(
        self, scale: float, centre: np.ndarray, *, scale_radii: bool = False
    ) -> VesselNetwork:
        """Scale positions about the bounding-box centre, then move it to ``centre``.

        Radii keep their size unless ``scale_radii``: dilation spreads the
        network over the field of view, the lumens stay realistic.
        """
        lo, hi = self.nodes.min(axis=0), self.nodes.max(axis=0)
        mid = (lo + hi) / 2
        nodes = (self.nodes - mid) * scale + np.asarray(centre, dtype=np.float64)
        radii = self.radii * scale if scale_radii else self.radii
        return VesselNetwork(nodes, self.edges, radii, self.flow)

    def to_dict(self) -> dict[str, object]:
        return {
            "nodes": self.nodes.tolist(),
            "edges": self.edges.tolist(),
            "radii": self.radii.tolist(),
            "flow": self.flow.tolist(),
            "axes": ["z", "x", "y"],
            "unit": "metre",
        }


def make_network(
    nodes: np.ndarray, edges: np.ndarray, radii: np.ndarray, flow: np.ndarray | None = None
) -> VesselNetwork:
    """Validate and build a network; flow defaults to r^3 (Poiseuille + Murray)."""
    nodes = np.asarray(nodes, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    problems = []
    if nodes.ndim != 2 or nodes.shape[1] not in (2, 3) or len(nodes) < 2:
        problems.append(f"nodes must be (N, 3) positions (z, x, y), got shape {nodes.shape}")
    if edges.ndim != 2 or edges.shape[1] != 2 or len(edges) < 1:
        problems.append(f"edges must be (M, 2) node indices, got shape {edges.shape}")
    if not problems:
        if nodes.shape[1] == 2:  # (z, x) planar network: y = 0
            nodes = np.column_stack([nodes, np.zeros(len(nodes))])
        if edges.min() < 0 or edges.max() >= len(nodes):
            problems.append("edges refer to nodes that do not exist")
        if len(radii) != len(edges):
            problems.append(f"{len(radii)} radii for {len(edges)} edges")
        elif not np.all(np.isfinite(radii)) or np.any(radii <= 0):
            problems.append("radii must be positive")
        if not np.all(np.isfinite(nodes)):
            problems.append("node positions must be finite")
    if flow is None and not problems:
        flow = radii**3
    if flow is not None and not problems:
        flow = np.asarray(flow, dtype=np.float64).reshape(-1)
        if len(flow) != len(edges) or np.any(~np.isfinite(flow)) or np.any(flow < 0):
            problems.append("flow must be one non-negative value per edge")
    if problems:
        raise InputError(
            "invalid vessel network: " + "; ".join(problems),
            "give nodes (N,3) metres as z,x,y, edges (M,2) and radii (M,) metres",
        )
    keep = edges[:, 0] != edges[:, 1]
    assert flow is not None
    return VesselNetwork(nodes, edges[keep], radii[keep], flow[keep])


def load_network(path: str | Path) -> VesselNetwork:
    """Read a network from ``.json`` or ``.npz`` (keys nodes, edges, radii[, flow]).

    Positions and radii are in metres unless the file says ``"unit": "micrometre"``
    (or ``"um"``/``"mm"``).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot read the vessel network {p}: no such file", "check the path")
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            unit = str(data.pop("unit", "metre"))
        else:
            data = json.loads(p.read_text())
            if not isinstance(data, dict):
                raise ValueError("the top level must be an object")
            unit = str(data.get("unit", "metre"))
        scale = {"metre": 1.0, "m": 1.0, "mm": 1e-3, "millimetre": 1e-3, "um": 1e-6}.get(
            unit, 1e-6 if unit in ("micrometre", "µm", "micron") else None
        )
        if scale is None:
            raise ValueError(f"unknown unit {unit!r}")
        nodes = np.asarray(data["nodes"], dtype=np.float64) * scale
        radii = np.asarray(data["radii"], dtype=np.float64) * scale
        flow = data.get("flow")
        return make_network(nodes, data["edges"], radii, flow)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise InputError(
            f"cannot read the vessel network {p}: {msg}",
            "use .json or .npz with nodes (N,3), edges (M,2), radii (M,)",
        ) from None


@dataclass(frozen=True)
class TreeConfig:
    """Parameters of the synthetic tree, at mouse-brain scale (before dilation)."""

    box: float = 0.5e-3  # side of the native cube, metres
    trunks: int = 8  # inflow trunks entering through the box faces
    root_radius: tuple[float, float] = (11e-6, 16e-6)
    min_radius: float = 2.0e-6
    length_radii: tuple[float, float] = (6.0, 14.0)  # vessel length between branchings
    asymmetry: tuple[float, float] = (0.35, 1.0)  # r2 / r1 at a bifurcation
    tortuosity: float = 0.12  # lateral meander amplitude / vessel length
    pieces: int = 4  # straight pieces per vessel
    max_edges: int = 60_000


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=3)
    a -= a.dot(d) * d
    n = np.linalg.norm(a)
    a = a / n if n > 1e-12 else np.array([0.0, 1.0, 0.0])
    return a, np.cross(d, a)


def _rotate(d: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    # Rodrigues' rotation of d about the unit axis
    return (
        d * np.cos(angle)
        + np.cross(axis, d) * np.sin(angle)
        + axis * axis.dot(d) * (1 - np.cos(angle))
    )


def generate_tree(seed: int, config: TreeConfig = TreeConfig()) -> VesselNetwork:
    """Grow a random arterial tree filling a cube of side ``config.box`` centred at 0."""
    rng = np.random.default_rng(seed)
    half = config.box / 2
    margin = 0.15 * config.box
    nodes: list[np.ndarray] = []
    edges: list[tuple[int, int]] = []
    radii: list[float] = []

    def add_node(p: np.ndarray) -> int:
        nodes.append(p)
        return len(nodes) - 1

    # Trunks: most enter through the top face (z = -half, the "cortical surface"),
    # the rest through the side faces; all point roughly towards the centre.
    stack: list[tuple[int, np.ndarray, float]] = []
    for k in range(config.trunks):
        face = 0 if k < max(1, (2 * config.trunks) // 3) else int(rng.integers(1, 5))
        p = rng.uniform(-0.85 * half, 0.85 * half, size=3)
        if face == 0:
            p[0] = -half
        else:
            axis = 1 + (face - 1) // 2
            p[axis] = -half if (face - 1) % 2 == 0 else half
        target = rng.uniform(-0.3 * half, 0.3 * half, size=3)
        inward = np.zeros(3)
        if face == 0:
            inward[0] = 1.0
        else:
            inward[1 + (face - 1) // 2] = 1.0 if (face - 1) % 2 == 0 else -1.0
        d = 0.7 * inward + 0.3 * (target - p) / (np.linalg.norm(target - p) + 1e-12)
        d /= np.linalg.norm(d)
        r0 = rng.uniform(*config.root_radius)
        stack.append((add_node(p), d, r0))

    while stack and len(edges) < config.max_edges:
        start, d, r = stack.pop()
        p0 = nodes[start]
        length = rng.uniform(*config.length_radii) * r
        p1 = p0 + length * d
        # tortuous path: smooth lateral offsets vanishing at both ends
        n1, n2 = _perpendicular(d, rng)
        a1, a2 = rng.normal(0, config.tortuosity * length, size=2)
        prev = start
        for i in range(1, config.pieces + 1):
            s = i / config.pieces
            q = p0 + s * (p1 - p0)
            if i < config.pieces:
                q = q + a1 * np.sin(np.pi * s) * n1 + a2 * np.sin(2 * np.pi * s) * n2
            cur = add_node(q)
            edges.append((prev, cur))
            radii.append(r)
            prev = cur
        end = prev
        if np.any(np.abs(p1) > half + margin) or r < config.min_radius * 2 ** (1 / 3):
            continue  # leaves the box, or a capillary: a dead end (outflow)
        # bifurcation: Murray's law with a random asymmetry q = r2 / r1
        q = rng.uniform(*config.asymmetry)
        r1 = r / (1 + q**3) ** (1 / 3)
        r2 = q * r1
        c1 = np.clip((r**4 + r1**4 - r2**4) / (2 * r**2 * r1**2), -1, 1)
        c2 = np.clip((r**4 + r2**4 - r1**4) / (2 * r**2 * r2**2), -1, 1)
        th1, th2 = np.arccos(c1), np.arccos(c2)
        axis, _ = _perpendicular(d, rng)
        # gently steer away from the faces so the box fills
        steer = -p1 / (half + 1e-12)
        for rr, th, sign in ((r1, th1, 1.0), (r2, th2, -1.0)):
            if rr < config.min_radius:
                continue
            nd = _rotate(d, axis, sign * th) + 0.15 * steer + rng.normal(0, 0.08, 3)
            nd /= np.linalg.norm(nd)
            stack.append((end, nd, rr))

    net = make_network(np.asarray(nodes), np.asarray(edges), np.asarray(radii))
    return net


def fov_box(lo: np.ndarray, hi: np.ndarray, fill: float = 1.27) -> tuple[np.ndarray, float]:
    """Centre and side of the cube the network fills: ``fill`` x the largest FOV side."""
    centre = (np.asarray(lo) + np.asarray(hi)) / 2
    side = float(np.max(np.asarray(hi) - np.asarray(lo))) * fill
    return centre, side
