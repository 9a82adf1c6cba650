"""ulm beamform, the library: DAS against pymust, PSF correlation, SVD clutter filter.

The helpers at the top make small, real channel data with the analytic
point-echo model; tests in test_beamform_cli.py use them too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ulmtools.acquisition import Acquisition, plane_wave_delays, preset
from ulmtools.beamform import das as das_mod
from ulmtools.beamform.clutter import svd_filter
from ulmtools.beamform.correlation import peak_position, psf_correlation, psf_window, system_psf
from ulmtools.beamform.das import DASOperator, grid_points
from ulmtools.beamform.pointecho import point_channel_iq
from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.store import create_store, provenance_entry, write_array
from ulmtools.truth import TruthMovie, TruthWriter, render_tracks

C = 1540.0


# ---------------------------------------------------------------------------
# Small real data
# ---------------------------------------------------------------------------


def sample_window(
    elements: np.ndarray, grid: Grid, fs: float, margin: float = 3e-6
) -> tuple[float, int]:
    """t0 and n_samples covering every round trip to the grid (plus a margin)."""
    pts = grid_points(grid)
    zmin, zmax = pts[:, 0].min(), pts[:, 0].max()
    far = np.sqrt(((pts[:, None, :] - elements[None]) ** 2).sum(-1)).max()
    t0 = max(0.0, 2 * zmin / C - margin)
    t1 = (far + zmax + np.abs(elements).max()) / C + margin
    return t0, int(np.ceil((t1 - t0) * fs))


def acquisition_2d(fs_factor: float = 4.0, frame_rate: float = 1000.0) -> tuple[Acquisition, Grid]:
    """The 2D preset (L22-14, 3 tilts) with a sample window covering its grid."""
    p = preset("2d")
    grid = p.grid()
    fs = fs_factor * p.center_frequency
    t0, n = sample_window(p.element_positions(), grid, fs)
    return p.acquisition(sampling_frequency=fs, n_samples=n, t0=t0), grid


def acquisition_3d_small(n_el: int = 8, shape: int = 8) -> tuple[Acquisition, Grid]:
    """A reduced matrix array (n_el x n_el, 0.3 mm pitch, 5 tilts) and a small grid."""
    p = preset("3d")
    pitch = p.pitch
    x = (np.arange(n_el) - (n_el - 1) / 2) * pitch
    xx, yy = np.meshgrid(x, x, indexing="ij")
    pos = np.stack([np.zeros(xx.size), xx.ravel(), yy.ravel()], axis=1)
    tilts = np.deg2rad(np.asarray(p.tilts_deg))
    grid = p.grid(shape=(shape,) * 3)
    fs = 2 * p.center_frequency
    t0, n = sample_window(pos, grid, fs)
    acq = Acquisition(
        dim=3,
        probe=f"matrix-{n_el}x{n_el}",
        element_positions=pos,
        element_width=pitch - p.kerf,
        element_height=pitch - p.kerf,
        center_frequency=p.center_frequency,
        bandwidth=p.bandwidth,
        sampling_frequency=fs,
        demodulation_frequency=p.center_frequency,
        n_samples=n,
        t0=t0,
        transmit_delays=plane_wave_delays(pos, tilts, C),
        tilts=tilts,
        frame_rate=p.frame_rate,
    )
    return acq, grid


def bubble_track(grid: Grid, n_frames: int, seed: int = 0) -> np.ndarray:
    """A bubble crossing the grid's central region: (n_frames, D) metres."""
    rng = np.random.default_rng(seed)
    lo = np.array([g.min() for g in (grid.coordinates(i) for i in range(grid.ndim))])
    hi = np.array([g.max() for g in (grid.coordinates(i) for i in range(grid.ndim))])
    a = lo + (hi - lo) * (0.3 + 0.1 * rng.random(grid.ndim))
    b = lo + (hi - lo) * (0.6 + 0.1 * rng.random(grid.ndim))
    s = np.linspace(0, 1, n_frames)[:, None]
    return a + (b - a) * s


def channel_movie(acq: Acquisition, track: np.ndarray, noise: float = 0.0, seed: int = 0):
    """(frames, T, S, E) complex64: one bubble per frame at ``track[f]``."""
    rng = np.random.default_rng(seed)
    frames = np.stack([point_channel_iq(acq, p[None]) for p in track])
    if noise:
        scale = noise * np.abs(frames).max()
        frames = frames + scale * (
            rng.standard_normal(frames.shape) + 1j * rng.standard_normal(frames.shape)
        ).astype(np.complex64)
    return frames.astype(np.complex64)


def make_channel_store(
    path: Path,
    acq: Acquisition,
    grid: Grid | None,
    n_movies: int = 2,
    n_frames: int = 8,
    *,
    truth: bool = True,
    iq: np.ndarray | None = None,
) -> np.ndarray:
    """Write a channel store; returns the bubble tracks (movie, frame, D)."""
    g = grid
    if g is None:
        from ulmtools.beamform.pipeline import resolve_grid

        g = resolve_grid(acq, None)
    tracks = np.stack([bubble_track(g, n_frames, seed=m) for m in range(n_movies)])
    if iq is None:
        iq = np.stack([channel_movie(acq, tracks[m]) for m in range(n_movies)])
    with create_store(
        path,
        "channel",
        provenance=[provenance_entry("simulate", {"test": True})],
        grid=grid,
        axes=("movie", "frame", "transmit", "sample", "element"),
        attrs={"acquisition": acq.to_attrs()},
    ) as root:
        write_array(root, "iq", iq, dims=("movie", "frame", "transmit", "sample", "element"))
        if truth:
            fine = g.refined(8)
            writer = TruthWriter(root, fine, n_movies)
            for m in range(n_movies):
                writer.write_movie(
                    m,
                    TruthMovie(
                        positions=tracks[m],
                        frames=np.arange(n_frames, dtype=np.int32),
                        ids=np.full(n_frames, m, dtype=np.int64),
                        tracks=render_tracks(tracks[m], fine),
                    ),
                )
            writer.close()
    return tracks


def random_channel(acq: Acquisition, n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n_frames, acq.n_transmits, acq.n_samples, acq.n_elements)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


# ---------------------------------------------------------------------------
# pymust's DAS matrices, applied the straightforward way
# ---------------------------------------------------------------------------


def pymust_das_2d(acq: Acquisition, grid: Grid, fnumber: float, method: str = "linear"):
    """pymust.dasmtx for each transmit (an L22-14-like Param built by hand)."""
    import pymust

    p = preset("2d")
    param = pymust.utils.Param()
    param.fc = acq.center_frequency
    param.pitch = p.pitch
    param.kerf = p.kerf
    param.Nelements = acq.n_elements
    param.bandwidth = 100 * acq.bandwidth
    param.fs = acq.sampling_frequency
    param.c = acq.speed_of_sound
    param.t0 = np.array([acq.t0])
    param.fnumber = fnumber
    pts = grid_points(grid)
    size = 1j * np.array([acq.n_samples, acq.n_elements])
    return [
        pymust.dasmtx(
            size, pts[:, 1].copy(), pts[:, 0].copy(), d.reshape(1, -1), param.copy(), method
        ).tocsr()
        for d in acq.transmit_delays
    ]


def pymust_das_3d(acq: Acquisition, grid: Grid, fnumber: float, method: str = "linear"):
    import pymust

    param = pymust.utils.Param()
    param.fc = acq.center_frequency
    param.fs = acq.sampling_frequency
    param.c = acq.speed_of_sound
    param.t0 = np.array([acq.t0])
    param.width = acq.element_width
    param.height = acq.element_height
    param.bandwidth = 100 * acq.bandwidth
    param.fnumber = np.array([fnumber, fnumber])
    param.elements = acq.element_positions[:, [1, 2]].T.copy()
    pts = grid_points(grid)
    size = 1j * np.array([acq.n_samples, acq.n_elements])
    return [
        pymust.dasmtx3(
            size,
            pts[:, 1].copy(),
            pts[:, 2].copy(),
            pts[:, 0].copy(),
            d.reshape(1, -1),
            param.copy(),
            method,
        ).tocsr()
        for d in acq.transmit_delays
    ]


def apply_pymust(mats, channel: np.ndarray, grid: Grid) -> np.ndarray:
    """Sum over transmits of M_t @ (samples x elements, Fortran order) per frame."""
    n_f = channel.shape[0]
    out = 0
    for t, m in enumerate(mats):
        x = channel[:, t].transpose(0, 2, 1).reshape(n_f, -1).T  # (E*S, F), samples fastest
        out = out + m @ x
    return np.asarray(out).T.reshape(n_f, *grid.shape)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------
# DAS
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fnumber", "method"), [(1.0, "linear"), (0.0, "linear"), (1.5, "nearest")]
)
def test_das_equals_pymust_2d(fnumber: float, method: str) -> None:
    acq, grid = acquisition_2d()
    channel = random_channel(acq, 6)
    ours = DASOperator(acq, grid, interp=method, fnumber=fnumber).apply(channel)
    ref = apply_pymust(pymust_das_2d(acq, grid, fnumber, method), channel, grid)
    assert ours.shape == (6, *grid.shape) and ours.dtype == np.complex64
    assert rel_err(ours, ref) <= 1e-4


@pytest.mark.parametrize("fnumber", [1.0, 0.0])
def test_das_equals_pymust_3d(fnumber: float) -> None:
    acq, grid = acquisition_3d_small()
    channel = random_channel(acq, 4)
    ours = DASOperator(acq, grid, fnumber=fnumber).apply(channel)
    ref = apply_pymust(pymust_das_3d(acq, grid, fnumber), channel, grid)
    assert rel_err(ours, ref) <= 1e-4


def test_das_matrix_blocks_equal_pymust_matrices() -> None:
    acq, grid = acquisition_2d()
    op = DASOperator(acq, grid, fnumber=1.0)
    for t, m in enumerate(pymust_das_2d(acq, grid, 1.0)):
        ours = op.transmit_matrix(t)
        assert ours.nnz == m.nnz
        assert abs(ours - m).max() <= 1e-6 * abs(m).max()


def test_das_matrix_and_apply_agree() -> None:
    acq, grid = acquisition_2d()
    op = DASOperator(acq, grid)
    channel = random_channel(acq, 5, seed=3)
    x = channel.transpose(0, 1, 3, 2).reshape(5, -1).T  # (T*E*S, F)
    via_matrix = np.asarray(op.matrix @ x).T.reshape(5, *grid.shape)
    assert rel_err(op.apply(channel), via_matrix) <= 1e-5
    single = op.apply(channel[2])
    assert single.shape == grid.shape
    np.testing.assert_allclose(single, op.apply(channel)[2], rtol=1e-5, atol=1e-6)


def test_das_operator_is_cached_per_geometry(monkeypatch) -> None:
    acq, grid = acquisition_2d()
    das_mod.clear_cache()
    first = DASOperator(acq, grid)
    assert not first.from_cache
    calls = []
    monkeypatch.setattr(das_mod, "_build", lambda *a: calls.append(a))
    second = DASOperator(acq, grid)
    assert second.from_cache and calls == []
    assert second._built is first._built
    other = Grid(grid.axes, grid.shape, grid.origin, grid.spacing, frame_rate=500.0)
    assert DASOperator(acq, other).from_cache  # the frame rate does not change the matrix


def test_das_cache_is_bounded(monkeypatch) -> None:
    acq, grid = acquisition_2d()
    das_mod.clear_cache()
    monkeypatch.setattr(das_mod, "CACHE_BYTES", 1)  # room for the newest only
    DASOperator(acq, grid)
    DASOperator(acq, grid, fnumber=0.0)
    assert len(das_mod._CACHE) == 1
    assert not DASOperator(acq, grid).from_cache


def test_das_refuses_wrong_shapes() -> None:
    acq, grid = acquisition_2d()
    op = DASOperator(acq, grid)
    with pytest.raises(InputError, match="does not match the acquisition"):
        op.apply(np.zeros((2, 3, acq.n_samples + 1, 128), np.complex64))
    g3 = preset("3d").grid(shape=(4, 4, 4))
    with pytest.raises(InputError, match="3D grid cannot image a 2D"):
        DASOperator(acq, g3)
    with pytest.raises(UsageError):
        DASOperator(acq, grid, interp="cubic")


def test_das_images_a_point_where_it_is_with_a_custom_array() -> None:
    # A lab's own array: 64 elements at 0.2 mm pitch, shifted laterally, 2 tilts.
    pos = np.stack([np.zeros(64), 1e-3 + (np.arange(64) - 31.5) * 0.2e-3, np.zeros(64)], 1)
    tilts = np.deg2rad([[-3.0, 0.0], [3.0, 0.0]])
    fc = 7.5e6
    grid = Grid(("z", "x"), (41, 41), (9e-3, 0.0), (50e-6, 50e-6), 500.0)
    t0, n = sample_window(pos, grid, 4 * fc)
    acq = Acquisition(
        dim=2, probe="custom", element_positions=pos, element_width=0.18e-3,
        element_height=3e-3, center_frequency=fc, bandwidth=0.6, sampling_frequency=4 * fc,
        demodulation_frequency=fc, n_samples=n, t0=t0,
        transmit_delays=plane_wave_delays(pos, tilts, C), tilts=tilts, frame_rate=500.0,
    )  # fmt: skip
    target = np.array([10.013e-3, 1.0071e-3])
    img = DASOperator(acq, grid).apply(point_channel_iq(acq, target[None]))
    err = np.abs(peak_position(img, grid) - target)
    assert np.all(err < acq.wavelength / 10), err


def test_das_with_diverging_waves_and_an_inactive_element() -> None:
    # Not plane waves: virtual sources behind the array; one element off (NaN delay).
    p = preset("2d")
    pos = p.element_positions()
    sources = np.array([[-6e-3, -2e-3, 0.0], [-6e-3, 2e-3, 0.0]])
    delays = np.sqrt(((pos[None] - sources[:, None]) ** 2).sum(-1)) / C
    delays -= delays.min(axis=1, keepdims=True)
    delays[0, 40] = np.nan
    grid = Grid(("z", "x"), (33, 33), (9.2e-3, 0.2e-3), (25e-6, 25e-6), 1000.0)
    fs = 4 * p.center_frequency
    t0, n = sample_window(pos, grid, fs)
    acq = p.acquisition(sampling_frequency=fs, n_samples=n, t0=t0)
    acq = Acquisition(**{**acq.__dict__, "transmit_delays": delays, "tilts": np.zeros((2, 2))})
    target = np.array([9.6123e-3, 0.6071e-3])
    img = DASOperator(acq, grid).apply(point_channel_iq(acq, target[None]))
    err = np.abs(peak_position(img, grid) - target)
    assert np.all(err < acq.wavelength / 10), err


# ---------------------------------------------------------------------------
# PSF and correlation
# ---------------------------------------------------------------------------


def test_correlation_is_one_on_a_scaled_psf_and_in_the_unit_disc() -> None:
    rng = np.random.default_rng(0)
    psf = (rng.standard_normal((5, 7)) + 1j * rng.standard_normal((5, 7))).astype(np.complex64)
    frames = 0.05 * (rng.standard_normal((3, 20, 24)) + 1j * rng.standard_normal((3, 20, 24)))
    frames = frames.astype(np.complex64)
    frames[1, 5:10, 8:15] = (2 - 3j) * psf  # centre (7, 11)
    corr = psf_correlation(frames, psf)
    assert corr.shape == frames.shape and corr.dtype == np.complex64
    assert np.all(np.abs(corr) <= 1 + 1e-6)
    assert abs(abs(corr[1, 7, 11]) - 1) < 1e-5
    assert np.unravel_index(np.argmax(np.abs(corr[1])), corr[1].shape) == (7, 11)
    # the phase of the correlation is that of the scale factor
    assert abs(np.angle(corr[1, 7, 11]) - np.angle(2 - 3j)) < 1e-4
    # a leading movie axis is handled the same way
    np.testing.assert_allclose(psf_correlation(frames[None], psf)[0], corr, atol=1e-6)
    # a zero frame correlates to zero, not NaN
    assert np.all(psf_correlation(np.zeros((1, 10, 10), np.complex64), psf) == 0)


def test_correlation_refuses_even_psf() -> None:
    with pytest.raises(InputError, match="odd"):
        psf_correlation(np.zeros((2, 8, 8), np.complex64), np.ones((4, 5)))


def test_system_psf_is_centred_normalised_and_odd() -> None:
    acq, grid = acquisition_2d()
    psf, pgrid = system_psf(acq, grid)
    assert psf.dtype == np.complex64 and all(n % 2 == 1 for n in psf.shape)
    centre = tuple(n // 2 for n in psf.shape)
    assert np.argmax(np.abs(psf)) == np.ravel_multi_index(centre, psf.shape)
    assert abs(np.linalg.norm(psf) - 1) < 1e-5 and abs(np.angle(psf[centre])) < 1e-5
    # the PSF's centre pixel is the imaging grid's central pixel
    mid = [grid.coordinates(i)[n // 2] for i, n in enumerate(grid.shape)]
    np.testing.assert_allclose([pgrid.coordinates(i)[n // 2] for i, n in enumerate(psf.shape)], mid)
    assert pgrid.spacing == grid.spacing
    fixed, _ = system_psf(acq, grid, shape=(6, 9))
    assert fixed.shape == (7, 9)


def _bubble_peak_error(acq: Acquisition, grid: Grid, seed: int, spread: float = 2) -> np.ndarray:
    """|peak - truth| / lambda per axis, for a bubble within +-spread lambda of the centre."""
    rng = np.random.default_rng(seed)
    psf, _ = system_psf(acq, grid, model="analytic")  # the model that makes the data here
    centre = np.array([grid.coordinates(i)[n // 2] for i, n in enumerate(grid.shape)])
    target = centre + rng.uniform(-1, 1, grid.ndim) * spread * acq.wavelength
    img = DASOperator(acq, grid).apply(point_channel_iq(acq, target[None]))
    corr = psf_correlation(img[None], psf)[0]
    assert np.abs(corr).max() > 0.7  # off-pixel bubbles decorrelate a little
    return np.abs(peak_position(corr, grid) - target) / acq.wavelength


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_bubble_correlation_peak_within_lambda_over_10_2d(seed: int) -> None:
    acq, grid = acquisition_2d()
    err = _bubble_peak_error(acq, grid, seed)
    assert np.all(err <= 0.1), err


def _acquisition_3d_preset(shape: int) -> tuple[Acquisition, Grid]:
    p = preset("3d")
    grid = p.grid(shape=(shape,) * 3)
    fs = 2 * p.center_frequency
    t0, n = sample_window(p.element_positions(), grid, fs)
    return p.acquisition(sampling_frequency=fs, n_samples=n, t0=t0), grid


def test_single_bubble_correlation_peak_within_lambda_over_10_3d() -> None:
    # the full 32x32 matrix on a 16^3 grid (lambda/2); the bubble stays a PSF
    # half-width away from the edges, where the zero padding would bias the peak
    acq, grid = _acquisition_3d_preset(16)
    for seed in (0, 1, 2):
        err = _bubble_peak_error(acq, grid, seed, spread=1)
        assert np.all(err <= 0.1), err


@pytest.mark.slow
def test_single_bubble_correlation_peak_within_lambda_over_10_3d_preset_grid() -> None:
    acq, grid = _acquisition_3d_preset(32)
    for seed in range(4):
        err = _bubble_peak_error(acq, grid, seed, spread=4)
        assert np.all(err <= 0.1), err


def test_psf_echo_models() -> None:
    acq, grid = acquisition_2d()
    analytic, _ = system_psf(acq, grid, model="analytic")
    custom, _ = system_psf(acq, grid, model=lambda a, p: point_channel_iq(a, p))
    np.testing.assert_allclose(custom, analytic, atol=1e-6)
    auto, _ = system_psf(acq, grid)
    # the simulator's echo model (when present) images the same point the same way
    assert auto.shape[0] >= 3 and np.argmax(np.abs(auto)) == auto.size // 2
    with pytest.raises(InputError):
        system_psf(acq, grid, model="bogus")


def test_psf_window_is_odd_and_on_grid_pixels() -> None:
    grid = Grid(("z", "x"), (32, 32), (1e-3, -1e-3), (1e-5, 2e-5))
    w = psf_window(grid, (6, 7))
    assert w.shape == (7, 7)
    assert np.isclose(w.coordinates(0)[3], grid.coordinates(0)[16])
    assert np.isclose(w.coordinates(1)[3], grid.coordinates(1)[16])


# ---------------------------------------------------------------------------
# SVD clutter filter
# ---------------------------------------------------------------------------


def test_svd_filter_removes_static_tissue_keeps_moving_bubble() -> None:
    rng = np.random.default_rng(0)
    n_t, nz, nx = 128, 32, 32
    speckle = rng.standard_normal((nz, nx)) + 1j * rng.standard_normal((nz, nx))
    drift = 1 + 0.05 * np.sin(np.linspace(0, 2 * np.pi, n_t))  # slow gain change
    tissue = 100 * drift[:, None, None] * speckle[None]
    z, x = np.mgrid[0:nz, 0:nx]
    bubble = np.zeros((n_t, nz, nx), complex)
    for t in range(n_t):
        cz, cx = 4 + 24 * t / n_t, 6 + 20 * t / n_t
        bubble[t] = np.exp(-((z - cz) ** 2 + (x - cx) ** 2) / 2.0) * np.exp(1j * 0.3 * t)
    out = svd_filter((tissue + bubble).astype(np.complex64), 1)
    residual = out - bubble
    suppression_db = 10 * np.log10(np.sum(np.abs(tissue) ** 2) / np.sum(np.abs(residual) ** 2))
    assert suppression_db >= 30, suppression_db
    kept = np.abs(np.vdot(bubble, out)) / np.linalg.norm(bubble) ** 2
    assert kept > 0.95
    # the bubble still peaks where it is, frame by frame
    for t in (10, 64, 120):
        assert np.unravel_index(np.argmax(np.abs(out[t])), (nz, nx)) == np.unravel_index(
            np.argmax(np.abs(bubble[t])), (nz, nx)
        )
    assert np.array_equal(svd_filter(out, 0), out)


def test_svd_filter_gives_the_same_bytes_with_any_blas_thread_count() -> None:
    """OpenBLAS sums differently on more threads; the filter must not (Dask workers)."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, numpy as np\n"
        "from ulmtools.beamform.clutter import svd_filter\n"
        "r = np.random.default_rng(0)\n"
        "x = (r.standard_normal((32, 64, 64)) + 1j * r.standard_normal((32, 64, 64)))\n"
        "print(hashlib.sha256(svd_filter(x.astype(np.complex64), 2).tobytes()).hexdigest())\n"
    )
    digests = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        digests.add(r.stdout.strip())
    assert len(digests) == 1


def test_svd_filter_wide_and_tall_casorati_agree() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((12, 3, 3)) + 1j * rng.standard_normal((12, 3, 3))).astype(
        np.complex64
    )
    # 12 frames > 9 pixels: the pixel Gram path; compare with a plain SVD
    u, s, vh = np.linalg.svd(x.reshape(12, -1).astype(complex), full_matrices=False)
    expect = (x.reshape(12, -1) - (u[:, :2] * s[:2]) @ vh[:2]).reshape(x.shape)
    np.testing.assert_allclose(svd_filter(x, 2), expect, atol=1e-4)
    xt = x.reshape(12, 9).T.reshape(9, 3, 4)  # 9 frames < 12 pixels: the frame Gram path
    u, s, vh = np.linalg.svd(xt.reshape(9, -1).astype(complex), full_matrices=False)
    expect = (xt.reshape(9, -1) - (u[:, :2] * s[:2]) @ vh[:2]).reshape(xt.shape)
    np.testing.assert_allclose(svd_filter(xt, 2), expect, atol=1e-4)
    with pytest.raises(UsageError):
        svd_filter(x, 9)


@pytest.mark.parametrize("dim", [2, 3])
def test_preset_images_are_mirror_symmetric_laterally(dim: int) -> None:
    # the premise of 'ulm train --mirror': with the presets (a centred array, tilts in
    # +/- pairs along x, none along y) a point and its lateral mirror image beamform
    # to mirror images on the centred grid
    from ulmtools.simulate.echoes import point_echoes

    if dim == 2:
        acq, grid = acquisition_2d()
        grid = preset("2d").grid(shape=(12, 12))
    else:
        acq, grid = _acquisition_3d_preset(10)
    lam = acq.wavelength
    point = np.array([grid.origin[0] + 5 * grid.spacing[0], 0.7 * lam, -0.4 * lam][:dim])
    das = DASOperator(acq, grid)
    image = das.apply(point_echoes(acq, point[None]))
    assert np.abs(image).max() > 0
    for axis in range(1, dim):
        mirrored = point.copy()
        mirrored[axis] *= -1
        other = das.apply(point_echoes(acq, mirrored[None]))
        np.testing.assert_allclose(other, np.flip(image, axis), atol=1e-5 * np.abs(image).max())
        # and the image itself is not symmetric, so the check can fail
        assert np.abs(image - np.flip(image, axis)).max() > 0.05 * np.abs(image).max()
