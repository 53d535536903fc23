from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zarr_instances import ZarrIterableInstances
from zarr_instances.testing import make_instance_array


@pytest.mark.timeout(120)
def test_fork_after_main_process_read_does_not_deadlock(array_path, ids530):
    ds = ZarrIterableInstances(array_path, ids530, buffer_chunks=2, batch_size=16)
    live = iter(ds)
    next(live)  # zarr's event loop and our read-ahead thread are running in this process
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    rows = sorted(r for batch in loader for r in batch[2].tolist())
    assert rows == list(range(530))
    assert next(live)[0].shape == (16, 2, 1, 16, 16)  # the parent's stream still works


def test_memory_is_bounded_by_buffers(tmp_path):
    path = tmp_path / "big.zarr"
    # 200 chunks of 50 rows; one chunk is 100 KiB as float32, the whole store 20 MiB
    make_instance_array(path, n=10_000, chunk_i=50, compressors=None)
    ds = ZarrIterableInstances(
        str(path), np.arange(10_000), shuffle_chunks=True, shuffle_within_chunk=True,
        buffer_seed=0, buffer_chunks=2, batch_size=64,
    )
    tracemalloc.start()
    n = 0
    for x, *_ in ds:
        n += x.shape[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 10_000
    buffer_f32 = 2 * 50 * 2 * 16 * 16 * 4
    assert peak < 8 * buffer_f32, f"peak {peak} B is more than 8 float32 buffers"


def test_sharded_store_reads_partial_shards(tmp_path):
    path = tmp_path / "sharded.zarr"
    arr = make_instance_array(path, n=1000, chunk_i=25, shards=200)
    ds = ZarrIterableInstances(str(path), np.arange(1000), normalize=None, x_dtype=torch.int32,
                               shuffle_chunks=True, batch_size=100, buffer_chunks=3)
    assert ds.chunk_i == 25  # logical chunks follow the inner chunks
    out = {}
    for x, _ids, rows in ds:
        out.update(zip(rows.tolist(), x, strict=True))
    raw = arr[...]
    assert sorted(out) == list(range(1000))
    for r in (0, 199, 200, 777, 999):
        assert np.array_equal(out[r].numpy(), raw[r].astype(np.int32))


def test_zarrs_pipeline_same_values(array_path, ids530):
    pytest.importorskip("zarrs")
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 2,
          "batch_size": 64, "buffer_chunks": 3}
    ours = list(ZarrIterableInstances(array_path, ids530, codec_pipeline="zarrs", **kw))
    ref = list(ZarrIterableInstances(array_path, ids530, **kw))
    assert torch.equal(torch.cat([b[0] for b in ours]), torch.cat([b[0] for b in ref]))
    # spawned workers bind the zarrs pipeline themselves
    loader = DataLoader(ZarrIterableInstances(array_path, ids530, codec_pipeline="zarrs", **kw),
                        batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert sorted(r for b in loader for r in b[2].tolist()) == list(range(530))


def test_unknown_codec_pipeline_type(array_path, ids530):
    with pytest.raises(TypeError, match="codec_pipeline must be None"):
        ZarrIterableInstances(array_path, ids530, codec_pipeline=3)


@pytest.mark.timeout(60)
def test_zarrs_after_fork_fails_clearly_instead_of_hanging(array_path, ids530):
    pytest.importorskip("zarrs")
    ds = ZarrIterableInstances(array_path, ids530, codec_pipeline="zarrs", batch_size=32)
    next(iter(ds))  # the parent's zarrs thread pool now exists
    loader = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(ValueError, match="does not survive fork"):
        next(iter(loader))
