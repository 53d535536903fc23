"""The tile plan of ``extract_instances``: rows, windows and tiles of every instance (pure).

Instances are put in row order (by id, or a seeded permutation); each gets the window
around its centroid and the tile holding the window's last pixel. Write tasks are
runs of consecutive output units. Nothing here touches Dask or Zarr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._geometry import window_starts

if TYPE_CHECKING:
    from ._study_plan import StudyPlan

__all__ = ["TilePlan", "group_last_tiles", "rows_by_tile", "write_groups"]


class TilePlan:
    """Rows, windows and tile membership of every instance (pure NumPy).

    Parameters
    ----------
    ids
        Instance ids, ascending.
    cents
        Integer centroids ``(n, 3)`` (z, y, x) in the order of ``ids``.
    order
        ``"id"``: row ``r`` is instance ``r``; ``"random"``: rows follow
        ``numpy.random.default_rng(seed).permutation(n)``.
    seed
        Seed of ``order="random"``.
    diameter
        Window size in y and x.
    edges_y, edges_x
        Tile edges along y and x (``n_tiles + 1`` coordinates each).
    image_yx
        Image size in y and x.
    n_z
        Number of planes of the image.
    z_window
        Planes per window around the z centre; ``None``: all ``n_z`` planes.

    Attributes
    ----------
    perm
        Instance index of each row.
    starts
        Window start ``(y, x)`` of each instance.
    starts_z
        First plane of each instance's window (``zc - z_window // 2``; ``0`` when
        every window holds all planes); planes past the stack are zero-padded.
    depth
        Planes per window.
    tile
        Tile of each instance (raster index): the tile holding the last pixel of its
        window, clipped to the image, so that a window reaches out of its tile only
        upwards and leftwards, into tiles before it in raster order.
    """

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
        n_z: int = 1,
        z_window: int | None = None,
    ) -> None:
        n = ids.size
        self.perm = np.arange(n) if order == "id" else np.random.default_rng(seed).permutation(n)
        self.ids = ids
        self.diameter = diameter
        self.image_yx = image_yx
        self.starts = window_starts(cents[:, 1:], diameter)
        if z_window is None:
            self.depth, self.starts_z = n_z, np.zeros(n, dtype=np.int64)
        else:
            self.depth, self.starts_z = z_window, window_starts(cents[:, 0], z_window)
        self.edges_y, self.edges_x = edges_y, edges_x
        last = np.minimum(self.starts + (diameter - 1), np.asarray(image_yx) - 1)
        ty = np.searchsorted(edges_y, last[:, 0], side="right") - 1
        tx = np.searchsorted(edges_x, last[:, 1], side="right") - 1
        self.tile = ty * (len(edges_x) - 1) + tx

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return (len(self.edges_y) - 1) * (len(self.edges_x) - 1)

    def tiles(self, r0: int, r1: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Tiles of rows ``[r0, r1)``: ``(tile, rows ascending, instance indexes)``."""
        return rows_by_tile(self.perm, self.tile, r0, r1)

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


def rows_by_tile(
    perm: np.ndarray, tile: np.ndarray, r0: int, r1: int
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Tiles of rows ``[r0, r1)``: ``(tile, rows ascending, instance indexes)``.

    ``perm`` gives the instance of each row and ``tile`` the tile of each instance.
    """
    rows = np.arange(r0, r1)
    inst = perm[r0:r1]
    tiles = tile[inst]
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


def group_last_tiles(plan: TilePlan | StudyPlan, bounds: np.ndarray) -> np.ndarray:
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
