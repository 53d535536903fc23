"""The reference counts behind buffer reuse, their self-test, and the fallback."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zarr_instances import ZarrIterableInstances, _refcount
from zarr_instances import _shared_batches as sb
from zarr_instances._normalize import OutputPool, empty_output

CALIBRATION = (
    "_STORAGE_USERS",
    "_STORAGE_REFS",
    "_ITEM_REFS",
    "_ITEM_STORAGE_USERS",
    "_ITEM_STORAGE_REFS",
    "_NEW_SHARED",
)


@pytest.fixture
def untested(monkeypatch):
    """Forget this process's verdict; the verdict and calibration come back afterwards."""
    _refcount.reuse_enabled()
    for name in CALIBRATION:
        monkeypatch.setattr(_refcount, name, getattr(_refcount, name))
    monkeypatch.setattr(_refcount, "_FAILURE", _refcount._UNTESTED)
    return monkeypatch


def test_self_test_passes_and_is_cheap():
    assert _refcount._self_test() is None
    assert _refcount.reuse_enabled()
    start = time.perf_counter()
    for _ in range(20):
        _refcount._self_test()
    assert (time.perf_counter() - start) / 20 < 0.02  # well under a millisecond unloaded


@pytest.mark.parametrize("name", [name for name, _hold in _refcount._HOLDERS] + ["a queue"])
def test_every_holder_is_seen_until_dropped(name):
    assert _refcount.reuse_enabled()
    hold = dict(_refcount._HOLDERS).get(name)
    if hold is None:  # a reference handed to another thread, through a queue

        def hold(t):
            q: queue.Queue = queue.Queue()
            q.put(t)
            return q

    block = _refcount.keeper(_refcount.new_shared(64))
    assert _refcount.unused(block)
    held = hold(torch.empty(0).set_(block.untyped_storage(), 0, (4, 2)))
    assert not _refcount.unused(block)
    del held
    assert _refcount.unused(block)

    items = [torch.empty(4, 2)]
    assert _refcount.only_in(items, 0)
    held = hold(items[0])
    assert not _refcount.only_in(items, 0)
    del held
    assert _refcount.only_in(items, 0)


def test_flag_is_the_first_four_bytes():
    block = _refcount.keeper(_refcount.new_shared(64))
    _refcount.write_flag(block, 12345)
    assert block[:4].view(torch.int32).item() == 12345
    block[:4].view(torch.int32).fill_(-2)
    assert _refcount.read_flag(block) == -2


def _gone(nbytes: int) -> torch.UntypedStorage:
    raise AttributeError("type object 'UntypedStorage' has no attribute '_new_shared'")


@pytest.mark.parametrize(
    "replacement", [_gone, torch.UntypedStorage, lambda n: torch.UntypedStorage._new_shared(n + 1)]
)
def test_an_unsound_new_shared_falls_back_to_the_public_route(untested, replacement):
    untested.setattr(torch.UntypedStorage, "_new_shared", replacement)
    assert _refcount.reuse_enabled()  # nothing else depends on it: no warning
    assert not _refcount._NEW_SHARED
    storage = _refcount.new_shared(100)
    assert storage.is_shared() and storage.nbytes() == 100
    x = empty_output((3, 5), torch.float32, shared=True)
    assert x.is_shared() and x.shape == (3, 5)


def _constant_use_count(cdata: int) -> int:
    return 2


BREAKAGES = {
    "a failing check": lambda mp: mp.setattr(_refcount, "_self_test", lambda: "a check failed"),
    "storage counts that never change": lambda mp: mp.setattr(
        torch._C, "_storage_Use_Count", _constant_use_count
    ),
    "no torch._C._storage_Use_Count": lambda mp: mp.delattr(torch._C, "_storage_Use_Count"),
    "tensor use counts that changed meaning": lambda mp: mp.setattr(
        torch.Tensor, "_use_count", lambda self: 2
    ),
    "getrefcount that never changes": lambda mp: mp.setattr(
        _refcount.sys, "getrefcount", lambda obj: 2
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_failed_self_test_switches_reuse_off_with_one_warning(untested, breakage):
    BREAKAGES[breakage](untested)
    with pytest.warns(RuntimeWarning, match="buffer reuse is off in this process, because"):
        assert not _refcount.reuse_enabled()
    assert not _refcount.reuse_enabled()  # warned once (a second warning would fail here)
    assert _refcount._STORAGE_USERS == _refcount._ITEM_REFS == -1  # calibration dropped

    pool = OutputPool(3)
    assert not pool.enabled
    a = pool.take((4, 5), torch.float32)
    assert pool._items == []  # nothing kept, nothing reused
    del a

    workers = sb.WorkerBatchPool(4)
    assert not workers.enabled
    x = workers.take((4, 3), torch.float32)
    batch = workers.pack(x, [np.arange(4)])
    assert x.is_shared() and not isinstance(batch, sb.SharedBatch)
    assert workers._segments == [] and workers.fresh == 1


def test_with_reuse_off_batches_are_fresh_and_exact(untested, store):
    untested.setattr(_refcount, "_self_test", lambda: "a check failed")
    with pytest.warns(RuntimeWarning, match="buffer reuse is off"):
        assert not _refcount.reuse_enabled()
    path = str(store.store_path.store.root)
    kw = {"batch_size": 32, "buffer_chunks": 2, "shuffle_chunks": True, "buffer_seed": 5}
    ref = {
        r: x.clone()
        for x, _iid, rows in ZarrIterableInstances(path, **kw)
        for r, x in zip(rows.tolist(), x, strict=True)
    }
    held = sb.held_segments()
    # forked workers inherit the verdict: plain batches in fresh shared memory
    loader = DataLoader(ZarrIterableInstances(path, **kw), batch_size=None, num_workers=2)
    kept = list(loader)
    assert sb.held_segments() == held
    assert len({x.data_ptr() for x, *_ in kept}) == len(kept) == 34
    for x, _iid, rows in kept:
        for r, xi in zip(rows.tolist(), x, strict=True):
            assert torch.equal(xi, ref[r])
