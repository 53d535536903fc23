"""Remote stores: a real S3-compatible server (moto) on 127.0.0.1, and injected latency."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
import zarr

from _s3 import free_port
from zarr_instances import (
    StoreAccessError,
    StoreConnectionError,
    StoreNotFoundError,
    ZarrDataLoader,
    ZarrIterableInstances,
    extract_instances,
)
from zarr_instances.cli import main
from zarr_instances.testing import make_image_and_mask, make_instance_array

# Fail fast: one attempt, 1 s to connect (the test server is local).
FAST = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 5, "retries": {"max_attempts": 1}}}


def _rows(loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ids, rows = [], [], []
    for x, iid, row in loader:
        xs.append(x.numpy())
        ids.append(iid.numpy())
        rows.append(row.numpy())
    x, i, r = np.concatenate(xs), np.concatenate(ids), np.concatenate(rows)
    order = np.argsort(r)
    return x[order], i[order], r[order]


def test_cli_extract_local_inputs_to_s3_with_storage_options(s3_server, tmp_path, capsys):
    image, mask = make_image_and_mask((64, 64), 12, 10, seed=2)
    img, msk = str(tmp_path / "img.zarr"), str(tmp_path / "mask.zarr")
    zarr.create_array(img, data=image, chunks=(2, 32, 32))
    zarr.create_array(msk, data=mask, chunks=(32, 32))
    url = f"s3://{s3_server.bucket}/cli.zarr"
    opts = s3_server.options()
    argv = ["extract", img, msk, url, "--diameter", "10", "--no-progress"]
    assert main([*argv, "--storage-options", json.dumps(opts)]) == 0
    ids, ref = extract_instances(image, mask, 10)
    remote = zarr.open_group(url, mode="r", storage_options=opts, use_consolidated=True)
    np.testing.assert_array_equal(remote["instance_ids"][...], ids)
    np.testing.assert_array_equal(remote["image"][...], ref.compute())
    assert remote.attrs["zarr_instances"]["complete"] is True
    # inspect reads the remote store with the same options
    capsys.readouterr()
    assert main(["inspect", url, "--json", "--storage-options", json.dumps(opts)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_instances"] == ids.size and info["complete"] is True


def test_extract_to_s3_then_stream_equals_local(s3_server, tmp_path):
    image, mask = make_image_and_mask((96, 96), 30, 12, seed=4)
    url = f"s3://{s3_server.bucket}/extract.zarr"
    opts = s3_server.options()
    ids_r, _ = extract_instances(
        image, mask, 12, out=url, chunk_i=8, storage_options=opts, progress=False
    )
    ids_l, crops_l = extract_instances(
        image, mask, 12, out=str(tmp_path / "local.zarr"), chunk_i=8, progress=False
    )
    np.testing.assert_array_equal(ids_r, ids_l)
    remote = zarr.open_group(url, mode="r", storage_options=opts)
    np.testing.assert_array_equal(remote["image"][...], crops_l.compute())
    assert remote.attrs["zarr_instances"]["complete"] is True

    def stream(path, **kw):
        ds = ZarrIterableInstances(
            path,
            batch_size=16,
            buffer_chunks=3,
            shuffle_chunks=True,
            normalize=None,
            x_dtype=torch.float64,
            **kw,
        )
        loader = ZarrDataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
        return _rows(loader)

    xr, ir, rr = stream(url, storage_options=opts)
    xl, il, _ = stream(str(tmp_path / "local.zarr"))
    np.testing.assert_array_equal(rr, np.arange(ids_l.size))
    np.testing.assert_array_equal(ir, il)
    np.testing.assert_array_equal(xr, xl)
    # the same call on the complete store returns it; another call names the URL and the change
    ids_again, crops_again = extract_instances(
        image, mask, 12, out=url, chunk_i=8, storage_options=opts, progress=False
    )
    np.testing.assert_array_equal(ids_again, ids_r)
    np.testing.assert_array_equal(crops_again.compute(), crops_l.compute())
    with pytest.raises(FileExistsError, match=r"extract\.zarr.*chunk_i: stored 8, now 4"):
        extract_instances(image, mask, 12, out=url, chunk_i=4, storage_options=opts)


def test_stream_bare_array_url_sharded(s3_server):
    url = f"s3://{s3_server.bucket}/bare.zarr"
    opts = s3_server.options()
    arr = zarr.create_array(
        url,
        shape=(90, 2, 1, 8, 8),
        chunks=(10, 2, 1, 8, 8),
        shards=(30, 2, 1, 8, 8),
        dtype="uint16",
        storage_options=opts,
    )
    data = np.random.default_rng(0).integers(0, 5000, size=arr.shape).astype("uint16")
    arr[...] = data
    ds = ZarrIterableInstances(
        url,
        np.arange(90) + 5,
        storage_options=opts,
        batch_size=20,
        buffer_chunks=4,
        normalize=None,
        x_dtype=torch.float64,
    )
    x, ids, _ = _rows(ds)
    np.testing.assert_array_equal(x, data.astype(np.float64))
    np.testing.assert_array_equal(ids, np.arange(90) + 5)
    # forked workers after the parent has read: the inherited remote client is bound to
    # the parent's event loop, so workers reopen (also an opened zarr.Array)
    opened = ZarrIterableInstances(
        zarr.open_array(url, mode="r", storage_options=opts),
        np.arange(90) + 5,
        batch_size=20,
        normalize=None,
        x_dtype=torch.float64,
    )
    for d in (ds, opened):
        next(iter(d))
        loader = ZarrDataLoader(
            d, batch_size=None, num_workers=1, multiprocessing_context="fork", timeout=60
        )
        x, ids, _ = _rows(loader)
        np.testing.assert_array_equal(x, data.astype(np.float64))


def test_missing_bucket_names_the_url(s3_server):
    url = "s3://no-such-bucket/x.zarr"
    with pytest.raises(StoreNotFoundError, match=r"no-such-bucket/x\.zarr"):
        ZarrIterableInstances(url, storage_options=s3_server.options(**FAST))


def test_missing_object_names_the_url(s3_server):
    url = f"s3://{s3_server.bucket}/missing.zarr"
    with pytest.raises(FileNotFoundError, match=r"missing\.zarr"):
        ZarrIterableInstances(url, storage_options=s3_server.options(**FAST))


@pytest.mark.parametrize("bad", [{"secret": "wrong"}, {"key": "AKIAUNKNOWN"}])
def test_wrong_credentials_name_the_url(s3_server, bad):
    url = f"s3://{s3_server.bucket}/bare.zarr"
    with pytest.raises(StoreAccessError, match=r"Access denied to zarr_path='s3://.*bare\.zarr'"):
        ZarrIterableInstances(url, storage_options=s3_server.options(**bad, **FAST))
    image, mask = make_image_and_mask((32, 32), 3, 8)
    with pytest.raises(PermissionError, match="out='s3://"):
        extract_instances(
            image,
            mask,
            8,
            out=f"s3://{s3_server.bucket}/denied.zarr",
            storage_options=s3_server.options(**bad, **FAST),
        )


def test_unreachable_endpoint_fails_fast_with_the_url(s3_server):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    opts = s3_server.options(
        client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"}, **FAST
    )
    t0 = time.monotonic()
    with pytest.raises(StoreConnectionError, match=re.escape(endpoint)) as info:
        ZarrIterableInstances("s3://b/unreachable.zarr", storage_options=opts)
    assert time.monotonic() - t0 < 15
    assert "s3://b/unreachable.zarr" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_buffer_chunks_are_read_concurrently(tmp_path):
    """With 50 ms per request, a buffer of 8 chunks costs about one latency, not eight."""
    from zarr.storage import LocalStore
    from zarr.testing.store import LatencyStore

    class Counting(LatencyStore):
        in_flight = peak = 0

        async def get(self, *args, **kwargs):
            type(self).in_flight += 1
            type(self).peak = max(type(self).peak, type(self).in_flight)
            try:
                return await super().get(*args, **kwargs)
            finally:
                type(self).in_flight -= 1

    make_instance_array(tmp_path / "a.zarr", 80, (1, 1, 4, 4), chunk_i=10)
    store = Counting(LocalStore(tmp_path / "a.zarr", read_only=True), get_latency=0.05)
    arr = zarr.open_array(store, mode="r")
    ds = ZarrIterableInstances(arr, np.arange(80), batch_size=80, buffer_chunks=8, read_ahead=False)
    list(ds)  # first epoch: the normalisation kernels load (not part of the read)
    Counting.peak = 0
    t0 = time.perf_counter()
    (batch,) = list(ds)
    dt = time.perf_counter() - t0
    assert batch[0].shape[0] == 80
    assert Counting.peak >= 8
    assert dt < 8 * 0.05 * 0.75, dt


@pytest.fixture
def http_dir(tmp_path):
    """Serve ``tmp_path`` read-only over HTTP on 127.0.0.1 (a free port)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_stream_store_over_http(http_dir, tmp_path):
    pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp")
    from zarr_instances.testing import make_instance_store

    group = make_instance_store(tmp_path / "s.zarr", 100, (1, 1, 4, 4), chunk_i=10)
    ds = ZarrIterableInstances(
        f"{http_dir}/s.zarr", batch_size=30, buffer_chunks=2, normalize=None, x_dtype=torch.float64
    )
    x, ids, rows = _rows(ds)
    np.testing.assert_array_equal(x, np.asarray(group["image"][...], dtype=np.float64))
    np.testing.assert_array_equal(ids, 1000 + rows)
    with pytest.raises(StoreNotFoundError, match=r"zarr_path='http://127\.0\.0\.1:\d+/nope"):
        ZarrIterableInstances(f"{http_dir}/nope.zarr")


def test_list_of_s3_stores_streams_like_the_local_list(s3_server, tmp_path):
    """Several remote stores as one dataset: labels from the table, percentile, workers."""
    urls, local = [], []
    for k, n_cells in enumerate((20, 26)):
        image, mask = make_image_and_mask((80, 80), n_cells, 12, seed=10 + k)
        url = f"s3://{s3_server.bucket}/list{k}.zarr"
        kw = {"chunk_i": 6 + k, "progress": False, "metadata": None}
        extract_instances({"slide": image}, {"slide": mask}, 12, out=url,
                          storage_options=s3_server.options(), **kw)  # fmt: skip
        extract_instances({"slide": image}, {"slide": mask}, 12,
                          out=str(tmp_path / f"l{k}.zarr"), **kw)  # fmt: skip
        urls.append(url)
        local.append(str(tmp_path / f"l{k}.zarr"))

    def stream(paths, **kw):
        ds = ZarrIterableInstances(
            paths, None, labels="source", batch_size=8, buffer_chunks=3, shuffle_chunks=True,
            normalize="percentile", **kw,
        )  # fmt: skip
        assert ds.chunk_i == (6, 7) and ds.classes == ["slide"]
        loader = ZarrDataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
        xs, rows = [], []
        for x, y, _iid, row in loader:
            assert (y == 0).all()
            xs.append(x.numpy())
            rows.append(row.numpy())
        x, r = np.concatenate(xs), np.concatenate(rows)
        return x[np.argsort(r)], np.sort(r)

    xr, rr = stream(urls, storage_options=s3_server.options())
    xl, rl = stream(local)
    np.testing.assert_array_equal(rr, rl)
    np.testing.assert_array_equal(rr, np.arange(rr.size))
    np.testing.assert_array_equal(xr, xl)
