"""ulm track: localization accuracy on our simulator's PSF, linking, velocities, the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ulmtools.beamform.correlation import system_psf
from ulmtools.beamform.das import DASOperator
from ulmtools.cli.app import main
from ulmtools.grid import Grid
from ulmtools.simulate.echoes import point_echoes
from ulmtools.simulate.imaging import image_echoes, psf_table
from ulmtools.simulate.run import SimulationConfig, plan
from ulmtools.store import open_store
from ulmtools.track.core import fwhm_pixels
from ulmtools.track.detect import Detection, detect, regional_maxima
from ulmtools.track.link import kinematics, link
from ulmtools.track.localize import localize
from ulmtools.truth import Truth

# ---------------------------------------------------------------------------
# Single bubbles imaged by the simulator's channel model and our DAS
# ---------------------------------------------------------------------------


class Chain:
    """A preset's acquisition and grid, and points imaged through echoes + DAS."""

    def __init__(self, dim: int, n: int = 8, seed: int = 1) -> None:
        p = plan(SimulationConfig(dim=dim, level="channel", movies=1, frames=8, seed=seed))
        self.acq, self.grid = p.acquisition, p.grid
        self.wavelength = self.acq.wavelength
        rng = np.random.default_rng(seed)
        g = self.grid
        centre = np.array([g.origin[i] + (g.shape[i] // 2) * g.spacing[i] for i in range(dim)])
        self.truth = centre + rng.uniform(-0.5, 0.5, (n, dim)) * np.asarray(g.spacing)
        pts = np.zeros((n, 3))
        pts[:, :dim] = self.truth
        channel = np.stack([point_echoes(self.acq, q[None]) for q in pts])
        self.iq = DASOperator(self.acq, g).apply(channel)  # (n frames, *grid)
        psf, pgrid = system_psf(self.acq, g)
        self.fwhm = fwhm_pixels(psf, pgrid.spacing, g.spacing)

    def errors(self, method: str, window: tuple[int, ...], snr_db: float | None = None):
        iq = self.iq
        if snr_db is not None:
            rng = np.random.default_rng(7)
            sigma = np.abs(iq).max() / 10 ** (snr_db / 20)
            noise = rng.normal(size=iq.shape) + 1j * rng.normal(size=iq.shape)
            iq = iq + noise * sigma / np.sqrt(2)
        env = np.abs(iq)
        idx, _, _ = detect(env, Detection("max-per-frame", 1))
        assert len(idx) == len(self.truth)
        frac = localize(env, idx, method, window=window, psf_width=self.fwhm)
        err = np.linalg.norm(self.grid.to_position(frac) - self.truth, axis=1)
        return err / self.wavelength


@pytest.fixture(scope="module")
def chain2d() -> Chain:
    return Chain(2)


@pytest.fixture(scope="module")
def chain3d() -> Chain:
    return Chain(3)


WINDOWS = {
    (2, "gaussian"): (3, 7),
    (2, "radial-symmetry"): (5, 9),
    (3, "gaussian"): (3, 5, 5),
    (3, "radial-symmetry"): (3, 7, 7),
}


@pytest.mark.parametrize("method", ["gaussian", "radial-symmetry"])
def test_single_bubble_2d_within_lambda_over_20(chain2d: Chain, method: str) -> None:
    err = chain2d.errors(method, WINDOWS[2, method])
    assert err.max() < 1 / 20, err


@pytest.mark.parametrize("method", ["gaussian", "radial-symmetry"])
def test_single_bubble_3d_within_lambda_over_10(chain3d: Chain, method: str) -> None:
    err = chain3d.errors(method, WINDOWS[3, method])
    assert err.max() < 1 / 10, err


@pytest.mark.parametrize("method", ["gaussian", "radial-symmetry"])
def test_single_bubble_with_20db_noise_within_lambda_over_10(chain2d: Chain, method: str) -> None:
    err = chain2d.errors(method, WINDOWS[2, method], snr_db=20)
    assert np.mean(err) < 1 / 10, err


def test_sub_pixel_methods_beat_pixel_precision(chain2d: Chain) -> None:
    pixel = np.mean(chain2d.errors("none", (3, 7)))
    for method in ("centroid", "gaussian", "radial-symmetry", "spline"):
        window = WINDOWS.get((2, method), (3, 7))
        assert np.mean(chain2d.errors(method, window)) < pixel, method


def test_localize_refuses_even_window() -> None:
    with pytest.raises(ValueError, match="odd"):
        localize(np.ones((1, 8, 8)), np.array([[0, 4, 4]]), "gaussian", window=(4, 3))


# ---------------------------------------------------------------------------
# Detection and linking on hand-made data
# ---------------------------------------------------------------------------


def test_regional_maxima_and_the_n_brightest() -> None:
    env = np.zeros((2, 9, 9), np.float32)
    env[0, 2, 2], env[0, 6, 6], env[0, 2, 7] = 5, 3, 4
    env[0, 2, 3] = 1  # a shoulder, not a maximum
    env[1, 4, 4] = 2
    idx, val = regional_maxima(env)
    assert {tuple(r) for r in idx} == {(0, 2, 2), (0, 6, 6), (0, 2, 7), (1, 4, 4)}
    assert sorted(val) == [2, 3, 4, 5]
    top, tval, _ = detect(env, Detection("max-per-frame", 2))
    assert {tuple(r) for r in top} == {(0, 2, 2), (0, 2, 7), (1, 4, 4)}
    assert sorted(tval) == [2, 4, 5]


def test_snr_and_peak_detection_thresholds() -> None:
    env = np.full((1, 16, 16), 1.0, np.float32)
    env[0, 3, 3], env[0, 10, 10] = 100.0, 5.0  # 40 dB and 14 dB above the median
    idx, _, floor = detect(env, Detection("snr", 20))
    assert floor == pytest.approx(1.0)
    assert [tuple(r) for r in idx] == [(0, 3, 3)]
    idx, _, _ = detect(env, Detection("snr", 10))
    assert len(idx) == 2


def test_detection_parse_refuses_junk() -> None:
    from ulmtools.errors import UsageError

    assert str(Detection.parse("max-per-frame:5")) == "max-per-frame:5"
    assert Detection.parse("snr:12.5").value == 12.5
    for bad in ("max-per-frame:0", "max-per-frame:2.5", "snr", "loud:3", "snr:nan", "peak:-3"):
        with pytest.raises(UsageError):
            Detection.parse(bad)


def test_link_closes_gaps_and_drops_short_tracks() -> None:
    # bubble A moves +1 per frame and is missed at frame 3; B appears twice only
    frames = np.array([0, 1, 2, 4, 5, 5, 6])
    pos = np.array([[0.0], [1.0], [2.0], [4.0], [5.0], [50.0], [51.0]])
    labels = link(frames, pos, max_distance=1.5, max_gap=1, min_length=3)
    assert labels.tolist() == [0, 0, 0, 0, 0, -1, -1]
    no_gap = link(frames, pos, max_distance=1.5, max_gap=0, min_length=1)
    assert len(set(no_gap[:5].tolist())) == 2  # split at the missed frame


def test_hungarian_assignment_is_globally_optimal() -> None:
    # greedy nearest-first would give the 2nd detection to track 0 and strand track 1
    frames = np.array([0, 0, 1, 1])
    pos = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 1.1], [0.0, 3.5]])
    labels = link(frames, pos, max_distance=1.6)
    assert labels.tolist() == [0, 1, 0, 1]


def test_kinematics_velocity_of_a_straight_track() -> None:
    frames = np.arange(20)
    pos = np.stack([np.full(20, 1e-3), 1e-3 + 20e-6 * frames], axis=1)  # 20 um per frame
    trajectories = kinematics(frames, pos, np.zeros(20, np.int64), frame_rate=1000.0, smooth=3)
    (tr,) = trajectories
    assert np.allclose(tr.velocities[:, 1], 0.02)
    assert np.allclose(tr.velocities[:, 0], 0.0)


# ---------------------------------------------------------------------------
# Synthetic movies through the simulator's image-level PSF
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def psf2d():
    p = plan(SimulationConfig(dim=2, level="image", movies=1, frames=8, seed=1))
    return p.acquisition, p.grid, psf_table(p.acquisition, p.grid)


def _movie(psf2d, tracks: list[np.ndarray], n_frames: int) -> np.ndarray:
    """Image-level IQ of bubbles at ``tracks[b][t]`` (z, x) metres."""
    acq, grid, table = psf2d
    frames = np.concatenate([np.arange(len(t)) for t in tracks])
    pos = np.zeros((len(frames), 3))
    pos[:, :2] = np.concatenate(tracks)
    return image_echoes(acq, grid, table, frames, pos, np.ones(len(frames)), n_frames)


def _image_store(path: Path, grid: Grid, iq: np.ndarray, psf: np.ndarray | None = None) -> Path:
    from ulmtools.store import create_store, provenance_entry, write_array

    with create_store(
        path,
        "image",
        grid=grid,
        axes=("movie", "t", *grid.axes),
        provenance=[provenance_entry("test", {})],
    ) as root:
        write_array(root, "iq", iq.astype(np.complex64), dims=("movie", "t", *grid.axes))
        if psf is not None:
            write_array(root, "psf", psf.astype(np.complex64), dims=grid.axes)
    return path


def test_straight_track_velocity_within_10_percent(psf2d, tmp_path: Path) -> None:
    _, grid, _ = psf2d
    n = 100
    speed = 0.005  # m/s lateral: 5 um (0.2 pixel) per frame at 1 kHz, 20 pixels in all
    t = np.arange(n) / grid.frame_rate
    z0 = grid.origin[0] + 16 * grid.spacing[0]
    x0 = grid.origin[1] + 3 * grid.spacing[1]
    track = np.stack([np.full(n, z0), x0 + speed * t], axis=1)
    iq = _movie(psf2d, [track], n)[None]
    store = _image_store(tmp_path / "img.zarr", grid, iq)
    args = ["track", str(store), str(tmp_path / "tr.zarr"), "-q", "--detect", "max-per-frame:1"]
    assert main(args) == 0
    tr = open_store(tmp_path / "tr.zarr", "tracks")
    vel = np.asarray(tr.group["localizations/velocity"][:])
    ids = np.asarray(tr.group["localizations/track"][:])
    assert len(set(ids.tolist())) == 1 and ids[0] >= 0
    measured = np.median(np.linalg.norm(vel, axis=1))
    assert abs(measured - speed) / speed < 0.10
    assert abs(np.median(vel[:, 1]) - speed) / speed < 0.10
    assert abs(np.median(vel[:, 0])) < 0.1 * speed  # no axial motion
    speed_map = np.asarray(tr.group["speed"][:])
    assert np.nanmedian(speed_map) == pytest.approx(speed, rel=0.1)


def test_well_separated_bubbles_keep_their_ids(psf2d, tmp_path: Path) -> None:
    _, grid, _ = psf2d
    n = 120
    rng = np.random.default_rng(3)
    tracks, truth_id = [], []
    for b, row in enumerate((5, 16, 27)):
        z = grid.origin[0] + row * grid.spacing[0]
        x = (
            grid.origin[1]
            + 2 * grid.spacing[1]
            + np.cumsum(rng.uniform(0.1, 0.3, n)) * grid.spacing[1]
        )
        tracks.append(np.stack([np.full(n, z), x], axis=1))
        truth_id.append(np.full(n, b))
    iq = _movie(psf2d, tracks, n)[None]
    store = _image_store(tmp_path / "img.zarr", grid, iq)
    assert (
        main(["track", str(store), str(tmp_path / "tr.zarr"), "-q", "--detect", "max-per-frame:3"])
        == 0
    )
    g = open_store(tmp_path / "tr.zarr", "tracks").group
    pos = np.asarray(g["localizations/positions"][:])
    frames = np.asarray(g["localizations/frames"][:])
    ids = np.asarray(g["localizations/track"][:])
    true_pos = np.concatenate(tracks)
    true_ids = np.concatenate(truth_id)
    true_frames = np.concatenate([np.arange(n)] * 3)
    purity = []
    for tid in np.unique(ids[ids >= 0]):
        sel = ids == tid
        owner = []
        for f, p in zip(frames[sel], pos[sel]):
            cand = np.flatnonzero(true_frames == f)
            owner.append(true_ids[cand[np.argmin(np.linalg.norm(true_pos[cand] - p, axis=1))]])
        purity.append(np.bincount(owner).max() / len(owner))
    assert len(purity) >= 3
    assert min(purity) > 0.95


def test_empty_movies_and_frames_give_valid_empty_output(psf2d, tmp_path: Path) -> None:
    _, grid, _ = psf2d
    iq = np.zeros((2, 16, *grid.shape), np.complex64)
    store = _image_store(tmp_path / "img.zarr", grid, iq)
    assert main(["track", str(store), str(tmp_path / "tr.zarr"), "-q"]) == 0
    tr = open_store(tmp_path / "tr.zarr", "tracks")
    g = tr.group
    assert g["localizations/positions"].shape == (0, 2)
    assert g["localizations/offsets"][:].tolist() == [0, 0, 0]
    assert g["offsets"][:].tolist() == [0, 0, 0]
    assert int(np.asarray(g["angiogram"][:]).sum()) == 0
    assert np.isnan(np.asarray(g["speed"][:])).all()


# ---------------------------------------------------------------------------
# Simulated movies at 1 bubble per field of view: accuracy against truth
# ---------------------------------------------------------------------------


def _rmse_against_truth(tracks_path: Path) -> tuple[float, int]:
    st = open_store(tracks_path, "tracks")
    g = st.group
    wavelength = float(st.attrs["wavelength"])
    grid = Grid.from_attrs(st.attrs["input_grid"])
    lo = np.asarray(grid.origin) - np.asarray(grid.spacing) / 2
    hi = lo + np.asarray(grid.spacing) * np.asarray(grid.shape)
    truth = Truth(st)
    off = np.asarray(g["localizations/offsets"][:])
    d2, n = [], 0
    for m in range(truth.n_movies):
        t = truth.movie(m, with_tracks=False)
        inside = np.all((t.positions >= lo) & (t.positions < hi), axis=1)
        pos = np.asarray(g["localizations/positions"][off[m] : off[m + 1]])
        frames = np.asarray(g["localizations/frames"][off[m] : off[m + 1]])
        for f in np.unique(frames):
            ref = t.positions[(t.frames == f) & inside]
            if not len(ref):
                continue
            dist, _ = cKDTree(ref).query(pos[frames == f])
            dist = dist[dist < wavelength / 2]
            d2.extend(dist**2)
            n += len(dist)
    return float(np.sqrt(np.mean(d2)) / wavelength), n


@pytest.mark.parametrize(("dim", "frames", "bound"), [(2, 256, 1 / 10), (3, 128, 1 / 5)])
def test_simulated_movies_at_1_mb_per_fov(tmp_path: Path, dim: int, frames: int, bound: float):
    img = tmp_path / "img.zarr"
    args = [
        "simulate",
        str(img),
        "--dim",
        str(dim),
        "--level",
        "image",
        "--movies",
        "1",
        "--frames",
        str(frames),
        "--concentration",
        "1",
        "--seed",
        "4",
        "-q",
    ]
    assert main(args) == 0
    out = tmp_path / "tr.zarr"
    assert main(["track", str(img), str(out), "-q", "--min-track-length", "5"]) == 0
    rmse, n = _rmse_against_truth(out)
    assert n > frames // 4
    assert rmse < bound


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("track") / "img.zarr"
    args = [
        "simulate",
        str(path),
        "--level",
        "image",
        "--movies",
        "2",
        "--frames",
        "96",
        "--concentration",
        "5",
        "--seed",
        "6",
        "--network-seed",
        "6",
        "-q",
    ]
    assert main(args) == 0
    return path


def test_track_store_layout_and_json(cli, small_image: Path, tmp_path: Path, digest) -> None:
    before = digest(small_image)
    out = tmp_path / "tr.zarr"
    r = cli("track", small_image, out, "--json", "--workers", "2")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["movies"] == 2 and result["localizations"] > 0
    assert digest(small_image) == before
    st = open_store(out, "tracks")
    g = st.group
    assert st.grid.shape == (256, 256)
    assert Grid.from_attrs(st.attrs["input_grid"]).shape == (32, 32)
    assert st.attrs["factor"] == 8 and st.attrs["wavelength"] > 0
    off = np.asarray(g["localizations/offsets"][:])
    assert off[-1] == result["localizations"] == g["localizations/positions"].shape[0]
    ids = np.asarray(g["localizations/track"][:])
    vel = np.asarray(g["localizations/velocity"][:])
    assert np.isnan(vel[ids < 0]).all() and np.isfinite(vel[ids >= 0]).all()
    # track ids are unique across movies
    assert not set(ids[: off[1]][ids[: off[1]] >= 0]) & set(ids[off[1] :][ids[off[1] :] >= 0])
    # per-movie maps add up to the angiogram
    coords, moff = np.asarray(g["coords"][:]), np.asarray(g["offsets"][:])
    acc = np.zeros((256, 256), np.uint32)
    for m in range(2):
        c = coords[moff[m] : moff[m + 1]]
        acc[c[:, 0], c[:, 1]] += 1
    assert (acc == np.asarray(g["angiogram"][:])).all()
    assert np.asarray(g["feats"][:]).min() == 1.0
    assert (np.asarray(g["density"][:]) >= (acc > 0)).all()
    assert Truth(st).n_movies == 2
    entry = st.provenance[-1]
    assert entry["stage"] == "track" and entry["parameters"]["detect"] == "peak:10"
    assert entry["parameters"]["resolved"]["window"] == [3, 7]


def test_track_workers_give_the_same_store(cli, small_image: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    assert cli("track", small_image, a, "-q").code == 0
    assert cli("track", small_image, b, "-q", "--workers", "0").code == 0
    for name in ("localizations/positions", "localizations/track", "coords", "angiogram"):
        assert np.array_equal(
            open_store(a).group[name][:], open_store(b).group[name][:], equal_nan=True
        )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--detect", "loud:3"], "--detect"),
        (["--localize", "magic"], "--localize"),
        (["--max-speed", "0.05", "--max-link-distance", "1e-4"], "not both"),
        (["--max-speed", "-1"], "--max-speed"),
        (["--window", "4x7"], "--window"),
        (["--window", "3x3x3"], "--window"),
        (["--render-factor", "0"], "--render-factor"),
        (["--min-track-length", "0"], "--min-track-length"),
        (["--signal", "rf"], "--signal"),
    ],
)
def test_bad_parameters_refused_in_one_line(cli, small_image, tmp_path, args, needle) -> None:
    out = tmp_path / "tr.zarr"
    r = cli("track", small_image, out, *args)
    assert r.code == 2, r.err
    assert needle in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".tr.zarr.*"))


def test_wrong_kind_missing_signal_and_existing_output(cli, small_image, tmp_path) -> None:
    sparse = tmp_path / "sp.zarr"
    assert cli("sparsify", small_image, sparse, "-q").code == 0
    r = cli("track", sparse, tmp_path / "x.zarr")
    assert r.code == 3 and "image" in r.err
    out = tmp_path / "tr.zarr"
    assert cli("track", small_image, out, "-q").code == 0
    r = cli("track", small_image, out)
    assert r.code == 4 and "--force" in r.err
    assert cli("track", small_image, out, "-q", "-f").code == 0


def test_missing_signal_names_the_one_present(cli, psf2d, tmp_path: Path) -> None:
    _, grid, _ = psf2d
    store = _image_store(tmp_path / "img.zarr", grid, np.zeros((1, 4, *grid.shape)))
    r = cli("track", store, tmp_path / "tr.zarr", "--signal", "corr")
    assert r.code == 3 and "--signal iq" in r.err
