"""Tiles, windows and write units of ``extract_instances`` (the Dask tasks and their plan).

``Plan`` maps instances to rows, windows and tiles (pure NumPy). ``tile_tasks`` builds one
delayed ``cut_tile`` per tile, fed with the whole Dask blocks its box needs;
``write_units`` gathers whole output units from tile results, writes them and flags them
done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from ._geometry import crop_windows, pad_box, window_starts

__all__ = [
    "Blocks",
    "Plan",
    "assemble_crops",
    "needed",
    "passes",
    "tile_tasks",
    "write_units",
]


# --------------------------------------------------------------------------- tasks


class Blocks:
    """The Dask blocks of an array, to hand a task exactly the blocks a region needs.

    Tasks receive whole blocks (each stored chunk is then read and decoded once per
    pass, and shared by every tile that needs it) instead of slices that Dask would
    push down into separate reads of the same chunks.
    """

    def __init__(self, array: da.Array) -> None:
        self.blocks = array.to_delayed()
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = array.dtype
        self.edges = [np.concatenate(([0], np.cumsum(c))).astype(np.int64) for c in array.chunks]

    def cover(self, ys: slice, xs: slice) -> list[tuple[tuple[int, ...], Any]]:
        """Return ``(global start of block, block)`` for every block meeting ``[ys, xs]``."""
        ey, ex = self.edges[-2], self.edges[-1]
        by0 = int(np.searchsorted(ey, ys.start, side="right")) - 1
        by1 = int(np.searchsorted(ey, ys.stop, side="left"))
        bx0 = int(np.searchsorted(ex, xs.start, side="right")) - 1
        bx1 = int(np.searchsorted(ex, xs.stop, side="left"))
        out = []
        lead = self.blocks.shape[:-2]
        for idx in np.ndindex(*lead, by1 - by0, bx1 - bx0):
            full = (*idx[:-2], idx[-2] + by0, idx[-1] + bx0)
            start = tuple(int(self.edges[d][i]) for d, i in enumerate(full))
            out.append((start, self.blocks[full]))
        return out


def fill(
    out: np.ndarray, box_yx: tuple[int, int], pieces: Sequence[tuple[tuple[int, ...], Any]]
) -> None:
    """Copy the parts of ``pieces`` (blocks at global starts) that fall inside ``out``.

    ``out`` covers all leading axes and the y/x box starting at global ``box_yx``.
    """
    by, bx = box_yx
    h, w = out.shape[-2:]
    for start, block in pieces:
        block = np.asarray(block)
        y0, x0 = start[-2], start[-1]
        ya, yb = max(y0, by), min(y0 + block.shape[-2], by + h)
        xa, xb = max(x0, bx), min(x0 + block.shape[-1], bx + w)
        if ya >= yb or xa >= xb:
            continue
        lead = tuple(slice(s, s + n) for s, n in zip(start[:-2], block.shape[:-2], strict=True))
        out[(*lead, slice(ya - by, yb - by), slice(xa - bx, xb - bx))] = block[
            ..., ya - y0 : yb - y0, xa - x0 : xb - x0
        ]


def cut_tile(
    image_pieces: list,
    mask_pieces: list,
    shapes: tuple[tuple[int, ...], Any, tuple[int, ...], Any],
    box: tuple[int, int, int, int],
    padded: bool,
    starts: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    diameter: int,
    remove_background: bool,
    with_mask: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Cut the windows of one tile out of the blocks covering its box.

    The box (zero-padded where it reaches past the image edge) is assembled from
    the blocks with one copy per block, then all windows are cut in one step.
    """
    y0, y1, x0, x1 = box
    lead, dtype, mlead, mdtype = shapes
    alloc = np.zeros if padded else np.empty
    image = alloc((*lead, y1 - y0, x1 - x0), dtype=dtype)
    fill(image, (y0, x0), image_pieces)
    mask = None
    if remove_background or with_mask:
        mask = alloc((*mlead, y1 - y0, x1 - x0), dtype=mdtype)
        fill(mask, (y0, x0), mask_pieces)
    crops, mcrops = crop_windows(
        image,
        mask,
        (y0, x0),
        starts,
        labels,
        diameter,
        remove_background=remove_background,
        with_mask=with_mask,
    )
    return rows, crops, mcrops


def assemble(
    r0: int, r1: int, shape: tuple, dtype: Any, mshape: tuple | None, mdtype: Any, parts: Sequence
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gather rows ``[r0, r1)`` from tile results ``(rows, crops, mask crops)``."""
    buf = np.empty((r1 - r0, *shape), dtype=dtype)
    mbuf = None if mshape is None else np.empty((r1 - r0, *mshape), dtype=mdtype)
    for rows, crops, mcrops in parts:
        lo, hi = np.searchsorted(rows, [r0, r1])
        buf[rows[lo:hi] - r0] = crops[lo:hi]
        if mbuf is not None:
            mbuf[rows[lo:hi] - r0] = mcrops[lo:hi]
    return buf, mbuf


def assemble_crops(r0: int, r1: int, shape: tuple, dtype: Any, *parts: Any) -> np.ndarray:
    return assemble(r0, r1, shape, dtype, None, None, parts)[0]


def write_units(
    image: zarr.Array,
    mask: zarr.Array | None,
    progress: zarr.Array,
    units: range,
    r0: int,
    r1: int,
    *parts: Any,
) -> range:
    """Write rows ``[r0, r1)`` (whole units: chunks or shards), then flag ``units`` done."""
    mshape = None if mask is None else mask.shape[1:]
    mdtype = None if mask is None else mask.dtype
    buf, mbuf = assemble(r0, r1, image.shape[1:], image.dtype, mshape, mdtype, parts)
    image[r0:r1] = buf
    if mask is not None:
        mask[r0:r1] = mbuf
    progress[units.start : units.stop] = 1
    return units


# --------------------------------------------------------------------------- planning


class Plan:
    """Rows, windows and tile membership of every instance (pure NumPy)."""

    def __init__(
        self,
        ids: np.ndarray,
        cents: np.ndarray,
        order: str,
        seed: int,
        diameter: int,
        edges_y: np.ndarray,
        edges_x: np.ndarray,
        image_yx: tuple[int, int],
    ) -> None:
        n = ids.size
        self.perm = np.arange(n) if order == "id" else np.random.default_rng(seed).permutation(n)
        self.ids = ids
        self.cents = cents
        self.diameter = diameter
        self.image_yx = image_yx
        self.starts = window_starts(cents[:, 1:], diameter)
        ty = np.searchsorted(edges_y, cents[:, 1], side="right") - 1
        tx = np.searchsorted(edges_x, cents[:, 2], side="right") - 1
        self.tile = ty * (len(edges_x) - 1) + tx

    def tiles(self, r0: int, r1: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Tiles of rows ``[r0, r1)``: ``(tile, rows ascending, instance indexes)``."""
        rows = np.arange(r0, r1)
        inst = self.perm[r0:r1]
        tiles = self.tile[inst]
        order = np.argsort(tiles, kind="stable")
        tiles, rows, inst = tiles[order], rows[order], inst[order]
        cut = np.flatnonzero(np.diff(tiles)) + 1
        return [
            (int(t[0]), r, i)
            for t, r, i in zip(
                np.split(tiles, cut), np.split(rows, cut), np.split(inst, cut), strict=True
            )
            if t.size
        ]

    def box(self, inst: np.ndarray) -> tuple[int, int, int, int]:
        """Return the box ``(y0, y1, x0, x1)`` covering the windows of ``inst``."""
        s = self.starts[inst]
        lo, hi = s.min(axis=0), s.max(axis=0) + self.diameter
        return int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])


def tile_tasks(
    plan: Plan,
    image: Blocks,
    mask: Blocks,
    r0: int,
    r1: int,
    remove_background: bool,
    with_mask: bool,
    token: str,
) -> list[tuple[np.ndarray, Any]]:
    """One delayed cut per tile holding rows ``[r0, r1)``; returns ``(rows, task)`` pairs."""
    out = []
    shapes = (image.shape[:-2], image.dtype, mask.shape[:-2], mask.dtype)
    need_mask = remove_background or with_mask
    for t, rows, inst in plan.tiles(r0, r1):
        box = plan.box(inst)
        src, _ = pad_box(plan.image_yx, *box)
        padded = (src[0].stop - src[0].start, src[1].stop - src[1].start) != (
            box[1] - box[0],
            box[3] - box[2],
        )
        task = dask.delayed(cut_tile, pure=False)(
            image.cover(*src),
            mask.cover(*src) if need_mask else [],
            shapes,
            box,
            padded,
            plan.starts[inst],
            plan.ids[inst],
            rows,
            plan.diameter,
            remove_background,
            with_mask,
            dask_key_name=f"zi-cut-{token}-{r0}-{t}",
        )
        out.append((rows, task))
    return out


def needed(tile_tasks: list[tuple[np.ndarray, Any]], a: int, b: int) -> list[Any]:
    return [task for rows, task in tile_tasks if np.any((rows >= a) & (rows < b))]


def passes(todo: np.ndarray, unit_bytes: int, memory_limit: int) -> list[np.ndarray]:
    """Split the units to write into runs of consecutive units within ``memory_limit``."""
    per = max(1, memory_limit // max(1, unit_bytes))
    out: list[np.ndarray] = []
    for run in np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1):
        out.extend(run[i : i + per] for i in range(0, run.size, per) if run.size)
    return out
