"""Library tests of the simulator: vessels, flow, echoes (fast vs pymust), image level."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ulmtools.errors import InputError
from ulmtools.simulate import echoes, flow, vessels
from ulmtools.simulate.run import SimulationConfig, bubbles, plan


@pytest.fixture(scope="module")
def plan2d():
    return plan(SimulationConfig(dim=2, frames=512, concentration=5, seed=3, network_seed=3))


@pytest.fixture(scope="module")
def plan3d():
    return plan(SimulationConfig(dim=3, frames=64, concentration=30, seed=3, network_seed=3))


# ---------------------------------------------------------------------------
# Vessel networks
# ---------------------------------------------------------------------------


def test_tree_is_reproducible_and_differs_between_seeds() -> None:
    a, b, c = vessels.generate_tree(1), vessels.generate_tree(1), vessels.generate_tree(2)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.radii, b.radii)
    assert a.nodes.shape != c.nodes.shape or not np.allclose(a.nodes, c.nodes)


def test_tree_radii_murray_and_size() -> None:
    net = vessels.generate_tree(5)
    cfg = vessels.TreeConfig()
    assert net.n_edges > 2000
    assert net.radii.min() >= cfg.min_radius * 0.999
    assert 10e-6 < net.radii.max() <= cfg.root_radius[1]
    # Murray's law at every bifurcation: r^3 = r1^3 + r2^3
    incoming = {int(b): i for i, b in enumerate(net.edges[:, 1])}
    children: dict[int, list[int]] = {}
    for i, a in enumerate(net.edges[:, 0]):
        children.setdefault(int(a), []).append(i)
    checked = 0
    for node, kids in children.items():
        if len(kids) == 2 and node in incoming:
            r = net.radii[incoming[node]]
            r1, r2 = net.radii[kids]
            assert r**3 == pytest.approx(r1**3 + r2**3, rel=1e-9)
            checked += 1
    assert checked > 100
    # fills its box: vessels in most 50 um cells of the central 0.3 mm
    mid = (net.nodes[net.edges[:, 0]] + net.nodes[net.edges[:, 1]]) / 2
    h, _ = np.histogramdd(mid, bins=6, range=[(-1.5e-4, 1.5e-4)] * 3)
    assert (h > 0).mean() > 0.6


def test_network_files_round_trip_and_refusals(tmp_path) -> None:
    net = vessels.generate_tree(2)
    j = tmp_path / "net.json"
    j.write_text(json.dumps(net.to_dict()))
    back = vessels.load_network(j)
    np.testing.assert_allclose(back.nodes, net.nodes)
    np.testing.assert_allclose(back.radii, net.radii)
    n = tmp_path / "net.npz"
    np.savez(n, nodes=net.nodes * 1e6, edges=net.edges, radii=net.radii * 1e6, unit="um")
    np.testing.assert_allclose(vessels.load_network(n).nodes, net.nodes)
    bad = tmp_path / "bad.json"
    for text in (
        "{not json",
        '{"nodes": [[0,0,0]]}',
        '{"nodes": [[0,0,0],[1,0,0]], "edges": [[0,5]], "radii": [1e-6]}',
        "[1, 2]",
    ):
        bad.write_text(text)
        with pytest.raises(InputError) as err:
            vessels.load_network(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError):
        vessels.load_network(tmp_path / "missing.json")


# ---------------------------------------------------------------------------
# Flow
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("concentration", [1, 5, 10, 30])
def test_mean_bubbles_in_fov_matches_request_2d(plan2d, concentration) -> None:
    p = replace(plan2d, config=replace(plan2d.config, concentration=concentration))
    n_movies = 48 if concentration < 10 else 16
    counts = [bubbles(p, m).fov_counts.mean() for m in range(n_movies)]
    assert np.mean(counts) == pytest.approx(concentration, rel=0.15)


@pytest.mark.parametrize("concentration", [1, 30])
def test_mean_bubbles_in_fov_matches_request_3d(plan3d, concentration) -> None:
    p = replace(plan3d, config=replace(plan3d.config, concentration=concentration, frames=512))
    n_movies = 48 if concentration < 10 else 12
    counts = [bubbles(p, m).fov_counts.mean() for m in range(n_movies)]
    assert np.mean(counts) == pytest.approx(concentration, rel=0.15)


def _distance_to_segments(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point to each segment, (P, M), in chunks."""
    d = b - a
    dd = np.maximum((d**2).sum(1), 1e-30)
    out = np.empty((len(pts), len(a)))
    for i in range(0, len(pts), 64):
        p = pts[i : i + 64, None, :]
        t = np.clip(((p - a) * d).sum(-1) / dd, 0, 1)
        out[i : i + 64] = np.sqrt(((p - a - t[..., None] * d) ** 2).sum(-1))
    return out


@pytest.mark.parametrize("which", ["plan2d", "plan3d"])
def test_truth_positions_lie_inside_vessels(which, request) -> None:
    p = request.getfixturevalue(which)
    bm = bubbles(p, 0)
    assert len(bm.frames) > 100
    rng = np.random.default_rng(0)
    pick = rng.choice(len(bm.frames), size=min(300, len(bm.frames)), replace=False)
    net = p.network
    a, b = net.nodes[net.edges[:, 0]], net.nodes[net.edges[:, 1]]
    dist = _distance_to_segments(bm.positions[pick], a, b) - net.radii[None, :]
    # inside (or on the wall of, within rounding at junction corners) some vessel
    assert np.all(dist.min(axis=1) <= 0.05 * net.radii.min())


def test_tracks_are_connected_and_match_positions(plan2d) -> None:
    from scipy import ndimage

    bm = bubbles(plan2d, 1)
    tracks = bm.tracks
    assert tracks.shape == plan2d.fine_grid.shape and tracks.dtype == np.uint8
    # every frame position inside the FOV falls on a track pixel
    fine = plan2d.fine_grid
    inside = flow._inside(bm.positions, plan2d.region.fov_lo, plan2d.region.fov_hi)
    idx = np.rint(fine.to_index(bm.positions[inside, :2])).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(fine.shape)), axis=1)
    assert tracks[tuple(idx[ok].T)].all()
    # few, large connected pieces rather than dotted lines (8-connectivity)
    labels, n = ndimage.label(tracks, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() > 100
    assert (sizes < 3).sum() < 0.2 * n + 5


def test_random_trajectories(plan2d) -> None:
    p = replace(plan2d, prepared=None, network=None)
    counts = [
        flow.random_movie(
            p.region,
            n_frames=512,
            frame_rate=1000.0,
            concentration=5,
            seed=s,
            id_base=0,
            cfg=p.config.flow,
        )
        for s in range(12)
    ]
    assert np.mean([c.fov_counts.mean() for c in counts]) == pytest.approx(5, rel=0.2)
    bm = counts[0]
    assert np.all(bm.positions[:, 2] == 0)  # in the imaging plane
    assert bm.tracks.sum() > 200


# ---------------------------------------------------------------------------
# Echoes
# ---------------------------------------------------------------------------


def test_point_echo_peaks_at_round_trip(plan2d) -> None:
    acq = plan2d.acquisition
    acq4 = replace(acq, sampling_frequency=8 * acq.center_frequency, n_samples=8 * acq.n_samples)
    p = np.array([[8.1e-3, 0.1e-3, 0.0]])
    ch = echoes.point_echoes(acq4, p)
    assert ch.shape == (acq.n_transmits, acq4.n_samples, acq.n_elements)
    u, off = echoes.plane_wave_geometry(acq4)
    e = 64
    r = np.linalg.norm(p[0] - acq.element_positions[e])
    for t in range(acq.n_transmits):
        tau = (u[t] @ p[0]) / acq.speed_of_sound - off[t] + r / acq.speed_of_sound
        k = int(np.argmax(np.abs(ch[t, :, e])))
        assert abs(acq4.t0 + k / acq4.sampling_frequency - tau) <= 1 / acq4.sampling_frequency
    # plane-wave arrival matches the stored delays at the elements
    pos = acq.element_positions
    arrival = pos @ u.T / acq.speed_of_sound - off
    np.testing.assert_allclose(arrival.T, acq.transmit_delays, atol=1e-12)


def test_sample_window_covers_the_grid(plan2d, plan3d) -> None:
    for p in (plan2d, plan3d):
        acq, grid = p.acquisition, p.grid
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in grid.shape], indexing="ij"))
        pts = grid.to_position(corners.reshape(grid.ndim, -1).T)
        pos = np.zeros((len(pts), 3))
        pos[:, : grid.ndim] = pts
        ch = echoes.point_echoes(acq, pos)
        # energy of the corner echoes is not cut by the window edges
        edge = np.abs(ch[:, [0, -1], :]).max()
        assert edge < 0.02 * np.abs(ch).max()


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _das_compare(p, n: int, seed: int) -> float:
    pytest.importorskip("pymust")
    from ulmtools.beamform.das import DASOperator
    from ulmtools.simulate.engine_pymust import pymust_frame

    rng = np.random.default_rng(seed)
    d = p.grid.ndim
    pos = np.zeros((n, 3))
    pos[:, :d] = rng.uniform(p.region.fov_lo[:d], p.region.fov_hi[:d], size=(n, d))
    if d == 2:  # inside the elevational slice, as the simulator images them
        pos[:, 2] = rng.uniform(p.region.fov_lo[2], p.region.fov_hi[2], size=n)
    amp = rng.uniform(0.5, 1.5, size=n)
    fast = echoes.point_echoes(p.acquisition, pos, amp)
    ref = pymust_frame(p.acquisition, pos, amp)
    op = DASOperator(p.acquisition, p.grid)
    return _cc(op.apply(fast[None]), op.apply(ref[None]))


def test_fast_matches_pymust_after_das_2d(plan2d) -> None:
    assert _das_compare(plan2d, n=6, seed=1) >= 0.97


@pytest.mark.slow
def test_fast_matches_pymust_after_das_3d(plan3d) -> None:
    assert _das_compare(plan3d, n=6, seed=1) >= 0.97


def test_movie_blocks_equal_one_block(plan2d) -> None:
    bm = bubbles(replace(plan2d, config=replace(plan2d.config, frames=40)), 0)
    acq = plan2d.acquisition
    whole = echoes.movie_echoes(acq, bm.frames, bm.positions, bm.amplitudes, 40)
    part = echoes.movie_echoes(acq, bm.frames, bm.positions, bm.amplitudes, 15, frame_offset=20)
    np.testing.assert_array_equal(whole[20:35], part)


def _image_vs_das(p, frames: int) -> float:
    from ulmtools.beamform.das import DASOperator
    from ulmtools.simulate.imaging import image_echoes, psf_table

    p = replace(p, config=replace(p.config, frames=frames))
    bm = bubbles(p, 0)
    acq = p.acquisition
    ch = echoes.movie_echoes(acq, bm.frames, bm.positions, bm.amplitudes, frames)
    das = DASOperator(acq, p.grid).apply(ch)
    table = psf_table(acq, p.grid)
    img = image_echoes(acq, p.grid, table, bm.frames, bm.positions, bm.amplitudes, frames)
    assert img.shape == das.shape
    return _cc(img, das)


def test_image_level_matches_channel_then_das_2d(plan2d) -> None:
    assert _image_vs_das(plan2d, 16) >= 0.99  # measured 0.997


@pytest.mark.slow
def test_image_level_matches_channel_then_das_3d(plan3d) -> None:
    assert _image_vs_das(plan3d, 2) >= 0.97  # measured 0.984


def test_memory_does_not_grow_with_movies(tmp_path) -> None:
    import tracemalloc

    import zarr

    from ulmtools.simulate.run import run

    peaks = []
    for movies in (1, 4):
        p = plan(SimulationConfig(dim=2, movies=movies, frames=256, seed=1, network_seed=1))
        root = zarr.open_group(str(tmp_path / f"m{movies}.zarr"), mode="w")
        tracemalloc.start()
        run(p, root)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    one_movie_iq = 256 * 3 * p.acquisition.n_samples * 128 * 8
    assert peaks[1] < peaks[0] + 0.5 * one_movie_iq
