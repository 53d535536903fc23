"""Tiles, windows and write units of ``extract_instances`` (the Dask tasks and their plan).

``Plan`` maps instances to rows, windows and tiles (pure NumPy). ``tile_tasks`` adds one
``cut_tile`` task per tile to a task graph, fed with the Dask blocks its box needs;
``write_units`` gathers whole output units from tile results, writes them and flags them
done. The tasks are written as a plain Dask task graph (a dict, see Dask's "custom
graphs") rather than with ``dask.delayed``, whose per-call graph merging cost seconds
on large images.
"""

from __future__ import annotations

import itertools
import mmap
import operator
from collections.abc import Hashable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from numcodecs import Blosc

from ._geometry import crop_windows, pad_box, window_starts
from ._write import flag_done, write_rows

__all__ = [
    "Blocks",
    "Handoff",
    "Packed",
    "Plan",
    "Static",
    "as_delayed",
    "assemble_crops",
    "copy_regions",
    "plan_passes",
    "take",
    "task_with_parts",
    "tile_tasks",
    "write_groups",
    "write_units",
]

# Crops that wait for other tiles before they can be written are held compressed
# (Blosc-LZ4, level 1, no shuffle: measured on crops at ~1.9 GB/s to encode and
# ~6.6 GB/s to decode on one core, ~2.5x smaller; see BENCHMARKS.md).
_PACK_CODEC = Blosc(cname="lz4", clevel=1, shuffle=Blosc.NOSHUFFLE)
_MMAP_ABOVE = 64 * 1024


class Packed:
    """An array held compressed until it is needed (:meth:`unpack`).

    The compressed bytes (beyond 64 KiB) get a memory mapping of their own: packed
    parts are many, live across a tile row and die in another order than they were
    made, so in the heap they would leave holes between the large short-lived
    buffers of the tile cuts (measured: peak RSS at 16k 241-247 -> 231-240 MiB).
    """

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, array: np.ndarray) -> None:
        self.shape = array.shape
        self.dtype = array.dtype
        self.data = _own_mapping(_PACK_CODEC.encode(np.ascontiguousarray(array)))

    def __reduce__(self) -> tuple[Any, ...]:  # to another process: plain bytes
        return _packed, (self.shape, self.dtype, bytes(self.data))

    def unpack(self) -> np.ndarray:
        """Return the array."""
        out = np.empty(self.shape, dtype=self.dtype)
        if out.size:
            _PACK_CODEC.decode(self.data, out=out)
        return out

    def __sizeof__(self) -> int:  # what Dask counts as held
        return object.__sizeof__(self) + len(self.data)


def _own_mapping(data: bytes) -> bytes | mmap.mmap:
    if len(data) < _MMAP_ABOVE:
        return data
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


def _packed(shape: tuple[int, ...], dtype: Any, data: bytes) -> Packed:
    out = Packed.__new__(Packed)
    out.shape, out.dtype, out.data = shape, dtype, _own_mapping(data)
    return out


def _unpacked(a: Any) -> Any:
    return a.unpack() if isinstance(a, Packed) else a


class Handoff:
    """Results for several tasks, each taken once by its task (and then freed).

    With Dask's local schedulers a task result is held until every task reading it
    is done. A task that hands different results to several tasks returns a
    ``Handoff``; each reader takes its item (:func:`take`, inlined in its own task)
    and the item is freed with that reader, not with the last one. This replaces a
    small task per item (a ``getitem``), whose bookkeeping in Dask costs ~2 KiB each.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Any]) -> None:
        self._items: list[Any] = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, i: int) -> Any:
        """Return item ``i``, leaving it for other readers."""
        return self._items[i]

    def take(self, i: int) -> Any:
        """Return item ``i`` and drop it (each item is taken once)."""
        item = self._items[i]
        if item is _TAKEN:
            msg = f"item {i} of this hand-off was taken already"
            raise RuntimeError(msg)
        self._items[i] = _TAKEN
        return item


_TAKEN = object()


def take(handoff: Handoff, i: int) -> Any:
    """Take item ``i`` of ``handoff`` (a task argument: ``(take, key, i)``)."""
    return handoff.take(i)


class Static:
    """Task arguments that hold no keys: Dask passes them on without looking inside.

    Dask turns every list, tuple and nested task of a task's arguments into objects
    of its own (a cut or write task of a large image: ~13 KiB each); wrapped, they
    are one value.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return Static, (self.value,)


def task_with_parts(func: Any, args: tuple, refs: Sequence[Any]) -> tuple:
    """Return the task ``func(*args, *parts)``, where ``refs`` say where the parts come from.

    A ref is a key (the part is that task's result) or ``(getter, key, i)`` with a
    callable ``getter``, e.g. ``(take, cut, i)``. Only the keys are visible to Dask,
    as the task's arguments.
    """
    keys, getters = [], []
    for ref in refs:
        if isinstance(ref, tuple) and callable(ref[0]):  # not a block key (a tuple)
            getter, key, i = ref
            keys.append(key)
            getters.append((getter, i))
        else:
            keys.append(ref)
            getters.append(None)
    return (_call_with_parts, Static((func, args, getters)), *keys)


def _call_with_parts(spec: Static, *values: Any) -> Any:
    func, args, getters = spec.value
    parts = [v if g is None else g[0](v, g[1]) for v, g in zip(values, getters, strict=True)]
    return func(*args, *parts)


def _cut_from_pieces(starts: Sequence[tuple[int, ...]], n_image: int, *rest: Any) -> Any:
    """``cut_tile`` with its image and mask pieces given as starts and values."""
    split = len(rest) - len(starts)
    args, values = rest[:split], rest[split:]
    pieces = [[s, v] for s, v in zip(starts, values, strict=True)]
    return cut_tile(pieces[:n_image], pieces[n_image:], *args)


# --------------------------------------------------------------------------- tasks


class Blocks:
    """The Dask blocks of an array, to hand a task exactly the blocks a region needs.

    Tasks receive whole blocks (each stored chunk is then read and decoded once per
    pass, and shared by every tile that needs it) instead of slices that Dask would
    push down into separate reads of the same chunks.
    """

    def __init__(self, array: da.Array) -> None:
        blocks = array.to_delayed()
        self.source = blocks.flat[0]  # carries the graph of every block
        self.keys = np.empty(blocks.shape, dtype=object)
        for idx in np.ndindex(*blocks.shape):
            self.keys[idx] = blocks[idx].key
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = array.dtype
        self.edges = [np.concatenate(([0], np.cumsum(c))).astype(np.int64) for c in array.chunks]

    def cover(
        self,
        ys: slice,
        xs: slice,
        graph: dict[Hashable, Any],
        own: tuple[slice, slice] | None = None,
        name: str = "zi-piece",
        copies: dict[Hashable, tuple[str, list[Any]]] | None = None,
        pack: bool = False,
    ) -> list[list[Any]]:
        """Return ``[global start, key or task]`` for every block meeting ``[ys, xs]``.

        A block inside ``own`` (the tile's rectangle) is passed whole (its key);
        from any other block only the part inside ``[ys, xs]`` is passed, copied by a
        small task ``{name}-{i}`` added to ``graph``, so that the decoded block need
        not outlive the tile it belongs to. ``own=None`` passes every block whole.

        With ``copies``, the part is instead added to ``copies[block key]`` =
        ``(task key, regions)`` and passed as ``(take, task key, index)``: one task
        per block then copies all its regions (see :func:`copy_regions`).

        With ``pack``, a copy from a block above ``own`` (made a tile row before it is
        used) is held compressed (:class:`Packed`).
        """
        ey, ex = self.edges[-2], self.edges[-1]
        by0 = int(np.searchsorted(ey, ys.start, side="right")) - 1
        by1 = int(np.searchsorted(ey, ys.stop, side="left"))
        bx0 = int(np.searchsorted(ex, xs.start, side="right")) - 1
        bx1 = int(np.searchsorted(ex, xs.stop, side="left"))
        out: list[list[Any]] = []
        lead = self.keys.shape[:-2]
        for k, idx in enumerate(np.ndindex(*lead, by1 - by0, bx1 - bx0)):
            by, bx = idx[-2] + by0, idx[-1] + bx0
            key = self.keys[(*idx[:-2], by, bx)]
            start = tuple(int(self.edges[d][i]) for d, i in enumerate(idx[:-2]))
            y0, y1, x0, x1 = int(ey[by]), int(ey[by + 1]), int(ex[bx]), int(ex[bx + 1])
            if own is None or _within(own, y0, y1, x0, x1):
                out.append([(*start, y0, x0), key])
                continue
            ya, yb = max(y0, ys.start), min(y1, ys.stop)
            xa, xb = max(x0, xs.start), min(x1, xs.stop)
            local = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
            packed = pack and own is not None and y1 <= own[0].start
            if copies is None:
                graph[f"{name}-{k}"] = (_piece, key, local, packed)
                out.append([(*start, ya, xa), f"{name}-{k}"])
                continue
            holder, regions = copies.setdefault(key, (f"{name}-b{len(copies)}", []))
            regions.append((local, packed))
            out.append([(*start, ya, xa), (take, holder, len(regions) - 1)])
        return out


def as_delayed(
    name: str, graph: dict[Hashable, Any], keys: Sequence[Hashable], *inputs: Blocks
) -> list[Delayed]:
    """Return ``Delayed`` objects for ``keys`` of ``graph`` (tasks reading ``inputs``)."""
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=[b.source for b in inputs])
    return [Delayed(k, hlg, layer=name) for k in keys]


def _within(rect: tuple[slice, slice], y0: int, y1: int, x0: int, x1: int) -> bool:
    ys, xs = rect
    return ys.start <= y0 and y1 <= ys.stop and xs.start <= x0 and x1 <= xs.stop


def _piece(block: np.ndarray, yx: tuple[slice, slice], pack: bool = False) -> Any:
    """Copy ``block[..., ys, xs]`` (so that the whole block can be freed), packed or not."""
    part = block[(..., *yx)]
    return Packed(part) if pack else np.array(part)


def copy_regions(block: np.ndarray, regions: Sequence[tuple[tuple[slice, slice], bool]]) -> Handoff:
    """Copy ``block[..., ys, xs]`` for each ``(region, pack)``, one per tile needing one."""
    return Handoff([_piece(block, yx, pack) for yx, pack in regions])


def fill(
    out: np.ndarray, box_yx: tuple[int, int], pieces: Sequence[tuple[tuple[int, ...], Any]]
) -> None:
    """Copy the parts of ``pieces`` (blocks at global starts) that fall inside ``out``.

    ``out`` covers all leading axes and the y/x box starting at global ``box_yx``.
    """
    by, bx = box_yx
    h, w = out.shape[-2:]
    for start, block in pieces:
        block = np.asarray(_unpacked(block))
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
    segments: Sequence[tuple[int, int]],
    pack: Sequence[bool] = (),
    handoff: bool = False,
) -> tuple[tuple[np.ndarray, Any, Any], ...] | Handoff:
    """Cut the windows of one tile out of the blocks covering its box.

    The box (zero-padded where it reaches past the image edge) is assembled from
    the blocks with one copy per block, then the windows of each segment
    ``[lo, hi)`` of ``rows`` are cut in one step into arrays of their own (so that
    a segment can be freed while others are still needed). Returns
    ``(rows, crops, mask crops)`` per segment; the crops of segment ``k`` are
    :class:`Packed` (compressed) where ``pack[k]`` is true; as a :class:`Handoff`
    with ``handoff``.
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
    out = []
    for k, (lo, hi) in enumerate(segments):
        crops, mcrops = crop_windows(
            image,
            mask,
            (y0, x0),
            starts[lo:hi],
            labels[lo:hi],
            diameter,
            remove_background=remove_background,
            with_mask=with_mask,
        )
        if k < len(pack) and pack[k]:
            crops = Packed(crops)
            mcrops = None if mcrops is None else Packed(mcrops)
        out.append((rows[lo:hi], crops, mcrops))
    return Handoff(out) if handoff else tuple(out)


def assemble(
    r0: int, r1: int, shape: tuple, dtype: Any, mshape: tuple | None, mdtype: Any, parts: Sequence
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gather rows ``[r0, r1)`` from tile results ``(rows, crops, mask crops)``."""
    buf = np.empty((r1 - r0, *shape), dtype=dtype)
    mbuf = None if mshape is None else np.empty((r1 - r0, *mshape), dtype=mdtype)
    for rows, crops, mcrops in parts:
        lo, hi = np.searchsorted(rows, [r0, r1])
        buf[rows[lo:hi] - r0] = _unpacked(crops)[lo:hi]
        if mbuf is not None:
            mbuf[rows[lo:hi] - r0] = _unpacked(mcrops)[lo:hi]
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
    write_rows(image, r0, r1, buf)
    if mask is not None:
        write_rows(mask, r0, r1, mbuf)
    flag_done(progress, units)
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
        self.diameter = diameter
        self.image_yx = image_yx
        self.starts = window_starts(cents[:, 1:], diameter)
        self.edges_y, self.edges_x = edges_y, edges_x
        # A window belongs to the tile holding its last pixel (clipped to the image):
        # it reaches out of its tile only upwards and leftwards, into tiles before it
        # in raster order (see ``tile_tasks``).
        last = np.minimum(self.starts + (diameter - 1), np.asarray(image_yx) - 1)
        ty = np.searchsorted(edges_y, last[:, 0], side="right") - 1
        tx = np.searchsorted(edges_x, last[:, 1], side="right") - 1
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

    def rect(self, tile: int) -> tuple[slice, slice]:
        """Return the pixels ``(ys, xs)`` of ``tile``."""
        ty, tx = divmod(tile, len(self.edges_x) - 1)
        ey, ex = self.edges_y, self.edges_x
        return slice(int(ey[ty]), int(ey[ty + 1])), slice(int(ex[tx]), int(ex[tx + 1]))

    def box(self, inst: np.ndarray) -> tuple[int, int, int, int]:
        """Return the box ``(y0, y1, x0, x1)`` covering the windows of ``inst``."""
        s = self.starts[inst]
        lo, hi = s.min(axis=0), s.max(axis=0) + self.diameter
        return int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])


def tile_tasks(
    plan: Plan,
    image: Blocks,
    mask: Blocks,
    bounds: Sequence[int],
    remove_background: bool,
    with_mask: bool,
    token: str,
    graph: dict[Hashable, Any],
    pack: bool = False,
    handoff: bool = False,
) -> list[list[Any]]:
    """Add the cuts of the tiles holding rows ``[bounds[0], bounds[-1])`` to ``graph``.

    Group ``g`` holds rows ``[bounds[g], bounds[g + 1])`` (a write task, or a chunk).
    Returns, per group, the tile results ``(rows, crops, mask crops)`` that hold its
    rows (possibly with rows of other groups, too): keys of ``graph``, or with
    ``handoff`` tasks to inline in the group's task.

    A tile task gets its own blocks whole and, from the blocks of the tiles above and
    to the left that its windows reach into, copies of the parts it needs (at most
    ``diameter - 1`` pixels wide). A decoded block is so held only until its own tile
    and those small copies are done: the decoded input held at once depends on the
    tile size, not on the width of the image.

    A tile whose rows fall in a few groups (rows in raster order: the groups of one
    tile row) hands each group its own part, so that a group's crops are freed once
    it is written; a tile feeding most groups (a random order) hands all of them one
    result, as they all wait for the same tiles anyway. With ``pack``, a part for one
    group is compressed (:class:`Packed`) unless this tile is the group's last one,
    i.e. unless it can be written right away; so are the copies taken for the tile
    row below (the strips along a tile row's bottom edge, held a tile row long).

    ``handoff`` (for Dask's local schedulers, where tasks share memory): a cut
    returns its parts as a :class:`Handoff` taken by the group tasks themselves, and
    one task per block copies the parts other tiles need from it. That makes about
    a third as many tasks (a 16k x 16k image: 6,234 -> 1,986, ~2 KiB of Dask's
    bookkeeping each) with the same memory held. Without it (for a distributed
    cluster, where a result moves to the worker reading it) each part and each copy
    is a task of its own, so a worker receives only the crops it writes.
    """
    edges = np.asarray(bounds, dtype=np.int64)
    r0, r1, n_groups = int(edges[0]), int(edges[-1]), len(edges) - 1
    out: list[list[Any]] = [[] for _ in range(n_groups)]
    copies: dict[Hashable, tuple[str, list[Any]]] | None = {} if handoff else None
    last = group_last_tiles(plan, edges) if pack else None
    shapes = (image.shape[:-2], image.dtype, mask.shape[:-2], mask.dtype)
    need_mask = remove_background or with_mask
    for t, rows, inst in plan.tiles(r0, r1):
        box = plan.box(inst)
        src, _ = pad_box(plan.image_yx, *box)
        padded = (src[0].stop - src[0].start, src[1].stop - src[1].start) != (
            box[1] - box[0],
            box[3] - box[2],
        )
        group = np.searchsorted(edges, rows, side="right") - 1  # ascending, as rows
        hit, first = np.unique(group, return_index=True)
        if 1 < hit.size <= n_groups // 2:
            segments = list(itertools.pairwise([*first.tolist(), rows.size]))
            feeds = [[int(g)] for g in hit]
        else:
            segments, feeds = [(0, rows.size)], [hit.tolist()]
        # a part for one group waits (compressed) unless this is that group's last tile
        packs = [] if last is None else [len(f) == 1 and bool(last[f[0]] != t) for f in feeds]
        own = plan.rect(t)
        name = f"zi-piece-{token}-{r0}-{t}"
        cut = f"zi-cut-{token}-{r0}-{t}"
        ipieces = image.cover(*src, graph, own, f"{name}-i", copies, pack)
        mpieces = mask.cover(*src, graph, own, f"{name}-m", copies, pack) if need_mask else []
        args = (plan.starts[inst], plan.ids[inst], rows, plan.diameter)
        flags = (remove_background, with_mask, segments, packs, handoff)
        starts = [p[0] for p in (*ipieces, *mpieces)]
        refs = [p[1] for p in (*ipieces, *mpieces)]
        static = (starts, len(ipieces), shapes, box, padded, *args, *flags)
        graph[cut] = task_with_parts(_cut_from_pieces, static, refs)
        for i, groups in enumerate(feeds):
            if handoff:  # inlined in the group's task; read by several: not taken
                part: Any = (take, cut, i) if len(groups) == 1 else (_item, cut, i)
            else:
                part = f"zi-part-{token}-{r0}-{t}-{i}"
                graph[part] = (operator.getitem, cut, i)
            for g in groups:
                out[g].append(part)
    for key, (holder, regions) in (copies or {}).items():
        graph[holder] = (copy_regions, key, regions)
    return out


def _item(parts: Handoff | tuple, i: int) -> Any:
    """Item ``i`` of a cut's result, left for other readers."""
    return parts.peek(i) if isinstance(parts, Handoff) else parts[i]


def group_last_tiles(plan: Plan, bounds: np.ndarray) -> np.ndarray:
    """Last tile (highest index) holding a row of each group ``[bounds[g], bounds[g + 1])``."""
    r0, r1 = int(bounds[0]), int(bounds[-1])
    tiles = plan.tile[plan.perm[r0:r1]]
    return np.maximum.reduceat(tiles, bounds[:-1] - r0)


def write_groups(todo: np.ndarray, per_task: int) -> list[range]:
    """Split the units to write into write tasks: runs of ``per_task`` consecutive units."""
    out: list[range] = []
    for run in np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1):
        out.extend(
            range(int(run[i]), int(run[min(i + per_task, run.size) - 1]) + 1)
            for i in range(0, run.size, per_task)
        )
    return out


def held_bytes(
    plan: Plan, groups: Sequence[range], unit: int, n: int, row_bytes: int
) -> np.ndarray:
    """Bytes of crops held after each tile when ``groups`` are cut in one pass.

    Model: tiles are cut in raster order; a group's crops are held from its first
    tile until its last tile is cut (then it is written). Returns, per tile, the
    crops cut and not yet written (the peak is what a pass holds).
    """
    n_tiles = (len(plan.edges_y) - 1) * (len(plan.edges_x) - 1)
    diff = np.zeros(n_tiles + 1, dtype=np.int64)
    for g in groups:
        r0, r1 = g.start * unit, min(n, g.stop * unit)
        tiles = plan.tile[plan.perm[r0:r1]]
        diff += np.bincount(tiles, minlength=n_tiles + 1) * row_bytes
        diff[int(tiles.max()) + 1] -= (r1 - r0) * row_bytes
    return np.cumsum(diff)[:n_tiles]


def plan_passes(
    plan: Plan,
    groups: Sequence[range],
    unit: int,
    n: int,
    row_bytes: int,
    memory_limit: int,
) -> list[tuple[list[range], int]]:
    """Group the write tasks into passes whose crops held stay within ``memory_limit``.

    Write tasks are taken in order and a pass is closed when adding the next one
    would make the crops held (:func:`held_bytes`) exceed the limit. Rows in random
    order keep every group open until the last tile, so a pass holds all its crops;
    rows in raster order (ids numbered along the image) close their groups tile row
    by tile row, so one pass holds about one tile row of crops whatever its length.
    Returns ``(groups, peak bytes held)`` per pass.
    """
    n_tiles = (len(plan.edges_y) - 1) * (len(plan.edges_x) - 1)
    out: list[tuple[list[range], int]] = []
    cur: list[range] = []
    held = np.zeros(n_tiles, dtype=np.int64)
    for g in groups:
        add = held_bytes(plan, [g], unit, n, row_bytes)
        if cur and int((held + add).max()) > memory_limit:
            out.append((cur, int(held.max())))
            cur, held = [], np.zeros(n_tiles, dtype=np.int64)
        cur.append(g)
        held += add
    if cur:
        out.append((cur, int(held.max())))
    return out
