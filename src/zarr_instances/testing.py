"""Synthetic crop stores for tests, benchmarks and the demo."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

__all__ = ["make_instance_array", "make_instance_store"]


def _crops(n: int, shape: tuple[int, int, int, int], dtype: Any, seed: int) -> np.ndarray:
    """Crops whose first pixel encodes the row, so a test can tell rows apart."""
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
    zarr_format: int = 3,
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
    group = zarr.open_group(os.fspath(path), mode="w")
    make_instance_array(
        os.path.join(os.fspath(path), "image"), n, shape, chunk_i=chunk_i, dtype=dtype,
        seed=seed, **kwargs,
    )
    ids = group.create_array("instance_ids", shape=(n,), dtype="int64", chunks=(max(n, 1),))
    ids[:] = np.arange(n, dtype=np.int64) + 1000
    if n_classes is not None:
        rng = np.random.default_rng(seed + 1)
        labels = group.create_array("labels", shape=(n,), dtype="int64", chunks=(max(n, 1),))
        labels[:] = rng.integers(-1, n_classes, size=n)
    return group
