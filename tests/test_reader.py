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
        str(path),
        np.arange(10_000),
        shuffle_chunks=True,
        shuffle_within_chunk=True,
        buffer_seed=0,
        buffer_chunks=2,
        batch_size=64,
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
    ds = ZarrIterableInstances(
        str(path),
        np.arange(1000),
        normalize=None,
        x_dtype=torch.int32,
        shuffle_chunks=True,
        batch_size=100,
        buffer_chunks=3,
    )
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
    kw = {
        "shuffle_chunks": True,
        "shuffle_within_chunk": True,
        "buffer_seed": 2,
        "batch_size": 64,
        "buffer_chunks": 3,
    }
    ours = list(ZarrIterableInstances(array_path, ids530, codec_pipeline="zarrs", **kw))
    ref = list(ZarrIterableInstances(array_path, ids530, **kw))
    assert torch.equal(torch.cat([b[0] for b in ours]), torch.cat([b[0] for b in ref]))
    # spawned workers bind the zarrs pipeline themselves
    loader = DataLoader(
        ZarrIterableInstances(array_path, ids530, codec_pipeline="zarrs", **kw),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="spawn",
    )
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


def _codecs(name):
    import numcodecs
    from zarr.codecs import BloscCodec, ZstdCodec

    v3 = {"none": None, "zstd": ZstdCodec(level=1), "blosc": BloscCodec(cname="lz4")}
    v2 = {
        "none": None,
        "zstd": numcodecs.Zstd(level=1),
        "blosc": numcodecs.Blosc("lz4"),
        "zlib": numcodecs.Zlib(1),
    }
    return v3, v2


@pytest.mark.parametrize(
    ("zarr_format", "codec"),
    [
        (3, "none"),
        (3, "zstd"),
        (3, "blosc"),
        (2, "none"),
        (2, "zstd"),
        (2, "blosc"),
        (2, "zlib"),
    ],
)
def test_direct_chunk_decode_equals_zarr(tmp_path, zarr_format, codec):
    from zarr_instances._reader import chunk_decoder, read_chunks

    v3, v2 = _codecs(codec)
    comp = (v3 if zarr_format == 3 else v2)[codec]
    path = tmp_path / "a.zarr"
    # 95 rows in chunks of 20: the last stored chunk is partial
    arr = make_instance_array(path, n=95, chunk_i=20, zarr_format=zarr_format, compressors=comp)
    decoder = chunk_decoder(arr)
    assert decoder is not None
    out = np.zeros((3 * 20, *arr.shape[1:]), dtype=arr.dtype)
    read_chunks(arr, [4, 0, 2], out, decoder)
    raw = arr[...]
    assert np.array_equal(out[:15], raw[80:95])  # edge chunk: its first 15 rows
    assert np.array_equal(out[20:40], raw[0:20])
    assert np.array_equal(out[40:60], raw[40:60])


def test_direct_decode_not_used_where_zarr_must_decode(tmp_path):
    import zarr
    from zarr.codecs import BytesCodec, TransposeCodec

    from zarr_instances._reader import chunk_decoder

    sharded = make_instance_array(tmp_path / "s.zarr", n=100, chunk_i=10, shards=50)
    assert chunk_decoder(sharded) is None
    inner = zarr.create_array(
        tmp_path / "i.zarr", shape=(10, 2, 1, 8, 8), chunks=(5, 1, 1, 8, 8), dtype="uint16"
    )
    assert chunk_decoder(inner) is None  # chunked along channels too
    transposed = zarr.create_array(
        tmp_path / "t.zarr",
        shape=(10, 2, 1, 8, 8),
        chunks=(5, 2, 1, 8, 8),
        dtype="uint16",
        serializer=BytesCodec(),
        filters=[TransposeCodec(order=(0, 1, 2, 4, 3))],
    )
    assert chunk_decoder(transposed) is None
    big_endian = zarr.create_array(
        tmp_path / "b.zarr",
        shape=(10, 2, 1, 8, 8),
        chunks=(5, 2, 1, 8, 8),
        dtype=">u2",
        zarr_format=2,
    )
    assert chunk_decoder(big_endian) is None


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_direct_and_pipeline_routes_yield_the_same(tmp_path, zarr_format):
    path = tmp_path / "d.zarr"
    make_instance_array(path, n=230, chunk_i=20, zarr_format=zarr_format)
    kw = {
        "shuffle_chunks": True,
        "shuffle_within_chunk": True,
        "buffer_seed": 3,
        "batch_size": 32,
        "buffer_chunks": 3,
    }
    direct = ZarrIterableInstances(str(path), np.arange(230), **kw)
    assert direct._stream.direct
    # chunk_i other than the stored chunks goes through zarr's pipeline
    piped = ZarrIterableInstances(str(path), np.arange(230), chunk_i=10, **kw)
    assert not piped._stream.direct
    a = {r: x for b in direct for x, r in zip(b[0], b[2].tolist(), strict=True)}
    b = {r: x for bb in piped for x, r in zip(bb[0], bb[2].tolist(), strict=True)}
    assert sorted(a) == sorted(b) == list(range(230))
    assert all(torch.equal(a[r], b[r]) for r in a)


def test_corrupt_chunk_on_direct_route_names_the_key(tmp_path):
    from zarr_instances import ChunkReadError

    path = tmp_path / "c.zarr"
    make_instance_array(path, n=100, chunk_i=10)
    (path / "c" / "3" / "0" / "0" / "0" / "0").write_bytes(b"garbage")
    ds = ZarrIterableInstances(str(path), np.arange(100), batch_size=10)
    with pytest.raises(ChunkReadError, match=r"rows 30-39 .*key c/3/0/0/0/0\) of Zarr array"):
        list(ds)


@pytest.mark.parametrize("codec", ["none", "zstd", "blosc"])
def test_mapped_chunk_files_decode_like_read_ones(tmp_path, monkeypatch, codec):
    import mmap

    from zarr_instances import ChunkReadError, _chunk_io, _runtime
    from zarr_instances._reader import chunk_decoder, read_chunks

    if not _runtime.mmap_flags():
        pytest.skip("no mmap flags on this platform")
    mapped: list[int] = []
    real_mmap = mmap.mmap

    def counting_mmap(*args, **kwargs):
        mapped.append(args[1])
        return real_mmap(*args, **kwargs)

    v3, _v2 = _codecs(codec)
    path = tmp_path / "m.zarr"
    arr = make_instance_array(path, n=95, chunk_i=20, compressors=v3[codec])
    decoder = chunk_decoder(arr)
    assert decoder is not None
    outs = []
    for mmap_from in (1 << 40, 1):  # never mapped, then every chunk file mapped
        monkeypatch.setattr(_chunk_io, "MMAP_FROM", mmap_from)
        monkeypatch.setattr(_chunk_io.mmap, "mmap", counting_mmap)
        out = np.zeros((3 * 20, *arr.shape[1:]), dtype=arr.dtype)
        read_chunks(arr, [4, 0, 2], out, decoder)
        outs.append(out)
    assert len(mapped) == 3
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1][20:40], arr[0:20])
    # a corrupt mapped chunk still names its key
    (path / "c" / "3" / "0" / "0" / "0" / "0").write_bytes(b"garbage" * 100)
    ds = ZarrIterableInstances(str(path), np.arange(95), batch_size=10)
    with pytest.raises(ChunkReadError, match=r"rows 60-79 .*key c/3/0/0/0/0\) of Zarr array"):
        list(ds)


@pytest.mark.parametrize("cores", [1, 2])
def test_local_chunks_decode_at_most_threads_at_once(tmp_path, cores):
    import threading
    import time

    from zarr_instances._reader import chunk_decoder, read_chunks

    arr = make_instance_array(tmp_path / "a.zarr", n=120, chunk_i=20)
    decoder = chunk_decoder(arr)
    assert decoder is not None
    lock = threading.Lock()
    now, peak = [0], [0]

    def counting(raw, out):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.05)  # long enough for the others to start if they may
        decoder(raw, out)
        with lock:
            now[0] -= 1

    out = np.zeros((6 * 20, *arr.shape[1:]), dtype=arr.dtype)
    read_chunks(arr, range(6), out, counting, threads=cores)
    assert 1 <= peak[0] <= cores  # without the bound all 6 run at once
    assert np.array_equal(out, arr[...])


@pytest.mark.timeout(120)
def test_zarrs_reads_what_the_direct_route_cannot_by_default(tmp_path, monkeypatch):
    """A sharded store goes through zarrs where installed; forked children fall back."""
    pytest.importorskip("zarrs")
    path = str(tmp_path / "sharded.zarr")
    arr = make_instance_array(path, n=600, chunk_i=25, shards=200)
    kw = {"normalize": None, "x_dtype": torch.int32, "shuffle_chunks": True, "batch_size": 50}

    def pipeline(ds):
        return type(ds._stream.opened().array._async_array.codec_pipeline).__name__

    def rows_of(loader):
        out = {}
        for x, _ids, rows in loader:
            out.update(zip(rows.tolist(), x.numpy(), strict=True))
        return out

    ds = ZarrIterableInstances(path, np.arange(600), **kw)
    assert not ds._stream.direct and pipeline(ds) == "ZarrsCodecPipeline"
    got = rows_of(ds)  # this process's zarrs thread pool now exists
    raw = arr[...].astype(np.int32)
    assert sorted(got) == list(range(600))
    assert all(np.array_equal(got[r], raw[r]) for r in range(600))
    # forked workers must not use the parent's pool: they read through zarr-python
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    forked = rows_of(loader)
    assert sorted(forked) == list(range(600))
    assert all(np.array_equal(forked[r], raw[r]) for r in range(600))
    # switched off: zarr-python in this process too
    monkeypatch.setenv("ZARR_INSTANCES_ZARRS", "0")
    off = ZarrIterableInstances(path, np.arange(600), **kw)
    assert pipeline(off) != "ZarrsCodecPipeline"
