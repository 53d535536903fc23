"""Memory model of the write passes: crops held while tiles are cut, and passes that fit.

Model: tiles are cut in raster order; a write task's crops are held from its first
tile until its last tile is cut (then it is written). With ids in raster order (as
segmentation tools number them) a write task closes within a tile row, so a pass
holds about one tile row of crops whatever the output size; with rows in random
order every write task stays open until the last tiles, so a pass holds all its
crops. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._study_plan import StudyPlan
from ._tile_plan import TilePlan

__all__ = ["held_bytes", "plan_passes"]


def held_bytes(
    plan: StudyPlan | TilePlan,
    groups: Sequence[range],
    unit: int,
    n: int,
    row_bytes: int,
    first_row: int = 0,
) -> np.ndarray:
    """Bytes of crops held after each tile when ``groups`` are cut in one pass.

    Parameters
    ----------
    plan
        The tile plan.
    groups
        Write tasks, each a range of output units.
    unit
        Rows per output unit (chunk or shard).
    n
        Number of rows.
    row_bytes
        Bytes of one row (crop, and mask crop if written).
    first_row
        Store row of the plan's first row; rows before it are in the store already.

    Returns
    -------
    numpy.ndarray
        Per tile, the bytes of crops cut and not yet written; the peak is what the
        pass holds.
    """
    n_tiles = plan.n_tiles
    diff = np.zeros(n_tiles + 1, dtype=np.int64)
    for g in groups:
        r0, r1 = max(0, g.start * unit - first_row), min(n, g.stop * unit) - first_row
        tiles = plan.tile[plan.perm[r0:r1]]
        diff += np.bincount(tiles, minlength=n_tiles + 1) * row_bytes
        diff[int(tiles.max()) + 1] -= (r1 - r0) * row_bytes
    return np.cumsum(diff)[:n_tiles]


def plan_passes(
    plan: StudyPlan | TilePlan,
    groups: Sequence[range],
    unit: int,
    n: int,
    row_bytes: int,
    memory_limit: int,
    first_row: int = 0,
) -> list[tuple[list[range], int]]:
    """Group the write tasks into passes whose crops held stay within ``memory_limit``.

    Write tasks are taken in order and a pass is closed when adding the next one
    would make the crops held (:func:`held_bytes`) exceed the limit; a single write
    task over the limit gets a pass of its own.

    Returns
    -------
    list
        ``(write tasks, peak bytes held)`` per pass, the write tasks in order.
    """
    n_tiles = plan.n_tiles
    out: list[tuple[list[range], int]] = []
    cur: list[range] = []
    held = np.zeros(n_tiles, dtype=np.int64)
    for g in groups:
        add = held_bytes(plan, [g], unit, n, row_bytes, first_row)
        if cur and int((held + add).max()) > memory_limit:
            out.append((cur, int(held.max())))
            cur, held = [], np.zeros(n_tiles, dtype=np.int64)
        cur.append(g)
        held += add
    if cur:
        out.append((cur, int(held.max())))
    return out
