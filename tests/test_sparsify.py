"""ulmtools.sparsify: selection rules, the sparse store layout, truth statistics."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ulmtools.errors import InputError, UsageError
from ulmtools.grid import Grid
from ulmtools.sparsify import (
    SparsifyConfig,
    check_image_store,
    movie_shape,
    n_movies,
    open_sparse,
    power,
    read_movie,
    sparsify_store,
    to_dense,
    topk_mask,
    truth_mask,
    truth_sites,
)
from ulmtools.sparsify.synthetic import SyntheticConfig, write_image_store, write_synthetic_store
from ulmtools.store import create_store, open_store
from ulmtools.truth import TruthMovie

_counter = itertools.count()


def grid_for(space: tuple[int, ...], frame_rate: float = 1000.0) -> Grid:
    axes = ("z", "x", "y")[: len(space)]
    return Grid(
        axes, space, (0.005,) + (0.0,) * (len(space) - 1), (25e-6,) * len(space), frame_rate
    )


def random_corr(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.5) -> np.ndarray:
    return (rng.normal(scale=scale, size=shape) + 1j * rng.normal(scale=scale, size=shape)).astype(
        np.complex64
    )


def sparsify_to(tmp: Path, src: Path, config: SparsifyConfig, **kw):
    """Run the library on ``src`` into a new sparse store; return (store, stats)."""
    store = open_store(src, "image")
    _, shape = check_image_store(store)
    cfg = config.resolved(store.grid.ndim)
    out = tmp / f"out{next(_counter)}.zarr"
    with create_store(
        out,
        "sparse",
        provenance=[],
        grid=store.grid,
        attrs={"shape": list(shape[1:])},
    ) as g:
        stats = sparsify_store(store, g, cfg, **kw)
        g.attrs["stats"] = stats.summary()
    return open_sparse(out), stats


# ---------------------------------------------------------------------------
# Round trip: densify gives back exactly the masked correlation map
# ---------------------------------------------------------------------------


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    space=st.one_of(
        st.tuples(st.integers(1, 7), st.integers(1, 7)),
        st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    ),
    movies=st.integers(1, 3),
    frames=st.integers(1, 6),
    threshold=st.floats(0.0, 2.0, allow_nan=False),
    rows_per_chunk=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_densify_gives_back_the_masked_correlation(
    tmp_path, space, movies, frames, threshold, rows_per_chunk, seed
):
    rng = np.random.default_rng(seed)
    corr = random_corr(rng, (movies, frames, *space))
    src = tmp_path / f"in{next(_counter)}.zarr"
    write_image_store(src, corr, grid_for(space))
    sp, stats = sparsify_to(
        tmp_path, src, SparsifyConfig(threshold=threshold, rows_per_chunk=rows_per_chunk)
    )
    assert n_movies(sp) == movies
    assert movie_shape(sp) == (frames, *space)
    p = corr.real * corr.real + corr.imag * corr.imag
    for m in range(movies):
        coords, feats = read_movie(sp, m)
        assert coords.dtype == np.int32 and feats.dtype == np.float32
        assert coords.shape[1] == 1 + len(space)
        expected = np.where(p[m] > threshold, corr[m], 0).astype(np.complex64)
        dense = to_dense(coords, feats, (frames, *space))
        np.testing.assert_array_equal(dense, expected)
        # rows in (t, z, x[, y]) order, no duplicates
        flat = np.ravel_multi_index(tuple(coords.T), (frames, *space))
        assert np.all(np.diff(flat) > 0)
        assert len(coords) == stats.active_sites[m]


def test_sites_are_chunked_and_movies_read_alone(tmp_path):
    rng = np.random.default_rng(3)
    corr = random_corr(rng, (5, 8, 6, 6))
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid_for((6, 6)))
    sp, stats = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.2, rows_per_chunk=64))
    coords = sp.array("coords")
    assert coords.chunks == (64, 3)
    offsets = sp.array("offsets")[:]
    assert offsets[0] == 0 and np.all(np.diff(offsets) == stats.active_sites)
    assert coords.shape[0] == offsets[-1] > 3 * 64  # several chunks
    c3, f3 = read_movie(sp, 3)
    np.testing.assert_array_equal(
        to_dense(c3, f3, (8, 6, 6)), np.where(power(corr[3]) > 0.2, corr[3], 0)
    )
    with pytest.raises(InputError, match="no movie 5"):
        read_movie(sp, 5)


# ---------------------------------------------------------------------------
# Top-k
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 7, 100, 10_000])
def test_topk_keeps_exactly_k_per_movie_or_all(tmp_path, k):
    rng = np.random.default_rng(k)
    corr = random_corr(rng, (3, 10, 5, 4))  # 200 sites per movie
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid_for((5, 4)))
    sp, stats = sparsify_to(tmp_path, src, SparsifyConfig(method="topk", k=k))
    for m in range(3):
        coords, feats = read_movie(sp, m)
        assert len(coords) == min(k, 200)
        kept = to_dense(coords, feats, (10, 5, 4))
        p = power(corr[m])
        mask = kept != 0
        if k < 200:  # every kept site is at least as strong as every dropped one
            assert p[mask].min() >= p[~mask].max()
    assert stats.summary()["active_sites_min"] == stats.summary()["active_sites_max"] == min(k, 200)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=3, max_size=4).map(tuple),
    k=st.integers(1, 400),
    levels=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_topk_property(shape, k, levels, seed):
    # few distinct levels make many ties at the k-th value
    rng = np.random.default_rng(seed)
    corr = (
        rng.integers(0, levels, size=shape) * np.exp(1j * rng.uniform(0, 6, size=shape))
    ).astype(np.complex64)
    mask = topk_mask(corr, k)
    assert mask.shape == corr.shape
    assert mask.sum() == min(k, corr.size)
    p = power(corr)
    if 0 < mask.sum() < corr.size:
        assert p[mask].min() >= p[~mask].max()
    np.testing.assert_array_equal(mask, topk_mask(corr, k))  # deterministic


def test_topk_ties_are_deterministic():
    corr = np.ones((2, 3, 3), dtype=np.complex64)
    mask = topk_mask(corr, 4)
    assert mask.sum() == 4
    assert list(np.flatnonzero(mask)) == [0, 1, 2, 3]  # earliest sites first
    corr[1, 2, 2] = 2
    assert topk_mask(corr, 1).ravel()[17]


def test_config_refuses_bad_combinations():
    with pytest.raises(UsageError, match="needs --k"):
        SparsifyConfig(method="topk")
    with pytest.raises(UsageError, match="at least 1"):
        SparsifyConfig(method="topk", k=0)
    with pytest.raises(UsageError, match="only to --method topk"):
        SparsifyConfig(method="threshold", k=5)
    with pytest.raises(UsageError, match=">= 0"):
        SparsifyConfig(threshold=-1)
    with pytest.raises(UsageError, match="probability cutoff"):
        SparsifyConfig(method="mask", threshold=1.5)
    assert SparsifyConfig().resolved(2).threshold == 0.10
    assert SparsifyConfig().resolved(3).threshold == 0.25
    assert SparsifyConfig(method="mask").resolved(3).threshold == 0.5


# ---------------------------------------------------------------------------
# Truth: the low-resolution mask and the fraction of bubble pixels kept
# ---------------------------------------------------------------------------


def test_kept_bubble_fraction_on_a_hand_made_case(tmp_path):
    grid = Grid(("z", "x"), (4, 5), (1e-3, -2e-4), (1e-4, 1e-4), 1000.0)
    corr = np.zeros((1, 3, 4, 5), dtype=np.complex64)
    corr[0, 0, 1, 2] = 1.0  # active (power 1)
    corr[0, 1, 3, 4] = 0.5j  # active (power 0.25)
    corr[0, 2, 0, 0] = 0.2  # inactive (power 0.04)
    corr[0, 2, 2, 2] = 0.9  # active, but no bubble there
    pix = np.array(
        [
            [1.0, 2.0],  # frame 0, pixel (1, 2): kept
            [1.3, 1.8],  # frame 0, rounds to (1, 2) again: the same site, counted once
            [3.4, 3.6],  # frame 1, rounds to (3, 4): kept
            [0.2, -0.3],  # frame 2, rounds to (0, 0): not kept
            [-0.6, 1.0],  # frame 2, outside the grid: left out
            [2.0, 2.0],  # frame 5, outside the movie: left out
        ]
    )
    frames = np.array([0, 0, 1, 2, 2, 5], dtype=np.int32)
    positions = grid.to_position(pix)
    sites = truth_sites(positions, frames, grid, 3)
    assert sorted(sites) == sorted(
        np.ravel_multi_index(([0, 1, 2], [1, 3, 0], [2, 4, 0]), (3, 4, 5))
    )
    mask = truth_mask(positions, frames, grid, 3)
    assert mask.sum() == 3 and mask[0, 1, 2] and mask[1, 3, 4] and mask[2, 0, 0]

    truth = [TruthMovie(positions, frames, np.arange(6))]
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid, truth=truth)
    sp, stats = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.1))
    s = stats.summary()
    assert s["active_sites_mean"] == 3
    assert s["truth_sites"] == 3
    assert s["kept_bubble_fraction"] == pytest.approx(2 / 3)
    assert list(sp.group["truth_sites_kept"][:]) == [2]
    # a lower threshold keeps the third one too
    _, stats = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.01))
    assert stats.summary()["kept_bubble_fraction"] == 1.0


def test_no_truth_gives_null_fraction(tmp_path):
    corr = random_corr(np.random.default_rng(0), (2, 4, 3, 3))
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid_for((3, 3)))
    sp, stats = sparsify_to(tmp_path, src, SparsifyConfig())
    assert stats.summary()["kept_bubble_fraction"] is None
    assert stats.summary()["truth_sites"] is None
    assert "truth_sites" not in sp.group


# ---------------------------------------------------------------------------
# Empty movies and bad input
# ---------------------------------------------------------------------------


def test_empty_movie_gives_an_empty_valid_entry_and_a_warning(tmp_path, caplog):
    corr = np.zeros((3, 4, 3, 3), dtype=np.complex64)
    corr[0, 1, 1, 1] = 1
    corr[2, 3, 2, 0] = 1j
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid_for((3, 3)))
    logger = logging.getLogger("ulmtools")
    previous = logger.propagate
    logger.propagate = True  # the CLI's setup() turns it off; caplog listens at the root
    try:
        with caplog.at_level(logging.WARNING, logger="ulmtools"):
            sp, stats = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.5))
    finally:
        logger.propagate = previous
    assert "movie 1 has no active site" in caplog.text
    assert list(sp.array("offsets")[:]) == [0, 1, 1, 2]
    coords, feats = read_movie(sp, 1)
    assert coords.shape == (0, 3) and feats.shape == (0, 2)
    assert not to_dense(coords, feats, (4, 3, 3)).any()
    assert stats.summary()["empty_movies"] == 1
    assert stats.summary()["active_sites_min"] == 0


def test_all_movies_empty(tmp_path):
    src = tmp_path / "in.zarr"
    write_image_store(src, np.zeros((2, 3, 2, 2), np.complex64), grid_for((2, 2)))
    sp, stats = sparsify_to(tmp_path, src, SparsifyConfig())
    assert sp.array("coords").shape == (0, 3)
    assert list(sp.array("offsets")[:]) == [0, 0, 0]
    assert stats.summary()["active_sites_max"] == 0


def test_image_store_without_corr_or_with_wrong_shape_is_refused(tmp_path):
    g = grid_for((4, 4))
    path = tmp_path / "iq.zarr"
    with create_store(path, "image", provenance=[], grid=g) as root:
        root.create_array("iq", shape=(1, 2, 4, 4), dtype="complex64")
    with pytest.raises(InputError, match="no 'corr' array"):
        sparsify_to(tmp_path, path, SparsifyConfig())
    path2 = tmp_path / "bad.zarr"
    with create_store(path2, "image", provenance=[], grid=g) as root:
        root.create_array("corr", shape=(1, 2, 4, 5), dtype="complex64")
    with pytest.raises(InputError, match="expected \\(movie, t, z, x\\)"):
        sparsify_to(tmp_path, path2, SparsifyConfig())
    path3 = tmp_path / "int.zarr"
    with create_store(path3, "image", provenance=[], grid=g) as root:
        root.create_array("corr", shape=(1, 2, 4, 4), dtype="int16")
    with pytest.raises(InputError, match="dtype int16"):
        sparsify_to(tmp_path, path3, SparsifyConfig())


def test_real_valued_correlation_is_accepted(tmp_path):
    corr = np.random.default_rng(1).normal(size=(1, 3, 4, 4)).astype(np.float32)
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid_for((4, 4)))
    sp, _ = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.5))
    coords, feats = read_movie(sp, 0)
    assert np.all(feats[:, 1] == 0)
    np.testing.assert_array_equal(
        to_dense(coords, feats, (3, 4, 4)).real, np.where(corr[0] ** 2 > 0.5, corr[0], 0)
    )


# ---------------------------------------------------------------------------
# Synthetic movies: a 3D case and the paper's order of magnitude
# ---------------------------------------------------------------------------


def test_synthetic_3d_store_round_trip(tmp_path):
    cfg = SyntheticConfig(movies=2, frames=16, shape=(8, 8, 8), sigma=(0.7, 1.2, 1.2), bubbles=4)
    src = tmp_path / "s3.zarr"
    write_synthetic_store(src, cfg)
    store = open_store(src, "image")
    sp, stats = sparsify_to(tmp_path, src, SparsifyConfig())
    assert stats.threshold == 0.25
    corr = store.array("corr")[:]
    for m in range(2):
        coords, feats = read_movie(sp, m)
        assert coords.shape[1] == 4
        np.testing.assert_array_equal(
            to_dense(coords, feats, corr.shape[1:]), np.where(power(corr[m]) > 0.25, corr[m], 0)
        )
    s = stats.summary()
    assert 0 < s["active_fraction"] < 0.5
    assert s["kept_bubble_fraction"] is not None and s["kept_bubble_fraction"] > 0.5


def test_synthetic_2d_counts_match_the_paper_scale(tmp_path):
    # 5 bubbles, 512 frames of 32 x 32, threshold 0.10: the paper's 2D setting gave
    # about 21 k - 90 k sites over its thresholds; the synthetic PSF should land there.
    src = tmp_path / "s2.zarr"
    write_synthetic_store(src, SyntheticConfig(movies=1, frames=512))
    _, stats = sparsify_to(tmp_path, src, SparsifyConfig())
    assert 15_000 < stats.summary()["active_sites_mean"] < 90_000
    assert stats.summary()["kept_bubble_fraction"] > 0.9


def test_sparse_store_kind_is_validated(tmp_path):
    src = tmp_path / "in.zarr"
    write_image_store(src, random_corr(np.random.default_rng(0), (1, 2, 2, 2)), grid_for((2, 2)))
    with pytest.raises(InputError, match="this needs a sparse store"):
        open_sparse(src)
    bare = tmp_path / "bare.zarr"
    with create_store(bare, "sparse", provenance=[], grid=grid_for((2, 2))) as g:
        zarr.create_array(g.store, name="coords", shape=(0, 3), dtype="int32")
        zarr.create_array(g.store, name="feats", shape=(0, 2), dtype="float32")
        zarr.create_array(g.store, name="offsets", shape=(1,), dtype="int64")
    with pytest.raises(InputError, match="'shape' attribute"):
        open_sparse(bare)


@pytest.mark.parametrize("rows", [1, 7, 1 << 20])
def test_truth_rows_read_in_blocks_match_per_movie_reads(tmp_path, rows):
    from ulmtools.sparsify.core import _TruthRows
    from ulmtools.truth import Truth

    src = tmp_path / "s.zarr"
    write_synthetic_store(src, SyntheticConfig(movies=5, frames=6, shape=(8, 8), bubbles=2))
    truth = Truth(open_store(src))
    reader = _TruthRows(truth, rows=rows)
    for m in [0, 1, 2, 4, 3, 0]:  # out of order too
        positions, frames = reader(m)
        tm = truth.movie(m, with_tracks=False)
        np.testing.assert_array_equal(positions, tm.positions)
        np.testing.assert_array_equal(frames, tm.frames)


# ---------------------------------------------------------------------------
# Complex noise on corr before selection (--corr-noise)
# ---------------------------------------------------------------------------


def test_corr_noise_has_the_asked_deviation_and_is_seeded_per_movie(tmp_path):
    rng = np.random.default_rng(11)
    corr = random_corr(rng, (3, 16, 20, 20), scale=0.3)
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid_for((20, 20)))
    sigma = 0.25
    cfg = SparsifyConfig(threshold=0.0, corr_noise=sigma, seed=7)
    sp, _ = sparsify_to(tmp_path, src, cfg)
    again, _ = sparsify_to(tmp_path, src, cfg)
    other, _ = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.0, corr_noise=sigma, seed=8))
    for m in range(3):
        coords, feats = read_movie(sp, m)
        noisy = to_dense(coords, feats, corr.shape[1:])
        resid = noisy - corr[m]
        # every site kept (threshold 0): the residual is the noise, N(0, sigma) per part
        assert len(coords) == corr[m].size
        for part in (resid.real, resid.imag):
            assert abs(part.std() - sigma) < 0.01 and abs(part.mean()) < 0.01
        np.testing.assert_array_equal(feats, read_movie(again, m)[1])
        assert not np.array_equal(feats, read_movie(other, m)[1])
    # movie m's noise is default_rng([seed, m])'s, whichever worker draws it
    assert not np.allclose(to_dense(*read_movie(sp, 0), corr.shape[1:]) - corr[0],
                           to_dense(*read_movie(sp, 1), corr.shape[1:]) - corr[1])  # fmt: skip


def test_corr_noise_zero_changes_nothing_and_a_negative_one_is_refused(tmp_path):
    rng = np.random.default_rng(12)
    corr = random_corr(rng, (1, 8, 6, 6))
    src = tmp_path / "in.zarr"
    write_image_store(src, corr, grid_for((6, 6)))
    plain, _ = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.2))
    zero, _ = sparsify_to(tmp_path, src, SparsifyConfig(threshold=0.2, corr_noise=0.0, seed=1))
    for a, b in zip(read_movie(plain, 0), read_movie(zero, 0)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UsageError, match="--corr-noise"):
        SparsifyConfig(corr_noise=-0.1)
    with pytest.raises(UsageError, match="--corr-noise"):
        SparsifyConfig(corr_noise=float("nan"))
