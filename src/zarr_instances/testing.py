"""Synthetic crop stores for tests, benchmarks and the demo."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import zarr

__all__ = ["make_image_and_mask", "make_instance_array", "make_instance_store"]


def _crops(n: int, shape: tuple[int, int, int, int], dtype: Any, seed: int) -> np.ndarray:
    """Random crops; a different ``seed`` per block of rows gives distinct rows."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    hi = 1000 if not np.issubdtype(dt, np.integer) else min(int(np.iinfo(dt).max), 60000)
    x = rng.integers(0, hi, size=(n, *shape)).astype(dt)
    return x


def make_instance_array(
    path: str | os.PathLike[str],
    n: int = 1000,
    shape: tuple[int, int, int, int] = (2, 1, 16, 16),
    *,
    chunk_i: int = 100,
    dtype: Any = "uint16",
    seed: int = 0,
    zarr_format: Literal[2, 3] = 3,
    shards: int | None = None,
    compressors: Any = "auto",
) -> zarr.Array:
    """Write a bare crop array ``(n, *shape)`` of random values and return it.

    Parameters
    ----------
    path
        Where to write.
    n
        Rows (instances).
    shape
        ``(c, z, y, x)`` of one crop.
    chunk_i
        Rows per stored chunk (inner chunk when ``shards`` is given).
    dtype
        Stored dtype.
    seed
        Random seed of the values.
    zarr_format
        2 or 3.
    shards
        Rows per shard (Zarr v3 only), or ``None``.
    compressors
        Passed to :func:`zarr.create_array`.
    """
    arr = zarr.create_array(
        os.fspath(path),
        shape=(n, *shape),
        chunks=(chunk_i, *shape),
        shards=None if shards is None else (shards, *shape),
        dtype=dtype,
        zarr_format=zarr_format,
        compressors=compressors,
        overwrite=True,
    )
    step = max(chunk_i, shards or 0) * 16
    for a in range(0, n, step):
        b = min(n, a + step)
        arr[a:b] = _crops(b - a, shape, dtype, seed + a)
    return arr


def make_instance_store(
    path: str | os.PathLike[str],
    n: int = 1000,
    shape: tuple[int, int, int, int] = (2, 1, 16, 16),
    *,
    chunk_i: int = 100,
    dtype: Any = "uint16",
    seed: int = 0,
    n_classes: int | None = 4,
    **kwargs: Any,
) -> zarr.Group:
    """Write an instance-store group: ``image``, ``instance_ids`` and optional ``labels``.

    Instance ids are ``1000 + row`` so that they differ from row indexes; labels are
    random in ``[-1, n_classes)`` (``-1`` = unlabeled).
    """
    group = zarr.open_group(os.fspath(path), mode="w", zarr_format=kwargs.get("zarr_format", 3))
    make_instance_array(
        os.path.join(os.fspath(path), "image"),
        n,
        shape,
        chunk_i=chunk_i,
        dtype=dtype,
        seed=seed,
        **kwargs,
    )
    ids = group.create_array("instance_ids", shape=(n,), dtype="int64", chunks=(max(n, 1),))
    ids[:] = np.arange(n, dtype=np.int64) + 1000
    if n_classes is not None:
        rng = np.random.default_rng(seed + 1)
        labels = group.create_array("labels", shape=(n,), dtype="int64", chunks=(max(n, 1),))
        labels[:] = rng.integers(-1, n_classes, size=n)
    return group


def make_image_and_mask(
    shape: tuple[int, ...] = (256, 256),
    n_cells: int = 60,
    diameter: int = 16,
    *,
    channels: int = 2,
    dtype: Any = "uint16",
    mask_dtype: Any = "int32",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make a synthetic image and a mask of round cells.

    Cells are discs (balls in 3-D) of radius ``0.3 to 0.5 x diameter`` at random
    centres; later cells overwrite earlier ones where they overlap, cells may touch
    the image edge. Labels are ``1..n_cells`` in raster order of the centres (as a
    segmentation tool would number them); a cell fully covered by others is absent.
    Every channel is background noise plus a per-cell intensity.

    Parameters
    ----------
    shape
        ``(y, x)`` or ``(z, y, x)`` of the mask.
    n_cells
        Number of cells drawn.
    diameter
        Typical cell diameter in pixels.
    channels
        Image channels.
    dtype
        Image dtype.
    mask_dtype
        Mask dtype (an integer dtype).
    seed
        Random seed.

    Returns
    -------
    tuple
        ``image`` ``(c, *shape)`` and ``mask`` ``shape``.
    """
    rng = np.random.default_rng(seed)
    shape3 = (1, *shape) if len(shape) == 2 else tuple(shape)
    nz, ny, nx = shape3
    mask = np.zeros(shape3, dtype=mask_dtype)
    cy = rng.integers(0, ny, n_cells)
    cx = rng.integers(0, nx, n_cells)
    cz = rng.integers(0, nz, n_cells)
    order = np.lexsort((cx, cy))
    cy, cx, cz = cy[order], cx[order], cz[order]
    radius = diameter * rng.uniform(0.3, 0.5, n_cells)
    for k in range(n_cells):
        r = radius[k]
        ri = int(np.ceil(r))
        y0, y1 = max(0, cy[k] - ri), min(ny, cy[k] + ri + 1)
        x0, x1 = max(0, cx[k] - ri), min(nx, cx[k] + ri + 1)
        rz = max(0, int(r // 2)) if nz > 1 else 0
        z0, z1 = max(0, cz[k] - rz), min(nz, cz[k] + rz + 1)
        zz, yy, xx = np.ogrid[z0:z1, y0:y1, x0:x1]
        dz = (zz - cz[k]) / max(rz, 1) * r if nz > 1 else 0
        disc = (yy - cy[k]) ** 2 + (xx - cx[k]) ** 2 + dz**2 <= r * r
        mask[z0:z1, y0:y1, x0:x1][disc] = k + 1
    dt = np.dtype(dtype)
    hi = 1000 if not np.issubdtype(dt, np.integer) else min(int(np.iinfo(dt).max), 4000)
    image = np.empty((channels, *shape3), dtype=dt)
    level = rng.integers(hi // 4, hi, size=(channels, n_cells + 1))
    level[:, 0] = 0
    for c in range(channels):
        noise = rng.integers(0, max(2, hi // 16), size=shape3)
        image[c] = (level[c][mask] + noise).astype(dt)
    if len(shape) == 2:
        return image[:, 0], mask[0]
    return image, mask
