"""The write side of ``extract_instances``: passes of tile cuts and write tasks into the store.

The units to write (output chunks, or shards) are grouped into write tasks of about
8 MiB of crops, and the write tasks into passes whose crops held stay within the
memory limit (:func:`._pass_memory.plan_passes`). Each pass is one Dask graph: the
tile cuts of the rows it writes and one :func:`write_units` task per write task,
which gathers its rows, writes whole units, then flags them done in ``progress``.

The passes also bring back what the extraction learns from reading the inputs
(:class:`Found`): the first pass counts the object intensities under every mask
block (:func:`._mask_pass.histogram_tasks`, sharing the decoded blocks with the
cuts), and every cut counts the pixels inside the windows that may clip their
object (:class:`._tile_tasks.InsideCounts`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr
from tqdm.auto import tqdm

from ._graph import Graph, after, as_delayed, task_with_parts
from ._intensity import IntensityCounts
from ._mask_pass import combine_histograms, histogram_tasks
from ._pass_memory import plan_passes
from ._schedule import client, run_with_progress
from ._store import IMAGE_KEY
from ._study_plan import StudyPlan
from ._tile_plan import write_groups
from ._tile_tasks import Blocks, InsideCounts, assemble, tile_tasks
from ._write import MASK_KEY, PROGRESS_KEY, StoreLayout, flag_done, write_rows

__all__ = ["Found", "WriteJob", "write_passes", "write_units"]

# Bytes of crops written by one task (whole units; zarr encodes a task's chunks concurrently).
_TASK_BYTES = 8 * 2**20
# A pass expected to hold more crops than this keeps the ones waiting for later tiles
# compressed (:class:`._packed.Packed`): with ids in raster order a pass holds about
# one tile row of crops, which grows with the image width.
_PACK_ABOVE = 64 * 2**20


@dataclass(frozen=True, eq=False)
class WriteJob:
    """What the write passes of one call need besides the store.

    ``images[s]``/``masks[s]`` are the input blocks of source ``s``, ``plan`` the
    plan of the rows over all sources; ``token`` makes the task keys unique to the
    call. ``first_row``: the store row of the plan's first row (rows appended after
    the ``first_row`` rows a store holds already). ``candidates``: per instance of
    the plan, whether the cuts count its pixels inside its window (``None``: none);
    ``intensity``: whether the first pass counts the object intensities.
    """

    plan: StudyPlan
    images: Sequence[Blocks]
    masks: Sequence[Blocks]
    layout: StoreLayout
    remove_background: bool
    extract_mask: bool
    memory_limit: int
    token: str
    first_row: int = 0
    candidates: np.ndarray | None = None
    intensity: bool = False


@dataclass(frozen=True, eq=False)
class Found:
    """What the write passes learnt besides the crops.

    ``histograms``: the object intensities per source (``None``: not counted);
    ``counted``/``inside``: per instance of the plan, whether a cut counted its
    pixels inside its window, and how many.
    """

    histograms: list[IntensityCounts] | None
    counted: np.ndarray
    inside: np.ndarray


def write_units(
    image: zarr.Array,
    mask: zarr.Array | None,
    progress: zarr.Array,
    units: range,
    r0: int,
    r1: int,
    *parts: Any,
    first_row: int = 0,
) -> range:
    """Write rows ``[r0, r1)`` (whole units: chunks or shards), then flag ``units`` done.

    ``parts`` are tile results ``(rows, crops, mask crops)`` holding the rows, their
    rows counted from store row ``first_row``. Rows before ``first_row`` (the rows
    an append's first unit holds already) are read back from the store and written
    again unchanged.
    """
    mshape = None if mask is None else mask.shape[1:]
    mdtype = None if mask is None else mask.dtype
    a, b = r0 - first_row, r1 - first_row
    buf, mbuf = assemble(a, b, image.shape[1:], image.dtype, mshape, mdtype, parts)
    if r0 < first_row:
        buf[: first_row - r0] = image[r0:first_row]
        if mask is not None and mbuf is not None:
            mbuf[: first_row - r0] = mask[r0:first_row]
    write_rows(image, r0, r1, buf)
    if mask is not None and mbuf is not None:
        write_rows(mask, r0, r1, mbuf)
    flag_done(progress, units)
    return units


def write_passes(
    job: WriteJob, group: zarr.Group, todo: np.ndarray, progress: bool | None
) -> Found:
    """Write the units ``todo`` of the store ``group``, pass by pass; return what they found.

    Every chunk is written, even an all-zero one: zarr would otherwise compare each
    chunk with the fill value first (a full pass over the crops) and leave the chunk
    out, which readers cannot tell from a lost write. ``progress``: show a bar
    (``None``: when stderr is a terminal).
    """
    arr = cast("zarr.Array", group[IMAGE_KEY]).with_config({"write_empty_chunks": True})
    marr = cast("zarr.Array | None", group.get(MASK_KEY))
    if marr is not None:
        marr = marr.with_config({"write_empty_chunks": True})
    flags = cast("zarr.Array", group[PROGRESS_KEY])
    write = functools.partial(write_units, arr, marr, flags, first_row=job.first_row)
    layout, n = job.layout, job.layout.n
    crop_bytes = math.prod(layout.crop_shape) * np.dtype(layout.dtype).itemsize
    # a mask crop: one uint8 plane stack (1, z, d, d)
    row_bytes = crop_bytes + (math.prod(layout.crop_shape[1:]) if job.extract_mask else 0)
    per_task = max(1, min(_TASK_BYTES, job.memory_limit) // (layout.unit * row_bytes))
    groups = write_groups(todo, per_task)
    passes = plan_passes(
        job.plan, groups, layout.unit, n, row_bytes, job.memory_limit, job.first_row
    )
    disable = None if progress is None else not progress
    counted = np.zeros(job.plan.n, dtype=bool)
    inside = np.zeros(job.plan.n, dtype=np.int64)
    hists = None
    with tqdm(total=int(todo.size), desc="extract_instances", unit="chunk", disable=disable) as bar:
        for k, (pass_groups, peak) in enumerate(passes):
            got = _write_pass(job, write, pass_groups, peak, bar, job.intensity and k == 0)
            hists = got[0] if k == 0 else hists
            for inst, counts in got[1]:
                counted[inst] = True
                inside[inst] = counts
    return Found(hists, counted, inside)


def _write_pass(
    job: WriteJob, write: Any, pass_groups: Sequence[range], peak: int, bar: Any, hist: bool
) -> tuple[list[IntensityCounts] | None, list[tuple[np.ndarray, np.ndarray]]]:
    """Cut the tiles of one pass and run its write tasks ``write(units, r0, r1, *parts)``.

    The graph's shape follows where it runs: hand-offs on a local scheduler, a task
    per part on a ``distributed`` client. With ``hist``, the pass also counts the
    object intensities of every source. Returns them and, per tile counting some,
    ``(instances, their pixels inside their windows)``.
    """
    unit, n, token = job.layout.unit, job.layout.n, job.token
    bounds = [g.start * unit for g in pass_groups]
    bounds.append(min(n, pass_groups[-1].stop * unit))
    on = client()
    graph: dict[Any, Any] = {}
    inside = None if job.candidates is None else InsideCounts(job.candidates)
    parts = tile_tasks(
        job.plan,
        job.images,
        job.masks,
        [max(0, b - job.first_row) for b in bounds],
        job.remove_background,
        job.extract_mask,
        token,
        graph,
        pack=peak > _PACK_ABOVE,
        handoff=on is None,
        inside=inside,
    )
    keys = [f"zi-write-{token}-{units.start}" for units in pass_groups]
    for key, units, a, b, p in zip(keys, pass_groups, bounds[:-1], bounds[1:], parts, strict=True):
        graph[key] = task_with_parts(write, (units, a, b), p)
    hists = histogram_tasks(job.images, job.masks, token, graph) if hist else []
    _histograms_first(job, graph, hists, f"zi-cut-{token}-{max(0, bounds[0] - job.first_row)}-")
    counts = [] if inside is None else inside.keys
    extra = [h[0] for h in hists] + [k for k, _ in counts]
    sources = [b.source for b in (*job.images, *job.masks)]
    found = as_delayed(f"zi-pass-{token}-{bounds[0]}", graph, [*keys, *extra], sources)
    got = run_with_progress(found[: len(keys)], bar, f"zi-write-{token}-", on, found[len(keys) :])
    histograms = combine_histograms(hists, got[: len(hists)], len(job.images)) if hist else None
    return histograms, [(inst, c) for (_, inst), c in zip(counts, got[len(hists) :], strict=True)]


def _histograms_first(job: WriteJob, graph: Graph, hists: Sequence[Any], cut: str) -> None:
    """Make the cut of the tile holding each histogram's mask block wait for it.

    So a decoded block is counted while its tile is cut and freed with it, not held
    until the scheduler gets to the histogram. ``cut``: the prefix of the cut keys.
    """
    for key, i, (y, x) in hists:
        part = job.plan.parts[i]
        ty = int(np.searchsorted(part.edges_y, y, side="right")) - 1
        tx = int(np.searchsorted(part.edges_x, x, side="right")) - 1
        tile = int(job.plan.tile_offset[i]) + ty * (len(part.edges_x) - 1) + tx
        if f"{cut}{tile}" in graph:
            graph[f"{cut}{tile}"] = after(graph[f"{cut}{tile}"], [key])
