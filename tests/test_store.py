"""The store layer: round trips, independent schema validation, refusals, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import zarr

from ulmtools.errors import EXIT_INPUT, EXIT_OUTPUT, InputError, OutputError
from ulmtools.grid import Grid
from ulmtools.store import (
    KINDS,
    create_store,
    default_chunks,
    lineage,
    open_store,
    provenance_entry,
    write_array,
)
from ulmtools.truth import Truth, TruthMovie, TruthWriter, copy_truth, render_tracks

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "ulmtools" / "schemas" / "ulm-root.schema.json").read_text())
GRID = Grid(("z", "x"), (8, 6), (7.9e-3, -0.1e-3), (25e-6, 25e-6), frame_rate=1000.0)


def make_image_store(path: Path, *, with_truth: bool = True, movies: int = 2) -> None:
    rng = np.random.default_rng(0)
    iq = (rng.normal(size=(movies, 4, 8, 6)) + 1j * rng.normal(size=(movies, 4, 8, 6))).astype(
        np.complex64
    )
    entry = provenance_entry("simulate", {"movies": movies, "seed": np.int64(3)}, argv=["ulm", "x"])
    with create_store(
        path, "image", provenance=[entry], grid=GRID, axes=("movie", "t", "z", "x")
    ) as root:
        write_array(root, "iq", iq, dims=("movie", "t", "z", "x"))
        if with_truth:
            fine = GRID.refined(8)
            writer = TruthWriter(root, fine, movies)
            for m in range(movies):
                pos = np.column_stack([np.full(3, 8.0e-3), np.linspace(-0.05e-3, 0.0, 3)])
                writer.write_movie(
                    m,
                    TruthMovie(pos, np.arange(3), np.arange(3) + 10 * m, render_tracks(pos, fine)),
                )
            writer.close()


def test_round_trip_every_field(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path)
    store = open_store(path, "image")
    assert store.kind == "image" and store.version == KINDS["image"].version
    assert store.grid == GRID
    assert [a["name"] for a in store.attrs["axes"]] == ["movie", "t", "z", "x"]
    assert store.attrs["axes"][2] == {"name": "z", "type": "space", "unit": "metre"}
    assert store.attrs["axes"][1]["unit"] == "second"
    (entry,) = store.provenance
    assert entry["stage"] == "simulate"
    assert entry["parameters"] == {"movies": 2, "seed": 3}
    assert entry["command"] == "ulm x"
    assert store.array("iq").shape == (2, 4, 8, 6)
    assert store.array("iq").metadata.dimension_names == ("movie", "t", "z", "x")
    truth = Truth(store)
    assert truth.n_movies == 2
    m1 = truth.movie(1)
    np.testing.assert_array_equal(m1.ids, [10, 11, 12])
    assert m1.positions.shape == (3, 2)
    assert m1.tracks.shape == (64, 48) and m1.tracks.sum() > 0
    assert truth.grid.spacing == (25e-6 / 8, 25e-6 / 8)


def test_written_json_matches_independent_schema(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path)
    root = json.loads((path / "zarr.json").read_text())
    jsonschema.validate(root, SCHEMA)
    # the truth grid is a grid too, and arrays carry their dimension names on disk
    truth = json.loads((path / "truth" / "zarr.json").read_text())
    jsonschema.validate(truth["attributes"]["grid"], {**SCHEMA["$defs"]["grid"]})
    iq = json.loads((path / "iq" / "zarr.json").read_text())
    assert iq["dimension_names"] == ["movie", "t", "z", "x"]
    assert iq["data_type"] == "complex64"
    assert iq["chunk_grid"]["configuration"]["chunk_shape"][0] == 1  # one movie per chunk


def test_schema_rejects_what_it_should(tmp_path: Path) -> None:
    """The independent schema is not vacuous: it fails on a broken store."""
    path = tmp_path / "a.zarr"
    make_image_store(path)
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["grid"]["spacing"][0] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(root, SCHEMA)


def test_lineage_copies_and_extends(tmp_path: Path) -> None:
    make_image_store(tmp_path / "a.zarr")
    a = open_store(tmp_path / "a.zarr")
    entry = provenance_entry("beamform", {"k": 1}, [a])
    with create_store(tmp_path / "b.zarr", "image", provenance=lineage([a], entry), grid=GRID) as g:
        write_array(g, "corr", np.zeros((1, 2, 8, 6), np.complex64), dims=("movie", "t", "z", "x"))
        assert copy_truth(a, g)
    b = open_store(tmp_path / "b.zarr")
    assert [e["stage"] for e in b.provenance] == ["simulate", "beamform"]
    assert b.provenance[1]["inputs"][0]["id"] == a.id
    assert b.id != a.id
    assert Truth(b).movie(1).ids.tolist() == [10, 11, 12]


def test_default_chunks_one_movie_or_frame_blocks() -> None:
    assert default_chunks((10, 512, 32, 32), np.complex64) == (1, 512, 32, 32)
    big = default_chunks((3, 512, 3, 600, 128), np.complex64)  # ~0.9 GB per movie
    assert big[0] == 1 and big[2:] == (3, 600, 128) and big[1] < 512
    assert np.prod(big) * 8 <= 32 * 2**20


# -- refusals -----------------------------------------------------------------


def _v2_store(p: Path) -> None:
    zarr.open_group(str(p), mode="w", zarr_format=2)


def _array_store(p: Path) -> None:
    zarr.create_array(str(p), shape=(2,), dtype="f4", zarr_format=3)


def _plain_group(p: Path) -> None:
    zarr.open_group(str(p), mode="w", zarr_format=3).attrs["hello"] = 1


def _future_major(p: Path) -> None:
    make_image_store(p, with_truth=False)
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["ulm"]["version"] = "9.0"
    (p / "zarr.json").write_text(json.dumps(meta))


def _missing_array(p: Path) -> None:
    with create_store(p, "sparse", provenance=[], grid=GRID) as g:
        write_array(g, "coords", np.zeros((0, 3), np.int32), dims=("row", "c"))


def _missing_attr(p: Path) -> None:
    with create_store(p, "image", provenance=[]) as g:
        write_array(g, "iq", np.zeros((1, 1, 2, 2), np.complex64), dims=("movie", "t", "z", "x"))


REFUSALS = {
    "missing": (lambda p: None, "no such store"),
    "file": (lambda p: p.write_text("hi"), "is a file, not a Zarr store"),
    "empty dir": (lambda p: p.mkdir(), "is not a Zarr store (no zarr.json)"),
    "zarr v2": (_v2_store, "Zarr format 2"),
    "zarr array": (_array_store, "is a Zarr array"),
    "not ulmtools": (_plain_group, "not a ulmtools store"),
    "future major": (_future_major, "version 9.0"),
    "missing array": (_missing_array, "lacks the required array 'feats'"),
    "missing attribute": (_missing_attr, "lacks the required attribute 'grid'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_one_line_exit_3_input_untouched(tmp_path, cli, digest, case) -> None:
    path = tmp_path / "in.zarr"
    make, expected = REFUSALS[case]
    make(path)
    before = digest(path) if path.exists() else None
    result = cli("info", path)
    assert result.code == EXIT_INPUT
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("Error: ") and expected in lines[0]
    assert "Traceback" not in result.err
    assert (digest(path) if path.exists() else None) == before


def test_wrong_kind_refused_by_name(tmp_path: Path) -> None:
    make_image_store(tmp_path / "a.zarr")
    with pytest.raises(InputError) as exc:
        open_store(tmp_path / "a.zarr", "sparse")
    assert exc.value.exit_code == EXIT_INPUT
    assert "is an image store; this needs a sparse store" in str(exc.value)
    assert "ulm sparsify" in str(exc.value)


def test_older_minor_version_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path, with_truth=False)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ulm"]["version"] = "1.7"
    (path / "zarr.json").write_text(json.dumps(meta))
    assert open_store(path).version == "1.7"


# -- writing ------------------------------------------------------------------


def test_existing_output_refused_without_force(tmp_path: Path, digest) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path)
    before = digest(path)
    with pytest.raises(OutputError) as exc:
        make_image_store(path)
    assert exc.value.exit_code == EXIT_OUTPUT and "--force" in str(exc.value)
    assert digest(path) == before


def test_force_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path, movies=2)
    old_id = open_store(path).id
    with create_store(path, "image", provenance=[], grid=GRID, force=True) as g:
        write_array(g, "iq", np.zeros((5, 1, 8, 6), np.complex64), dims=("movie", "t", "z", "x"))
    store = open_store(path)
    assert store.id != old_id and store.array("iq").shape[0] == 5 and not store.has_truth
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_error_inside_writer_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    with pytest.raises(RuntimeError), create_store(path, "image", provenance=[], grid=GRID) as g:
        write_array(g, "iq", np.zeros((1, 1, 8, 6), np.complex64), dims=("movie", "t", "z", "x"))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_output_equal_to_input_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    make_image_store(path)
    with (
        pytest.raises(OutputError, match="also an input"),
        create_store(path, "image", provenance=[], force=True, inputs=[path]),
    ):
        pass


WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from ulmtools.grid import Grid
    from ulmtools.store import create_store, create_array
    grid = Grid(("z", "x"), (8, 8), (0.0, 0.0), (1e-4, 1e-4), frame_rate=100.0)
    with create_store(sys.argv[1], "image", provenance=[], grid=grid) as g:
        a = create_array(g, "iq", shape=(1000, 4, 8, 8), dtype="complex64",
                         dims=("movie", "t", "z", "x"))
        for m in range(1000):
            a[m] = np.ones((4, 8, 8), np.complex64)
            if m == 2:
                print("writing", flush=True)
            time.sleep(0.01)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_writer_leaves_no_output(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "out.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert not path.exists()
    if sig == signal.SIGTERM:
        # Python's default SIGTERM kills without cleanup; our CLI installs a handler
        # (tested below), so only the hidden temporary may remain here.
        pass
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".out.zarr.partial-") for name in leftovers)
    # The next writer sweeps the dead writer's temporary away.
    with create_store(path, "image", provenance=[], grid=GRID) as g:
        write_array(g, "iq", np.zeros((1, 1, 8, 6), np.complex64), dims=("movie", "t", "z", "x"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def test_sigterm_through_cli_handler_cleans_up(tmp_path: Path) -> None:
    """The CLI turns SIGTERM into an interrupt, so the temporary is removed too."""
    path = tmp_path / "out.zarr"
    code = WRITER.replace(
        "with create_store",
        "import signal\nfrom ulmtools.cli.app import _on_sigterm\n"
        "signal.signal(signal.SIGTERM, _on_sigterm)\nwith create_store",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []
    assert os.path.exists(tmp_path)
