"""Pure row selection: which rows an epoch draws from, counted per logical chunk.

Step 1 of the plan (:mod:`._plan`): labels (``drop_unlabeled``) and
``allowed_chunk_indexes`` decide which rows are *kept*; the plan then orders and
partitions the kept rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArgumentError

__all__ = ["RowSelection", "check_not_empty", "chunk_grid", "compact_ranges", "select_rows"]


def compact_ranges(values: Sequence[int] | np.ndarray) -> str:
    """Format sorted integers compactly, e.g. ``"0-3, 7, 9-12"``."""
    vals = np.unique(np.asarray(values, dtype=np.int64))
    if vals.size == 0:
        return "(none)"
    breaks = np.flatnonzero(np.diff(vals) != 1) + 1
    parts = []
    for run in np.split(vals, breaks):
        parts.append(str(run[0]) if run.size == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


@dataclass(frozen=True)
class RowSelection:
    """The rows an epoch draws from, counted per logical chunk.

    Attributes
    ----------
    n_rows
        Rows of the array (axis 0), or of the concatenated stores.
    chunk_i
        Rows per logical chunk; chunk ``k`` is rows ``[k * chunk_i, (k + 1) * chunk_i)``
        unless ``bounds`` says otherwise (stores of several chunk sizes: the largest).
    counts
        Kept rows per chunk, ``int64`` of length ``n_chunks`` (0 = chunk skipped).
    keep
        Boolean mask of kept rows, or ``None`` when every row of a counted chunk is kept.
    bounds
        ``None`` for the regular grid of one array; else the ``n_chunks + 1`` chunk
        starts of an irregular grid (several stores, each cut into its own chunks of
        ``chunk_i`` rows, or of its own size: a store's last chunk may be short).
    """

    n_rows: int
    chunk_i: int
    counts: np.ndarray
    keep: np.ndarray | None
    bounds: np.ndarray | None = None

    @property
    def n_chunks(self) -> int:
        """Number of logical chunks."""
        return int(self.counts.size)

    @property
    def total(self) -> int:
        """Number of kept rows."""
        return int(self.counts.sum())

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Return the ``[start, stop)`` rows of a logical chunk."""
        if self.bounds is not None:
            return int(self.bounds[chunk]), int(self.bounds[chunk + 1])
        start = chunk * self.chunk_i
        return start, min(start + self.chunk_i, self.n_rows)

    def chunk_rows(self, chunk: int) -> np.ndarray:
        """Return the kept global rows of a chunk, ascending (``int64``)."""
        if self.counts[chunk] == 0:
            return np.empty(0, dtype=np.int64)
        start, stop = self.chunk_bounds(chunk)
        if self.keep is None:
            return np.arange(start, stop, dtype=np.int64)
        return np.flatnonzero(self.keep[start:stop]).astype(np.int64) + start


def chunk_grid(
    store_rows: Sequence[int] | np.ndarray, chunk_i: int | Sequence[int]
) -> np.ndarray | None:
    """Return the chunk starts of stores concatenated, each cut into chunks of ``chunk_i``.

    ``chunk_i`` is one size for every store, or one per store. ``None`` when the grid
    is the regular grid of their concatenation (one size, and every store but the last
    holds a multiple of it). Otherwise ``int64`` of length ``n_chunks + 1``, the last
    entry the total row count; a store of 0 rows adds no chunk.
    """
    sizes = np.asarray(store_rows, dtype=np.int64).reshape(-1)
    if sizes.size and (sizes < 0).any():
        msg = f"store row counts must be >= 0, got {sizes.tolist()!r}"
        raise ArgumentError(msg)
    per_store = np.broadcast_to(np.asarray(chunk_i, dtype=np.int64), sizes.shape)
    nonempty = sizes > 0
    steps = np.unique(per_store)
    if steps.size <= 1 and (nonempty.sum() <= 1 or not (sizes[nonempty][:-1] % steps[0]).any()):
        return None
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    starts = [np.arange(offsets[s], offsets[s + 1], per_store[s]) for s in range(sizes.size)]
    return np.concatenate([*starts, [offsets[-1]]]).astype(np.int64)


def select_rows(
    n_rows: int,
    chunk_i: int | Sequence[int],
    keep: np.ndarray | None = None,
    allowed_chunks: Sequence[int] | np.ndarray | None = None,
    store_rows: Sequence[int] | np.ndarray | None = None,
) -> RowSelection:
    """Count kept rows per logical chunk.

    Parameters
    ----------
    n_rows
        Rows of the array.
    chunk_i
        Rows per logical chunk, ``> 0``; with ``store_rows``, also one size per store.
    keep
        Optional boolean mask of length ``n_rows``; ``None`` keeps every row.
    allowed_chunks
        Optional chunk indexes to restrict to; the others count 0.
    store_rows
        Rows of each store when the rows are several stores concatenated (they must
        sum to ``n_rows``): each store is cut into its own chunks (:func:`chunk_grid`),
        so that no chunk straddles two stores. ``None``: one array.

    Returns
    -------
    RowSelection
        The selection. Its ``total`` may be 0; callers decide whether that is an error.

    Raises
    ------
    ArgumentError
        If ``chunk_i`` is not positive, ``keep`` has the wrong length, or
        ``allowed_chunks`` names a chunk that does not exist.
    """
    sizes = list(chunk_i) if isinstance(chunk_i, Sequence) else [chunk_i]
    if (
        not sizes
        or (len(sizes) > 1 and (store_rows is None or len(sizes) != len(store_rows)))
        or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c <= 0 for c in sizes)
    ):
        msg = f"chunk_i must be a positive integer (or one per store), got {chunk_i!r}"
        raise ArgumentError(msg)
    bounds = None
    if store_rows is not None:
        if int(np.sum(store_rows, dtype=np.int64)) != n_rows:
            msg = f"store row counts {list(store_rows)!r} do not sum to n_rows={n_rows}"
            raise ArgumentError(msg)
        bounds = chunk_grid(store_rows, [int(c) for c in sizes] if len(sizes) > 1 else sizes[0])
    chunk_i = max(int(c) for c in sizes)
    if bounds is None:
        n_chunks = -(-n_rows // chunk_i)
        starts = np.arange(n_chunks, dtype=np.int64) * chunk_i
        stops = np.minimum(starts + chunk_i, n_rows)
    else:
        n_chunks = bounds.size - 1
        starts, stops = bounds[:-1], bounds[1:]
    if keep is None:
        counts = stops - starts
    else:
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (n_rows,):
            msg = f"keep mask must have shape ({n_rows},), got {keep.shape}"
            raise ArgumentError(msg)
        counts = (
            np.add.reduceat(keep, starts, dtype=np.int64)
            if n_chunks
            else np.zeros(0, dtype=np.int64)
        )
        if keep.all():
            keep = None
    counts = counts.astype(np.int64)
    if allowed_chunks is not None:
        allowed = np.asarray(allowed_chunks)
        if allowed.ndim != 1 or (allowed.size and not np.issubdtype(allowed.dtype, np.integer)):
            msg = (
                "allowed_chunk_indexes must be a 1-D sequence of integers, "
                f"got {np.asarray(allowed_chunks)!r}"
            )
            raise ArgumentError(msg)
        bad = allowed[(allowed < 0) | (allowed >= n_chunks)]
        if bad.size:
            msg = (
                f"allowed_chunk_indexes contains chunk indexes that do not exist: "
                f"{compact_ranges(bad)}; valid chunk indexes are {compact_ranges(range(n_chunks))}"
            )
            raise ArgumentError(msg)
        mask = np.zeros(n_chunks, dtype=bool)
        mask[allowed.astype(np.int64)] = True
        counts = np.where(mask, counts, 0)
    return RowSelection(
        n_rows=int(n_rows), chunk_i=chunk_i, counts=counts, keep=keep, bounds=bounds
    )


def check_not_empty(selection: RowSelection, allowed: Any, where: bool) -> None:
    """Raise if ``selection`` keeps no row, naming what selected (``allowed``, ``where``)."""
    if selection.total == 0:
        valid = compact_ranges(range(selection.n_chunks))
        msg = (
            f"No rows to iterate: the chunks selected by allowed_chunk_indexes={allowed!r} "
            f"{'and the rows selected by where ' if where else ''}keep no row (labels < 0 "
            f"are dropped when drop_unlabeled=True); valid chunk indexes are {valid}"
        )
        raise ArgumentError(msg)
