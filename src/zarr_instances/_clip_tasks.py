"""Count each object's pixels inside its window (for the clipping report), tile by tile.

Only objects whose bounding box reaches out of their window can lose pixels
(:func:`candidates`, :func:`._windows.may_clip`); for those, one task per tile
assembles the mask box covering their windows from the mask's Dask blocks and
counts, per window, the pixels holding the object's label. Every other object has
all its pixels inside. An extraction writing a store counts the windows it cuts in
the cut tasks themselves (:func:`._tile_tasks.cut_tile`); :func:`clipping` then
counts only the others (``known``).
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
from ._windows import Clipping, may_clip, window_counts

__all__ = ["candidates", "clipping", "count_inside"]


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
    box = np.zeros((windows.n_z, y1 - y0, x1 - x0), dtype=windows.mask_dtype)
    fill(box, (y0, x0), [(s, b) for s, b in zip(starts, blocks, strict=True)])
    return window_counts(
        box,
        (0, y0, x0),
        windows.starts_z,
        windows.starts,
        windows.labels,
        windows.depth,
        windows.diameter,
    )


def candidates(plan: StudyPlan, sums: Sequence[LabelSums]) -> np.ndarray:
    """Whether each instance of ``plan`` may lose pixels: its box reaches out of its window."""
    starts = np.column_stack((plan.starts_z, plan.starts))
    sizes = (plan.depth, plan.diameter, plan.diameter)
    lo = np.concatenate([s.lo for s in sums]).reshape(-1, 3)
    hi = np.concatenate([s.hi for s in sums]).reshape(-1, 3)
    return may_clip(starts, sizes, lo, hi)


def clipping(
    plan: StudyPlan,
    sums: Sequence[LabelSums],
    masks: Sequence[Blocks],
    token: str,
    known: tuple[np.ndarray, np.ndarray] | None = None,
) -> Clipping:
    """Count, for every instance of ``plan``, its pixels inside its window (exact).

    ``sums[s]`` and ``masks[s]`` are the label sums and mask blocks of source ``s``.
    Reads the mask blocks of the tiles holding an instance whose bounding box reaches
    out of its window, and only those (one Dask computation over every source);
    reads nothing when no box does. ``known`` ``(counted, inside)``: per instance,
    whether its pixels inside were counted already (by the cut tasks) and how many;
    those are taken as they are.
    """
    count = np.concatenate([s.count for s in sums])
    inside = count.copy()
    todo = candidates(plan, sums)
    if known is not None:
        counted, got = known
        inside[counted] = got[counted]
        todo &= ~counted
    which = np.flatnonzero(todo)
    if not which.size:
        return Clipping(count, inside)
    graph: dict[Any, Any] = {}
    keys, groups = [], []
    tiles = plan.tile[which]
    for t in np.unique(tiles):
        inst = which[tiles == t]
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
