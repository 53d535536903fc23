"""Batches that leave DataLoader workers through reused shared-memory segments.

A DataLoader worker hands each batch to the main process through shared memory.
Left to torch, every batch is a new segment: the worker allocates it
(``posix_fallocate``), zero-fills it page by page (2,048 page faults for an 8 MiB
float32 batch), and the main process maps and unmaps it. On a small machine that
caps the DataLoader at a few tens of thousands of 64 x 64 crops per second, whatever
the dataset does (BENCHMARKS.md: "DataLoader transfer alone").

Here a worker keeps a small pool of segments and writes each batch into one that
the main process has released, so its pages are already there:

* The batch tensor sits 64 bytes into its segment; the first 4 bytes hold the
  segment's state: ``SENT`` (written by the worker when it fills the segment) or
  ``FREE`` (written by the main process once nothing there references the batch
  any more).
* The worker yields a :class:`SharedBatch` (a tuple). Pickled to the main process, it
  unpickles (:func:`_received`) into the list of tensors a plain tuple would have
  become, after registering the segment. On every arrival, the main process releases
  each earlier batch that no tensor, view, NumPy array or autograd record references
  any more: it writes ``FREE`` into the segment. It keeps the segment mapped (up to
  256 MiB of them, each until it has not come back for 64 arrivals), so that reading
  the segment's next batch costs no page faults either.
* A worker reuses a segment only when it reads ``FREE`` *and* nothing in the worker
  references it (a wrapping dataset that keeps a batch keeps its segment). With no
  segment free and the pool full (the consumer keeps batches), it falls back to a
  fresh segment per batch, as torch does: never waiting, never overwriting.

A batch that never reaches :func:`_received` (a wrapping dataset that builds its
own tuple) leaves its segment ``SENT``: that segment is not reused, and the pool
falls back to fresh segments once all of its segments are stuck.

Not tracked: a batch the main process sends on to yet another process (a
``torch.multiprocessing`` queue passes the same segment along). Once the main
process drops it, the worker may refill the segment while that process still reads
it; ``clone()`` a batch before sending it on.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from . import _runtime
from ._normalize import empty_output

__all__ = ["SegmentRegistry", "SharedBatch", "WorkerBatchPool"]

_HEADER = 64  # bytes before the batch tensor in its segment (alignment for any dtype)
_FREE, _SENT = 0, 1


def _state(storage_ptr: int) -> ctypes.c_int32:
    return ctypes.c_int32.from_address(storage_ptr)


def _keeper(storage: torch.UntypedStorage) -> torch.Tensor:
    """Return a tensor holding ``storage`` (one reference, counted by ``_users``)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _users(keeper: torch.Tensor) -> int:
    return int(torch._C._storage_Use_Count(keeper.untyped_storage()._cdata))


_USABLE = hasattr(torch._C, "_storage_Use_Count")
# references to a storage held by nothing but its keeper (as _users counts them)
_BASE = _users(_keeper(torch.UntypedStorage(8))) if _USABLE else -1


class SharedBatch(tuple):  # type: ignore[type-arg]
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
        return (_received, (tuple(self),))


class _Segment:
    __slots__ = ("cols", "data")

    def __init__(self, nbytes: int) -> None:
        self.data = _keeper(torch.UntypedStorage._new_shared(_HEADER + nbytes))
        self.cols: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return int(self.data.untyped_storage().nbytes()) - _HEADER

    def free(self) -> bool:
        if _state(self.data.data_ptr()).value != _FREE or _users(self.data) != _BASE:
            return False
        return self.cols is None or _users(self.cols) == _BASE


class WorkerBatchPool:
    """Worker side: shared-memory segments reused for the batches of one iteration.

    Not thread-safe: used by the one thread producing the iteration's batches.

    Parameters
    ----------
    size
        Segments kept (about the batches in flight: produced ahead, queued in the
        DataLoader, held by the consumer). Beyond it, fresh segments are used.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._segments: list[_Segment] = []
        self._by_ptr: dict[int, _Segment] = {}
        self.enabled = _USABLE

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return a tensor of ``shape``/``dtype`` in shared memory: pooled if one is free."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        seg = self._free_segment(math.prod(shape) * itemsize) if self.enabled else None
        if seg is None:
            return empty_output(shape, dtype, shared=True)
        _state(seg.data.data_ptr()).value = _SENT
        return torch.empty(0, dtype=dtype).set_(
            seg.data.untyped_storage(), _HEADER // itemsize, shape
        )

    def _free_segment(self, nbytes: int) -> _Segment | None:
        for seg in self._segments:
            if seg.capacity >= nbytes and seg.free():
                return seg
        if len(self._segments) >= self.size:
            return None
        seg = _Segment(nbytes)
        self._segments.append(seg)
        self._by_ptr[seg.data.data_ptr()] = seg
        return seg

    def pack(self, x: torch.Tensor, cols: list[np.ndarray]) -> tuple[Any, ...]:
        """Return the batch tuple ``(x, *cols)`` to yield, columns as int64 tensors.

        With ``x`` from a pooled segment, the columns go into that segment's own
        column block and the result is a :class:`SharedBatch`; otherwise a plain
        tuple with the columns in one fresh shared block.
        """
        m = int(x.shape[0])
        seg = self._by_ptr.get(x.untyped_storage().data_ptr())
        if seg is None:
            block = empty_output((len(cols), m), torch.int64, shared=True)
        else:
            need = 8 * len(cols) * m
            # the segment was free when taken, so its old block can be replaced
            if seg.cols is None or seg.cols.untyped_storage().nbytes() < need:
                seg.cols = _keeper(torch.UntypedStorage._new_shared(max(1, need)))
            block = torch.empty(0, dtype=torch.int64).set_(
                seg.cols.untyped_storage(), 0, (len(cols), m)
            )
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
# their segment has not come back for a while (a finished loader, a new epoch's pool).

_KEEP_BYTES = 256 * 2**20  # mapped bytes of released segments kept at most
_KEEP_ARRIVALS = 64  # a kept segment not back within this many arrivals is dropped

_Keepers = tuple[torch.Tensor, "torch.Tensor | None"]


def _nbytes(keepers: _Keepers) -> int:
    return sum(int(k.untyped_storage().nbytes()) for k in keepers if k is not None)


class SegmentRegistry:
    """Main process: the segments of received batches, held or released and kept mapped.

    One per process (:func:`._runtime.segment_registry`); thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # segment address -> (keeper of the batch segment, keeper of its column block)
        self._held: dict[int, _Keepers] = {}
        # released segments still mapped: address -> (keepers, arrival count when last seen)
        self._kept: OrderedDict[int, tuple[_Keepers, int]] = OrderedDict()
        self._arrivals = 0

    def received(self, data: torch.Tensor, cols: torch.Tensor | None) -> None:
        """Register the segment of a batch that just arrived; release unused ones."""
        with self._lock:
            self._arrivals += 1
            ptr = data.data_ptr()
            self._kept.pop(ptr, None)  # back from the worker: held again
            self._release_unused()
            self._held[ptr] = (data, cols)

    def _release_unused(self) -> None:
        now = self._arrivals
        for ptr in list(self._held):
            data, cols = self._held[ptr]
            if _users(data) == _BASE and (cols is None or _users(cols) == _BASE):
                _state(ptr).value = _FREE
                self._kept[ptr] = (self._held.pop(ptr), now)
        for ptr in [p for p, (_k, seen) in self._kept.items() if now - seen > _KEEP_ARRIVALS]:
            del self._kept[ptr]
        total = sum(_nbytes(k) for k, _seen in self._kept.values())
        while self._kept and total > _KEEP_BYTES:  # oldest first
            _ptr, (keepers, _seen) = self._kept.popitem(last=False)
            total -= _nbytes(keepers)

    def drop_kept(self) -> None:
        """Unmap the released segments kept for reuse."""
        with self._lock:
            self._kept.clear()

    def held(self) -> int:
        """Segments of received batches not released yet."""
        with self._lock:
            return len(self._held)

    def kept(self) -> int:
        """Released segments kept mapped for reuse."""
        with self._lock:
            return len(self._kept)


def _received(items: tuple[Any, ...]) -> list[Any]:
    """Unpickle a :class:`SharedBatch`: register its segment, release unused ones.

    Returns a list, as the DataLoader's ``default_convert`` makes of any other tuple.
    """
    if _USABLE:
        x = items[0]
        cols = _keeper(items[1].untyped_storage()) if len(items) > 1 else None
        _runtime.segment_registry().received(_keeper(x.untyped_storage()), cols)
    return list(items)


def drop_kept_segments() -> None:
    """Unmap the released segments kept for reuse (they are mapped again when needed)."""
    _runtime.segment_registry().drop_kept()


def held_segments() -> int:
    """Segments of received batches the main process has not released yet (for tests)."""
    return int(_runtime.segment_registry().held())


def kept_segments() -> int:
    """Released segments the main process keeps mapped for reuse (for tests)."""
    return int(_runtime.segment_registry().kept())
