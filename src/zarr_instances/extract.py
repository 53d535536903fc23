"""``extract_instances``: image + mask → one crop per instance, tile by tile on Dask.

How it works
------------
1. **Settings and sources.** The arguments are checked into one frozen ``Settings``;
   the image and mask of every source (one, or a mapping of many: a study,
   :mod:`._sources`) are opened as Dask arrays ``(c, z, y, x)`` and ``(z, y, x)``.
2. **Centroids, one pass over the masks** (:mod:`._mask_pass`). Every Dask block of
   a mask yields exact integer per-label sums (pixel count, sums of z, y, x) and
   extents; the sums are added over blocks and each centre is rounded half to even.
   The result never depends on the chunking or the scheduler. The masks are the only
   input read before the tiles are cut.
3. **Rows.** Instances are ordered by source and id (``order="id"``) or by a seeded
   permutation (``order="random"``); the rows of every output chunk are known up
   front (:class:`._study_plan.StudyPlan` over one :class:`._tile_plan.TilePlan`
   per source, so that every later step sees one sequence of rows and tiles).
4. **Tiles.** The image is cut into tiles made of whole Dask blocks (about
   ``tile_size`` pixels). Each instance belongs to the tile holding the last pixel
   of its window, so an instance straddling tiles is cut exactly once and its window
   reaches out of its tile only upwards and leftwards. A tile task gets its own
   blocks whole and copies of the strips (at most ``diameter - 1`` pixels) it needs
   from the tiles above and to the left, assembles the box covering its windows
   (zero-padded past the image edge) and cuts all its windows in one vectorised step
   (:mod:`._tile_tasks`). A decoded block is freed once its own tile and those strips
   are done, so the decoded input held at once depends on the tile size, not on the
   image width.
5. **Lazy result or writes.** Without ``out``, one Dask task per output chunk gathers
   its rows from the tile results. With ``out``, write tasks (a few write units:
   output chunks, or shards) gather their rows, write whole units, then flag them
   done in the ``progress`` array; write tasks are grouped into passes whose crops
   held stay within ``memory_limit`` (:mod:`._pass_memory`, :mod:`._extract_write`).
   A rerun of the same call skips flagged units. The passes also learn what needs
   the pixels: the first one counts the object intensities under every mask block
   (for the percentiles recorded per source), each cut counts the pixels inside the
   windows whose object's bounding box reaches out of them (the clipping report), so
   that every input block is decoded once per pass. The instance table ``obs`` (with
   ``metadata`` joined) and the attributes so completed are written last, then the
   store is marked complete (:mod:`._extract_store`); ``append=True`` grows an
   existing store instead (:mod:`._append`). Without ``out``, the clipping counts
   read the masks of the tiles holding such windows (:mod:`._clip_tasks`).

The tasks form a plain Dask task graph (a dict, :mod:`._graph`), shaped for where it
runs: hand-offs between tasks on Dask's local schedulers, a task per part and per
strip on a ``dask.distributed`` cluster, so that a worker receives only what it uses.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from ._append import append_target, check_append, crop_parameters
from ._clip_tasks import candidates, clipping
from ._extract_kernels import warm_up
from ._extract_settings import Settings, reject_spatialdata, resolve_chunk_i, settings, store_attrs
from ._extract_store import Rows, check_metadata, write_store
from ._extract_write import WriteJob
from ._geometry import LabelSums, centroids, tile_edges
from ._graph import as_delayed, task_with_parts
from ._mask_pass import mask_pass
from ._sources import Source, channel_names_of, check_study, named_inputs, open_sources
from ._store import IMAGE_KEY
from ._study_plan import StudyPlan
from ._tile_plan import TilePlan
from ._tile_tasks import Blocks, assemble_crops, tile_tasks
from ._windows import (
    Clipping,
    auto_diameter,
    estimate_output_bytes,
    needed_diameter,
)
from ._write import StoreLayout, default_compressors
from .errors import ClippedInstancesWarning

__all__ = ["estimate_output_bytes", "extract_instances"]

logger = logging.getLogger("zarr_instances")


def extract_instances(
    image: Any,
    mask: Any,
    diameter: int | str,
    *,
    out: str | os.PathLike[str] | None = None,
    depth: int | None = None,
    auto_quantile: float = 0.99,
    z_window: int | None = None,
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
    axes: str | None = None,
    mask_axes: str | None = None,
    metadata: Any = None,
    append: bool = False,
) -> tuple[np.ndarray, da.Array]:
    """Cut one ``diameter x diameter`` crop per labelled instance of ``mask`` out of ``image``.

    Every call reports, as one :class:`~zarr_instances.ClippedInstancesWarning`, how
    many instances have more than 1 % of their pixels outside their window.

    Parameters
    ----------
    image
        ``(c, y, x)`` or ``(c, z, y, x)`` (else see ``axes``): NumPy, Dask or Zarr array,
        the path/URL of a Zarr array or an OME-Zarr image (level 0), the path of a TIFF,
        OME-TIFF or ``.npy`` file (read lazily), or a SpatialData image element
        (``sdata.images[name]``). For a ``SpatialData`` object and element
        names use :func:`~zarr_instances.extract_from_spatialdata`.
        Or a mapping ``{source name: image}`` of any of these (a study): every
        source's crops go into one store, extracted in one Dask graph; the sources must
        share the number of channels and the image dtype, and the number of planes
        unless ``z_window`` is given. Rows say which source they come from (the
        ``source`` column of the instance table). A single image is one source, named
        after its file without folder and ending (``.tif``, ``.tiff``, ``.ome.tif``,
        ``.zarr``, ``.npy``, ``.n5``), or ``"image"`` for an in-memory array.
    mask
        Integer labels ``(y, x)`` or ``(z, y, x)`` matching the image; ``0`` is
        background. Any integer dtype; ids need not be contiguous. With ``image`` a
        mapping: a mapping ``{source name: mask}`` with the same keys. Ids may repeat
        across sources; a source whose mask has no labels adds no rows (but not every
        mask may be empty).
    diameter
        Crop size in y and x, at most the image's size. ``"auto"``: the smallest
        size whose windows hold whole objects for ``auto_quantile`` of the instances
        (from their bounding boxes; logged on the ``zarr_instances`` logger and
        recorded in the store's attributes).
    out
        Path or URL of the instance store to write (docs/store-format.md). ``None`` returns a lazy
        Dask array and writes nothing. A finished store has consolidated metadata.
    depth
        Accepted for harpy compatibility: the halo is always exactly what the windows
        need (at most ``diameter // 2``); a given ``depth`` must be ``>= diameter // 2``.
    auto_quantile
        Fraction of the instances that ``diameter="auto"`` fits whole (default 0.99).
    z_window
        Planes per crop around the rounded z centre (from ``zc - z_window // 2``,
        zero-padded past the stack); ``None`` keeps all planes.
    remove_background
        Zero every pixel of a crop that does not belong to its instance.
    extract_mask
        Also write each instance's own mask crop ``(i, 1, z, d, d)`` as the store's
        ``mask`` array: ``uint8``, 1 on the instance's pixels, 0 elsewhere (other
        labels, background, past the image edge). Needs ``out``.
    chunk_i
        Rows per output chunk; default about 2 MiB of crops per chunk.
    order
        ``"id"``: rows by source name, then by ascending instance id; ``"random"``: a
        permutation of the rows of all sources drawn with
        ``numpy.random.default_rng(seed)`` (a preshuffled store).
    seed
        Seed of ``order="random"``.
    overwrite
        Replace an existing store at ``out``. Without it, an extraction with the same
        parameters and instances is resumed when interrupted and returned as it is
        when complete (nothing is written); anything else at ``out`` is an error that
        names the parameters that differ.
    shards
        Rows per shard (Zarr format 3); a multiple of ``chunk_i``.
    compressors
        Passed to :func:`zarr.create_array`. ``"auto"``: Blosc-lz4 level 5 with byte
        shuffle (BENCHMARKS.md compares codecs on crop data).
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
    axes, mask_axes
        Axes of image and mask inputs that record none (unlike OME-Zarr, OME-TIFF,
        xarray), letters ``t c z y x`` in order: ``"yxc"``, ``"zyx"``, ... A ``t`` (and
        a mask's ``c``) of length 1 is dropped, missing ``c``/``z`` get length 1.

    metadata
        Per-instance columns to join onto the store's instance table ``obs``
        (:func:`~zarr_instances.read_table`): a :class:`pandas.DataFrame` with columns
        ``source`` and ``instance_id`` (or those as index levels), the path of a CSV
        file with these columns, or an AnnData table of spatialdata (its
        ``uns["spatialdata_attrs"]`` names the ``region_key`` column, read as
        ``source``, and the ``instance_key`` column, read as ``instance_id``). Rows
        match on ``(source, instance_id)``; for a single image, on ``instance_id``
        alone. Every crop keeps its row (missing values where no metadata row
        matches) and metadata rows that match no crop are dropped; both are counted
        in one :class:`~zarr_instances.UnmatchedMetadataWarning`. A repeated key, a
        missing key column or a column named like a table column is an error,
        raised before any extraction work. Written only with ``out``; with
        ``append=True``, joined onto the new rows only.
    append
        Add the sources of this call to the complete instance store at ``out``, after
        its rows (the new rows ordered among themselves by ``order``); needs ``out``
        and not ``overwrite``. ``chunk_i``, ``shards`` and ``zarr_format`` are the
        store's; the crops must match its (image dtype, channels, ``diameter``, depth,
        ``remove_background``, ``extract_mask``; ``diameter="auto"`` takes the
        store's). Chunks (or shards) holding only old rows are not rewritten; the
        one where the old rows end is written again with the same old rows. A source
        already in the store is refused. An interrupted append leaves the store
        unfinished (readers raise :class:`~zarr_instances.StoreIncompleteError`);
        rerunning the same call finishes it, and until then other appends are refused.

    Returns
    -------
    tuple
        ``instance_ids`` (NumPy ``int64``, one per row, in row order) and ``instances``,
        a Dask array ``(i, c, z, diameter, diameter)`` of the image dtype (``z``:
        ``z_window`` if given), reading from the store when ``out`` is given. With
        ``append=True``, the ids and crops of the new rows only.

    Raises
    ------
    ArgumentError
        On a bad value: ``diameter <= 0`` or larger than the image, image/mask shapes
        that differ, a mask with no labels or with ``uint64`` ids above the ``int64``
        range, an unknown ``order``, bad chunking; image and mask mappings with
        different keys, a source already in the store (``append``), crops that differ
        from the store's.
    ArgumentTypeError
        On a non-integer mask or a non-array input (a ``SpatialData`` object: use
        :func:`~zarr_instances.extract_from_spatialdata`).
    StoreExistsError
        If ``out`` exists and cannot be resumed, and ``overwrite`` is false.
    StoreNotFoundError
        If an input path holds nothing.
    ChunkReadError
        If a stored chunk of a Zarr input cannot be read or decoded (the message names
        the input, the array and the chunk). A chunk that is not stored reads as the
        array's fill value, as in zarr.
    """
    named, study = named_inputs(image, mask)
    for _, im_, mk_ in named:
        reject_spatialdata(im_, mk_)
    s = settings(
        diameter=diameter,
        depth=depth,
        auto_quantile=auto_quantile,
        z_window=z_window,
        out=out,
        remove_background=remove_background,
        extract_mask=extract_mask,
        chunk_i=chunk_i,
        order=order,
        seed=seed,
        overwrite=overwrite,
        shards=shards,
        zarr_format=zarr_format,
        tile_size=tile_size,
        memory_limit=memory_limit,
        storage_options=storage_options,
        progress=progress,
    )
    s, target = append_target(s, append)
    sources = open_sources(named, s.storage_options, s.tile_size, (axes, mask_axes), s.diameter)
    check_study(sources, s.z_window)
    study = study or target is not None  # rows are told apart by source
    if target is not None:
        check_append(target, [x.name for x in sources], crop_parameters(s, sources))
    if metadata is not None:
        check_metadata(metadata, study)
    names = channel_names_of(sources[0], channel_names)
    pixels = sum(int(x.mask.array.size) for x in sources)
    warm_up(sources[0].image.array.dtype, sources[0].mask.array.dtype, pixels)  # large only
    token = uuid.uuid4().hex[:12]
    sums = mask_pass(sources, token, study).sums
    cents = [centroids(x) for x in sums]
    s, windows = _choose_diameter(s, sums, cents, sources)
    first_row = 0 if target is None else target.first_row
    plan, layout = _rows(sums, cents, sources, s, compressors, first_row)
    images = [src.image_blocks for src in sources]
    masks = [src.mask_blocks for src in sources]
    # per instance, held to the end: keep no copies in id order (perm is the identity)
    row_ids = plan.ids if s.order == "id" else plan.ids[plan.perm]
    if s.out is None:
        clip = clipping(plan, sums, masks, token)
        crops = _lazy_crops(plan, images, masks, layout, token, s.remove_background)
        _warn_clipped(clip, s)
        return row_ids, crops
    all_cents = np.concatenate(cents)
    row_cents = all_cents if s.order == "id" else all_cents[plan.perm]
    del cents
    # clipping counts and intensities join the attributes once the passes found them
    attrs = store_attrs(s, sources, names, layout, windows, study)
    job = WriteJob(
        plan, images, masks, layout, s.remove_background, s.extract_mask, s.memory_limit, token,
        candidates=candidates(plan, sums),
    )  # fmt: skip
    rows = Rows(plan, [x.name for x in sources], row_ids, row_cents, all_cents, sums)
    group, clip = write_store(job, s, rows, attrs, target, metadata, study)
    _warn_clipped(clip, s)
    if target is not None:
        return row_ids, da.from_zarr(group[IMAGE_KEY])[first_row:]
    return row_ids, da.from_zarr(group[IMAGE_KEY])


# --------------------------------------------------------------------------- steps


def _choose_diameter(
    s: Settings, sums: Sequence[LabelSums], cents: Sequence[np.ndarray], sources: Sequence[Source]
) -> tuple[Settings, dict[str, Any]]:
    """Settle ``diameter="auto"`` from the objects' extents; return how it was chosen."""
    if s.diameter is not None:
        return s, {"diameter": s.diameter}
    need = np.concatenate(
        [needed_diameter(c, x.lo, x.hi) for c, x in zip(cents, sums, strict=True)]
    )
    d = auto_diameter(need, s.auto_quantile)
    fit = min(min(int(x.image.array.shape[2]), int(x.image.array.shape[3])) for x in sources)
    logger.info(
        'extract_instances: diameter="auto" chose %d (whole objects for %g of %d instances; '
        "the largest object needs %d)%s",
        min(d, fit),
        s.auto_quantile,
        need.size,
        int(need.max()),
        "" if d <= fit else f", capped to the image size {fit}",
    )
    d = min(d, fit)
    windows = {"diameter": "auto", "auto_quantile": s.auto_quantile, "chosen": d}
    return dataclasses.replace(s, diameter=d), windows


def _rows(
    sums: Sequence[LabelSums],
    cents: Sequence[np.ndarray],
    sources: Sequence[Source],
    s: Settings,
    compressors: Any,
    first_row: int = 0,
) -> tuple[StudyPlan, StoreLayout]:
    """Return the plan of the instances of every source and the layout of the output rows.

    ``first_row``: rows the store holds before these (an append).
    """
    assert s.diameter is not None
    parts = []
    for x, c, src in zip(sums, cents, sources, strict=True):
        image = src.image.array
        edges_y = tile_edges(image.chunks[2], s.tile_size)
        edges_x = tile_edges(image.chunks[3], s.tile_size)
        yx = (int(image.shape[2]), int(image.shape[3]))
        nz = int(image.shape[1])
        parts.append(
            TilePlan(x.labels, c, "id", 0, s.diameter, edges_y, edges_x, yx, nz, s.z_window)
        )
    plan = StudyPlan(parts, s.order, s.seed)
    image = sources[0].image.array
    crop_shape = (int(image.shape[0]), plan.depth, s.diameter, s.diameter)
    crop_bytes = math.prod(crop_shape) * image.dtype.itemsize
    chunk_i = resolve_chunk_i(s.chunk_i, s.shards, crop_bytes, first_row + plan.n)
    if isinstance(compressors, str) and compressors == "auto":
        compressors = default_compressors(image.dtype, s.zarr_format)
    layout = StoreLayout(
        n=first_row + plan.n,
        crop_shape=crop_shape,
        dtype=image.dtype,
        mask_dtype=np.dtype(np.uint8) if s.extract_mask else None,
        chunk_i=chunk_i,
        shards=s.shards,
        zarr_format=s.zarr_format,
        compressors=compressors,
    )
    return plan, layout


def _lazy_crops(
    plan: StudyPlan,
    images: Sequence[Blocks],
    masks: Sequence[Blocks],
    layout: StoreLayout,
    token: str,
    remove_background: bool,
) -> da.Array:
    """Return the crops of every row as a Dask array, one task per output chunk."""
    n, chunk_i, crop_shape = layout.n, layout.chunk_i, layout.crop_shape
    pieces = []
    for a in range(0, n, chunk_i):
        b = min(n, a + chunk_i)
        graph: dict[Any, Any] = {}
        (parts,) = tile_tasks(plan, images, masks, [a, b], remove_background, False, token, graph)
        key = f"zi-crops-{token}-{a}"
        graph[key] = task_with_parts(assemble_crops, (a, b, crop_shape, layout.dtype), parts)
        sources = [x.source for x in (*images, *masks)]
        (delayed,) = as_delayed(key, graph, [key], sources)
        pieces.append(da.from_delayed(delayed, (b - a, *crop_shape), dtype=layout.dtype))
    return da.concatenate(pieces, axis=0)


def _warn_clipped(clip: Clipping, s: Settings) -> None:
    """Warn (:class:`ClippedInstancesWarning`) when windows clip objects by more than 1 %."""
    assert s.diameter is not None
    msg = clip.message(s.diameter, s.z_window)
    if msg is not None:
        warnings.warn(msg, ClippedInstancesWarning, stacklevel=3)
