"""Every kind of store opens in xarray (Dataset and DataTree) and its maps in ome-zarr,
with coordinates in metres and seconds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from ulmtools.cli.app import main
from ulmtools.grid import Grid
from ulmtools.store import KINDS, open_store

xr = pytest.importorskip("xarray")
ome_reader = pytest.importorskip("ome_zarr.reader")
ome_io = pytest.importorskip("ome_zarr.io")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eco")
    paths = {k: d / f"{k}.zarr" for k in ("channel", "image", "sparse", "prediction", "tracks")}
    steps = [
        ["simulate", paths["channel"], "--movies", "2", "--frames", "16", "--seed", "2"],
        ["beamform", paths["channel"], paths["image"]],
        ["sparsify", paths["image"], paths["sparse"]],
        ["infer", "shipped:2d", paths["sparse"], paths["prediction"]],
        ["track", paths["image"], paths["tracks"], "--min-track-length", "3"],
    ]
    for args in steps:
        assert main([str(a) for a in args] + ["-q"]) == 0
    from ulmtools.models.deepstulm import SparseDeepStulm
    from ulmtools.models.store import save_model

    net = SparseDeepStulm(dimension=3, channels=4)
    paths["model"] = d / "model.zarr"
    save_model(paths["model"], net, provenance=[])
    paths["angiogram"] = d / "angiogram.zarr"
    from ulmtools.store import create_store, provenance_entry, write_array

    grid = Grid(("z", "x"), (64, 48), (1e-3, -2e-3), (10e-6, 12e-6))
    with create_store(paths["angiogram"], "angiogram", grid=grid, axes=("z", "x"),
                      provenance=[provenance_entry("test", {})]) as root:  # fmt: skip
        write_array(root, "angiogram", np.arange(64 * 48, dtype=np.uint32).reshape(64, 48),
                    dims=("z", "x"))  # fmt: skip
    return paths


def test_the_fixture_covers_every_kind(stores) -> None:
    assert set(stores) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_xarray_opens_every_kind_without_options_or_warnings(stores, kind: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no consolidated-metadata (or any other) warning
        ds = xr.open_zarr(stores[kind])
        tree = xr.open_datatree(stores[kind], engine="zarr")
    assert ds.attrs["ulm"]["kind"] == kind
    assert tree.attrs["ulm"]["kind"] == kind


@pytest.mark.parametrize("kind", ["image", "sparse", "prediction", "tracks", "angiogram"])
def test_grid_dimensions_have_coordinates_in_metres(stores, kind: str) -> None:
    store = open_store(stores[kind])
    grid = store.grid
    ds = xr.open_zarr(stores[kind])
    for i, axis in enumerate(grid.axes):
        if axis not in ds.dims:
            continue  # a sparse store's arrays are tables, not images
        coord = ds[axis]
        assert coord.attrs["units"] == "m" and coord.attrs["long_name"]
        assert np.allclose(coord.values, grid.coordinates(i))


def test_image_store_times_psf_and_truth_on_their_own_dimensions(stores) -> None:
    tree = xr.open_datatree(stores["image"], engine="zarr")
    root = tree.to_dataset()
    assert root["t"].attrs["units"] == "s"
    assert np.allclose(np.diff(root["t"].values), 1 / open_store(stores["image"]).grid.frame_rate)
    assert root["psf"].dims == ("psf_z", "psf_x") and root["psf_z"].attrs["units"] == "m"
    truth = tree["truth"].to_dataset()
    assert truth["tracks"].dims == ("movie", "truth_z", "truth_x")
    assert truth.sizes["truth_z"] == 8 * root.sizes["z"]
    assert truth["truth_x"].attrs["units"] == "m"


MAPS = [("prediction", "angiogram"), ("tracks", "angiogram"), ("tracks", "speed"),
        ("angiogram", "angiogram")]  # fmt: skip


@pytest.mark.parametrize(("kind", "name"), MAPS)
def test_ome_zarr_reads_the_maps_at_physical_scale(stores, kind: str, name: str) -> None:
    store = open_store(stores[kind])
    grid = store.grid
    location = ome_io.parse_url(str(stores[kind] / "ome" / name))
    assert location is not None and location.version == "0.5"
    (node,) = [n for n in ome_reader.Reader(location)() if n.data]
    assert [a["unit"] for a in node.metadata["axes"]] == ["meter"] * grid.ndim
    scale, translation = node.metadata["coordinateTransformations"][0]
    assert np.allclose(scale["scale"], grid.spacing)
    assert np.allclose(translation["translation"], grid.origin)
    assert np.array_equal(np.asarray(node.data[0]), store.array(name)[...], equal_nan=True)


def test_no_reserved_cf_attribute_names(stores) -> None:
    import zarr

    for path in stores.values():
        group = zarr.open_group(str(path), mode="r")
        nodes = [group, *(a for _, a in group.arrays())]
        nodes += [n for _, g in group.groups() for n in (g, *(a for _, a in g.arrays()))]
        for node in nodes:
            assert "coordinates" not in node.attrs, f"{path}: {node.name}"
