"""Count each object's pixels inside its window (for the clipping report), tile by tile.

Only objects whose bounding box reaches out of their window can lose pixels
(:func:`._windows.may_clip`); for those, one task per tile assembles the mask box
covering their windows from the mask's Dask blocks and counts, per window, the
pixels holding the object's label. Every other object has all its pixels inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._geometry import LabelSums, pad_box
from ._graph import as_delayed, task_with_parts
from ._schedule import compute
from ._study_plan import StudyPlan
from ._tile_tasks import Blocks, fill
from ._windows import Clipping, may_clip

__all__ = ["clipping", "count_inside"]


@dataclass(frozen=True, eq=False)
class _Windows:
    """The windows of one tile's candidates: mask box, starts, depth, labels."""

    box: tuple[int, int, int, int]
    starts_z: np.ndarray
    starts: np.ndarray
    labels: np.ndarray
    depth: int
    diameter: int
    n_z: int
    mask_dtype: np.dtype


def count_inside(windows: _Windows, starts: list, *blocks: Any) -> np.ndarray:
    """Pixels of each window holding its label; ``blocks`` start at global ``starts``."""
    y0, y1, x0, x1 = windows.box
    nz = windows.n_z
    box = np.zeros((nz, y1 - y0, x1 - x0), dtype=windows.mask_dtype)
    fill(box, (y0, x0), [(s, b) for s, b in zip(starts, blocks, strict=True)])
    d, out = windows.diameter, np.zeros(windows.labels.size, dtype=np.int64)
    labels = windows.labels.astype(box.dtype)
    for k in range(out.size):
        za = max(0, int(windows.starts_z[k]))
        zb = min(nz, int(windows.starts_z[k]) + windows.depth)
        ya, xa = int(windows.starts[k, 0]) - y0, int(windows.starts[k, 1]) - x0
        out[k] = np.count_nonzero(box[za:zb, ya : ya + d, xa : xa + d] == labels[k])
    return out


def clipping(
    plan: StudyPlan, sums: Sequence[LabelSums], masks: Sequence[Blocks], token: str
) -> Clipping:
    """Count, for every instance of ``plan``, its pixels inside its window (exact).

    ``sums[s]`` and ``masks[s]`` are the label sums and mask blocks of source ``s``.
    Reads the mask blocks of the tiles holding an instance whose bounding box reaches
    out of its window, and only those (one Dask computation over every source);
    reads nothing when no box does.
    """
    starts = np.column_stack((plan.starts_z, plan.starts))
    sizes = (plan.depth, plan.diameter, plan.diameter)
    count = np.concatenate([s.count for s in sums])
    lo = np.concatenate([s.lo for s in sums]).reshape(-1, 3)
    hi = np.concatenate([s.hi for s in sums]).reshape(-1, 3)
    candidates = np.flatnonzero(may_clip(starts, sizes, lo, hi))
    inside = count.copy()
    if not candidates.size:
        return Clipping(count, inside)
    graph: dict[Any, Any] = {}
    keys, groups = [], []
    tiles = plan.tile[candidates]
    for t in np.unique(tiles):
        inst = candidates[tiles == t]
        box = plan.box(inst)
        (ys, xs), _ = pad_box(plan.image_yx(int(t)), *box)
        mask = masks[plan.tile_source(int(t))]
        pieces = mask.cover(ys, xs, graph)
        windows = _Windows(
            box,
            plan.starts_z[inst],
            plan.starts[inst],
            plan.ids[inst],
            plan.depth,
            plan.diameter,
            mask.shape[0],
            mask.dtype,
        )
        key = f"zi-clip-{token}-{t}"
        graph[key] = task_with_parts(
            count_inside, (windows, [p[0] for p in pieces]), [p[1] for p in pieces]
        )
        keys.append(key)
        groups.append(inst)
    sources = [m.source for m in masks]
    counts = compute(*as_delayed(f"zi-clip-{token}", graph, keys, sources))
    for inst, got in zip(groups, counts, strict=True):
        inside[inst] = got
    return Clipping(count, inside)
