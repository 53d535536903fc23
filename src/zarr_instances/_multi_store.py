"""Several stores as one dataset (issue 18): open a list of stores and check they fit.

The rows of the stores are concatenated in list order: store ``s`` holds the global
rows ``[offsets[s], offsets[s + 1])``. Every store must hold crops of the same shape
``(c, z, y, x)`` and dtype; a mismatch is an error naming both stores. The chunk grid
of the list is each store's own chunks (:func:`._selection.chunk_grid`); see
docs/dev/multistore-design.md for the design and what is still to be built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._store import OpenedInstances, ZarrPath, open_instances
from .errors import ArgumentError

__all__ = ["OpenedStores", "is_store_list", "open_stores", "stored_chunk_rows"]


def is_store_list(zarr_path: object) -> bool:
    """Return whether ``zarr_path`` is a list (or tuple) of stores rather than one store."""
    return isinstance(zarr_path, (list, tuple))


@dataclass(frozen=True)
class OpenedStores:
    """Opened stores whose rows are concatenated in order.

    Attributes
    ----------
    stores
        Each store, opened.
    offsets
        ``int64`` of length ``n_stores + 1``: store ``s`` holds global rows
        ``[offsets[s], offsets[s + 1])``.
    """

    stores: tuple[OpenedInstances, ...]
    offsets: np.ndarray

    @property
    def n_rows(self) -> int:
        """Rows of all stores together."""
        return int(self.offsets[-1])

    @property
    def store_rows(self) -> list[int]:
        """Rows of each store."""
        return np.diff(self.offsets).tolist()

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """Shape ``(c, z, y, x)`` of one crop (the same in every store)."""
        return tuple(int(s) for s in self.stores[0].array.shape[1:])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the concatenated crops ``(i, c, z, y, x)``."""
        return (self.n_rows, *self.crop_shape)

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the crops (the same in every store)."""
        return np.dtype(self.stores[0].array.dtype)

    @property
    def where(self) -> str:
        """The stores, named for messages."""
        names = ", ".join(s.where for s in self.stores)
        return f"{len(self.stores)} stores [{names}]"

    @property
    def instance_ids(self) -> np.ndarray | None:
        """Stored instance ids of every row, concatenated; ``None`` if a store has none."""
        ids = [s.instance_ids for s in self.stores]
        if any(v is None for v in ids):
            return None
        return np.concatenate([np.asarray(v, dtype=np.int64) for v in ids])

    def store_of(self, rows: np.ndarray) -> np.ndarray:
        """Return the store index of each global row."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def local_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(store, row in that store)`` of each global row."""
        store = self.store_of(rows)
        return store, np.asarray(rows, dtype=np.int64) - self.offsets[store]


def _check_same(first: OpenedInstances, other: OpenedInstances, k: int) -> None:
    a, b = first.array, other.array
    if tuple(a.shape[1:]) != tuple(b.shape[1:]):
        msg = (
            f"zarr_path lists stores with different crop shapes: store 0 {first.where} holds "
            f"crops of shape {tuple(a.shape[1:])} (c, z, y, x), store {k} {other.where} "
            f"crops of shape {tuple(b.shape[1:])}; all stores of one dataset must match"
        )
        raise ArgumentError(msg)
    if np.dtype(a.dtype) != np.dtype(b.dtype):
        msg = (
            f"zarr_path lists stores with different dtypes: store 0 {first.where} holds "
            f"{np.dtype(a.dtype)}, store {k} {other.where} holds {np.dtype(b.dtype)}; "
            "all stores of one dataset must match"
        )
        raise ArgumentError(msg)


def open_stores(
    paths: Sequence[ZarrPath],
    storage_options: dict[str, Any] | None = None,
    codec_pipeline: str | None = None,
) -> OpenedStores:
    """Open every store of a list (paths, URLs or opened nodes) and check that they fit.

    Raises
    ------
    ArgumentError
        If the list is empty, or two stores differ in crop shape or dtype (the message
        names both).
    StoreNotFoundError, StoreIncompleteError
        As :func:`._store.open_instances`, for the store concerned.
    """
    if not is_store_list(paths) or len(paths) == 0:
        msg = f"zarr_path must be a store or a non-empty list of stores, got {paths!r}"
        raise ArgumentError(msg)
    stores = tuple(open_instances(p, storage_options, codec_pipeline) for p in paths)
    for k, other in enumerate(stores[1:], start=1):
        _check_same(stores[0], other, k)
    sizes = [int(s.array.shape[0]) for s in stores]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    return OpenedStores(stores=stores, offsets=offsets)


def stored_chunk_rows(opened: OpenedStores) -> int | tuple[int, ...]:
    """Return the stored chunk size along axis 0 (``chunk_i=None``): one, or one per store.

    Stores chunked alike give one size; stores chunked differently (e.g. written with
    ``extract_instances``' default, which sizes the chunks of a small store to its
    rows) give each store's own size, so that every store is read chunk by chunk.
    """
    sizes = tuple(int(s.array.chunks[0]) for s in opened.stores)
    return sizes[0] if len(set(sizes)) == 1 else sizes


@dataclass(frozen=True)
class Source:
    """What the dataset needs of its crops, from one store or a list of stores.

    Attributes
    ----------
    shape, dtype
        Shape ``(i, c, z, y, x)`` (all rows) and dtype of the crops.
    stored_chunk_i
        Stored chunk size along axis 0 (the default ``chunk_i``): one, or one per store.
    instance_ids
        Stored instance ids of every row, or ``None``.
    where
        The store(s), named for messages.
    single
        The opened store when there is one; ``None`` for a list.
    store_rows
        Rows of each store of a list; ``None`` for one store.
    stores
        Every opened store (one, or each of the list).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    stored_chunk_i: int | tuple[int, ...]
    instance_ids: np.ndarray | None
    where: str
    single: OpenedInstances | None
    store_rows: list[int] | None
    stores: tuple[OpenedInstances, ...]


def open_source(
    zarr_path: ZarrPath | Sequence[ZarrPath],
    storage_options: dict[str, Any] | None,
) -> Source:
    """Open ``zarr_path`` (one store or a list) for the dataset."""
    if not is_store_list(zarr_path):
        one = open_instances(zarr_path, storage_options)  # type: ignore[arg-type]
        shape = tuple(int(s) for s in one.array.shape)
        chunks = int(one.array.chunks[0])
        return Source(
            shape, one.array.dtype, chunks, one.instance_ids, one.where, one, None, (one,)
        )
    many = open_stores(zarr_path, storage_options)  # type: ignore[arg-type]
    return Source(
        many.shape,
        many.dtype,
        stored_chunk_rows(many),
        many.instance_ids,
        many.where,
        None,
        many.store_rows,
        many.stores,
    )


def instance_ids_of(
    given: np.ndarray | None, stored: np.ndarray | None, where: str, n_rows: int
) -> np.ndarray:
    """Return the instance ids given, else the stored ones (checked: ``n_rows`` integers)."""
    from ._validate import as_int_vector

    if given is None:
        if stored is None:
            msg = (
                f"instance_ids is None but zarr_path={where} is a bare array; pass "
                "instance_ids, or an instance store group that holds 'instance_ids'"
            )
            raise ArgumentError(msg)
        given = stored
    return as_int_vector(given, "instance_ids", n_rows)
