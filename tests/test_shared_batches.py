"""Batches from DataLoader workers travel in reused shared-memory segments."""

from __future__ import annotations

import mmap
import os
import queue
import sys
import threading
from collections import deque
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing
import zarr
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_convert
from torch.utils.dlpack import to_dlpack

from zarr_instances import ZarrIterableInstances, _refcount, _runtime
from zarr_instances import _shared_batches as sb

KW = {
    "batch_size": 32,
    "buffer_chunks": 2,
    "shuffle_chunks": True,
    "shuffle_within_chunk": True,
    "buffer_seed": 5,
}


def reference(path: str, **kw) -> dict[int, torch.Tensor]:
    ref: dict[int, torch.Tensor] = {}
    for x, _iid, rows in ZarrIterableInstances(path, **{**KW, **kw}):
        ref.update(zip(rows.tolist(), x.clone(), strict=True))
    return ref


def segment(t: torch.Tensor, forked: bool = True) -> object:
    """The shared-memory segment behind a tensor sent by a worker.

    Forked workers send batches by segment name (``file_system`` sharing,
    ``_runtime.worker_sharing``): the name identifies it. Spawned ones send a file
    descriptor: the (device, inode) of the file does.
    """
    if forked:
        _manager, handle, _size = t.untyped_storage()._share_filename_cpu_()
        return handle
    fd, _size = t.untyped_storage()._share_fd_cpu_()
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def two_workers(path: str, ctx: str, persistent: bool = False) -> DataLoader:
    return DataLoader(
        ZarrIterableInstances(path, **KW),
        batch_size=None,
        num_workers=2,
        multiprocessing_context=ctx,
        persistent_workers=persistent,
    )


def one_epoch(
    loader: DataLoader, ref: dict[int, torch.Tensor], ctx: str
) -> tuple[set[object], int, int]:
    """Iterate one epoch checking every crop; return (crop segments, batches, samples)."""
    segments, batches, seen = set(), 0, 0
    for batch in loader:
        x, _iid, rows = batch
        assert isinstance(batch, list)  # as the DataLoader makes of a plain tuple
        segments.add(segment(x, forked=ctx == "fork"))
        batches += 1
        for r, xi in zip(rows.tolist(), x, strict=True):
            assert torch.equal(xi, ref[r])
            seen += 1
    return segments, batches, seen


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_segments_are_reused_and_batches_exact(store, ctx):
    path = str(store.store_path.store.root)
    ref = reference(path)
    segments, batches, seen = one_epoch(two_workers(path, ctx), ref, ctx)
    assert seen == len(ref) == 1050
    assert batches == 34
    # a worker keeps at most its pool (8 segments); a prompt consumer lets it cycle
    # through them (a rare fallback to a fresh segment under load adds one each)
    assert len(segments) <= 24 < batches


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_persistent_workers_keep_their_segments_from_epoch_to_epoch(store, ctx):
    path = str(store.store_path.store.root)
    ref = reference(path)
    loader = two_workers(path, ctx, persistent=True)
    per_epoch = []
    for _epoch in range(3):
        segments, _batches, seen = one_epoch(loader, ref, ctx)
        assert seen == 1050
        per_epoch.append(segments)
    # the later epochs write into the first epoch's segments (a fresh pool per epoch
    # would send new ones only)
    assert len(per_epoch[1] & per_epoch[0]) >= 4
    assert len(per_epoch[2] & per_epoch[0]) >= 4


def test_the_worker_pool_is_lent_to_one_iteration_at_a_time():
    first = _runtime.borrow_batch_pool(8)
    other = _runtime.borrow_batch_pool(8)  # the first not given back yet: a new one
    assert other is not first
    _runtime.return_batch_pool(first)
    assert _runtime.borrow_batch_pool(8) is first
    _runtime.return_batch_pool(first)
    assert _runtime.borrow_batch_pool(4) is not first  # another size: a new pool
    _runtime.return_batch_pool(first)


def test_segments_the_consumer_keeps_are_replaced_in_the_pool():
    pool = sb.WorkerBatchPool(size=2)
    kept = [pool.take((4, 3), torch.float32) for _ in range(2)]  # sent, held for good
    for k, x in enumerate(kept):
        x.fill_(7.0 + k)
    first, second = pool._segments
    for k in range(sb._STALE_TAKES + 4):
        x = pool.take((4, 3), torch.float32)
        x.fill_(float(k))
        seg = pool._by_ptr.get(x.untyped_storage().data_ptr())
        if seg is not None:  # the receiver drops each batch at once
            _refcount.write_flag(seg.data, sb._FREE)
        del x
    # the batch held longest went out of the pool, a new segment in its place, which the
    # later batches reuse; the other kept one stays (a segment was free meanwhile)
    assert pool.evicted == 1 and first not in pool._segments and second in pool._segments
    assert pool.fresh == sb._STALE_TAKES - 1 and pool.reused >= 3
    # nothing kept was written again
    assert [float(x.min()) for x in kept] == [float(x.max()) for x in kept] == [7.0, 8.0]
    # a free segment too small for the batch is replaced too
    _refcount.write_flag(second.data, sb._FREE)
    del kept
    big = pool.take((64, 3), torch.float32)
    assert pool.evicted == 2 and pool._by_ptr.get(big.untyped_storage().data_ptr()) is not None


def test_batches_the_consumer_keeps_are_never_overwritten(store):
    path = str(store.store_path.store.root)
    ref = reference(path)
    loader = DataLoader(
        ZarrIterableInstances(path, **KW), batch_size=None, num_workers=2, persistent_workers=True
    )
    kept_tensors, kept_views, kept_arrays = [], [], []
    for k, (x, _iid, rows) in enumerate(loader):
        if k % 3 == 0:
            kept_tensors.append((x, rows))
        elif k % 3 == 1:
            kept_views.append((x[1:], rows[1:]))  # only a view of the batch survives
        else:
            kept_arrays.append((x.numpy(), rows.numpy()))  # only a NumPy array survives
    for _epoch in range(2):  # more batches through the same workers meanwhile
        for _batch in loader:
            pass
    n = 0
    for x, rows in kept_tensors + kept_views:
        for r, xi in zip(rows.tolist(), x, strict=True):
            assert torch.equal(xi, ref[r])
            n += 1
    for x, rows in kept_arrays:
        for r, xi in zip(rows.tolist(), x, strict=True):
            assert np.array_equal(xi, ref[r].numpy())
            n += 1
    assert n == 1050 - len(kept_views)  # each view left out one row


class _KeepsPrevious(IterableDataset):
    """Inside the worker, keeps its last 12 batches (more than a worker's pool of 8
    segments, so the pool must skip them) and checks they are unchanged."""

    def __init__(self, inner: ZarrIterableInstances) -> None:
        self.inner = inner

    def __iter__(self):
        kept: deque = deque(maxlen=12)
        for batch in self.inner:
            for x, copy in kept:
                if not torch.equal(x, copy):
                    raise AssertionError("a batch held inside the worker was overwritten")
            kept.append((batch[0], batch[0].clone()))
            yield batch


def test_batches_held_inside_the_worker_are_not_reused(store):
    path = str(store.store_path.store.root)
    loader = DataLoader(
        _KeepsPrevious(ZarrIterableInstances(path, **KW)), batch_size=None, num_workers=2
    )
    assert sum(int(b[0].shape[0]) for b in loader) == 1050


def test_crops_only_batches_from_workers(store):
    path = str(store.store_path.store.root)
    kw = {**KW, "return_instance_id": False, "return_row_index": False}
    loader = DataLoader(ZarrIterableInstances(path, **kw), batch_size=None, num_workers=2)
    xs = list(loader)
    assert all(isinstance(x, torch.Tensor) for x in xs)
    assert sum(int(x.shape[0]) for x in xs) == 1050


def test_worker_pool_reuses_only_released_unheld_segments():
    pool = sb.WorkerBatchPool(size=2)
    x = pool.take((4, 3), torch.float32)
    x.fill_(1.5)
    batch = pool.pack(x, [np.arange(4), np.arange(4) + 10])
    assert isinstance(batch, sb.SharedBatch) and isinstance(batch, tuple)
    assert isinstance(default_convert(batch), sb.SharedBatch)  # not turned into a list
    assert batch[2].tolist() == [10, 11, 12, 13]
    seg = pool._segments[0]
    assert _refcount.read_flag(seg.data) == sb._SENT
    assert _refcount.read_flag(seg.cols) == sb._SENT
    # sent and not released: the next batches get the second segment, then fresh memory
    y = pool.take((4, 3), torch.float32)
    z = pool.take((4, 3), torch.float32)
    assert len(pool._segments) == 2
    assert z.untyped_storage().data_ptr() not in pool._by_ptr
    assert not isinstance(pool.pack(z, [np.arange(4)]), sb.SharedBatch)
    assert (pool.reused, pool.fresh) == (0, 1)
    # released by the receiver but the crops still held in the worker: not reused
    _refcount.write_flag(seg.data, sb._FREE)
    _refcount.write_flag(seg.cols, sb._FREE)
    assert not sb._released(seg.data)
    ids = batch[1][1:]  # a view of the column block holds the columns only
    del batch, x
    assert sb._released(seg.data) and not sb._released(seg.cols)
    old_cols = seg.cols
    again = pool.take((2, 3), torch.float32)  # a smaller last batch fits too
    assert again.untyped_storage().data_ptr() == seg.data.data_ptr()
    assert _refcount.read_flag(seg.data) == sb._SENT
    # the held column block is left alone: the batch gets a fresh one
    pack = pool.pack(again, [np.arange(2) + 20, np.arange(2) + 30])
    assert seg.cols is not old_cols and pool.fresh_columns == 2
    assert ids.tolist() == [1, 2, 3] and pack[2].tolist() == [30, 31]
    assert pool.reused == 1
    del y


def test_a_batch_sends_its_columns_as_one_block():
    pool = sb.WorkerBatchPool(size=2)
    x = pool.take((4, 3), torch.float32)
    x.fill_(2.0)
    batch = default_convert(pool.pack(x, [np.arange(4), np.arange(4) + 10, np.arange(4) + 20]))
    fn, args = batch.__reduce__()
    assert fn is sb._received_columns and len(args) == 2
    assert args[1].shape == (3, 4) and args[1].untyped_storage().data_ptr() == (
        batch[1].untyped_storage().data_ptr()
    )
    got = fn(*args)
    assert isinstance(got, list) and len(got) == 4
    assert torch.equal(got[0], x) and [c.tolist() for c in got[1:]] == [
        [0, 1, 2, 3],
        [10, 11, 12, 13],
        [20, 21, 22, 23],
    ]
    # columns that are not consecutive rows of one block travel one by one
    a, b = torch.arange(4), torch.arange(4) + 1
    for cols in ((a, b), (b.clone(), torch.arange(8)[::2]), (x[0],)):
        fn, (items,) = sb.SharedBatch(x, *cols).__reduce__()
        assert fn is sb._received and len(items) == 1 + len(cols)
    block = torch.arange(12).reshape(3, 4)
    fn, _args = sb.SharedBatch(x, block[0], block[2]).__reduce__()  # rows 0 and 2 only
    assert fn is sb._received
    del got, batch


def test_receiver_releases_a_segment_once_nothing_references_it():
    first = _dummy_batch()
    _refcount.write_flag(_refcount.keeper(first[0].untyped_storage()), sb._SENT)
    # the segment's state, read through a mapping of its own (no tensor reference)
    fd = os.dup(first[0].untyped_storage()._share_fd_cpu_()[0])

    def state() -> int:
        with mmap.mmap(fd, 4) as m:
            return int.from_bytes(m[:4], sys.byteorder)

    received = sb._received(first)
    del first
    assert isinstance(received, list) and sb.held_segments() >= 1
    view = received[0][0, 1:]
    del received
    sb._received(_dummy_batch())  # every arrival releases what is unused: not this one
    assert state() == sb._SENT
    del view
    sb._received(_dummy_batch())
    assert state() == sb._FREE
    os.close(fd)


def _dummy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as a worker pool lays it out: the crops 64 bytes into their segment."""
    x = torch.empty(0, dtype=torch.float32).set_(_refcount.new_shared(64 + 16), 16, (1, 4))
    return x, torch.zeros(1, dtype=torch.int64).share_memory_()


def test_receiver_keeps_released_segments_mapped_within_bounds(monkeypatch):
    sb.drop_kept_segments()
    assert sb.kept_segments() == 0
    first = _dummy_batch()
    sb._received(first)
    del first
    sb._received(_dummy_batch())  # releases the first: kept mapped for its next batch
    assert sb.kept_segments() >= 1
    # kept blocks (crops and columns) that do not come back are dropped after 64 arrivals
    # (blocks held long by earlier tests are re-checked every 64 arrivals at most)
    for _ in range(2 * sb._RECHECK_MAX + sb._KEEP_ARRIVALS):
        sb._received(_dummy_batch())
    assert sb.kept_segments() <= 2 * (sb._KEEP_ARRIVALS + 1)
    # and they never exceed the byte budget (oldest dropped first)
    monkeypatch.setattr(sb, "_KEEP_BYTES", 3 * (64 + 16 + 8))
    sb._received(_dummy_batch())
    assert 1 <= sb.kept_segments() <= 6
    sb.drop_kept_segments()
    assert sb.kept_segments() == 0


# ----------------------------------------------------------------- batches held every way

HELD = {
    **KW,
    "batch_size": 16,  # 66 batches of 1,050 rows: each worker's pool cycles several times
}


def expected(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Crops normalised as ``minmax01`` and instance ids, read from the store by zarr."""
    group = zarr.open_group(path, mode="r")
    img = np.asarray(group["image"][:], dtype=np.float32)
    flat = img.reshape(img.shape[0], img.shape[1], -1)
    lo = flat.min(axis=2)
    span = flat.max(axis=2) - lo + np.float32(1e-8)
    shape = (*lo.shape, *(1,) * (img.ndim - 2))
    return (img - lo.reshape(shape)) / span.reshape(shape), np.asarray(group["instance_ids"][:])


def _on_storage(x: torch.Tensor) -> tuple[torch.UntypedStorage, int, tuple[int, ...], Any]:
    return x.untyped_storage(), x.storage_offset(), tuple(x.shape), x.dtype


def _from_storage(held: tuple[torch.UntypedStorage, int, tuple[int, ...], Any]) -> np.ndarray:
    storage, offset, shape, dtype = held
    return torch.empty(0, dtype=dtype).set_(storage, offset, shape).numpy()


# name -> (hold the batch list, read the crops back, rows of the batch they cover)
HOLDERS: dict[str, tuple[Any, Any, slice]] = {
    "tuple": (lambda b: b, lambda h: h[0].numpy(), slice(None)),
    "view": (lambda b: b[0][1:3], lambda h: h.numpy(), slice(1, 3)),
    "numpy": (lambda b: b[0].numpy(), lambda h: h, slice(None)),
    "dlpack capsule": (
        lambda b: to_dlpack(b[0]),
        lambda h: torch.from_dlpack(h).numpy(),
        slice(None),
    ),
    "from_dlpack": (
        lambda b: torch.from_dlpack(to_dlpack(b[0])),
        lambda h: h.numpy(),
        slice(None),
    ),
    "storage object": (lambda b: _on_storage(b[0]), _from_storage, slice(None)),
}
MODES = [*HOLDERS, "thread", "dropped", "dropped"]


def hold_every_way(loader: Any, epochs: int) -> tuple[list[Any], int, set[int]]:
    """Iterate ``epochs`` epochs holding batches in turn in each way of :data:`MODES`.

    Returns ``(kept, batches, crop pointers)``; ``kept`` holds ``(mode, holder, rows)``.
    The thread holder hands the batch to a thread that reads it once all epochs are done.
    """
    kept: list[Any] = []
    handed: queue.Queue = queue.Queue()
    done = threading.Event()
    read_by_thread: list[tuple[np.ndarray, np.ndarray]] = []

    def consume() -> None:
        done.wait()
        while not handed.empty():
            batch = handed.get()
            read_by_thread.append((batch[0].numpy().copy(), batch[2].numpy().copy()))

    thread = threading.Thread(target=consume)
    thread.start()
    batches, ptrs = 0, set()
    try:
        for _epoch in range(epochs):
            for batch in loader:
                mode = MODES[batches % len(MODES)]
                batches += 1
                ptrs.add(batch[0].data_ptr())
                if mode == "thread":
                    handed.put(batch)
                elif mode in HOLDERS:
                    hold, _read, part = HOLDERS[mode]
                    kept.append((mode, hold(batch), batch[2][part].numpy().copy()))
                del batch
    finally:
        done.set()
        thread.join()
    kept += [("thread", x, rows) for x, rows in read_by_thread]
    return kept, batches, ptrs


def check_kept(path: str, kept: list[Any]) -> None:
    """Every kept crop equals the store's, read and normalised independently."""
    crops, _ids = expected(path)
    modes = set()
    for mode, held, rows in kept:
        got = held if mode == "thread" else HOLDERS[mode][1](held)
        assert got.shape[0] == rows.size > 0, mode
        np.testing.assert_allclose(got, crops[rows], atol=2e-6, err_msg=mode)
        modes.add(mode)
    assert modes == {*HOLDERS, "thread"}


@pytest.mark.parametrize(
    ("workers", "ctx", "persistent"),
    [(0, None, False), (2, "fork", False), (2, "spawn", True)],
    ids=["in-process", "fork", "spawn-persistent"],
)
def test_batches_held_every_way_over_two_epochs_are_never_overwritten(
    store, workers, ctx, persistent
):
    path = str(store.store_path.store.root)
    loader = DataLoader(
        ZarrIterableInstances(path, **HELD),
        batch_size=None,
        num_workers=workers,
        multiprocessing_context=ctx,
        persistent_workers=persistent,
    )
    reused = sb.reused_segments()
    kept, batches, ptrs = hold_every_way(loader, epochs=2)
    assert batches == 2 * 66
    # a third epoch, dropping every batch, churns the pools while the others are held
    assert sum(int(b[0].shape[0]) for b in loader) == 1050
    check_kept(path, kept)
    # the batches dropped as they came were written into reused memory meanwhile
    if workers:
        assert sb.reused_segments() - reused >= 10
    else:
        assert len(ptrs) < batches - 20


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true:UserWarning")
def test_pinned_batches_held_every_way_are_exact(store):
    path = str(store.store_path.store.root)
    loader = DataLoader(
        ZarrIterableInstances(path, **HELD), batch_size=None, num_workers=2, pin_memory=True
    )
    kept, batches, _ptrs = hold_every_way(loader, epochs=1)
    assert batches == 66
    check_kept(path, kept)


@pytest.mark.parametrize("workers", [0, 2])
def test_keeping_only_ids_does_not_stop_reuse(store, workers):
    path = str(store.store_path.store.root)
    crops, ids = expected(path)
    loader = DataLoader(ZarrIterableInstances(path, **HELD), batch_size=None, num_workers=workers)
    reused = sb.reused_segments()
    kept_ids, checked, ptrs, segments = [], 0, set(), set()
    for batch in loader:
        x, iid = batch[0], batch[1]
        kept_ids.append(iid)  # joins predictions back: holds the column block only
        # the crops, compared now (then dropped), belong to the rows of the kept ids
        rows = np.searchsorted(ids, iid.numpy())
        np.testing.assert_allclose(x.numpy(), crops[rows], atol=2e-6)
        checked += int(x.shape[0])
        ptrs.add(x.data_ptr())
        if workers:
            segments.add(segment(x))
        del batch, x
    assert checked == 1050
    # every kept id is still the one it was: none of the held column blocks was reused
    assert np.array_equal(np.sort(torch.cat(kept_ids).numpy()), ids)
    assert len(kept_ids) == 66
    if workers:
        # crop segments kept cycling: released and reused despite the held ids
        assert sb.reused_segments() - reused >= 66 // 2
        assert len(segments) <= 24 < 66
        assert sb.held_segments() <= 2 * 8
        assert sb.held_column_blocks() >= 66
    else:
        assert len(ptrs) <= 8 < 66


@pytest.mark.parametrize("setting", ["1", "0"])
def test_workers_send_batches_by_segment_name(store, setting, monkeypatch):
    """By name (file_system sharing) by default; torch's file descriptors when switched off."""
    from torch.multiprocessing import reductions

    monkeypatch.setenv("ZARR_INSTANCES_FILE_SYSTEM_SHARING", setting)
    path = str(store.store_path.store.root)
    ref = reference(path)
    reductions.shared_cache.clear()
    loader = DataLoader(ZarrIterableInstances(path, **KW), batch_size=None, num_workers=1,
                        multiprocessing_context="fork")  # fmt: skip
    seen = 0
    keys: set[object] = set()
    for x, _iid, rows in loader:
        keys |= set(reductions.shared_cache.keys())
        for r, xi in zip(rows.tolist(), x, strict=True):
            assert torch.equal(xi, ref[r])
            seen += 1
    assert seen == len(ref)
    by_name = [k for k in keys if isinstance(k, bytes)]  # file_system handles are names
    assert (len(by_name) > 0) == (setting == "1")
    assert torch.multiprocessing.get_sharing_strategy() == "file_descriptor"  # main untouched
