"""``extract_instances``: image + mask → one crop per instance, tile by tile on Dask.

How it works
------------
1. **Centroids, one pass over the mask.** Every Dask block of the mask yields exact
   integer per-label sums (pixel count, sums of z, y, x); the sums are added over
   blocks and each centre is rounded half to even. The result never depends on the
   chunking or the scheduler.
2. **Rows.** Instances are ordered by id (``order="id"``) or by a seeded permutation
   (``order="random"``); the rows of every output chunk are known up front.
3. **Tiles.** The image is cut into tiles made of whole Dask blocks (about
   ``tile_size`` pixels). Each instance belongs to the tile holding its centre, so an
   instance straddling tiles is cut exactly once. A tile task reads only the box
   covering its instances' windows (tile plus a halo of at most ``diameter // 2``,
   zero-padded past the image edge) and cuts all its windows in one vectorised step.
4. **Writes.** One task per write unit (an output chunk, or a shard) gathers its rows
   from the tile results and writes the whole unit, then flags it done in the
   ``progress`` array. Units are processed in passes holding at most
   ``memory_limit`` bytes of crops, so memory depends on the tile size and the
   limit, not on the image size. A rerun of the same call skips flagged units.
"""

from __future__ import annotations

import functools
import math
import os
import uuid
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr
from dask.callbacks import Callback
from tqdm.auto import tqdm

from ._geometry import (
    centroids,
    combine_sums,
    crop_windows,
    default_chunk_rows,
    label_sums,
    pad_box,
    tile_edges,
    window_starts,
)
from ._inputs import open_image, open_mask
from ._store import IMAGE_KEY
from ._write import MASK_KEY, PROGRESS_KEY, StoreLayout, finish_store, prepare_store
from .errors import ArgumentError, ArgumentTypeError

__all__ = ["extract_instances"]

_ORDERS = ("id", "random")
# Bytes of crops written by one task (whole units; zarr encodes a task's chunks concurrently).
_TASK_BYTES = 8 * 2**20


def _check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        msg = f"{name} must be an integer, got {type(value).__name__}: {value!r}"
        raise ArgumentTypeError(msg)
    if minimum is not None and value < minimum:
        msg = f"{name} must be >= {minimum}, got {value!r}"
        raise ArgumentError(msg)
    return int(value)


def _library_version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------- tasks


class _Blocks:
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


def _fill(
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


def _cut_tile(
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
    _fill(image, (y0, x0), image_pieces)
    mask = None
    if remove_background or with_mask:
        mask = alloc((*mlead, y1 - y0, x1 - x0), dtype=mdtype)
        _fill(mask, (y0, x0), mask_pieces)
    crops, mcrops = crop_windows(
        image, mask, (y0, x0), starts, labels, diameter,
        remove_background=remove_background, with_mask=with_mask,
    )
    return rows, crops, mcrops


def _assemble(
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


def _assemble_crops(r0: int, r1: int, shape: tuple, dtype: Any, *parts: Any) -> np.ndarray:
    return _assemble(r0, r1, shape, dtype, None, None, parts)[0]


def _write_units(
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
    buf, mbuf = _assemble(r0, r1, image.shape[1:], image.dtype, mshape, mdtype, parts)
    image[r0:r1] = buf
    if mask is not None:
        mask[r0:r1] = mbuf
    progress[units.start : units.stop] = 1
    return units


# --------------------------------------------------------------------------- planning


class _Plan:
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


def _tile_tasks(
    plan: _Plan,
    image: _Blocks,
    mask: _Blocks,
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
            box[1] - box[0], box[3] - box[2],
        )
        task = dask.delayed(_cut_tile, pure=False)(
            image.cover(*src), mask.cover(*src) if need_mask else [], shapes, box, padded,
            plan.starts[inst], plan.ids[inst], rows, plan.diameter, remove_background,
            with_mask, dask_key_name=f"zi-cut-{token}-{r0}-{t}",
        )
        out.append((rows, task))
    return out


def _needed(tile_tasks: list[tuple[np.ndarray, Any]], a: int, b: int) -> list[Any]:
    return [task for rows, task in tile_tasks if np.any((rows >= a) & (rows < b))]


def _passes(todo: np.ndarray, unit_bytes: int, memory_limit: int) -> list[np.ndarray]:
    """Split the units to write into runs of consecutive units within ``memory_limit``."""
    per = max(1, memory_limit // max(1, unit_bytes))
    out: list[np.ndarray] = []
    for run in np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1):
        out.extend(run[i : i + per] for i in range(0, run.size, per) if run.size)
    return out


# --------------------------------------------------------------------------- scheduling


def _client() -> Any:
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


class _CountWrites(Callback):
    def __init__(self, bar: Any, prefix: str) -> None:
        super().__init__()
        self.bar = bar
        self.prefix = prefix

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, str) and key.startswith(self.prefix):
            self.bar.update(len(result))


def _run(tasks: list[Any], bar: Any, prefix: str) -> None:
    client = _client()
    if client is not None:
        from distributed import as_completed

        for fut in as_completed(client.compute(tasks)):
            bar.update(len(fut.result()))
        return
    with _CountWrites(bar, prefix):
        dask.compute(*tasks)


# --------------------------------------------------------------------------- public


def extract_instances(
    image: Any,
    mask: Any,
    diameter: int,
    *,
    out: str | os.PathLike[str] | None = None,
    depth: int | None = None,
    remove_background: bool = True,
    extract_mask: bool = False,
    chunk_i: int | None = None,
    order: str = "id",
    seed: int = 0,
    overwrite: bool = False,
    shards: int | None = None,
    compressors: Any = "auto",
    zarr_format: int = 3,
    tile_size: int = 1024,
    memory_limit: int = 256 * 2**20,
    channel_names: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, da.Array]:
    """Cut one ``diameter x diameter`` crop per labelled instance of ``mask`` out of ``image``.

    Parameters
    ----------
    image
        ``(c, y, x)`` or ``(c, z, y, x)``: NumPy, Dask or Zarr array, or the path/URL of
        a Zarr array or an OME-Zarr image (level 0 is used).
    mask
        Integer labels ``(y, x)`` or ``(z, y, x)`` matching the image; ``0`` is
        background. Any integer dtype; ids need not be contiguous.
    diameter
        Crop size in y and x (all z planes are kept).
    out
        Path or URL of the instance store to write (SPEC §2). ``None`` returns a lazy
        Dask array and writes nothing.
    depth
        Accepted for harpy compatibility: the halo is always exactly what the windows
        need (at most ``diameter // 2``); a given ``depth`` must be ``>= diameter // 2``.
    remove_background
        Zero every pixel of a crop that does not belong to its instance.
    extract_mask
        Also write the mask crops ``(i, 1, z, d, d)`` (raw labels of the window, ``0``
        past the image edge) as the store's ``mask`` array. Needs ``out``.
    chunk_i
        Rows per output chunk; default about 2 MiB of crops per chunk.
    order
        ``"id"``: rows by ascending instance id; ``"random"``: a permutation drawn with
        ``numpy.random.default_rng(seed)`` (a preshuffled store).
    seed
        Seed of ``order="random"``.
    overwrite
        Replace an existing store at ``out``. Without it, an existing complete store
        (or anything else) is an error, and an interrupted extraction with the same
        parameters is resumed.
    shards
        Rows per shard (Zarr format 3); a multiple of ``chunk_i``.
    compressors
        Passed to :func:`zarr.create_array` (``"auto"``: zarr's default).
    zarr_format
        2 or 3.
    tile_size
        Approximate tile edge in pixels; tiles are made of whole Dask blocks (NumPy
        inputs are split into blocks of this size).
    memory_limit
        Bytes of crops held at once (default 256 MiB); larger outputs are written in
        several passes over the tiles they need. Peak memory is about this plus the
        decoded input blocks of three block rows across the image width.
    channel_names
        Recorded in the attributes; default: OME-Zarr channel labels, if any.
    storage_options
        For URLs of inputs and output.
    progress
        Show a progress bar; ``None``: only when stderr is a terminal.

    Returns
    -------
    tuple
        ``instance_ids`` (NumPy ``int64``, one per row, in row order) and ``instances``,
        a Dask array ``(i, c, z, diameter, diameter)`` of the image dtype, reading from
        the store when ``out`` is given.

    Raises
    ------
    ArgumentError
        On a bad value: ``diameter <= 0``, image/mask shapes that differ, a mask with
        no labels, an unknown ``order``, bad chunking.
    ArgumentTypeError
        On a non-integer mask or a non-array input.
    StoreExistsError
        If ``out`` exists and cannot be resumed, and ``overwrite`` is false.
    StoreNotFoundError
        If an input path holds nothing.
    """
    diameter = _check_int(diameter, "diameter", minimum=1)
    if depth is not None and _check_int(depth, "depth") < diameter // 2:
        msg = f"depth must be >= diameter // 2 = {diameter // 2}, got {depth!r}"
        raise ArgumentError(msg)
    if order not in _ORDERS:
        msg = f"order must be one of {_ORDERS!r}, got {order!r}"
        raise ArgumentError(msg)
    seed = _check_int(seed, "seed")
    tile_size = _check_int(tile_size, "tile_size", minimum=1)
    memory_limit = _check_int(memory_limit, "memory_limit", minimum=1)
    if zarr_format not in (2, 3):
        msg = f"zarr_format must be 2 or 3, got {zarr_format!r}"
        raise ArgumentError(msg)
    if chunk_i is not None:
        chunk_i = _check_int(chunk_i, "chunk_i", minimum=1)
    if shards is not None:
        shards = _check_int(shards, "shards", minimum=1)
        if zarr_format != 3:
            msg = f"shards needs zarr_format=3, got shards={shards!r}, zarr_format={zarr_format!r}"
            raise ArgumentError(msg)
    if extract_mask and out is None:
        msg = "extract_mask=True writes the mask crops to the store: pass out=..."
        raise ArgumentError(msg)

    img = open_image(image, storage_options, tile_size)
    msk = open_mask(mask, storage_options, tile_size)
    im, mk = img.array, msk.array
    if tuple(im.shape[1:]) != tuple(mk.shape):
        msg = (
            f"image and mask must cover the same pixels: image (c, z, y, x) = {tuple(im.shape)} "
            f"needs a mask (z, y, x) = {tuple(im.shape[1:])}, got mask shape {tuple(mk.shape)}"
        )
        raise ArgumentError(msg)
    if channel_names is not None:
        channel_names = [str(c) for c in channel_names]
        if len(channel_names) != im.shape[0]:
            msg = f"channel_names must name {im.shape[0]} channels, got {channel_names!r}"
            raise ArgumentError(msg)
    else:
        channel_names = img.channel_names

    # 1. centroids: exact integer sums per mask block, combined.
    offsets = [np.concatenate(([0], np.cumsum(c)[:-1])) for c in mk.chunks]
    blocks = mk.to_delayed()
    parts = [
        dask.delayed(label_sums, pure=False)(
            blocks[idx], [int(offsets[a][i]) for a, i in enumerate(idx)]
        )
        for idx in np.ndindex(*blocks.shape)
    ]
    sums = combine_sums(dask.compute(*parts))
    if sums.labels.size == 0:
        msg = (
            f"mask has no labels: every pixel of mask from {msk.source} is 0 (background); "
            "nothing to extract"
        )
        raise ArgumentError(msg)
    ids, cents = sums.labels, centroids(sums)
    n = ids.size

    # 2. rows, tiles and layout.
    edges_y = tile_edges(im.chunks[2], tile_size)
    edges_x = tile_edges(im.chunks[3], tile_size)
    plan = _Plan(ids, cents, order, seed, diameter, edges_y, edges_x, tuple(im.shape[2:]))
    crop_shape = (int(im.shape[0]), int(im.shape[1]), diameter, diameter)
    crop_bytes = math.prod(crop_shape) * im.dtype.itemsize
    chunk_i = _resolve_chunk_i(chunk_i, shards, crop_bytes, n)
    layout = StoreLayout(
        n=n, crop_shape=crop_shape, dtype=im.dtype,
        mask_dtype=mk.dtype if extract_mask else None, chunk_i=chunk_i, shards=shards,
        zarr_format=zarr_format, compressors=compressors,
    )
    row_ids = ids[plan.perm]
    row_cents = cents[plan.perm]
    token = uuid.uuid4().hex[:12]
    iblocks, mblocks = _Blocks(im), _Blocks(mk)

    if out is None:
        pieces = []
        for a in range(0, n, chunk_i):
            b = min(n, a + chunk_i)
            tasks = _tile_tasks(plan, iblocks, mblocks, a, b, remove_background, False, token)
            delayed = dask.delayed(_assemble_crops, pure=False)(
                a, b, crop_shape, im.dtype, *_needed(tasks, a, b),
                dask_key_name=f"zi-crops-{token}-{a}",
            )
            pieces.append(da.from_delayed(delayed, (b - a, *crop_shape), dtype=im.dtype))
        return row_ids, da.concatenate(pieces, axis=0)

    # 3. the store: create, or resume an interrupted run.
    path = os.fspath(out)
    attrs = {
        "version": _library_version(),
        "source": {"image": img.source, "mask": msk.source},
        "channel_names": channel_names,
        "parameters": {
            "diameter": diameter, "remove_background": bool(remove_background),
            "extract_mask": bool(extract_mask), "order": order, "seed": seed,
            "chunk_i": chunk_i, "shards": shards, "zarr_format": zarr_format,
            "compressors": repr(compressors), "dtype": str(im.dtype),
            "image_shape": [int(s) for s in im.shape], "n_instances": int(n),
        },
        "axes": ["i", "c", "z", "y", "x"],
    }
    group, todo = prepare_store(
        path, layout, row_ids, row_cents, attrs, overwrite=overwrite,
        storage_options=storage_options,
    )
    arr, marr, prog = group[IMAGE_KEY], group.get(MASK_KEY), group[PROGRESS_KEY]
    write = functools.partial(_write_units, arr, marr, prog)
    unit_bytes = layout.unit * crop_bytes * (2 if extract_mask else 1)
    per_task = max(1, _TASK_BYTES // unit_bytes)
    with tqdm(total=int(todo.size), desc="extract_instances", unit="chunk",
              disable=None if progress is None else not progress) as bar:
        for run in _passes(todo, unit_bytes, memory_limit):
            r0, r1 = int(run[0]) * layout.unit, min(n, (int(run[-1]) + 1) * layout.unit)
            tasks = _tile_tasks(
                plan, iblocks, mblocks, r0, r1, remove_background, extract_mask, token
            )
            writes = []
            for u0 in range(0, run.size, per_task):
                units = range(int(run[u0]), int(run[min(u0 + per_task, run.size) - 1]) + 1)
                a, b = units.start * layout.unit, min(n, units.stop * layout.unit)
                writes.append(dask.delayed(write, pure=False)(
                    units, a, b, *_needed(tasks, a, b),
                    dask_key_name=f"zi-write-{token}-{units.start}",
                ))
            _run(writes, bar, f"zi-write-{token}-")
    finish_store(group)
    return row_ids, da.from_zarr(group[IMAGE_KEY])


def _resolve_chunk_i(chunk_i: int | None, shards: int | None, crop_bytes: int, n: int) -> int:
    if chunk_i is None:
        chunk_i = default_chunk_rows(crop_bytes, n)
        if shards is not None:
            chunk_i = max(d for d in range(1, min(chunk_i, shards) + 1) if shards % d == 0)
    if shards is not None and shards % chunk_i:
        msg = f"shards must be a multiple of chunk_i={chunk_i}, got shards={shards!r}"
        raise ArgumentError(msg)
    return chunk_i
