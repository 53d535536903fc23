"""The one pass over the masks of every source: exact label sums, extents and intensities.

One Dask task per mask block sums its labels exactly (:func:`._geometry.label_sums`)
and, when asked, counts the intensities of the object pixels of the image blocks
under it (:func:`._intensity.block_histogram`); all sources run in one Dask
computation, so that many small fields of view are read in parallel; the results are
combined per source on the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._geometry import LabelSums, combine_sums, label_sums
from ._graph import as_delayed, task_with_parts
from ._intensity import IntensityCounts, block_histogram, combine, percentiles
from ._schedule import compute
from ._sources import Source
from ._tile_tasks import fill
from .errors import ArgumentError

__all__ = ["PERCENTILES", "MaskPass", "mask_pass"]

# the object-pixel intensity percentiles recorded per source and channel
PERCENTILES = (0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True, eq=False)
class MaskPass:
    """What the pass over the masks found: per source, label sums and object intensities.

    ``intensity[s]`` is ``None`` when the pass did not read the images.
    """

    sums: list[LabelSums]
    intensity: list[IntensityCounts | None]

    def percentiles(self, names: Sequence[str]) -> dict[str, list[list[float | None]]]:
        """Per source name, per channel, the object-pixel percentiles :data:`PERCENTILES`.

        ``None`` stands for a channel without object pixels (JSON has no NaN).
        """
        out: dict[str, list[list[float | None]]] = {}
        for name, counts in zip(names, self.intensity, strict=True):
            if counts is None:
                continue
            values = percentiles(counts, PERCENTILES)
            out[name] = [[None if np.isnan(v) else float(v) for v in row] for row in values]
        return out


def _block(
    start: list[int], lead: tuple[int, ...], dtype: np.dtype, image_starts: list, mask: Any, *image
) -> tuple[LabelSums, IntensityCounts | None]:
    """Label sums of one mask block and, given its image blocks, its object intensities."""
    sums = label_sums(mask, start)
    if not image_starts:
        return sums, None
    z0, y0, x0 = start
    bz, h, w = mask.shape
    region = np.empty((*lead, h, w), dtype=dtype)
    fill(region, (y0, x0), list(zip(image_starts, image, strict=True)))
    return sums, block_histogram(region[:, z0 : z0 + bz], mask)


def mask_pass(
    sources: Sequence[Source], token: str, study: bool, intensity: bool = False
) -> MaskPass:
    """Return the exact sums and extents of every label of every source (ids ascending).

    One task per mask block sums its labels exactly (one Dask computation over every
    source); the sums are combined per source here. With ``intensity`` each task
    also reads the image blocks under its mask block and counts the intensities of
    the object pixels (:mod:`._intensity`). A study may hold sources without labels,
    but not only such.
    """
    graph: dict[Any, Any] = {}
    owner: list[int] = []
    for i, src in enumerate(sources):
        mask, image = src.mask_blocks, src.image_blocks
        for idx in np.ndindex(*mask.keys.shape):
            start = [int(mask.edges[a][j]) for a, j in enumerate(idx)]
            pieces: list[list[Any]] = []
            if intensity:
                ys = slice(start[1], int(mask.edges[1][idx[1] + 1]))
                xs = slice(start[2], int(mask.edges[2][idx[2] + 1]))
                pieces = image.cover(ys, xs, graph)
            static = (start, image.shape[:-2], image.dtype, [p[0] for p in pieces])
            refs = [mask.keys[idx], *(p[1] for p in pieces)]
            graph[f"zi-sums-{token}-{len(owner)}"] = task_with_parts(_block, static, refs)
            owner.append(i)
    keys = [k for k in graph if str(k).startswith(f"zi-sums-{token}-")]
    sources_dask = [b.source for src in sources for b in (src.mask_blocks, src.image_blocks)]
    parts = compute(*as_delayed(f"zi-sums-{token}", graph, keys, sources_dask))
    owners = np.asarray(owner)
    sums, counts = [], []
    for i in range(len(sources)):
        mine = [parts[k] for k in np.flatnonzero(owners == i)]
        sums.append(combine_sums([p[0] for p in mine]))
        counts.append(combine([p[1] for p in mine]) if intensity else None)
    for src, x in zip(sources, sums, strict=True):
        _check_labels(src, x, study)
    if study and not any(x.labels.size for x in sums):
        msg = "every mask of the study has no labels (all pixels 0, background): nothing to extract"
        raise ArgumentError(msg)
    return MaskPass(sums, counts)


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
