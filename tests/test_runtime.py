from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch
from torch.utils.data import DataLoader

from zarr_instances import ZarrIterableInstances, _runtime
from zarr_instances.testing import make_instance_store


@pytest.mark.parametrize(
    ("value", "want"),
    [("0", "off"), ("false", "off"), ("1", "on"), ("YES", "on"), ("", "auto"), ("x", "auto")],
)
def test_one_numba_switch(monkeypatch, value, want):
    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", value)
    assert _runtime.numba_setting() == want


def test_numba_switch_unset_is_auto(monkeypatch):
    monkeypatch.delenv("ZARR_INSTANCES_NUMBA", raising=False)
    assert _runtime.numba_setting() == "auto"


def test_decode_pool_has_the_threads_asked_for():
    one = _runtime.decode_pool(1)
    assert _runtime.decode_pool(1) is one
    two = _runtime.decode_pool(2)
    assert two is not one and two._max_workers == 2
    started = set()

    def record(_):
        started.add(threading.current_thread().name)

    list(_runtime.decode_pool(3).map(record, range(30)))
    assert all(name.startswith("zarr_instances_decode") for name in started)


def _child_state(q):
    pool = _runtime._POOL
    q.put((pool is None, _runtime._POOL_LOCK.acquire(timeout=5), _runtime._REGISTRY is None))


def test_after_fork_the_child_has_fresh_state():
    _runtime.decode_pool(2)
    _runtime.segment_registry()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    with _runtime._POOL_LOCK:  # held by the parent at the fork
        p = ctx.Process(target=_child_state, args=(q,))
        p.start()
    no_pool, lock_free, no_registry = q.get(timeout=60)
    p.join(60)
    assert no_pool and lock_free and no_registry


class _PoolSize(torch.utils.data.IterableDataset):
    """Iterates the wrapped dataset, then yields the decode threads its worker used."""

    def __init__(self, ds):
        super().__init__()
        self.ds = ds

    def __iter__(self):
        for _ in self.ds:
            pass
        yield _runtime._POOL_SIZE


def test_workers_share_the_cores_for_decoding(tmp_path):
    path = tmp_path / "s.zarr"
    make_instance_store(path, n=200, chunk_i=20, seed=1)
    ds = ZarrIterableInstances(str(path), batch_size=10, buffer_chunks=2)
    assert ds._stream.direct  # local chunk files: the decode pool is used
    loader = DataLoader(_PoolSize(ds), batch_size=None, num_workers=2)
    sizes = list(loader)
    assert sizes == [max(1, _runtime.cores() // 2)] * 2
    list(ds)  # the main process decodes with a thread per CPU
    assert _runtime._POOL_SIZE == _runtime.cores()
