"""Batches that leave DataLoader workers through reused shared-memory segments.

A DataLoader worker hands each batch to the main process through shared memory.
Left to torch, every batch is a new segment: the worker allocates it
(``posix_fallocate``), zero-fills it page by page (2,048 page faults for an 8 MiB
float32 batch), and the main process maps and unmaps it. On a small machine that
caps the DataLoader at a few tens of thousands of 64 x 64 crops per second, whatever
the dataset does.

Here a worker keeps a small pool of segments and writes each batch into one that
the main process has released, so its pages are already there:

* A batch is two blocks of shared memory: its crops (a pooled *segment*) and its
  per-row columns (labels, ids, rows: the segment's *column block*). Each block
  starts with a 64-byte header whose first 4 bytes hold its state: ``SENT``
  (written by the worker when it fills the block) or ``FREE`` (written by the main
  process once nothing there references the block any more).
* The worker yields a :class:`SharedBatch` (a tuple). Pickled to the main process, it
  unpickles (:func:`_received`) into the list of tensors a plain tuple would have
  become, after registering both blocks. On every arrival, the main process releases
  each earlier block that no tensor, view, NumPy array, DLPack capsule, autograd
  record or storage object references any more: it writes ``FREE`` into it. It keeps
  released blocks mapped (up to 256 MiB, each until it has not come back for 64
  arrivals), so that reading the block's next batch costs no page faults either.
* The crops and the columns are released separately: keeping a batch's ids (to join
  predictions back) holds the column block only, and the crop segment is reused.
* A worker reuses a segment only when it reads ``FREE`` *and* nothing in the worker
  references it (a wrapping dataset that keeps a batch keeps its segment); likewise
  the segment's column block, which is otherwise replaced by a fresh one. With no
  segment free and the pool full (the consumer keeps batches), it falls back to a
  fresh segment per batch, as torch does: never waiting, never overwriting.
* A worker keeps its pool from one epoch to the next (:func:`._runtime.borrow_batch_pool`):
  a segment the consumer has held for more than 32 batches is dropped from the pool
  (never written again) and a new one takes its place, so kept batches do not leave
  a long-lived pool without free segments.
* Whether anything references a block is answered by :mod:`._refcount`; when its
  self-test fails, the pool hands out fresh segments for every batch.

A batch that never reaches :func:`_received` (a wrapping dataset that builds its
own tuple) leaves its blocks ``SENT``: they are not reused, and are dropped from the
pool in turn.

Not tracked: a batch the main process sends on to yet another process (a
``torch.multiprocessing`` queue passes the same segment along). Once the main
process drops it, the worker may refill the segment while that process still reads
it; ``clone()`` a batch before sending it on.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from . import _refcount, _runtime
from ._normalize import empty_output

__all__ = ["SegmentRegistry", "SharedBatch", "WorkerBatchPool"]

_HEADER = 64  # bytes before the data in a block (alignment for any dtype)
# batches taken since a segment was sent, beyond which it counts as kept by the consumer
_STALE_TAKES = 32
_FREE, _SENT = 0, 1


def _block(nbytes: int) -> torch.Tensor:
    """Return the keeper of a new shared block: a header, then ``nbytes`` of data."""
    return _refcount.keeper(_refcount.new_shared(_HEADER + nbytes))


def _capacity(block: torch.Tensor) -> int:
    return int(block.untyped_storage().nbytes()) - _HEADER


def _released(block: torch.Tensor) -> bool:
    """Whether the main process released ``block`` and nothing here references it."""
    return _refcount.read_flag(block) == _FREE and _refcount.unused(block)


def _data(block: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Return a tensor of ``shape``/``dtype`` over ``block``'s data (after its header)."""
    strides: list[int] = []
    step = 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    offset = _HEADER // dtype.itemsize
    return torch.empty(0, dtype=dtype).set_(block.untyped_storage(), offset, shape, strides)


class SharedBatch(tuple[Any, ...]):
    """A batch tuple whose tensors live in a pooled worker segment.

    Inside the worker it behaves as the tuple it is. ``_fields`` makes
    ``default_convert`` (the DataLoader's collate function with ``batch_size=None``)
    rebuild it as this type rather than turn it into a list; unpickled in the main
    process it becomes a list, as ``default_convert`` makes of a plain tuple.
    """

    _fields = ()

    def __new__(cls, *items: Any) -> SharedBatch:
        return super().__new__(cls, items)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        block = _column_block(self[1:])
        if block is None:
            return (_received, (tuple(self),))
        # the columns travel as their one block: one tensor to share and rebuild, not k
        return (_received_columns, (self[0], block))


def _column_block(cols: tuple[Any, ...]) -> torch.Tensor | None:
    """Return the ``(k, m)`` block whose rows are ``cols``, if they are its consecutive rows."""
    if not cols or not all(isinstance(c, torch.Tensor) for c in cols):
        return None
    first = cols[0]
    if first.dim() != 1 or first.dtype != torch.int64:
        return None
    m, at = int(first.shape[0]), first.storage_offset()
    ptr = first.untyped_storage().data_ptr()
    for k, c in enumerate(cols):
        if (
            c.dim() != 1
            or c.dtype != torch.int64
            or c.shape[0] != m
            or (m > 1 and c.stride(0) != 1)
            or c.storage_offset() != at + k * m
            or c.untyped_storage().data_ptr() != ptr
        ):
            return None
    return torch.empty(0, dtype=torch.int64).set_(
        first.untyped_storage(), at, (len(cols), m), (m, 1)
    )


class _Segment:
    __slots__ = ("cols", "data", "sent_at")

    def __init__(self, nbytes: int) -> None:
        self.data = _block(nbytes)
        self.cols: torch.Tensor | None = None
        self.sent_at = 0  # the pool's take count when last written


class WorkerBatchPool:
    """Worker side: shared-memory segments reused for the batches of one iteration.

    Not thread-safe: used by the one thread producing the iteration's batches.

    Parameters
    ----------
    size
        Segments kept (about the batches in flight: produced ahead, queued in the
        DataLoader, held by the consumer). Beyond it, fresh segments are used.

    Attributes
    ----------
    reused
        Batches written into a segment that had been used before.
    fresh
        Batches that got fresh shared memory (pool full, or reuse off).
    fresh_columns
        Column blocks allocated for pooled segments (first use, or the last one held).
    evicted
        Segments dropped from the pool, held by the consumer for long (or too small),
        each replaced by a new one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._segments: list[_Segment] = []
        self._by_ptr: dict[int, _Segment] = {}
        self.enabled = _refcount.reuse_enabled()
        self.reused = self.fresh = self.fresh_columns = self.evicted = 0
        self._takes = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return a tensor of ``shape``/``dtype`` in shared memory: pooled if one is free."""
        seg = self._free_segment(math.prod(shape) * dtype.itemsize) if self.enabled else None
        if seg is None:
            self.fresh += 1
            return empty_output(shape, dtype, shared=True)
        _refcount.write_flag(seg.data, _SENT)
        return _data(seg.data, dtype, shape)

    def _free_segment(self, nbytes: int) -> _Segment | None:
        self._takes += 1
        for seg in self._segments:
            if _capacity(seg.data) >= nbytes and _released(seg.data):
                self.reused += 1
                seg.sent_at = self._takes
                return seg
        if len(self._segments) >= self.size and not self._evict_one(nbytes):
            return None
        seg = _Segment(nbytes)
        seg.sent_at = self._takes
        self._segments.append(seg)
        self._by_ptr[seg.data.data_ptr()] = seg
        return seg

    def _evict_one(self, nbytes: int) -> bool:
        """Drop the segment longest out of use, if one is; a new one takes its place.

        Out of use: held by the consumer for more than :data:`_STALE_TAKES` batches
        (kept for good, as predictions kept with their crops), or free but too small.
        The pool forgets it: never written again, its memory goes when the consumer
        drops it. A pool that lives on from epoch to epoch so never fills with
        segments the consumer keeps.
        """
        stale = [
            seg
            for seg in self._segments
            if self._takes - seg.sent_at > _STALE_TAKES or _capacity(seg.data) < nbytes
        ]
        if not stale:
            return False
        old = min(stale, key=lambda seg: seg.sent_at)
        self._segments.remove(old)
        del self._by_ptr[old.data.data_ptr()]
        self.evicted += 1
        return True

    def pack(self, x: torch.Tensor, cols: list[np.ndarray]) -> tuple[Any, ...]:
        """Return the batch tuple ``(x, *cols)`` to yield, columns as int64 tensors.

        With ``x`` from a pooled segment, the columns go into that segment's column
        block and the result is a :class:`SharedBatch`; a column block still held
        (here, or by the main process) is left alone and replaced by a fresh one.
        Otherwise a plain tuple with the columns in one fresh shared block.
        """
        m = int(x.shape[0])
        seg = self._by_ptr.get(x.untyped_storage().data_ptr())
        if seg is None:
            block = empty_output((len(cols), m), torch.int64, shared=True)
        else:
            need = 8 * len(cols) * m
            if seg.cols is None or _capacity(seg.cols) < need or not _released(seg.cols):
                seg.cols = _block(max(8, need))
                self.fresh_columns += 1
            _refcount.write_flag(seg.cols, _SENT)
            block = _data(seg.cols, torch.int64, (len(cols), m))
        for k, col in enumerate(cols):
            block[k] = torch.from_numpy(np.asarray(col, dtype=np.int64))
        if seg is None:
            return (x, *block.unbind(0))
        return SharedBatch(x, *block.unbind(0))


# --------------------------------------------------------------------------- main process
#
# A released segment stays mapped here for a while: when its worker sends it again,
# torch finds the mapping still alive and reuses it, so reading the batch costs no
# page faults (2,048 per 8 MiB). Kept mappings are bounded in bytes, and dropped when
# their segment has not come back for a while (a finished loader, workers started anew).

_KEEP_BYTES = 256 * 2**20  # mapped bytes of released blocks kept at most
_KEEP_ARRIVALS = 64  # a kept block not back within this many arrivals is dropped
_RECHECK_MAX = 64  # arrivals between two checks of a block held for long, at most


def _recheck_after(checks: int) -> int:
    """Arrivals until the next check of a block found held ``checks`` times.

    Every arrival for the first two (a consumer drops a batch when it takes the
    next), then doubling up to :data:`_RECHECK_MAX`: blocks kept for good (ids joined
    back after inference) cost a bounded share of the checks per arrival.
    """
    return min(_RECHECK_MAX, 1 << max(0, checks - 2))


class SegmentRegistry:
    """Main process: the blocks of received batches, held or released and kept mapped.

    One per process (:func:`._runtime.segment_registry`); thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # block address -> (its keeper, whether it holds crops rather than columns)
        self._held: dict[int, tuple[torch.Tensor, bool]] = {}
        # checks of held blocks: (arrival when due, checks so far, block address)
        self._due: list[tuple[int, int, int]] = []
        # released blocks still mapped: address -> (keeper, arrival count when released)
        self._kept: OrderedDict[int, tuple[torch.Tensor, int]] = OrderedDict()
        self._kept_bytes = 0
        self._arrivals = 0
        self._reused = 0

    def received(self, data: torch.Tensor, cols: torch.Tensor | None) -> None:
        """Register the blocks of a batch that just arrived; release unused ones.

        Parameters
        ----------
        data
            Keeper of the batch's crop segment.
        cols
            Keeper of its column block, if any.
        """
        with self._lock:
            self._arrivals += 1
            blocks = [(data, True)] if cols is None else [(data, True), (cols, False)]
            for block, crops in blocks:
                kept = self._kept.pop(block.data_ptr(), None)  # back from the worker
                if kept is not None:
                    self._kept_bytes -= int(kept[0].untyped_storage().nbytes())
                    self._reused += crops
            self._release_unused()
            for block, crops in blocks:
                ptr = block.data_ptr()
                if ptr not in self._held:
                    self._held[ptr] = (block, crops)
                    heapq.heappush(self._due, (self._arrivals + 1, 0, ptr))

    def _release_unused(self) -> None:
        now = self._arrivals
        while self._due and self._due[0][0] <= now:
            _due, checks, ptr = heapq.heappop(self._due)
            block, _crops = self._held[ptr]
            if _refcount.unused(block):
                _refcount.write_flag(block, _FREE)
                del self._held[ptr]
                self._kept[ptr] = (block, now)
                self._kept_bytes += int(block.untyped_storage().nbytes())
            else:
                checks += 1
                heapq.heappush(self._due, (now + _recheck_after(checks), checks, ptr))
        # oldest first: not back for too long, then beyond the byte budget
        while self._kept and (
            now - next(iter(self._kept.values()))[1] > _KEEP_ARRIVALS
            or self._kept_bytes > _KEEP_BYTES
        ):
            _ptr, (block, _seen) = self._kept.popitem(last=False)
            self._kept_bytes -= int(block.untyped_storage().nbytes())

    def drop_kept(self) -> None:
        """Unmap the released blocks kept for reuse."""
        with self._lock:
            self._kept.clear()
            self._kept_bytes = 0

    def held(self) -> int:
        """Crop segments of received batches not released yet."""
        with self._lock:
            return sum(crops for _block, crops in self._held.values())

    def held_columns(self) -> int:
        """Column blocks of received batches not released yet."""
        with self._lock:
            return sum(not crops for _block, crops in self._held.values())

    def kept(self) -> int:
        """Released blocks kept mapped for reuse."""
        with self._lock:
            return len(self._kept)

    def reused(self) -> int:
        """Crop segments that came back from their worker while kept mapped."""
        with self._lock:
            return self._reused


def _received(items: tuple[Any, ...]) -> list[Any]:
    """Unpickle a :class:`SharedBatch`: register its blocks, release unused ones.

    Returns a list, as the DataLoader's ``default_convert`` makes of any other tuple.
    """
    if _refcount.reuse_enabled():
        data = _refcount.keeper(items[0].untyped_storage())
        cols = _refcount.keeper(items[1].untyped_storage()) if len(items) > 1 else None
        _runtime.segment_registry().received(data, cols)
    return list(items)


def _received_columns(x: torch.Tensor, block: torch.Tensor) -> list[Any]:
    """Unpickle a :class:`SharedBatch` sent as its crops and its ``(k, m)`` column block."""
    return _received((x, *block.unbind(0)))


def drop_kept_segments() -> None:
    """Unmap the released blocks kept for reuse (they are mapped again when needed)."""
    _runtime.segment_registry().drop_kept()


def held_segments() -> int:
    """Crop segments the main process has not released yet (for tests)."""
    return int(_runtime.segment_registry().held())


def held_column_blocks() -> int:
    """Column blocks the main process has not released yet (for tests)."""
    return int(_runtime.segment_registry().held_columns())


def kept_segments() -> int:
    """Released blocks the main process keeps mapped for reuse (for tests)."""
    return int(_runtime.segment_registry().kept())


def reused_segments() -> int:
    """Crop segments that came back to the main process for another batch (for tests)."""
    return int(_runtime.segment_registry().reused())
