"""The scheduler handed to Dask: Dask's own choice, found without importing distributed."""

from __future__ import annotations

import dask
import dask.local
import dask.multiprocessing
import dask.threaded
import pytest

from zarr_instances import _schedule


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sync", dask.local.get_sync),
        ("synchronous", dask.local.get_sync),
        ("single-threaded", dask.local.get_sync),
        ("threads", dask.threaded.get),
        ("Threading", dask.threaded.get),
        ("processes", dask.multiprocessing.get),
        ("multiprocessing", dask.multiprocessing.get),
        ("something-else", None),  # Dask decides
    ],
)
def test_named_schedulers_without_distributed(monkeypatch, name, expected):
    monkeypatch.delitem(__import__("sys").modules, "distributed", raising=False)
    with dask.config.set(scheduler=name):
        assert _schedule.scheduler() is expected


def test_default_is_threaded_and_a_set_get_is_left_to_dask(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "distributed", raising=False)
    with dask.config.set(scheduler=None):
        assert _schedule.scheduler() is dask.threaded.get
    with dask.config.set(get=dask.local.get_sync):
        assert _schedule.scheduler() is None
    assert _schedule.client() is None
    assert _schedule.compute(dask.delayed(sum)([1, 2, 3])) == (6,)
