"""Sparse Deep-stULM and ``ulm train``: the network learns, grids line up, resume is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.models import store as model_store
from ulmtools.models.deepstulm import SparseDeepStulm
from ulmtools.sparsify.core import SparsifyConfig, sparsify_store
from ulmtools.sparsify.synthetic import SyntheticConfig, write_synthetic_store
from ulmtools.store import create_store, open_store
from ulmtools.train import loop
from ulmtools.train.checkpoint import load_resume, resume_path, save_checkpoint
from ulmtools.train.config import SCHEDULES, Schedule, TrainConfig, resolve_schedule
from ulmtools.train.data import Mirrored, SparseMovies, mirror_axes
from ulmtools.truth import copy_truth

# torch on one thread in every test of this module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_sparse(
    path: Path,
    shape: tuple[int, ...],
    *,
    frames: int = 32,
    movies: int = 2,
    bubbles: float = 2,
    seed: int = 1,
    threshold: float = 0.1,
    truth: bool = True,
) -> Path:
    """A tiny sparse store with truth: synthetic correlation movies, thresholded."""
    img = path.with_name(path.name + ".img.zarr")
    cfg = SyntheticConfig(
        movies=movies,
        frames=frames,
        shape=shape,
        bubbles=bubbles,
        seed=seed,
        sigma=(1.0,) * len(shape),
        speed=(0.02, 0.1),
    )
    write_synthetic_store(img, cfg, truth=truth)
    src = open_store(img, "image")
    with create_store(
        path,
        "sparse",
        provenance=src.provenance,
        grid=src.grid,
        axes=("movie", "t", *src.grid.axes),
        attrs={"shape": [frames, *shape]},
    ) as g:
        sparsify_store(src, g, SparsifyConfig("threshold", threshold))
        copy_truth(src, g)
    return path


@pytest.fixture(scope="module")
def data2d(tmp_path_factory) -> Path:
    return make_sparse(tmp_path_factory.mktemp("d2") / "train2d.zarr", (8, 8))


@pytest.fixture(scope="module")
def data3d(tmp_path_factory) -> Path:
    return make_sparse(tmp_path_factory.mktemp("d3") / "train3d.zarr", (6, 6, 6), frames=16)


def small_config(epochs: int, **kw) -> TrainConfig:
    sched = Schedule(
        "test",
        epochs=epochs,
        lr=((0, 1e-2), (int(epochs * 0.7), 2e-3)),
        batch_size=((0, 2),),
        dilate_epochs=10,
    )
    return TrainConfig(schedule=sched, **kw)


def interrupt_in_epoch(epoch: int, monkeypatch: pytest.MonkeyPatch):
    """Make training stop with Ctrl-C at the start of ``epoch`` (1-based); returns the
    real ``run_epoch`` to put back."""
    real = loop.run_epoch

    def interrupted(state, *a, **kw):
        if state.epoch == epoch - 1:
            raise KeyboardInterrupt
        return real(state, *a, **kw)

    monkeypatch.setattr(loop, "run_epoch", interrupted)
    return real


def train_dice(state: loop.TrainState, data: SparseMovies) -> float:
    from ulmtools.infer.core import angiogram_dice

    return angiogram_dice(state.model, data)


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


def test_one_definition_for_2d_and_3d_with_the_papers_size() -> None:
    n3 = SparseDeepStulm(dimension=3).num_parameters()
    n4 = SparseDeepStulm(dimension=4).num_parameters()
    # The paper reports ~1.05 M (3D convs) and ~3.1 M (4D convs); our up blocks
    # halve the transposed-conv width before the concat (V-Net style).
    assert 0.85e6 < n3 < 1.15e6
    assert 2.6e6 < n4 < 3.3e6
    with pytest.raises(ValueError):
        SparseDeepStulm(dimension=2)


@pytest.mark.parametrize("fixture", ["data2d", "data3d"])
def test_output_lies_on_the_truth_grid(fixture: str, request) -> None:
    data = SparseMovies(request.getfixturevalue(fixture), need_truth=True)
    torch.manual_seed(0)
    model = SparseDeepStulm(dimension=data.dimension, channels=4).eval()
    movies = [data.movie(m) for m in range(len(data))]
    x = model.make_input([c for c, _ in movies], [f for _, f in movies])
    with torch.no_grad():
        out = model(x)
    final = out.final
    assert final is not None and final.tensor_stride[1:] == (1,) * data.space_ndim
    coords = final.coords.long()
    assert (coords[:, 1] == 0).all(), "time is projected to one index"
    fine = torch.tensor(data.fine_grid.shape)
    assert (coords[:, 2:] >= 0).all() and (coords[:, 2:] < fine).all()
    assert tuple(data.fine_grid.shape) == tuple(data.target(0).shape)
    for b, (c, _) in enumerate(movies):
        # every output site is a child of an input pixel of its own movie, and
        # every input pixel has all 8**S children
        mine = coords[coords[:, 0] == b][:, 2:]
        parents = {tuple(p) for p in (mine // 8).tolist()}
        assert parents == {tuple(p) for p in c[:, 1:].tolist()}
        assert len(mine) == len(parents) * 8**data.space_ndim


def test_cached_targets_are_the_truth_and_stay_small(data3d: Path) -> None:
    data = SparseMovies(data3d, need_truth=True)
    tracks = data.truth.tracks
    for dilation in (0, 2):
        first = data.target(1, dilation)
        first[:] = False  # a caller's copy: changing it changes nothing cached
        again = data.target(1, dilation)
        fresh = SparseMovies(data3d, need_truth=True).target(1, dilation)
        assert again.dtype == bool and np.array_equal(again, fresh)
    assert np.array_equal(data.target(1), np.asarray(tracks[1]) > 0)
    assert data.target(1, 2).sum() > data.target(1).sum()
    # the cache holds voxel indices, not dense fine-grid volumes
    dense = 2 * np.prod(data.fine_grid.shape)
    assert data.cached_target_bytes < dense / 10


def _covered(coords: np.ndarray, target: np.ndarray) -> float:
    """The fraction of a target's voxels whose coarse cell holds an active site."""
    cells = {tuple(c) for c in coords[:, 1:].tolist()}
    voxels = np.argwhere(target) // 8
    return float(np.mean([tuple(v) in cells for v in voxels.tolist()]))


def test_mirrored_movies_flip_sites_and_targets_together(data3d: Path) -> None:
    data = SparseMovies(data3d, need_truth=True)
    axes = mirror_axes(("x", "y"), data.grid)
    assert axes == (1, 2)
    originals = [data.movie(m) for m in range(len(data))]
    seen = set()
    for epoch in range(32):
        seen |= {Mirrored(data, axes, seed=5, epoch=epoch).flips(m) for m in range(len(data))}
    assert seen == {(), (1,), (2,), (1, 2)}  # each axis flipped, or not, at random
    for epoch in range(6):
        view = Mirrored(data, axes, seed=5, epoch=epoch)
        assert len(view) == len(data) and view.fine_grid == data.fine_grid
        for m, (coords, feats) in enumerate(originals):
            flips = view.flips(m)
            assert flips == Mirrored(data, axes, seed=5, epoch=epoch).flips(m)  # seeded
            got, got_feats = view.movie(m)
            want = coords.copy()
            for a in flips:
                want[:, 1 + a] = data.shape[1 + a] - 1 - want[:, 1 + a]
            assert np.array_equal(got, want) and np.array_equal(got_feats, feats)
            for dilation in (0, 2):
                assert np.array_equal(
                    view.target(m, dilation), np.flip(data.target(m, dilation), axis=flips)
                )
            # the sites stay on their bubbles: coarse cell i is fine voxels 8i .. 8i+7
            assert _covered(got, view.target(m)) == _covered(coords, data.target(m)) > 0.5
    for m, (coords, _) in enumerate(originals):
        assert np.array_equal(data.movie(m)[0], coords)  # the data are not changed


def test_mirror_refuses_depth_unknown_axes_and_off_centre_grids() -> None:
    grid = Grid(("z", "x", "y"), (4, 6, 6), (0.01, -0.25e-3, -0.25e-3), (1e-4,) * 3)
    assert mirror_axes(("y",), grid) == (2,)
    with pytest.raises(UsageError, match="depth"):
        mirror_axes(("z",), grid)
    with pytest.raises(UsageError, match="no axis 'q'"):
        mirror_axes(("q",), grid)
    shifted = Grid(("z", "x", "y"), (4, 6, 6), (0.01, 0.0, -0.25e-3), (1e-4,) * 3)
    assert mirror_axes(("y",), shifted) == (2,)
    with pytest.raises(InputError, match="not centred on the probe along x"):
        mirror_axes(("x",), shifted)


def test_any_frame_count_gives_one_map() -> None:
    # 3000 frames: more than the 1024 the pooling covers; a global max finishes it.
    rng = np.random.default_rng(0)
    t = np.sort(rng.choice(3000, 40, replace=False))
    c = np.stack([t, rng.integers(0, 4, 40), rng.integers(0, 4, 40)], 1)
    model = SparseDeepStulm(dimension=3, channels=4).eval()
    with torch.no_grad():
        out = model(model.make_input([c], [rng.normal(size=(40, 2))]))
    coords = out.final.coords.long()
    assert (coords[:, 1] == 0).all()
    spatial = {tuple(p) for p in coords[:, 2:].tolist()}
    assert len(spatial) == len(coords), "one site per fine pixel"


def test_pruning_reduces_active_sites(data3d: Path) -> None:
    data = SparseMovies(data3d, need_truth=True)
    torch.manual_seed(0)
    pruned = SparseDeepStulm(dimension=4, channels=4, pruning=True).eval()
    full = SparseDeepStulm(dimension=4, channels=4, deep_supervision=True).eval()
    full.load_state_dict(pruned.state_dict())
    c, f = data.movie(0)
    with torch.no_grad():
        a = full(full.make_input([c], [f]))
        b = pruned(pruned.make_input([c], [f]))
    # an untrained classifier starts near p = 0.05: all but each movie's best site go
    assert b.sites[0] < a.sites[0] and sum(b.sites) < sum(a.sites)
    assert b.final.num_sites < a.final.num_sites
    assert b.final.num_sites >= 2**3  # each level keeps at least its best site


def test_deep_supervision_gives_a_classifier_per_level(data2d: Path) -> None:
    data = SparseMovies(data2d, need_truth=True)
    model = SparseDeepStulm(dimension=3, channels=4, deep_supervision=True)
    c, f = data.movie(0)
    out = model(model.make_input([c], [f]))
    assert [lv.tensor_stride[1] for lv in out.levels] == [8, 4, 2]
    part = model(model.make_input([c], [f]), levels=1)  # cascade: stop after level 1
    assert part.final is None and len(part.levels) == 1


# ---------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------


def test_overfits_two_tiny_2d_movies(data2d: Path) -> None:
    data = SparseMovies(data2d, need_truth=True)
    state = loop.fit(small_config(80), data)
    assert state.history[-1]["loss"] < state.history[10]["loss"]
    assert train_dice(state, data) > 0.9


def test_overfits_two_tiny_3d_movies_with_pruning(data3d: Path) -> None:
    data = SparseMovies(data3d, need_truth=True)
    state = loop.fit(small_config(70, pruning=True), data)
    assert train_dice(state, data) > 0.9
    # pruning kept far fewer sites than the unpruned 8x growth per level
    first = state.history[0]["sites_before_upsampling"]
    assert state.history[-1]["sites_before_upsampling"] < first


def test_cascade_switches_levels_on_one_epoch_at_a_time(data2d: Path) -> None:
    cfg = small_config(2, cascade=True)
    assert cfg.total_epochs == 5 and cfg.classifiers
    assert [cfg.phase(e)["levels"] for e in range(5)] == [1, 2, 3, None, None]
    state = loop.fit(cfg, SparseMovies(data2d, need_truth=True))
    assert [h["levels"] for h in state.history] == [1, 2, 3, "all", "all"]
    assert all(h["final_loss"] is None for h in state.history[:3])


def test_schedules() -> None:
    p2 = SCHEDULES["paper-2d"]
    assert p2.epochs == 300 and p2.dilation_at(149) == 2 and p2.dilation_at(150) == 0
    assert p2.lr_at(0) == 0.1 and p2.lr_at(15) == pytest.approx(0.01)
    assert p2.lr_at(150) == pytest.approx(1e-3) and p2.lr_at(299) == pytest.approx(1e-6)
    p3 = SCHEDULES["paper-3d"]
    assert (p3.epochs, p3.batch_size_at(0), p3.batch_size_at(1)) == (20, 2, 4)
    s = resolve_schedule("paper-2d", epochs=30, lr=0.05, batch_size=3)
    assert s.epochs == 30 and s.dilate_epochs == 15 and s.lr_at(0) == pytest.approx(0.05)
    assert s.batch_size_at(10) == 3
    cfg = TrainConfig(schedule=s, pruning=True, seed=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_resume_reaches_the_same_result(data2d: Path, tmp_path: Path) -> None:
    data = SparseMovies(data2d, need_truth=True)
    cfg = small_config(4, deep_supervision=True)
    straight = loop.fit(cfg, data)

    path = tmp_path / "m.zarr"
    training = {"config": cfg.to_dict(), "model": {}}
    half = loop.fit(cfg, data, stop_after=2)
    training["model"] = half.model.architecture_kwargs
    save_checkpoint(path, half, cfg, training=training, provenance=[], complete=False, force=False)
    assert resume_path(path).exists()
    del half
    state, cfg2, _ = load_resume(path)
    assert cfg2 == cfg and state.epoch == 2
    done = loop.fit(cfg2, data, state=state)
    for (k, a), b in zip(straight.model.state_dict().items(), done.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in done.history]


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def test_train_command_writes_a_model_store(cli, data2d: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.zarr"
    r = cli(
        "train",
        data2d,
        out,
        "--val",
        data2d,
        "--epochs",
        "3",
        "--channels",
        "8",
        "--seed",
        "3",
        "--deep-supervision",
        "--json",
    )
    assert r.code == 0, r.err
    result = json.loads(r.out)  # stdout holds only the result
    assert result["epochs"] == 3 and result["seed"] == 3 and 0 <= result["val_dice"] <= 1
    assert "epoch 3/3" in r.err and "ETA" in r.err
    assert not resume_path(out).exists(), "the resume state goes when the run completes"
    _, meta = model_store.load(out)
    assert meta.name == "sparse-deepstulm" and meta.kwargs["channels"] == 8
    assert meta.kwargs["deep_supervision"] is True
    assert meta.training["complete"] and meta.training["config"]["seed"] == 3
    assert {"loss", "val_dice", "seconds", "peak_memory_mb"} <= set(meta.history[0])
    assert len(meta.history) == 3 and "torch" in meta.versions
    assert open_store(out, "model").provenance[-1]["stage"] == "train"


def test_input_kernel_is_a_stored_architecture_choice(cli, data3d: Path, tmp_path: Path) -> None:
    out = tmp_path / "k3.zarr"
    r = cli("train", data3d, out, "--epochs", "1", "--channels", "4", "--pruning",
            "--input-kernel", "3", "--seed", "1", "--json")  # fmt: skip
    assert r.code == 0, r.err
    model, meta = model_store.load(out)
    assert meta.kwargs["input_kernel"] == 3 and meta.training["config"]["input_kernel"] == 3
    # 3^4 taps instead of 5^4: the input convolution's weight says which was trained
    assert model.inp.conv.weight.shape[0] == 3**4
    pred = tmp_path / "pred.zarr"
    assert cli("infer", out, data3d, pred, "-q").code == 0  # the model store rebuilds it
    fresh = tmp_path / "n.zarr"
    r = cli("train", data3d, fresh, "--input-kernel", "4")
    assert r.code == 2 and "--input-kernel must be 1, 3, 5 or 7" in r.err
    img = data3d.with_name(data3d.name + ".img.zarr")
    r = cli("train", img, fresh, "--arch", "mspcn", "--input-kernel", "3")
    assert r.code == 2 and "--input-kernel" in r.err
    assert not fresh.exists()


def test_mirror_option_trains_on_mirrored_movies(
    cli, data3d: Path, tmp_path: Path, monkeypatch
) -> None:
    args = ["--epochs", "2", "--channels", "4", "--pruning", "--seed", "1", "-q"]
    plain, mirrored = tmp_path / "plain.zarr", tmp_path / "mirrored.zarr"
    assert cli("train", data3d, plain, *args).code == 0
    r = cli("train", data3d, mirrored, *args, "--mirror", "x,y")
    assert r.code == 0, r.err
    a, _ = model_store.load_state(plain)
    b, meta = model_store.load_state(mirrored)
    assert meta.training["config"]["mirror"] == ["x", "y"]
    assert not all(torch.equal(a[k], b[k]) for k in a)  # it trained on other movies
    fresh = tmp_path / "n.zarr"
    r = cli("train", data3d, fresh, "--mirror", "z")
    assert r.code == 2 and "depth axis" in r.err
    r = cli("train", data3d, fresh, "--mirror", "x,,y")
    assert r.code == 2 and "empty axis" in r.err
    img = data3d.with_name(data3d.name + ".img.zarr")
    r = cli("train", img, fresh, "--arch", "mspcn", "--mirror", "x")
    assert r.code == 2 and "--mirror" in r.err
    assert not fresh.exists()
    # --resume keeps the stored mirroring and refuses another
    part = tmp_path / "part.zarr"
    real = interrupt_in_epoch(2, monkeypatch)
    assert cli("train", data3d, part, *args, "--mirror", "x,y").code == 130
    monkeypatch.setattr(loop, "run_epoch", real)
    r = cli("train", data3d, part, "--resume", "--mirror", "x")
    assert r.code == 2 and "--mirror x (stored x,y)" in r.err
    assert cli("train", data3d, part, "--resume", "-q").code == 0
    c, _ = model_store.load_state(part)
    assert all(torch.equal(b[k], c[k]) for k in b)  # as the uninterrupted run


def test_train_refusals(cli, data2d: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.zarr"
    out.mkdir()
    (out / "zarr.json").write_text("{}")
    assert cli("train", data2d, out, "--epochs", "1").code == 4  # exists
    fresh = tmp_path / "n.zarr"
    assert cli("train", data2d, fresh, "--schedule", "nope").code == 2
    assert cli("train", data2d, fresh, "--epochs", "0").code == 2
    if not torch.cuda.is_available():
        assert cli("train", data2d, fresh, "--device", "cuda").code == 5
    from ulmtools.sparse import available_backends

    if "minkowski" not in available_backends():
        assert cli("train", data2d, fresh, "--backend", "minkowski").code == 5
    assert cli("train", data2d, fresh, "--resume").code == 3  # nothing to resume
    img = data2d.with_name(data2d.name + ".img.zarr")
    r = cli("train", img, fresh)
    assert r.code == 3 and "image store" in r.err  # wrong kind
    assert not fresh.exists() and not resume_path(fresh).exists()


def test_train_without_truth_is_refused(cli, tmp_path: Path) -> None:
    bare = make_sparse(tmp_path / "bare.zarr", (4, 4), frames=8, movies=1, truth=False)
    r = cli("train", bare, tmp_path / "m.zarr")
    assert r.code == 3 and "truth" in r.err


def test_interrupted_command_resumes_to_the_same_model(
    cli, data2d: Path, tmp_path: Path, monkeypatch
) -> None:
    args = ["--epochs", "3", "--channels", "4", "--seed", "9", "--pruning", "-q"]
    whole = tmp_path / "whole.zarr"
    assert cli("train", data2d, whole, *args).code == 0

    part = tmp_path / "part.zarr"
    real = interrupt_in_epoch(3, monkeypatch)
    assert cli("train", data2d, part, *args).code == 130
    assert resume_path(part).exists()
    monkeypatch.setattr(loop, "run_epoch", real)
    r = cli("train", data2d, part, *args)
    assert r.code == 4 and "--resume" in r.err  # a resumable run is not silently replaced
    assert cli("train", data2d, part, "--resume", "--lr", "1").code == 2  # contradicts
    # the peak memory it reports is the run's, also when an epoch before the interruption
    # (another process) set it
    group = zarr.open_group(resume_path(part), mode="r+")
    history = group.attrs["history"]
    history[0]["peak_memory_mb"] = 99_999.0
    group.attrs["history"] = history
    r = cli("train", data2d, part, "--resume", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["peak_memory_mb"] == 99_999.0
    a, _ = model_store.load_state(whole)
    b, meta = model_store.load_state(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert meta.training["epochs_done"] == 3 and not resume_path(part).exists()
    assert cli("train", data2d, part, "--resume").code == 3  # finished: nothing to resume


def test_train_subprocess(data2d: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "m.zarr"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ulm"),
            "train",
            str(data2d),
            str(out),
            "--epochs",
            "1",
            "--channels",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epochs"] == 1


@pytest.mark.minkowski
def test_same_network_on_the_minkowski_backend(data3d: Path) -> None:
    from ulmtools.sparse import available_backends

    if "minkowski" not in available_backends():
        pytest.skip("MinkowskiEngine is not installed (make minkowski)")
    data = SparseMovies(data3d, need_truth=True)
    c, f = data.movie(0)
    torch.manual_seed(0)
    model = SparseDeepStulm(dimension=4, channels=4, deep_supervision=True).eval()
    maps = {}
    for backend in ("builtin", "minkowski"):
        with torch.no_grad():
            out = model(model.make_input([c], [f], backend=backend))
        coords = out.final.coords.long()
        order = np.lexsort(coords.numpy().T[::-1])
        maps[backend] = (coords[order], out.final.feats[order, 0])
    assert torch.equal(maps["builtin"][0], maps["minkowski"][0])
    assert torch.allclose(maps["builtin"][1], maps["minkowski"][1], atol=1e-5)


def test_train_mask_cnn_for_sparsify(cli, data2d: Path, tmp_path: Path) -> None:
    img = data2d.with_name(data2d.name + ".img.zarr")
    out = tmp_path / "mask.zarr"
    r = cli("train", img, out, "--arch", "mask-cnn", "--epochs", "1", "--seed", "2", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["architecture"] == "mask-cnn"
    _, meta = model_store.load(out)
    assert meta.name == "mask-cnn" and meta.training["config"]["seed"] == 2
    sparse = tmp_path / "s.zarr"
    assert cli("sparsify", img, sparse, "--method", "mask", "--mask-model", out).code == 0
    r = cli("train", img, tmp_path / "x.zarr", "--arch", "mask-cnn", "--pruning")
    assert r.code == 2 and "does not apply" in r.err


def test_several_training_stores_are_one_set(cli, data2d: Path, data3d: Path, tmp_path: Path):
    from ulmtools.errors import InputError
    from ulmtools.train.data import MovieSet

    one = SparseMovies(data2d, need_truth=True)
    both = MovieSet([one, SparseMovies(data2d, need_truth=True)])
    assert len(both) == 2 * len(one) and both.dimension == one.dimension
    c0, f0 = one.movie(1)
    c1, f1 = both.movie(len(one) + 1)
    assert (c0 == c1).all() and (f0 == f1).all()
    assert (both.target(len(one)) == one.target(0)).all()
    assert (both.truth_angiogram() == one.truth_angiogram()).all()
    with pytest.raises(InputError):
        MovieSet([one, SparseMovies(data3d, need_truth=True)])  # another dimension
    out = tmp_path / "m.zarr"
    r = cli("train", data2d, out, "--also", data2d, "--epochs", "1", "--channels", "8",
            "--seed", "1", "--json")  # fmt: skip
    assert r.code == 0, r.err
    _, meta = model_store.load(out)
    assert meta.history[0]["steps"] == -(-2 * len(one) // meta.history[0]["batch_size"])
    assert len(meta.training["also"]) == 1
    assert cli("train", data2d, tmp_path / "n.zarr", "--also", data3d).code == 3


@pytest.mark.parametrize("times", [1, 3])
def test_sparse_dice_loss_matches_a_dense_brute_force(times) -> None:
    """The loss projects each site's probability over time (maximum) onto a dense grid,
    counting absent sites as 0, whatever order the sites come in (one time index: the
    final output, left unsorted)."""
    from ulmtools import sparse as sp
    from ulmtools.train.loss import sparse_dice_loss

    rng = np.random.default_rng(times)
    # 40 distinct (movie, t, z, x) sites; with several time indices a cell repeats
    sites = rng.choice(2 * times * 6 * 6, size=40, replace=False)  # in no order
    batch, t, z, x = np.unravel_index(sites, (2, times, 6, 6))
    coords = torch.tensor(np.stack([batch, t * 4, z * 2, x * 2], 1), dtype=torch.int32)
    logits = torch.tensor(rng.normal(size=(len(coords), 1)), dtype=torch.float32)
    logits.requires_grad_(True)
    target = torch.from_numpy(rng.random((2, 6, 6)) < 0.3)
    loss = sparse_dice_loss(sp.sparse_tensor(coords, logits, (4, 2, 2)), target, smooth=1e-3)
    dense = torch.zeros(2, 6, 6)
    for (b, _, zz, xx), p in zip(
        coords.tolist(), torch.sigmoid(logits[:, 0]).tolist(), strict=True
    ):
        dense[b, zz // 2, xx // 2] = max(float(dense[b, zz // 2, xx // 2]), p)
    y = target.float()
    ref = 1 - (2 * (dense * y).sum() + 1e-3) / (dense.sum() + y.sum() + 1e-3)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and bool((logits.grad != 0).any())
