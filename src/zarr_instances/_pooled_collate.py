"""Per-sample batches collated in a DataLoader worker into reused shared memory.

With ``DataLoader(batch_size=...)`` over per-sample tuples, torch's
``default_collate`` stacks every batch into a new shared-memory segment in the
worker (allocated and zero-filled per batch, then mapped by the main process).
:func:`collate_samples` yields the same list of tensors, written into the worker's
pool of reused segments (:class:`._shared_batches.WorkerBatchPool`), when the samples
are tuples of the dataset's usual shape: a crop tensor, then int64 columns (0-d
tensors or Python ints). Anything else, and the main process, gets
``default_collate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from . import _runtime
from ._batching import WORKER_POOL_SIZE
from ._shared_batches import SharedBatch

__all__ = ["collate_samples"]


def _column(values: Sequence[Any]) -> np.ndarray | None:
    """Return the int64 column ``default_collate`` makes of ``values``, else ``None``."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        if not all(
            isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.int64 for v in values
        ):
            return None
        return torch.stack(list(values)).numpy()
    if all(type(v) is int for v in values):  # not bool, not NumPy scalars
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            return None
    return None


def collate_samples(batch: list[Any]) -> Any:
    """Collate per-sample tuples as ``default_collate`` does, in a reused worker segment.

    Parameters
    ----------
    batch
        The samples of one batch.

    Returns
    -------
    Any
        In a DataLoader worker, for tuples ``(x, *columns)`` with equal-shaped crop
        tensors and int64 columns: a batch tuple that reaches the main process as the
        list ``[stacked x, *columns]``, equal to ``default_collate``'s. Otherwise
        ``default_collate(batch)``.
    """
    if get_worker_info() is None or not batch:
        return default_collate(batch)
    first = batch[0]
    if not isinstance(first, tuple) or len(first) < 2 or not isinstance(first[0], torch.Tensor):
        return default_collate(batch)
    width = len(first)
    if not all(isinstance(s, tuple) and len(s) == width for s in batch):
        return default_collate(batch)
    fields = list(zip(*batch, strict=True))
    xs = fields[0]
    shape, dtype = first[0].shape, first[0].dtype
    cpu = torch.device("cpu")
    same = (
        isinstance(x, torch.Tensor) and x.shape == shape and x.dtype == dtype and x.device == cpu
        for x in xs
    )
    if not all(same):
        return default_collate(batch)
    cols = [_column(f) for f in fields[1:]]
    if any(c is None for c in cols):
        return default_collate(batch)
    pool = _runtime.borrow_batch_pool(WORKER_POOL_SIZE)
    try:
        out = pool.take((len(batch), *shape), dtype)
        torch.stack(xs, 0, out=out)
        packed = pool.pack(out, [c for c in cols if c is not None])
    finally:
        _runtime.return_batch_pool(pool)
    # a SharedBatch arrives as a list; a batch in fresh memory (pool full) is made one
    return packed if isinstance(packed, SharedBatch) else list(packed)
