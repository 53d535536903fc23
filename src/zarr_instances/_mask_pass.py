"""The one pass over the masks of every source: exact label sums and extents; intensities.

One Dask task per mask block sums its labels exactly (:func:`._geometry.label_sums`);
all sources run in one Dask computation, so that many small fields of view are read
in parallel; the results are combined per source on the client.

The intensities of the object pixels (for the percentiles a store records) are
counted by :func:`histogram_tasks`, one task per mask block over the image blocks
under it (:func:`._intensity.block_histogram`). They join the first write pass of an
extraction, which reads those image blocks anyway, so that each is decoded once;
:func:`histograms` runs them alone when nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._geometry import LabelSums, combine_sums, label_sums
from ._graph import Graph, as_delayed, task_with_parts
from ._intensity import IntensityCounts, block_histogram, combine, percentiles
from ._schedule import compute
from ._sources import Source
from ._tile_tasks import Blocks, fill
from .errors import ArgumentError

__all__ = [
    "PERCENTILES",
    "MaskPass",
    "combine_histograms",
    "histogram_tasks",
    "histograms",
    "intensity_attrs",
    "mask_pass",
]

# the object-pixel intensity percentiles recorded per source and channel
PERCENTILES = (0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True, eq=False)
class MaskPass:
    """What the pass over the masks found: per source, the label sums."""

    sums: list[LabelSums]


def intensity_attrs(names: Sequence[str], counts: Sequence[IntensityCounts]) -> dict[str, Any]:
    """Return the store's ``intensity`` attributes: per source and channel, :data:`PERCENTILES`.

    ``None`` stands for a channel without object pixels (JSON has no NaN).
    """
    out: dict[str, list[list[float | None]]] = {}
    for name, c in zip(names, counts, strict=True):
        values = percentiles(c, PERCENTILES)
        out[name] = [[None if np.isnan(v) else float(v) for v in row] for row in values]
    return {"percentiles": list(PERCENTILES), "sources": out}


def _sums(start: list[int], mask: np.ndarray) -> LabelSums:
    """Return the label sums of one mask block starting at global ``start``."""
    return label_sums(mask, start)


def _histogram(
    start: list[int], lead: tuple[int, ...], dtype: np.dtype, image_starts: list, mask: Any, *image
) -> IntensityCounts:
    """Object intensities of the image blocks ``image`` under one mask block."""
    z0, y0, x0 = start
    bz, h, w = mask.shape
    region = np.empty((*lead, h, w), dtype=dtype)
    fill(region, (y0, x0), list(zip(image_starts, image, strict=True)))
    return block_histogram(region[:, z0 : z0 + bz], mask)


def histogram_tasks(
    images: Sequence[Blocks], masks: Sequence[Blocks], token: str, graph: Graph
) -> list[tuple[str, int, tuple[int, int]]]:
    """Add one histogram task per mask block of every source to ``graph``.

    Each reads the mask block and the image blocks under it (whole blocks: their
    keys, shared with any other task of the graph reading them). Returns ``(key,
    source, (y, x) start of the mask block)`` per task, for :func:`combine_histograms`.
    """
    out: list[tuple[str, int, tuple[int, int]]] = []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        for idx in np.ndindex(*mask.keys.shape):
            start = [int(mask.edges[a][j]) for a, j in enumerate(idx)]
            ys = slice(start[1], int(mask.edges[1][idx[1] + 1]))
            xs = slice(start[2], int(mask.edges[2][idx[2] + 1]))
            pieces = image.cover(ys, xs, graph)
            static = (start, image.shape[:-2], image.dtype, [p[0] for p in pieces])
            refs = [mask.keys[idx], *(p[1] for p in pieces)]
            key = f"zi-hist-{token}-{len(out)}"
            graph[key] = task_with_parts(_histogram, static, refs)
            out.append((key, i, (start[1], start[2])))
    return out


def combine_histograms(
    tasks: Sequence[tuple[str, int, Any]], results: Sequence[IntensityCounts], n_sources: int
) -> list[IntensityCounts]:
    """Combine the results of :func:`histogram_tasks` per source (in task order)."""
    mine: list[list[IntensityCounts]] = [[] for _ in range(n_sources)]
    for (_, i, _), got in zip(tasks, results, strict=True):
        mine[i].append(got)
    return [combine(x) for x in mine]


def histograms(
    images: Sequence[Blocks], masks: Sequence[Blocks], token: str
) -> list[IntensityCounts]:
    """Return the object intensities of every source, read in a Dask computation of their own."""
    graph: Graph = {}
    tasks = histogram_tasks(images, masks, token, graph)
    sources = [b.source for b in (*images, *masks)]
    keys = [t[0] for t in tasks]
    got = compute(*as_delayed(f"zi-hists-{token}", graph, keys, sources))
    return combine_histograms(tasks, got, len(images))


def mask_pass(sources: Sequence[Source], token: str, study: bool) -> MaskPass:
    """Return the exact sums and extents of every label of every source (ids ascending).

    One task per mask block sums its labels exactly (one Dask computation over every
    source); the sums are combined per source here. A study may hold sources without
    labels, but not only such.
    """
    graph: Graph = {}
    owner: list[int] = []
    for i, src in enumerate(sources):
        mask = src.mask_blocks
        for idx in np.ndindex(*mask.keys.shape):
            start = [int(mask.edges[a][j]) for a, j in enumerate(idx)]
            key = f"zi-sums-{token}-{len(owner)}"
            graph[key] = task_with_parts(_sums, (start,), [mask.keys[idx]])
            owner.append(i)
    keys = list(graph)
    sources_dask = [src.mask_blocks.source for src in sources]
    parts = compute(*as_delayed(f"zi-sums-{token}", graph, keys, sources_dask))
    owners = np.asarray(owner)
    sums = [
        combine_sums([parts[k] for k in np.flatnonzero(owners == i)]) for i in range(len(sources))
    ]
    for src, x in zip(sources, sums, strict=True):
        _check_labels(src, x, study)
    if study and not any(x.labels.size for x in sums):
        msg = "every mask of the study has no labels (all pixels 0, background): nothing to extract"
        raise ArgumentError(msg)
    return MaskPass(sums)


def _check_labels(src: Source, sums: LabelSums, study: bool) -> None:
    """Raise on a mask without labels (single image) or with ids above the int64 range."""
    where = src.mask.source if not study else f"{src.mask.source} (source {src.name!r})"
    if sums.labels.size == 0 and not study:
        msg = (
            f"mask has no labels: every pixel of mask from {where} is 0 (background); "
            "nothing to extract"
        )
        raise ArgumentError(msg)
    if src.mask_blocks.dtype == np.uint64 and sums.labels.size and sums.labels[0] < 0:
        largest = int(sums.labels.view(np.uint64).max())  # ids >= 2**63 wrapped to int64
        msg = (
            f"mask holds ids above the int64 range: the largest id is {largest} (> 2**63 - 1) "
            f"in mask from {where}; instance ids are stored as int64, so relabel the mask "
            "to ids below 2**63 (e.g. skimage.segmentation.relabel_sequential)"
        )
        raise ArgumentError(msg)
