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
   ``tile_size`` pixels). Each instance belongs to the tile holding the last pixel
   of its window, so an instance straddling tiles is cut exactly once and its window
   reaches out of its tile only upwards and leftwards. A tile task gets its own
   blocks whole and copies of the strips (at most ``diameter - 1`` pixels) it needs
   from the tiles above and to the left, assembles the box covering its windows
   (zero-padded past the image edge) and cuts all its windows in one vectorised step.
   A decoded block is freed once its own tile and those strips are done, so the
   decoded input held at once depends on the tile size, not on the image width.
4. **Writes.** A write task (a few write units: output chunks, or shards) gathers its
   rows from the tile results, writes whole units, then flags them done in the
   ``progress`` array. A tile hands each write task its own part where its rows go to
   few of them, so written crops are freed early. Write tasks are grouped into passes
   whose crops held stay within ``memory_limit``, modelled with tiles cut in raster
   order and a write task's crops held from its first tile to its last: with ids in
   raster order (as segmentation tools number them) one pass holds about one tile row
   of crops whatever the output size, while a random order holds every crop of a pass.
   A pass expected to hold more than 64 MiB keeps the parts that wait for later tiles,
   and the strips copied for the tile row below, Blosc-LZ4 compressed (in memory
   mappings of their own, not in the heap). A rerun of the same call skips flagged
   units.

The tasks form a plain Dask task graph (a dict). On Dask's local schedulers a tile
hands its parts to the write tasks, which take them (``_tiles.Handoff``), and one task
per block copies the strips other tiles need from it; on a ``dask.distributed``
cluster each part and each strip is a task of its own, so that a worker receives only
what it uses. Either way Dask sees only the keys a task reads (its other arguments are
one opaque value), which keeps its bookkeeping small (~2,000 tasks for a 16k x 16k
image).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import dask.threaded
import numpy as np
from dask.base import named_schedulers
from dask.callbacks import Callback
from tqdm.auto import tqdm

from ._geometry import centroids, combine_sums, default_chunk_rows, label_sums, tile_edges
from ._inputs import open_image, open_mask
from ._store import IMAGE_KEY
from ._tiles import (
    Blocks,
    Plan,
    as_delayed,
    assemble_crops,
    plan_passes,
    task_with_parts,
    tile_tasks,
    write_groups,
    write_units,
)
from ._validate import check_int
from ._write import (
    MASK_KEY,
    PROGRESS_KEY,
    StoreLayout,
    default_compressors,
    finish_store,
    prepare_store,
)
from .errors import ArgumentError, ArgumentTypeError

__all__ = ["extract_instances"]

_ORDERS = ("id", "random")
# Bytes of crops written by one task (whole units; zarr encodes a task's chunks concurrently).
_TASK_BYTES = 8 * 2**20
# A pass expected to hold more crops than this (``plan_passes``) holds the ones waiting
# for other tiles compressed (``tile_tasks``; ~2.5x smaller, ~0.7 s of CPU per GiB of
# crops): with ids in raster order a pass holds about one tile row of crops, which
# grows with the image width (~56 MiB at 8k, ~105 MiB at 16k wide on the benchmark).
_PACK_ABOVE = 64 * 2**20
# Looked up at call time, so tests can wrap it (e.g. to kill a process mid-write).
_write_units = write_units


def _library_version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------- scheduling


def _client() -> Any:
    if "distributed" not in sys.modules:  # no client can exist without it
        return None
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _scheduler() -> Any:
    """Return the scheduler Dask would pick, found without importing ``distributed``, or ``None``.

    With no scheduler passed, Dask imports ``distributed`` (~0.13 s) to look for an
    active client. None can exist when ``distributed`` was never imported: then the
    default threaded scheduler, or the one named in ``dask.config``, is passed as a
    function, which Dask uses without that import. ``None``: leave it to Dask.
    """
    if "distributed" in sys.modules or dask.config.get("get", None) is not None:
        return None
    name = dask.config.get("scheduler", None)
    if name is None:
        return dask.threaded.get
    if isinstance(name, str):
        return named_schedulers.get(name.lower())
    return None


def _compute(*tasks: Any) -> tuple[Any, ...]:
    """``dask.compute(*tasks)`` on the scheduler Dask would choose (see :func:`_scheduler`)."""
    scheduler = _scheduler()
    if scheduler is None:
        return dask.compute(*tasks)
    return dask.compute(*tasks, scheduler=scheduler)


class _CountWrites(Callback):
    def __init__(self, bar: Any, prefix: str) -> None:
        super().__init__()
        self.bar = bar
        self.prefix = prefix

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, str) and key.startswith(self.prefix):
            self.bar.update(len(result))


def _run(tasks: list[Any], bar: Any, prefix: str, client: Any) -> None:
    if client is not None:
        from distributed import as_completed

        for fut in as_completed(client.compute(tasks)):
            bar.update(len(fut.result()))
        return
    with _CountWrites(bar, prefix):
        _compute(*tasks)


# --------------------------------------------------------------------------- public


_KEYWORDS = (
    "out",
    "depth",
    "remove_background",
    "extract_mask",
    "chunk_i",
    "order",
    "seed",
    "overwrite",
    "shards",
    "compressors",
    "zarr_format",
    "tile_size",
    "memory_limit",
    "channel_names",
    "storage_options",
    "progress",
)


def extract_instances(
    image: Any,
    mask: Any,
    diameter: Any,
    *sdata_diameter: int,
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
    *sdata_diameter
        Only for SpatialData input, which is called as
        ``extract_instances(sdata, image_name, labels_name, diameter, ...)``: ``image`` is
        the ``spatialdata.SpatialData`` object, ``mask`` and ``diameter`` are the element
        names and the diameter comes next (see
        :func:`zarr_instances.spatialdata.extract_from_spatialdata`).
    out
        Path or URL of the instance store to write (SPEC §2). ``None`` returns a lazy
        Dask array and writes nothing. A finished store has consolidated metadata.
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
        Passed to :func:`zarr.create_array`. ``"auto"``: Blosc-lz4 level 5 with byte
        shuffle, chosen by measured decode speed and size on crop data (BENCHMARKS.md).
    zarr_format
        2 or 3.
    tile_size
        Approximate tile edge in pixels; tiles are made of whole Dask blocks (NumPy
        inputs are split into blocks of this size).
    memory_limit
        Bytes of crops held at once (default 256 MiB); when more would be held, the
        output is written in several passes over the tiles they need. With rows in
        random order a pass holds all its crops; with ids in raster order about one
        tile row of crops (compressed beyond 64 MiB), so one pass usually suffices.
        Peak memory is about the crops held plus the decoded input blocks of the
        tiles being cut.
    channel_names
        Recorded in the attributes; default: OME-Zarr channel labels, if any.
    storage_options
        For URLs of inputs and output; not used for local paths, so one call can read
        local inputs and write to an object store.
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
    ChunkReadError
        If a stored chunk of a Zarr input cannot be read or decoded (the message names
        the input, the array and the chunk). A chunk that is not stored reads as the
        array's fill value, as in zarr.
    """
    if type(image).__name__ == "SpatialData":
        if len(sdata_diameter) != 1:
            msg = (
                "SpatialData input is called as extract_instances(sdata, image_name, "
                f"labels_name, diameter, ...); got {len(sdata_diameter) + 3} positional "
                "arguments"
            )
            raise ArgumentTypeError(msg)
        from .spatialdata import extract_from_spatialdata

        kwargs = {k: v for k, v in locals().items() if k in _KEYWORDS}
        return extract_from_spatialdata(image, mask, diameter, sdata_diameter[0], **kwargs)
    if sdata_diameter:
        msg = (
            f"extract_instances takes 3 positional arguments (image, mask, diameter), got "
            f"{3 + len(sdata_diameter)}; a 4th is only for SpatialData input"
        )
        raise ArgumentTypeError(msg)
    diameter = check_int(diameter, "diameter", minimum=1)
    if depth is not None and check_int(depth, "depth") < diameter // 2:
        msg = f"depth must be >= diameter // 2 = {diameter // 2}, got {depth!r}"
        raise ArgumentError(msg)
    if order not in _ORDERS:
        msg = f"order must be one of {_ORDERS!r}, got {order!r}"
        raise ArgumentError(msg)
    seed = check_int(seed, "seed")
    tile_size = check_int(tile_size, "tile_size", minimum=1)
    memory_limit = check_int(memory_limit, "memory_limit", minimum=1)
    if zarr_format not in (2, 3):
        msg = f"zarr_format must be 2 or 3, got {zarr_format!r}"
        raise ArgumentError(msg)
    if chunk_i is not None:
        chunk_i = check_int(chunk_i, "chunk_i", minimum=1)
    if shards is not None:
        shards = check_int(shards, "shards", minimum=1)
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
    token = uuid.uuid4().hex[:12]
    iblocks, mblocks = Blocks(im), Blocks(mk)
    graph: dict[Any, Any] = {}
    for k, idx in enumerate(np.ndindex(*mblocks.keys.shape)):
        start = [int(mblocks.edges[a][i]) for a, i in enumerate(idx)]
        graph[f"zi-sums-{token}-{k}"] = (label_sums, mblocks.keys[idx], start)
    sums = combine_sums(_compute(*as_delayed(f"zi-sums-{token}", graph, list(graph), mblocks)))
    if sums.labels.size == 0:
        msg = (
            f"mask has no labels: every pixel of mask from {msk.source} is 0 (background); "
            "nothing to extract"
        )
        raise ArgumentError(msg)
    ids, cents = sums.labels, centroids(sums)
    del sums  # held through the write passes otherwise: 40 bytes per instance
    n = ids.size

    # 2. rows, tiles and layout.
    edges_y = tile_edges(im.chunks[2], tile_size)
    edges_x = tile_edges(im.chunks[3], tile_size)
    plan = Plan(ids, cents, order, seed, diameter, edges_y, edges_x, tuple(im.shape[2:]))
    crop_shape = (int(im.shape[0]), int(im.shape[1]), diameter, diameter)
    crop_bytes = math.prod(crop_shape) * im.dtype.itemsize
    chunk_i = _resolve_chunk_i(chunk_i, shards, crop_bytes, n)
    if isinstance(compressors, str) and compressors == "auto":
        compressors = default_compressors(im.dtype, zarr_format)
    layout = StoreLayout(
        n=n,
        crop_shape=crop_shape,
        dtype=im.dtype,
        mask_dtype=mk.dtype if extract_mask else None,
        chunk_i=chunk_i,
        shards=shards,
        zarr_format=zarr_format,
        compressors=compressors,
    )
    # per instance, held to the end: keep no copies in id order (perm is the identity)
    row_ids = ids if order == "id" else ids[plan.perm]
    row_cents = cents if order == "id" else cents[plan.perm]
    del cents

    if out is None:
        pieces = []
        for a in range(0, n, chunk_i):
            b = min(n, a + chunk_i)
            graph = {}
            (parts,) = tile_tasks(
                plan, iblocks, mblocks, [a, b], remove_background, False, token, graph
            )
            key = f"zi-crops-{token}-{a}"
            graph[key] = task_with_parts(assemble_crops, (a, b, crop_shape, im.dtype), parts)
            (delayed,) = as_delayed(key, graph, [key], iblocks, mblocks)
            pieces.append(da.from_delayed(delayed, (b - a, *crop_shape), dtype=im.dtype))
        return row_ids, da.concatenate(pieces, axis=0)

    # 3. the store: create, or resume an interrupted run.
    path = os.fspath(out)
    attrs = {
        "version": _library_version(),
        "source": {"image": img.source, "mask": msk.source},
        "channel_names": channel_names,
        "parameters": {
            "diameter": diameter,
            "remove_background": bool(remove_background),
            "extract_mask": bool(extract_mask),
            "order": order,
            "seed": seed,
            "chunk_i": chunk_i,
            "shards": shards,
            "zarr_format": zarr_format,
            "compressors": repr(compressors),
            "dtype": str(im.dtype),
            "image_shape": [int(s) for s in im.shape],
            "n_instances": int(n),
        },
        "axes": ["i", "c", "z", "y", "x"],
    }
    group, todo = prepare_store(
        path,
        layout,
        row_ids,
        row_cents,
        attrs,
        overwrite=overwrite,
        storage_options=storage_options,
    )
    del row_cents  # written to the store
    arr, marr, prog = group[IMAGE_KEY], group.get(MASK_KEY), group[PROGRESS_KEY]
    # Every chunk is written, even an all-zero one: zarr would otherwise compare each
    # chunk with the fill value first (a full pass over the crops) and leave the chunk
    # out, which readers cannot tell from a lost write.
    arr = arr.with_config({"write_empty_chunks": True})
    if marr is not None:
        marr = marr.with_config({"write_empty_chunks": True})
    write = functools.partial(_write_units, arr, marr, prog)
    row_bytes = crop_bytes * (2 if extract_mask else 1)
    per_task = max(1, min(_TASK_BYTES, memory_limit) // (layout.unit * row_bytes))
    groups = write_groups(todo, per_task)
    with tqdm(
        total=int(todo.size),
        desc="extract_instances",
        unit="chunk",
        disable=None if progress is None else not progress,
    ) as bar:
        for pass_groups, peak in plan_passes(plan, groups, layout.unit, n, row_bytes, memory_limit):
            bounds = [g.start * layout.unit for g in pass_groups]
            bounds.append(min(n, pass_groups[-1].stop * layout.unit))
            client = _client()  # the graph's shape follows where it runs
            graph = {}
            parts = tile_tasks(
                plan,
                iblocks,
                mblocks,
                bounds,
                remove_background,
                extract_mask,
                token,
                graph,
                pack=peak > _PACK_ABOVE,
                handoff=client is None,
            )
            keys = [f"zi-write-{token}-{units.start}" for units in pass_groups]
            for key, units, a, b, p in zip(
                keys, pass_groups, bounds[:-1], bounds[1:], parts, strict=True
            ):
                graph[key] = task_with_parts(write, (units, a, b), p)
            writes = as_delayed(f"zi-pass-{token}-{bounds[0]}", graph, keys, iblocks, mblocks)
            _run(writes, bar, f"zi-write-{token}-", client)
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
