"""The tasks of ``extract_instances``: cut the windows of a tile, gather a write task's rows.

:func:`tile_tasks` adds one :func:`cut_tile` task per tile to a task graph, fed with
the Dask blocks its box needs (:class:`Blocks`); :func:`assemble` gathers rows from
the tile results. The tasks are spelled with the helpers of :mod:`._graph`.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from ._geometry import crop_windows, pad_box
from ._graph import (
    Graph,
    Handoff,
    block_keys,
    item_task,
    peek,
    peek_ref,
    take_ref,
    task,
    task_with_parts,
)
from ._packed import Packed, unpacked
from ._study_plan import StudyPlan
from ._tile_plan import group_last_tiles
from ._windows import window_counts

__all__ = [
    "Blocks",
    "CutSettings",
    "InsideCounts",
    "TileCut",
    "assemble",
    "assemble_crops",
    "copy_regions",
    "cut_tile",
    "fill",
    "tile_tasks",
]

# Per block key: (key of the task copying its regions, [(region, pack), ...]).
Copies = dict[Hashable, tuple[str, list[Any]]]


class Blocks:
    """The Dask blocks of an array, to hand a task exactly the blocks a region needs.

    Tasks receive whole blocks (each stored chunk is then read and decoded once per
    pass, and shared by every tile that needs it) instead of slices that Dask would
    push down into separate reads of the same chunks.
    """

    def __init__(self, array: da.Array) -> None:
        self.source, self.keys = block_keys(array)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = array.dtype
        self.edges = [np.concatenate(([0], np.cumsum(c))).astype(np.int64) for c in array.chunks]

    def cover(
        self,
        ys: slice,
        xs: slice,
        graph: Graph,
        own: tuple[slice, slice] | None = None,
        name: str = "zi-piece",
        copies: Copies | None = None,
        pack: bool = False,
    ) -> list[list[Any]]:
        """Return ``[global start, key or part ref]`` for every block meeting ``[ys, xs]``.

        A block inside ``own`` (the tile's rectangle) is passed whole (its key);
        from any other block only the part inside ``[ys, xs]`` is passed, copied by a
        small task ``{name}-{i}`` added to ``graph``, so that the decoded block need
        not outlive the tile it belongs to. ``own=None`` passes every block whole.

        With ``copies``, the part is instead added to ``copies[block key]`` =
        ``(task key, regions)`` and passed as a reference taking item ``index`` of that
        task: one task per block then copies all its regions (see :func:`copy_regions`).

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
            packed = pack and y1 <= own[0].start
            if copies is None:
                graph[f"{name}-{k}"] = task(_piece, key, local, packed)
                out.append([(*start, ya, xa), f"{name}-{k}"])
                continue
            holder, regions = copies.setdefault(key, (f"{name}-b{len(copies)}", []))
            regions.append((local, packed))
            out.append([(*start, ya, xa), take_ref(holder, len(regions) - 1)])
        return out


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
        block = np.asarray(unpacked(block))
        y0, x0 = start[-2], start[-1]
        ya, yb = max(y0, by), min(y0 + block.shape[-2], by + h)
        xa, xb = max(x0, bx), min(x0 + block.shape[-1], bx + w)
        if ya >= yb or xa >= xb:
            continue
        lead = tuple(slice(s, s + n) for s, n in zip(start[:-2], block.shape[:-2], strict=True))
        out[(*lead, slice(ya - by, yb - by), slice(xa - bx, xb - bx))] = block[
            ..., ya - y0 : yb - y0, xa - x0 : xb - x0
        ]


@dataclass(frozen=True, eq=False)
class CutSettings:
    """What every tile cut of a pass shares.

    ``image_lead``/``mask_lead`` are the leading shapes (``(c, z)``, ``(z,)``) of the
    arrays; with ``handoff`` a cut returns a :class:`Handoff` (read by tasks on a
    local scheduler) rather than a tuple. ``depth``: planes per window (``None``:
    all planes).
    """

    image_lead: tuple[int, ...]
    image_dtype: np.dtype
    mask_lead: tuple[int, ...]
    mask_dtype: np.dtype
    diameter: int
    remove_background: bool
    with_mask: bool
    handoff: bool = False
    depth: int | None = None


@dataclass(frozen=True, eq=False)
class TileCut:
    """The windows of one tile and how its result is split.

    ``box`` ``(y0, y1, x0, x1)`` covers the windows (``padded``: it reaches past the
    image edge); ``starts``, ``labels`` and ``rows`` give each window, its instance id
    and its output row (ascending). The result holds one part per segment
    ``[lo, hi)`` of the windows, compressed where ``pack[k]`` is true. ``starts_z``:
    the first plane of each window (``None``: plane 0). ``clip``: the windows
    (indexes into ``starts``) whose pixels of their label inside are counted.
    """

    box: tuple[int, int, int, int]
    padded: bool
    starts: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    segments: Sequence[tuple[int, int]]
    pack: Sequence[bool] = ()
    starts_z: np.ndarray | None = None
    clip: np.ndarray | None = None


@dataclass(eq=False)
class InsideCounts:
    """The windows whose object pixels inside the cuts count, and where the counts go.

    ``candidates``: per instance of the plan, whether to count it (its bounding box
    reaches out of its window). :func:`tile_tasks` adds, per tile holding some, the
    task ``key`` returning their counts, and records ``(key, instances)`` in ``keys``.
    """

    candidates: np.ndarray
    keys: list[tuple[str, np.ndarray]] = field(default_factory=list)


def cut_tile(
    image_pieces: list,
    mask_pieces: list,
    tile: TileCut,
    settings: CutSettings,
    inside: list | None = None,
) -> tuple[tuple[np.ndarray, Any, Any], ...] | Handoff:
    """Cut the windows of one tile out of the blocks covering its box.

    The box (zero-padded where it reaches past the image edge) is assembled from
    the blocks with one copy per block, then the windows of each segment are cut in
    one step into arrays of their own (so that a segment can be freed while others
    are still needed). Returns ``(rows, crops, mask crops)`` per segment, the crops
    of segment ``k`` :class:`Packed` where ``tile.pack[k]`` is true; as a
    :class:`Handoff` with ``settings.handoff``. With ``tile.clip``, appends to
    ``inside`` the pixels of those windows holding their label
    (:func:`._windows.window_counts`), counted in the mask box it assembles.
    """
    y0, y1, x0, x1 = tile.box
    s = settings
    nz = s.mask_lead[0]
    z0, z1 = _plane_range(tile.starts_z, s.depth, nz)
    alloc = np.zeros if tile.padded or (z0, z1) != (0, nz) else np.empty
    image = alloc((s.image_lead[0], z1 - z0, y1 - y0, x1 - x0), dtype=s.image_dtype)
    fill(image[:, -z0 : nz - z0], (y0, x0), image_pieces)
    mask = None
    if s.remove_background or s.with_mask or tile.clip is not None:
        mask = alloc((z1 - z0, y1 - y0, x1 - x0), dtype=s.mask_dtype)
        fill(mask[-z0 : nz - z0], (y0, x0), mask_pieces)
    if tile.clip is not None and inside is not None and mask is not None:
        w, depth = tile.clip, nz if s.depth is None else s.depth
        zs = np.zeros(w.size, np.int64) if tile.starts_z is None else tile.starts_z[w]
        args = (zs, tile.starts[w], tile.labels[w], depth, s.diameter)
        inside.append(window_counts(mask, (z0, y0, x0), *args))
    mask = mask if s.remove_background or s.with_mask else None
    starts_z = None if tile.starts_z is None else tile.starts_z - z0
    out = []
    for k, (lo, hi) in enumerate(tile.segments):
        crops, mcrops = crop_windows(
            image,
            mask,
            (y0, x0),
            tile.starts[lo:hi],
            tile.labels[lo:hi],
            s.diameter,
            remove_background=s.remove_background,
            with_mask=s.with_mask,
            starts_z=None if starts_z is None else starts_z[lo:hi],
            depth=s.depth,
        )
        if k < len(tile.pack) and tile.pack[k]:
            held: tuple[Any, Any] = (Packed(crops), None if mcrops is None else Packed(mcrops))
        else:
            held = (crops, mcrops)
        out.append((tile.rows[lo:hi], *held))
    return Handoff(out) if s.handoff else tuple(out)


def _plane_range(starts_z: np.ndarray | None, depth: int | None, nz: int) -> tuple[int, int]:
    """Planes ``[z0, z1)`` of a tile's box: the stack, widened to hold every window."""
    if starts_z is None or depth is None or not starts_z.size:
        return 0, nz
    return min(0, int(starts_z.min())), max(nz, int(starts_z.max()) + depth)


def _cut_from_pieces(
    starts: Sequence[tuple[int, ...]], n_image: int, tile: TileCut, settings: CutSettings, *values
) -> Any:
    """:func:`cut_tile` with its image and mask pieces given as starts and values.

    With ``tile.clip``, the window counts follow the parts as one more item.
    """
    pieces = [[s, v] for s, v in zip(starts, values, strict=True)]
    if tile.clip is None:
        return cut_tile(pieces[:n_image], pieces[n_image:], tile, settings)
    inside: list[np.ndarray] = []
    out = cut_tile(pieces[:n_image], pieces[n_image:], tile, settings, inside)
    if isinstance(out, Handoff):
        return Handoff([*(out.peek(i) for i in range(len(out))), inside[0]])
    return (*out, inside[0])


def assemble(
    r0: int, r1: int, shape: tuple, dtype: Any, mshape: tuple | None, mdtype: Any, parts: Sequence
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gather rows ``[r0, r1)`` from tile results ``(rows, crops, mask crops)``."""
    buf = np.empty((r1 - r0, *shape), dtype=dtype)
    mbuf = None if mshape is None else np.empty((r1 - r0, *mshape), dtype=mdtype)
    for rows, crops, mcrops in parts:
        lo, hi = np.searchsorted(rows, [r0, r1])
        buf[rows[lo:hi] - r0] = unpacked(crops)[lo:hi]
        if mbuf is not None:
            mbuf[rows[lo:hi] - r0] = unpacked(mcrops)[lo:hi]
    return buf, mbuf


def assemble_crops(r0: int, r1: int, shape: tuple, dtype: Any, *parts: Any) -> np.ndarray:
    """Gather the crops of rows ``[r0, r1)`` from tile results."""
    return assemble(r0, r1, shape, dtype, None, None, parts)[0]


def tile_tasks(
    plan: StudyPlan,
    images: Sequence[Blocks],
    masks: Sequence[Blocks],
    bounds: Sequence[int],
    remove_background: bool,
    with_mask: bool,
    token: str,
    graph: Graph,
    pack: bool = False,
    handoff: bool = False,
    inside: InsideCounts | None = None,
) -> list[list[Any]]:
    """Add the cuts of the tiles holding rows ``[bounds[0], bounds[-1])`` to ``graph``.

    ``images[s]`` and ``masks[s]`` are the blocks of source ``s`` of ``plan``.

    Group ``g`` holds rows ``[bounds[g], bounds[g + 1])`` (a write task, or a chunk).
    Returns, per group, the tile results ``(rows, crops, mask crops)`` that hold its
    rows (possibly with rows of other groups, too): keys of ``graph``, or with
    ``handoff`` part references for :func:`._graph.task_with_parts`.

    A tile task gets its own blocks whole and, from the blocks of the tiles above and
    to the left that its windows reach into, copies of the parts it needs (at most
    ``diameter - 1`` pixels wide): a decoded block is held only until its own tile
    and those copies are done, so the decoded input held at once depends on the
    tile size, not on the width of the image.

    A tile whose rows fall in a few groups (rows in raster order) hands each group its
    own part, so that a group's crops are freed once it is written; a tile feeding
    most groups (a random order) hands all of them one result. With ``pack``, a part
    for one group is compressed (:class:`Packed`) unless this tile is the group's last
    one, and so are the copies taken for the tile row below.

    ``handoff`` (Dask's local schedulers, where tasks share memory): a cut returns
    its parts as a :class:`Handoff` taken by the group tasks themselves, and one task
    per block copies the parts other tiles need from it; fewer tasks, the same memory
    held. Without it (a distributed cluster, where a result moves to the worker
    reading it) each part and each copy is a task of its own, so a worker receives
    only the crops it writes.

    With ``inside``, a tile holding candidate windows also counts their object pixels
    inside (reading its mask blocks even when it cuts no mask), returned by a task of
    its own (see :class:`InsideCounts`).
    """
    edges = np.asarray(bounds, dtype=np.int64)
    r0, r1 = int(edges[0]), int(edges[-1])
    out: list[list[Any]] = [[] for _ in range(len(edges) - 1)]
    copies: Copies | None = {} if handoff else None
    last = group_last_tiles(plan, edges) if pack else None
    settings = [
        CutSettings(
            image.shape[:-2],
            image.dtype,
            mask.shape[:-2],
            mask.dtype,
            plan.diameter,
            remove_background,
            with_mask,
            handoff,
            plan.depth,
        )
        for image, mask in zip(images, masks, strict=True)
    ]
    for t, rows, inst in plan.tiles(r0, r1):
        segments, feeds = _split_by_group(rows, edges)
        # a part for one group waits (compressed) unless this is that group's last tile
        packs = [] if last is None else [len(f) == 1 and bool(last[f[0]] != t) for f in feeds]
        cut = f"zi-cut-{token}-{r0}-{t}"
        src_i = plan.tile_source(t)
        clip = None if inside is None else np.flatnonzero(inside.candidates[inst])
        clip = clip if clip is not None and clip.size else None
        tile, src = _tile_cut(plan, inst, rows, segments, packs, plan.image_yx(t), clip)
        own, name = plan.rect(t), f"zi-piece-{token}-{r0}-{t}"
        ipieces = images[src_i].cover(*src, graph, own, f"{name}-i", copies, pack)
        need_mask = remove_background or with_mask or clip is not None
        mpieces = (
            masks[src_i].cover(*src, graph, own, f"{name}-m", copies, pack) if need_mask else []
        )
        starts = [p[0] for p in (*ipieces, *mpieces)]
        refs = [p[1] for p in (*ipieces, *mpieces)]
        static = (starts, len(ipieces), tile, settings[src_i])
        graph[cut] = task_with_parts(_cut_from_pieces, static, refs)
        if inside is not None and clip is not None:
            counts = f"zi-inside-{token}-{r0}-{t}"
            graph[counts] = task(peek, cut, len(segments))
            inside.keys.append((counts, inst[clip]))
        for i, groups in enumerate(feeds):
            part = _part_ref(graph, cut, i, len(groups), handoff, f"zi-part-{token}-{r0}-{t}-{i}")
            for g in groups:
                out[g].append(part)
    for key, (holder, regions) in (copies or {}).items():
        graph[holder] = task(copy_regions, key, regions)
    return out


def _split_by_group(rows: np.ndarray, edges: np.ndarray) -> tuple[list, list[list[int]]]:
    """Segments of a tile's ``rows`` and the groups each feeds: one per group, or one for all.

    A tile whose rows fall in at most half of the groups gives each group a segment of
    its own; otherwise one segment feeds every group it meets.
    """
    n_groups = len(edges) - 1
    group = np.searchsorted(edges, rows, side="right") - 1  # ascending, as rows
    hit, first = np.unique(group, return_index=True)
    if 1 < hit.size <= n_groups // 2:
        segments = list(itertools.pairwise([*first.tolist(), rows.size]))
        return segments, [[int(g)] for g in hit]
    return [(0, rows.size)], [hit.tolist()]


def _tile_cut(
    plan: StudyPlan,
    inst: np.ndarray,
    rows: np.ndarray,
    segments: list,
    packs: list[bool],
    image_yx: tuple[int, int],
    clip: np.ndarray | None = None,
) -> tuple[TileCut, tuple[slice, slice]]:
    """Return the cut of the windows ``inst`` (at ``rows``) and the pixels of its box.

    ``image_yx``: the size of the image holding the windows; ``clip``: the windows
    whose pixels inside are counted.
    """
    box = plan.box(inst)
    (ys, xs), _ = pad_box(image_yx, *box)
    padded = (ys.stop - ys.start, xs.stop - xs.start) != (box[1] - box[0], box[3] - box[2])
    starts, ids, starts_z = plan.starts[inst], plan.ids[inst], plan.starts_z[inst]
    tile = TileCut(box, padded, starts, ids, rows, segments, packs, starts_z, clip)
    return tile, (ys, xs)


def _part_ref(graph: Graph, cut: str, i: int, readers: int, handoff: bool, key: str) -> Any:
    """Where a group finds part ``i`` of tile result ``cut`` (read by ``readers`` groups).

    With ``handoff`` a reference inlined in the group's task (taken by a single
    reader, peeked at by several); otherwise a ``getitem`` task ``key`` of its own.
    """
    if handoff:
        return take_ref(cut, i) if readers == 1 else peek_ref(cut, i)
    graph[key] = item_task(cut, i)
    return key
