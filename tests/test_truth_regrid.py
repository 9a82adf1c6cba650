"""Beamforming onto another grid draws the truth's track maps again for that grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ulmtools.score.maps import dice
from ulmtools.store import open_store
from ulmtools.truth import Truth


def test_beamform_onto_a_finer_grid_redraws_the_truth(cli, tmp_path: Path) -> None:
    sim, same, fine = tmp_path / "sim.zarr", tmp_path / "same.zarr", tmp_path / "fine.zarr"
    assert cli("simulate", sim, "--movies", "1", "--frames", "48", "--seed", "3", "-q").code == 0
    assert cli("beamform", sim, same, "-q").code == 0
    r = cli("beamform", sim, fine, "--grid-step", "lambda/8", "--grid-size", "64x64", "-q")
    assert r.code == 0, r.err
    original = Truth(open_store(sim))
    kept = Truth(open_store(same))
    assert np.array_equal(kept.tracks[0], original.tracks[0])  # same grid: copied as it was
    redrawn = Truth(open_store(fine))
    grid = open_store(fine).grid
    assert redrawn.grid.shape == tuple(8 * n for n in grid.shape) == (512, 512)
    assert np.allclose(redrawn.grid.spacing, np.asarray(grid.spacing) / 8)
    # lambda/8 x 64 covers the same field as lambda/4 x 32: reduced by 2, the maps agree
    maps = np.asarray(redrawn.tracks[0]).reshape(256, 2, 256, 2).max(axis=(1, 3))
    assert dice(maps > 0, np.asarray(original.tracks[0]) > 0) > 0.8
    # and the next stages take it
    sparse, tracks = tmp_path / "sp.zarr", tmp_path / "tracks.zarr"
    assert cli("sparsify", fine, sparse, "-q").code == 0
    assert cli("track", fine, tracks, "-q").code == 0
    r = cli("score", tracks, "-q")
    assert r.code == 0 and "tracks" in r.out
