"""Pure: sets of epoch positions as sorted, disjoint half-open intervals."""

from __future__ import annotations

import numpy as np

__all__ = ["Intervals", "merge_intervals", "subtract_intervals"]

Intervals = tuple[np.ndarray, np.ndarray]


def merge_intervals(starts: np.ndarray, ends: np.ndarray) -> Intervals:
    """Sort and merge half-open intervals into disjoint, non-adjacent ones."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    new = np.ones(starts.size, dtype=bool)
    new[1:] = starts[1:] > ends[:-1]
    idx = np.flatnonzero(new)
    return starts[idx].astype(np.int64), np.append(ends[idx[1:] - 1], ends[-1]).astype(np.int64)


def subtract_intervals(a: Intervals, b: Intervals) -> Intervals:
    """Return the positions of ``a`` not in ``b`` (both disjoint and sorted)."""
    bounds = np.concatenate([a[0], a[1], b[0], b[1]])
    if bounds.size == 0:
        return a
    cuts = np.unique(bounds)
    lo, hi = cuts[:-1], cuts[1:]
    in_a = np.searchsorted(a[0], lo, side="right") > np.searchsorted(a[1], lo, side="right")
    in_b = np.searchsorted(b[0], lo, side="right") > np.searchsorted(b[1], lo, side="right")
    keep = in_a & ~in_b
    return merge_intervals(lo[keep], hi[keep])
