"""Grids convert between metres and pixels without losing units or alignment."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ulmtools.errors import InputError
from ulmtools.grid import Grid

steps = st.floats(1e-6, 1e-3)
origins = st.floats(-1e-2, 1e-2)
sizes = st.integers(1, 64)


@given(st.lists(st.tuples(sizes, origins, steps), min_size=2, max_size=3), st.integers(1, 8))
def test_index_position_round_trip_and_refinement(axes, factor) -> None:
    names = ("z", "x", "y")[: len(axes)]
    grid = Grid(names, *(tuple(v) for v in zip(*axes)))
    idx = np.array([[n - 1 for n, _, _ in axes], [0] * len(axes)], dtype=float)
    pos = grid.to_position(idx)
    np.testing.assert_allclose(grid.to_index(pos), idx, atol=1e-9)
    fine = grid.refined(factor)
    assert fine.shape == tuple(n * factor for n, _, _ in axes)
    # Outer edges of the field of view are the same on both grids.
    for i in range(len(axes)):
        lo = grid.origin[i] - grid.spacing[i] / 2
        flo = fine.origin[i] - fine.spacing[i] / 2
        hi = lo + grid.shape[i] * grid.spacing[i]
        fhi = flo + fine.shape[i] * fine.spacing[i]
        assert flo == pytest.approx(lo, abs=1e-12) and fhi == pytest.approx(hi, abs=1e-12)
    # A coarse pixel centre is the mean of its fine children's centres.
    centre = fine.to_position(np.full((1, len(axes)), (factor - 1) / 2))
    np.testing.assert_allclose(centre[0], grid.origin, atol=1e-12)


def test_attrs_round_trip_and_malformed() -> None:
    grid = Grid(("z", "x"), (4, 5), (1e-3, 0.0), (1e-4, 2e-4), frame_rate=750.0)
    assert Grid.from_attrs(grid.to_attrs()) == grid
    with pytest.raises(InputError, match="malformed"):
        Grid.from_attrs({"axes": ["z"], "shape": [1]})
    with pytest.raises(InputError, match="positive"):
        Grid(("z",), (1,), (0.0,), (-1.0,))
    with pytest.raises(InputError, match="unit"):
        Grid.from_attrs({**grid.to_attrs(), "unit": "millimetre"})
