"""The tile plan: which tile cuts a window, write tasks of consecutive units."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances._geometry import tile_edges
from zarr_instances._tile_plan import TilePlan, write_groups


@settings(max_examples=60, deadline=None)
@given(
    yx=st.tuples(st.integers(5, 80), st.integers(5, 80)),
    chunks=st.tuples(st.integers(2, 30), st.integers(2, 30)),
    tile=st.integers(1, 40),
    diameter=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_windows_reach_only_into_earlier_tiles(yx, chunks, tile, diameter, seed):
    rng = np.random.default_rng(seed)
    n = 30
    cents = np.column_stack([np.zeros(n), rng.integers(0, yx[0], n), rng.integers(0, yx[1], n)])
    cents = cents.astype(np.int64)
    edges_y = tile_edges(_blocks(yx[0], chunks[0]), tile)
    edges_x = tile_edges(_blocks(yx[1], chunks[1]), tile)
    plan = TilePlan(np.arange(1, n + 1), cents, "id", 0, diameter, edges_y, edges_x, yx)
    n_tx = len(edges_x) - 1
    for k in range(n):
        ys, xs = plan.rect(int(plan.tile[k]))
        y0, x0 = plan.starts[k]
        last_y = min(y0 + diameter - 1, yx[0] - 1)
        last_x = min(x0 + diameter - 1, yx[1] - 1)
        # the window's last pixel (clipped to the image) lies in its tile ...
        assert ys.start <= last_y < ys.stop
        assert xs.start <= last_x < xs.stop
        # ... so the window leaves its tile only upwards and leftwards
        assert y0 + diameter <= ys.stop or ys.stop == yx[0]
        assert x0 + diameter <= xs.stop or xs.stop == yx[1]
    ty, tx = np.divmod(plan.tile, n_tx)
    assert (ty < len(edges_y) - 1).all()
    assert (tx < n_tx).all()


def _blocks(n: int, chunk: int) -> list[int]:
    """Block sizes of an axis of ``n`` pixels in chunks of ``chunk`` (the last may be short)."""
    return [min(chunk, n - a) for a in range(0, n, chunk)]


def test_write_groups_split_runs():
    todo = np.array([0, 1, 2, 3, 4, 7, 8, 10])
    assert write_groups(todo, 2) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
        range(7, 9),
        range(10, 11),
    ]
    assert write_groups(np.zeros(0, dtype=np.int64), 3) == []
