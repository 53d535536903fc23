"""The memory model of write passes: crops held per tile, passes within the limit."""

from __future__ import annotations

import numpy as np
import pytest

from zarr_instances._geometry import centroids, combine_sums, label_sums, tile_edges
from zarr_instances._pass_memory import held_bytes, plan_passes
from zarr_instances._tile_plan import TilePlan, write_groups
from zarr_instances.testing import make_image_and_mask


@pytest.mark.parametrize("order", ["id", "random"])
def test_passes_bounded_by_crops_held(order):
    # ids in raster order close their write groups tile row by tile row: one pass
    # holds about one tile row of crops whatever the output size; a random order
    # keeps every group open to the end, so a pass holds all its crops.
    _, mask = make_image_and_mask((256, 256), 300, 12, seed=3)
    sums = combine_sums([label_sums(mask)])
    ids, cents = sums.labels, centroids(sums)
    edges = tile_edges([32] * 8, 32)
    plan = TilePlan(ids, cents, order, 0, 12, edges, edges, (256, 256))
    unit, row_bytes = 4, 100
    n_units = -(-ids.size // unit)
    groups = write_groups(np.arange(n_units), 2)
    limit = 40 * unit * row_bytes  # 40 units: about a third of the output
    passes = plan_passes(plan, groups, unit, ids.size, row_bytes, limit)
    assert [g for p, _ in passes for g in p] == groups  # every group once, in order
    for p, peak in passes:
        held = held_bytes(plan, p, unit, ids.size, row_bytes)
        assert peak == held.max() <= limit
    if order == "id":
        assert len(passes) == 1
        assert passes[0][1] < ids.size * row_bytes / 3
    else:  # most groups stay open until late tiles: several passes
        assert len(passes) >= 2
        for p, peak in passes:
            rows = min(ids.size, p[-1].stop * unit) - p[0].start * unit
            assert peak > rows * row_bytes / 2
