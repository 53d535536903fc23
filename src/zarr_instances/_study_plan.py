"""The plan of one extraction over several sources: their tile plans as one (pure).

Every source (an image and its mask) has its own :class:`._tile_plan.TilePlan`. The
study plan numbers the instances of all sources one after another (source by source,
each by ascending id) and their tiles likewise, so that the write passes, the memory
model and the tile tasks see one sequence of tiles and one sequence of rows, whatever
the number of sources. A single image is a study of one source. Nothing here touches
Dask or Zarr.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._tile_plan import TilePlan, rows_by_tile

__all__ = ["StudyPlan"]


class StudyPlan:
    """The tile plans of several sources as one plan over all their instances and tiles.

    Parameters
    ----------
    parts
        One tile plan per source, in source order, all with the same ``diameter`` and
        ``depth`` (their own ``order`` is not used).
    order
        ``"id"``: rows are the instances source by source, each by ascending id;
        ``"random"``: rows follow ``numpy.random.default_rng(seed).permutation(n)``
        of all instances (for one source, the rows of its own tile plan).
    seed
        Seed of ``order="random"``.

    Attributes
    ----------
    perm
        Instance (index over all sources) of each row.
    tile
        Tile (index over all sources) of each instance.
    starts, starts_z, ids
        Window start ``(y, x)``, first plane and id of each instance.
    source
        Source of each instance.
    inst_offset, tile_offset
        First instance and first tile of each source (and the totals, last).
    """

    def __init__(self, parts: Sequence[TilePlan], order: str, seed: int) -> None:
        if not parts:
            msg = "a study plan needs at least one source"
            raise ValueError(msg)
        depths = {p.depth for p in parts}
        diameters = {p.diameter for p in parts}
        if len(depths) != 1 or len(diameters) != 1:
            msg = (
                f"sources differ in window: depths {sorted(depths)}, diameters {sorted(diameters)}"
            )
            raise ValueError(msg)
        self.parts = list(parts)
        self.diameter = parts[0].diameter
        self.depth = parts[0].depth
        sizes = np.array([p.ids.size for p in parts], dtype=np.int64)
        n_tiles = np.array([p.n_tiles for p in parts], dtype=np.int64)
        self.inst_offset = np.concatenate(([0], np.cumsum(sizes)))
        self.tile_offset = np.concatenate(([0], np.cumsum(n_tiles)))
        n = int(self.inst_offset[-1])
        self.perm = np.arange(n) if order == "id" else np.random.default_rng(seed).permutation(n)
        self.ids = np.concatenate([p.ids for p in parts])
        self.starts = np.concatenate([p.starts for p in parts]).reshape(-1, 2)
        self.starts_z = np.concatenate([p.starts_z for p in parts])
        self.tile = np.concatenate(
            [p.tile + off for p, off in zip(parts, self.tile_offset[:-1], strict=True)]
        )
        self.source = np.repeat(np.arange(len(parts)), sizes)
        self._tile_source = np.repeat(np.arange(len(parts)), n_tiles)

    @classmethod
    def single(cls, plan: TilePlan) -> StudyPlan:
        """Return the plan of one source, with the rows of ``plan`` (its ``perm``)."""
        study = cls([plan], "id", 0)
        study.perm = plan.perm
        return study

    @property
    def n(self) -> int:
        """Number of instances (rows)."""
        return int(self.inst_offset[-1])

    @property
    def n_tiles(self) -> int:
        """Number of tiles over all sources."""
        return int(self.tile_offset[-1])

    def tile_source(self, tile: int) -> int:
        """Source of ``tile``."""
        return int(self._tile_source[tile])

    def image_yx(self, tile: int) -> tuple[int, int]:
        """Size in y and x of the image holding ``tile``."""
        return self.parts[self.tile_source(tile)].image_yx

    def tiles(self, r0: int, r1: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Tiles of rows ``[r0, r1)``: ``(tile, rows ascending, instance indexes)``."""
        return rows_by_tile(self.perm, self.tile, r0, r1)

    def rect(self, tile: int) -> tuple[slice, slice]:
        """Return the pixels ``(ys, xs)`` of ``tile`` in its source's image."""
        s = self.tile_source(tile)
        return self.parts[s].rect(tile - int(self.tile_offset[s]))

    def box(self, inst: np.ndarray) -> tuple[int, int, int, int]:
        """Return the box ``(y0, y1, x0, x1)`` covering the windows of ``inst`` (one source)."""
        s = self.starts[inst]
        lo, hi = s.min(axis=0), s.max(axis=0) + self.diameter
        return int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])
