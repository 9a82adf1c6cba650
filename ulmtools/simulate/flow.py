"""Microbubble flow: bubbles carried through a vessel network, or random trajectories.

Network flow (:func:`network_movie`):

* each vessel's mean speed rises with its diameter,
  ``v_mean = v_ref * (d / d_ref) ** exponent`` at mouse-brain scale, times the
  dilation applied to the network (the paper dilated positions, hence speeds);
* a bubble keeps a radial position ``rho`` (fraction of the radius, capped
  below the wall) and moves at the Poiseuille speed ``2 v_mean (1 - rho^2)``;
* at a node it picks an outgoing vessel with probability proportional to
  that vessel's flow, and it leaves the network at a dead end;
* bubbles enter at the inflow roots as Poisson processes with rates
  proportional to the roots' flow; the total rate is set so the expected
  number of bubbles inside the field of view equals the requested
  concentration, and the movie starts from that steady state (bubbles spread
  along every vessel in proportion to flux x transit time) so there is no
  wash-in. The rate follows from the network alone: the expected time an
  injected bubble spends in the field of view is the sum over vessels of
  (fraction of the flux through it) x (length inside the FOV) / (mean speed),
  corrected for the radial distribution of bubble speeds.

Positions are integrated with sub-steps short enough (half a fine pixel) that
the rasterised track map on the x8 grid is connected; frames are every
``substeps``-th sub-step.

Random trajectories (:func:`random_movie`): straight or circular-arc tracks at
constant speed through the field of view, for the paper's trajectory-Dice
test sets, with the same concentration calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ulmtools import interrupts
from ulmtools.simulate.vessels import VesselNetwork


@dataclass(frozen=True)
class FlowConfig:
    """Speed law and bubble properties."""

    v_ref: float = 1.0e-3  # m/s mean speed in a vessel of diameter d_ref (native scale)
    d_ref: float = 5.0e-6
    exponent: float = 1.2
    v_max_native: float = 25e-3  # cap on the mean speed at native scale
    rho_max: float = 0.9  # bubbles stay off the wall
    amplitude_sigma: float = 0.25  # log-normal spread of bubble scattering amplitudes
    random_speed: tuple[float, float] = (0.1, 1.2)  # random tracks: image pixels per frame


@dataclass(frozen=True)
class Region:
    """Where bubbles count, where they echo, and the fine grid tracks are drawn on.

    All boxes are ``(z, x, y)`` metres. In 2D the y extent is the elevational
    slab and the fine grid has one y cell.
    """

    dim: int
    fov_lo: np.ndarray
    fov_hi: np.ndarray
    echo_lo: np.ndarray
    echo_hi: np.ndarray
    fine_origin: np.ndarray  # (3,)
    fine_spacing: np.ndarray  # (3,)
    fine_shape: tuple[int, int, int]

    @property
    def fine_pitch(self) -> float:
        return float(np.min(self.fine_spacing[: self.dim]))


@dataclass
class BubbleMovie:
    """Bubbles of one movie: one row per (bubble, frame) inside the echo region."""

    frames: np.ndarray  # (n,) int32
    ids: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) metres (z, x, y)
    amplitudes: np.ndarray  # (n,) float32
    tracks: np.ndarray  # fine grid uint8 (nz, nx[, ny])
    fov_counts: np.ndarray  # (frames,) bubbles inside the field of view per frame


# ---------------------------------------------------------------------------
# Network preparation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedNetwork:
    a: np.ndarray
    b: np.ndarray
    p0: np.ndarray  # (M, 3)
    dirs: np.ndarray  # (M, 3) unit
    n1: np.ndarray
    n2: np.ndarray
    length: np.ndarray
    radius: np.ndarray
    vmax: np.ndarray  # centre-line speed, m/s
    out_ptr: np.ndarray
    out_edges: np.ndarray
    out_cum: np.ndarray  # cumulative flow weights per node's outgoing edges
    roots: np.ndarray
    root_cum: np.ndarray
    flux: np.ndarray  # steady-state fraction of all bubbles passing each edge
    fov_time: float  # expected bubble-seconds in the FOV per injected bubble


def mean_speed(radius: np.ndarray, dilation: float, cfg: FlowConfig) -> np.ndarray:
    """Mean speed (m/s) in vessels of (undilated) ``radius``, along paths dilated by ``dilation``.

    The speed law holds at native scale; stretching the paths by the dilation
    stretches the speeds too, so transit times stay those of the native network.
    """
    native_d = 2 * np.asarray(radius)
    v = cfg.v_ref * (native_d / cfg.d_ref) ** cfg.exponent
    return np.minimum(v, cfg.v_max_native) * dilation


def transit_factor(cfg: FlowConfig) -> float:
    """Mean transit time per unit length, in units of 1 / v_mean, of injected bubbles.

    Bubbles enter with the flux-weighted radial density ``4 rho (1 - rho^2)``,
    those beyond ``rho_max`` held at ``rho_max``; the mean of
    ``v_mean / v(rho) = 1 / (2 (1 - rho^2))`` is then ``(1 + rho_max^2) / 2``.
    """
    return (1 + cfg.rho_max**2) / 2


def _inside(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.all((p >= lo) & (p <= hi), axis=-1)


def prepare_network(
    net: VesselNetwork, region: Region, dilation: float, cfg: FlowConfig
) -> PreparedNetwork:
    a, b = net.edges[:, 0], net.edges[:, 1]
    p0 = net.nodes[a]
    d = net.nodes[b] - p0
    length = np.sqrt((d**2).sum(axis=1))
    ok = length > 0
    dirs = np.zeros_like(d)
    dirs[ok] = d[ok] / length[ok, None]
    # perpendicular frame from a fixed reference, so it turns smoothly along a vessel
    g = np.where((np.abs(dirs[:, 1]) > 0.9)[:, None], [[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]])
    n1 = g - (g * dirs).sum(axis=1, keepdims=True) * dirs
    n1 /= np.maximum(np.linalg.norm(n1, axis=1, keepdims=True), 1e-12)
    n2 = np.cross(dirs, n1)
    vmean = mean_speed(net.radii, dilation, cfg)
    n_nodes = len(net.nodes)
    order = np.argsort(a, kind="stable")
    counts = np.bincount(a, minlength=n_nodes)
    out_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out_edges = order.astype(np.int64)
    w = np.maximum(net.flow[out_edges], 1e-30)
    out_cum = np.empty_like(w)
    for n in np.nonzero(counts)[0]:
        s, e = out_ptr[n], out_ptr[n + 1]
        c = np.cumsum(w[s:e])
        out_cum[s:e] = c / c[-1]
    indeg = np.bincount(b, minlength=n_nodes)
    roots = np.nonzero(indeg[a] == 0)[0].astype(np.int64)
    if len(roots) == 0:  # a closed loop network: inject at the largest-flow edges
        roots = np.argsort(net.flow)[-max(1, len(net.flow) // 100) :].astype(np.int64)
    rw = np.maximum(net.flow[roots], 1e-30)
    root_cum = np.cumsum(rw) / rw.sum()
    # steady-state flux fractions: propagate from the roots (Kahn order)
    flux = np.zeros(len(a))
    flux[roots] = rw / rw.sum()
    inflow = np.zeros(n_nodes)
    pending = indeg.copy()
    queue = list(roots)
    seen = np.zeros(len(a), dtype=bool)
    while queue:
        e = queue.pop()
        if seen[e]:
            continue
        seen[e] = True
        node = b[e]
        inflow[node] += flux[e]
        pending[node] -= 1
        if pending[node] <= 0:
            s, t = out_ptr[node], out_ptr[node + 1]
            if t > s:
                probs = np.diff(np.concatenate([[0.0], out_cum[s:t]]))
                for k, ed in enumerate(out_edges[s:t]):
                    flux[ed] = inflow[node] * probs[k]
                    queue.append(ed)
    # expected time an injected bubble spends in the FOV
    samples = (np.arange(8) + 0.5) / 8
    pts = p0[:, None, :] + samples[None, :, None] * d[:, None, :]
    frac_in = _inside(pts, region.fov_lo, region.fov_hi).mean(axis=1)
    fov_time = float(
        np.sum(flux * length * frac_in * transit_factor(cfg) / np.maximum(vmean, 1e-12))
    )
    return PreparedNetwork(
        a=a.astype(np.int64),
        b=b.astype(np.int64),
        p0=p0,
        dirs=dirs,
        n1=n1,
        n2=n2,
        length=np.maximum(length, 1e-12),
        radius=net.radii,
        vmax=2 * vmean,
        out_ptr=out_ptr,
        out_edges=out_edges,
        out_cum=out_cum,
        roots=roots,
        root_cum=root_cum,
        flux=flux,
        fov_time=fov_time,
    )


# ---------------------------------------------------------------------------
# The numba integrator
# ---------------------------------------------------------------------------


@numba.njit(cache=True)
def _position(pn_p0, pn_dirs, pn_n1, pn_n2, pn_radius, e, s, rho, phi, out):
    r = rho * pn_radius[e]
    c, si = np.cos(phi), np.sin(phi)
    for k in range(3):
        out[k] = pn_p0[e, k] + s * pn_dirs[e, k] + r * (c * pn_n1[e, k] + si * pn_n2[e, k])


@numba.njit(cache=True)
def _in_box(p, lo, hi):
    for k in range(3):  # noqa: SIM110 - numba compiles plain loops
        if p[k] < lo[k] or p[k] > hi[k]:
            return False
    return True


@numba.njit(cache=True)
def _pick(cum, start, stop, u):
    for i in range(start, stop):
        if u <= cum[i]:
            return i
    return stop - 1


@numba.njit(cache=True)
def _simulate_network(
    seed,
    n_frames,
    substeps,
    dt,
    rate,
    init_edge,
    init_s,
    init_rho,
    init_phi,
    p0,
    dirs,
    n1,
    n2,
    length,
    radius,
    vmax,
    b,
    out_ptr,
    out_edges,
    out_cum,
    roots,
    root_cum,
    rho_max,
    amp_sigma,
    id_base,
    fov_lo,
    fov_hi,
    echo_lo,
    echo_hi,
    fine_origin,
    fine_spacing,
    tracks,
    capacity,
    out_capacity,
):
    np.random.seed(seed)
    edge = -np.ones(capacity, np.int64)
    s = np.zeros(capacity)
    rho = np.zeros(capacity)
    phi = np.zeros(capacity)
    amp = np.zeros(capacity)
    bid = np.zeros(capacity, np.int64)
    free = np.arange(capacity - 1, -1, -1).astype(np.int64)
    n_free = capacity
    next_id = 0
    for i in range(len(init_edge)):
        if n_free == 0:
            return -1, None, None, None, None, None
        n_free -= 1
        j = free[n_free]
        edge[j] = init_edge[i]
        s[j] = init_s[i]
        rho[j] = init_rho[i]
        phi[j] = init_phi[i]
        amp[j] = np.exp(amp_sigma * np.random.normal())
        bid[j] = id_base + next_id
        next_id += 1
    o_frame = np.zeros(out_capacity, np.int32)
    o_id = np.zeros(out_capacity, np.int64)
    o_pos = np.zeros((out_capacity, 3))
    o_amp = np.zeros(out_capacity, np.float32)
    counts = np.zeros(n_frames, np.int64)
    n_out = 0
    pos = np.zeros(3)
    h = dt / substeps
    nz, nx, ny = tracks.shape
    for step in range(n_frames * substeps):
        # injection at the roots
        n_new = np.random.poisson(rate * h)
        for _ in range(n_new):
            if n_free == 0:
                return -1, None, None, None, None, None
            n_free -= 1
            j = free[n_free]
            r = roots[_pick(root_cum, 0, len(root_cum), np.random.random())]
            edge[j] = r
            s[j] = 0.0
            # flux-weighted radial position: P(rho) ~ (1 - rho^2) rho
            rr = np.sqrt(1.0 - np.sqrt(1.0 - np.random.random()))
            rho[j] = min(rr, rho_max)
            phi[j] = 2 * np.pi * np.random.random()
            amp[j] = np.exp(amp_sigma * np.random.normal())
            bid[j] = id_base + next_id
            next_id += 1
        record = step % substeps == 0
        frame = step // substeps
        for j in range(capacity):
            e = edge[j]
            if e < 0:
                continue
            if step > 0:
                s[j] += vmax[e] * (1.0 - rho[j] * rho[j]) * h
                while s[j] > length[e]:
                    s[j] -= length[e]
                    node = b[e]
                    a0, a1 = out_ptr[node], out_ptr[node + 1]
                    if a1 == a0:
                        e = -1
                        break
                    e = out_edges[_pick(out_cum, a0, a1, np.random.random())]
                edge[j] = e
                if e < 0:
                    free[n_free] = j
                    n_free += 1
                    continue
            _position(p0, dirs, n1, n2, radius, e, s[j], rho[j], phi[j], pos)
            if _in_box(pos, fov_lo, fov_hi):
                iz = int(np.floor((pos[0] - fine_origin[0]) / fine_spacing[0] + 0.5))
                ix = int(np.floor((pos[1] - fine_origin[1]) / fine_spacing[1] + 0.5))
                iy = 0
                if ny > 1:
                    iy = int(np.floor((pos[2] - fine_origin[2]) / fine_spacing[2] + 0.5))
                if 0 <= iz < nz and 0 <= ix < nx and 0 <= iy < ny:
                    tracks[iz, ix, iy] = 1
                if record:
                    counts[frame] += 1
            if record and _in_box(pos, echo_lo, echo_hi):
                if n_out == out_capacity:
                    return -2, None, None, None, None, None
                o_frame[n_out] = frame
                o_id[n_out] = bid[j]
                o_amp[n_out] = amp[j]
                for k in range(3):
                    o_pos[n_out, k] = pos[k]
                n_out += 1
    return n_out, o_frame, o_id, o_pos, o_amp, counts


def substeps_for(max_speed: float, frame_rate: float, pitch: float) -> int:
    """Sub-steps per frame so a bubble moves at most half a fine pixel per sub-step."""
    return int(max(1, min(256, np.ceil(max_speed / frame_rate / (0.5 * pitch)))))


def network_movie(
    prepared: PreparedNetwork,
    region: Region,
    *,
    n_frames: int,
    frame_rate: float,
    concentration: float,
    seed: int,
    id_base: int,
    cfg: FlowConfig,
) -> BubbleMovie:
    """Simulate one movie of bubbles flowing through a prepared network."""
    pn = prepared
    rate = concentration / pn.fov_time if pn.fov_time > 0 else 0.0
    rng = np.random.default_rng(seed)
    # steady state: on each edge, Poisson(rate * flux * L / v_mean) bubbles, uniform
    # along it and uniform over the cross-section (density = flux x transit time)
    mean_n = rate * pn.flux * pn.length * transit_factor(cfg) / np.maximum(pn.vmax / 2, 1e-12)
    n_per = rng.poisson(mean_n)
    init_edge = np.repeat(np.arange(len(n_per)), n_per).astype(np.int64)
    init_s = rng.random(len(init_edge)) * pn.length[init_edge]
    # steady-state radial density: uniform over the disc inside rho_max, plus the
    # bubbles held at rho_max (slow, so over-represented)
    rm2 = cfg.rho_max**2
    at_cap = rng.random(len(init_edge)) >= 2 * rm2 / (1 + rm2)
    init_rho = np.where(at_cap, cfg.rho_max, np.sqrt(rng.random(len(init_edge))) * cfg.rho_max)
    init_phi = rng.random(len(init_edge)) * 2 * np.pi
    vmax_hit = float(pn.vmax[pn.flux > 0].max()) if np.any(pn.flux > 0) else 1e-3
    substeps = substeps_for(vmax_hit, frame_rate, region.fine_pitch)
    tracks = np.zeros(region.fine_shape, dtype=np.uint8)
    total = float(mean_n.sum()) + rate * n_frames / frame_rate
    capacity = int(2 * float(mean_n.sum()) + 10 * np.sqrt(total + 1) + 64)
    out_capacity = int(max(1024, 4 * concentration * n_frames * 4))
    sim_seed = int(rng.integers(0, 2**31 - 1))
    # Ctrl-C and SIGTERM wait until the compiled simulation has returned and its
    # arrays are ours: one raised while numba hands them over crashed the process
    # (SIGSEGV) instead of ending the command cleanly
    with interrupts.held():
        while True:
            res = _simulate_network(
                sim_seed,
                n_frames,
                substeps,
                1.0 / frame_rate,
                rate,
                init_edge,
                init_s,
                init_rho,
                init_phi,
                pn.p0,
                pn.dirs,
                pn.n1,
                pn.n2,
                pn.length,
                pn.radius,
                pn.vmax,
                pn.b,
                pn.out_ptr,
                pn.out_edges,
                pn.out_cum,
                pn.roots,
                pn.root_cum,
                cfg.rho_max,
                cfg.amplitude_sigma,
                id_base,
                region.fov_lo,
                region.fov_hi,
                region.echo_lo,
                region.echo_hi,
                region.fine_origin,
                region.fine_spacing,
                tracks,
                capacity,
                out_capacity,
            )
            n = res[0]
            if n == -1:
                capacity *= 2
            elif n == -2:
                out_capacity *= 2
            else:
                break
            tracks[...] = 0
        _, frames, ids, pos, amps, counts = res
    return BubbleMovie(
        frames=frames[:n],
        ids=ids[:n],
        positions=pos[:n],
        amplitudes=amps[:n],
        tracks=_squeeze_tracks(tracks, region.dim),
        fov_counts=counts,
    )


def _squeeze_tracks(tracks: np.ndarray, dim: int) -> np.ndarray:
    return tracks[:, :, 0] if dim == 2 else tracks


# ---------------------------------------------------------------------------
# Random trajectories
# ---------------------------------------------------------------------------


def _arc(q, d, n, radius, u):
    """Points at arc-length u (k,) along a circle of radius (inf = straight)."""
    u = np.asarray(u)[:, None]
    if np.isinf(radius):
        return q + u * d
    return q + radius * np.sin(u / radius) * d + radius * (1 - np.cos(u / radius)) * n


def _random_track(rng: np.random.Generator, region: Region, speeds: tuple[float, float]):
    lo, hi = region.fov_lo.copy(), region.fov_hi.copy()
    if region.dim == 2:
        lo[2] = hi[2] = 0.0
    q = rng.uniform(lo, hi)
    if region.dim == 2:
        a = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(a), np.sin(a), 0.0])
        n = np.array([-np.sin(a), np.cos(a), 0.0]) * rng.choice([-1.0, 1.0])
    else:
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        n = rng.normal(size=3)
        n -= n.dot(d) * d
        n /= np.linalg.norm(n)
    side = float(np.max((hi - lo)[: region.dim]))
    radius = np.inf if rng.random() < 0.5 else rng.uniform(0.5, 3.0) * side
    v = rng.uniform(*speeds)
    half = float(np.linalg.norm((region.echo_hi - region.echo_lo)[: region.dim]))
    return q, d, n, radius, v, half


def random_movie(
    region: Region,
    *,
    n_frames: int,
    frame_rate: float,
    concentration: float,
    seed: int,
    id_base: int,
    cfg: FlowConfig,
) -> BubbleMovie:
    """Random straight or curved tracks crossing the FOV at constant speeds."""
    rng = np.random.default_rng(seed)
    pitch_coarse = region.fine_pitch * 8  # the image grid's pitch
    speeds = (
        cfg.random_speed[0] * frame_rate * pitch_coarse,
        cfg.random_speed[1] * frame_rate * pitch_coarse,
    )
    # expected time in the FOV per track, by Monte Carlo on a pilot sample
    pilot = np.random.default_rng(12345)
    times = []
    for _ in range(400):
        q, d, n, rad, v, half = _random_track(pilot, region, speeds)
        u = np.linspace(-half, half, 400)
        inside = _inside(_arc(q, d, n, rad, u), region.fov_lo, region.fov_hi)
        times.append(inside.mean() * 2 * half / v)
    mean_time = float(np.mean(times))
    rate = concentration / mean_time
    duration = n_frames / frame_rate
    pad = 2 * float(np.linalg.norm(region.echo_hi - region.echo_lo)) / speeds[0]
    n_tracks = rng.poisson(rate * (duration + 2 * pad))
    t_frames = np.arange(n_frames) / frame_rate
    fr, ids, pos, amps = [], [], [], []
    tracks = np.zeros(region.fine_shape, dtype=np.uint8)
    counts = np.zeros(n_frames, dtype=np.int64)
    for k in range(n_tracks):
        q, d, n, rad, v, half = _random_track(rng, region, speeds)
        tc = rng.uniform(-pad, duration + pad)
        amp = np.float32(np.exp(cfg.amplitude_sigma * rng.normal()))
        u = v * (t_frames - tc)
        live = np.abs(u) <= half
        if not live.any():
            continue
        p = _arc(q, d, n, rad, u[live])
        f = np.nonzero(live)[0]
        ine = _inside(p, region.echo_lo, region.echo_hi)
        fr.append(f[ine].astype(np.int32))
        ids.append(np.full(int(ine.sum()), id_base + k, dtype=np.int64))
        pos.append(p[ine])
        amps.append(np.full(int(ine.sum()), amp, dtype=np.float32))
        counts[f[_inside(p, region.fov_lo, region.fov_hi)]] += 1
        # fine rendering between the first and last live frame
        u0, u1 = u[live][0], u[live][-1]
        uu = np.arange(u0, u1 + 1e-15, 0.5 * region.fine_pitch)
        pp = _arc(q, d, n, rad, uu)
        _render(tracks, pp[_inside(pp, region.fov_lo, region.fov_hi)], region)

    def cat(xs: list[np.ndarray], dt: type, w: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros((0, *w), dt)

    return BubbleMovie(
        frames=cat(fr, np.int32, ()),
        ids=cat(ids, np.int64, ()),
        positions=cat(pos, np.float64, (3,)).reshape(-1, 3),
        amplitudes=cat(amps, np.float32, ()),
        tracks=_squeeze_tracks(tracks, region.dim),
        fov_counts=counts,
    )


def _render(tracks: np.ndarray, p: np.ndarray, region: Region) -> None:
    if len(p) == 0:
        return
    idx = np.floor((p - region.fine_origin) / region.fine_spacing + 0.5).astype(np.int64)
    if region.dim == 2:
        idx[:, 2] = 0
    ok = np.all((idx >= 0) & (idx < np.asarray(region.fine_shape)), axis=1)
    tracks[tuple(idx[ok].T)] = 1
