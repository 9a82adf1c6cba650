"""ulm export: PNG, ImageJ TIFF, NIfTI, .mat and .npy read back by their own readers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io
import tifffile

from ulmtools.cli.app import main
from ulmtools.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE
from ulmtools.store import open_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """image -> sparse -> prediction (shipped:2d) and tracks, 2 movies x 64 frames."""
    d = tmp_path_factory.mktemp("export")
    s = {k: d / f"{k}.zarr" for k in ("image", "sparse", "prediction", "tracks")}
    args = ["simulate", str(s["image"]), "--level", "image", "--movies", "2", "--frames", "64"]
    assert main([*args, "--seed", "3", "--network-seed", "3", "-q"]) == 0
    assert main(["sparsify", str(s["image"]), str(s["sparse"]), "-q"]) == 0
    assert main(["infer", "shipped:2d", str(s["sparse"]), str(s["prediction"]), "-q"]) == 0
    assert main(["track", str(s["image"]), str(s["tracks"]), "-q"]) == 0
    return s


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def export(cli, *args) -> dict:
    r = cli("export", *args, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_png_is_valid_with_the_stated_size(stores, tmp_path: Path, cli) -> None:
    for store, array in (("prediction", None), ("tracks", "speed"), ("tracks", "velocity_z"),
                         ("tracks", "density"), ("prediction", "tracks"), ("image", "iq"),
                         ("image", "corr"), ("image", "truth")):  # fmt: skip
        out = tmp_path / f"{store}-{array}.png"
        info = export(cli, stores[store], out, *(["--array", array] if array else []))
        assert info["format"] == "png" and info["bytes"] == out.stat().st_size
        assert png_size(out) == (info["width"], info["height"]) == (500, 440)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_png_of_a_volume_shows_three_projections(tmp_path: Path, cli) -> None:
    vol = tmp_path / "vol.zarr"
    r = cli("simulate", vol, "--dim", "3", "--level", "image", "--movies", "1", "--frames", "8",
            "--seed", "1", "-q")  # fmt: skip
    assert r.code == 0, r.err
    info = export(cli, vol, tmp_path / "v.png", "--array", "truth")
    assert png_size(tmp_path / "v.png") == (info["width"], info["height"]) == (1500, 440)
    info = export(cli, vol, tmp_path / "v.tif", "--array", "iq")
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:
        assert tif.is_imagej
        meta = tif.imagej_metadata
        g = open_store(vol).grid
        assert meta["spacing"] == pytest.approx(g.spacing[2] * 1e6)
        data = tif.asarray()
    iq = np.asarray(open_store(vol).array("iq")[0])  # (t, z, x, y)
    np.testing.assert_allclose(data, np.abs(iq).transpose(0, 3, 1, 2), rtol=1e-6)
    export(cli, vol, tmp_path / "v.nii.gz", "--array", "truth")
    img = nib.load(tmp_path / "v.nii.gz")
    tracks = np.asarray(open_store(vol).group["truth/tracks"][0])  # (z, x, y)
    np.testing.assert_array_equal(np.asarray(img.dataobj), tracks.transpose(1, 2, 0))


def test_tiff_is_imagej_with_the_pixel_size(stores, tmp_path: Path, cli) -> None:
    pred = open_store(stores["prediction"])
    g = pred.grid
    info = export(cli, stores["prediction"], tmp_path / "a.tif")
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
        page = tif.pages[0]
        num, den = page.tags["XResolution"].value
        assert den / num == pytest.approx(g.spacing[1] * 1e6, rel=1e-6)  # um per pixel
        num, den = page.tags["YResolution"].value
        assert den / num == pytest.approx(g.spacing[0] * 1e6, rel=1e-6)
        data = tif.asarray()
    np.testing.assert_array_equal(data, np.asarray(pred.array("angiogram")[...]))
    assert info["pixel_size_um"] == pytest.approx([g.spacing[1] * 1e6, g.spacing[0] * 1e6])
    # a movie: frames with their interval
    img = open_store(stores["image"])
    export(cli, stores["image"], tmp_path / "m.tif", "--array", "iq", "--movie", "1")
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.imagej_metadata["frames"] == 64
        assert tif.imagej_metadata["finterval"] == pytest.approx(1 / img.grid.frame_rate)
        data = tif.asarray()
    np.testing.assert_allclose(data, np.abs(img.array("iq")[1]), rtol=1e-6)


def test_nifti_has_an_affine_in_mm(stores, tmp_path: Path, cli) -> None:
    tracks = open_store(stores["tracks"])
    g = tracks.grid
    export(cli, stores["tracks"], tmp_path / "d.nii.gz", "--array", "density")
    img = nib.load(tmp_path / "d.nii.gz")
    assert img.shape == (g.shape[1], 1, g.shape[0])
    zooms = img.header.get_zooms()
    assert zooms == pytest.approx((g.spacing[1] * 1e3, g.spacing[1] * 1e3, g.spacing[0] * 1e3))
    np.testing.assert_allclose(img.affine[:3, 3], [g.origin[1] * 1e3, 0, g.origin[0] * 1e3])
    assert img.header.get_xyzt_units() == ("mm", "sec")
    density = np.asarray(tracks.array("density")[...])
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, 0, :], density.T)
    # voxel (i, j, k) -> world mm: the centre of pixel (z=k, x=i)
    world = img.affine @ np.array([5, 0, 7, 1.0])
    assert world[0] == pytest.approx(g.coordinates("x")[5] * 1e3)
    assert world[2] == pytest.approx(g.coordinates("z")[7] * 1e3)
    image = open_store(stores["image"])
    export(cli, stores["image"], tmp_path / "m.nii", "--array", "corr")
    movie = nib.load(tmp_path / "m.nii")
    assert movie.shape == (32, 1, 32, 64)
    assert movie.header.get_zooms()[3] == pytest.approx(1 / image.grid.frame_rate)


def test_mat_and_npy_hold_values_and_axes(stores, tmp_path: Path, cli) -> None:
    tracks = open_store(stores["tracks"])
    g = tracks.grid
    export(cli, stores["tracks"], tmp_path / "s.mat", "--array", "speed")
    mat = scipy.io.loadmat(tmp_path / "s.mat")
    speed = np.asarray(tracks.array("speed")[...])
    np.testing.assert_array_equal(mat["speed"], speed)  # NaN where no track passed, m/s
    np.testing.assert_allclose(mat["z"].ravel(), g.coordinates("z"))
    np.testing.assert_allclose(mat["x"].ravel(), g.coordinates("x"))
    assert str(mat["axes"][0]) == "z,x"
    export(cli, stores["tracks"], tmp_path / "v.npy", "--array", "velocity_z")
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), tracks.array("velocity_z")[...])
    pred = open_store(stores["prediction"])
    export(cli, stores["prediction"], tmp_path / "t.npy", "--array", "tracks", "--movie", "1")
    m1 = np.load(tmp_path / "t.npy")
    off = pred.array("offsets")[:]
    coords = pred.array("coords")[off[1] : off[2]]
    feats = pred.array("feats")[off[1] : off[2]][:, 0]
    np.testing.assert_array_equal(m1[tuple(np.asarray(coords).T)], feats)
    assert np.count_nonzero(m1) == np.count_nonzero(feats)


def test_refusals(stores, tmp_path: Path, cli) -> None:
    out = tmp_path / "a.png"
    assert cli("export", stores["prediction"], out).code == 0
    before = out.read_bytes()
    r = cli("export", stores["prediction"], out)
    assert r.code == EXIT_OUTPUT and "--force" in r.err and out.read_bytes() == before
    assert cli("export", stores["prediction"], out, "-f", "--array", "tracks").code == 0
    assert out.read_bytes() != before
    r = cli("export", stores["prediction"], tmp_path / "a.jpg")
    assert r.code == EXIT_USAGE and ".png" in r.err
    r = cli("export", stores["prediction"], tmp_path / "b.png", "--array", "tracks",
            "--movie", "7")  # fmt: skip
    assert r.code == EXIT_USAGE and "movie" in r.err
    assert cli("export", stores["prediction"], tmp_path / "c.png", "--array", "iq").code == (
        EXIT_INPUT
    )
    assert cli("export", stores["prediction"], tmp_path / "d.png", "--array", "speed").code == (
        EXIT_INPUT
    )
    assert cli("export", stores["sparse"], tmp_path / "e.png").code == EXIT_INPUT
    r = cli("export", stores["prediction"], tmp_path / "f.png", "--array", "nope")
    assert r.code == EXIT_USAGE
    assert cli("export", stores["prediction"], tmp_path / "no" / "g.png").code == EXIT_OUTPUT
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"a.png"}, left
