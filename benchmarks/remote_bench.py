"""Streaming under per-request latency, and fsspec vs obstore against a local S3 server.

Latency: a store wrapper sleeps ``latency`` seconds in every ``get`` (like a round trip
to an object store) around a local store; we stream one epoch with
``ZarrIterableInstances`` and report samples/s against the same data without latency.

    python benchmarks/remote_bench.py                      # 0, 20, 100 ms
    python benchmarks/remote_bench.py --s3                 # + fsspec vs obstore on moto
    python benchmarks/remote_bench.py --json benchmarks/results/remote.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore, WrapperStore

from zarr_instances import ZarrDataLoader, ZarrIterableInstances
from zarr_instances.testing import make_instance_array


class LatencyStore(WrapperStore):
    """Sleep ``latency`` seconds before every read (single or partial) of the wrapped store."""

    def __init__(self, store: Any, latency: float) -> None:
        super().__init__(store)
        self.latency = latency

    def _with_store(self, store: Any) -> LatencyStore:
        return type(self)(store, self.latency)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        await asyncio.sleep(self.latency)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        await asyncio.sleep(self.latency)
        return await self._store.get_partial_values(prototype, key_ranges)


def _epoch(arr: Any, n: int, workers: int, **kw: Any) -> float:
    ds = ZarrIterableInstances(
        arr, np.arange(n), batch_size=256, shuffle_chunks=True, buffer_seed=0, **kw
    )
    loader = ZarrDataLoader(
        ds,
        batch_size=None,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    t0 = time.perf_counter()
    got = sum(int(b[0].shape[0]) for b in loader)
    dt = time.perf_counter() - t0
    assert got == n, got
    return n / dt


def latency_table(args: argparse.Namespace, tmp: str) -> list[dict[str, Any]]:
    path = os.path.join(tmp, "crops.zarr")
    make_instance_array(path, args.n, (2, 1, 32, 32), chunk_i=args.chunk_i, dtype="uint16")
    rows = []
    base: dict[tuple[int, int], float] = {}
    for latency_ms in args.latency:
        store = LatencyStore(LocalStore(path, read_only=True), latency_ms / 1000)
        arr = zarr.open_array(store, mode="r")
        for workers in args.workers:
            for bc in args.buffer_chunks:
                rate = _epoch(arr, args.n, workers, buffer_chunks=bc)
                if latency_ms == 0:
                    base[(workers, bc)] = rate
                rows.append(
                    {
                        "latency_ms": latency_ms,
                        "workers": workers,
                        "buffer_chunks": bc,
                        "samples_per_s": rate,
                        "vs_local": rate / base[(workers, bc)] if base else None,
                    }
                )
                print(
                    f"{latency_ms:>10} {workers:>7} {bc:>13} {rate:>11.0f} "
                    f"{rate / base[(workers, bc)]:>8.2f}",
                    flush=True,
                )
    return rows


def s3_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import obstore.store as obs
    import s3fs
    from zarr.storage import ObjectStore

    from _s3 import start_s3_server, stop_s3_server

    server = start_s3_server()
    rows = []
    try:
        url = f"s3://{server.bucket}/crops.zarr"
        opts = server.options()
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "crops.zarr")
            make_instance_array(local, args.n, (2, 1, 32, 32), chunk_i=args.chunk_i, dtype="uint16")
            s3fs.S3FileSystem(**opts).put(local, url, recursive=True)

        def fsspec_array() -> Any:
            return zarr.open_array(url, mode="r", storage_options=opts)

        def obstore_array() -> Any:
            s3 = obs.S3Store(
                server.bucket,
                prefix="crops.zarr",
                endpoint=server.endpoint,
                access_key_id=server.key,
                secret_access_key=server.secret,
                region="us-east-1",
                client_options={"allow_http": True},
            )
            return zarr.open_array(ObjectStore(s3, read_only=True), mode="r")

        for _ in range(args.repeat):
            for name, make in (("fsspec (s3fs)", fsspec_array), ("obstore", obstore_array)):
                for bc in args.buffer_chunks:
                    rate = _epoch(make(), args.n, 0, buffer_chunks=bc)
                    rows.append({"library": name, "buffer_chunks": bc, "samples_per_s": rate})
                    print(f"{name:>14} {bc:>13} {rate:>11.0f}", flush=True)
        # forked DataLoader workers after the parent has read through the library
        for name, make in (("fsspec (s3fs)", fsspec_array), ("obstore", obstore_array)):
            arr = make()
            ds = ZarrIterableInstances(arr, np.arange(args.n), batch_size=256)
            next(iter(ds))  # the parent uses the store first
            loader = ZarrDataLoader(
                ZarrIterableInstances(make(), np.arange(args.n), batch_size=256),
                batch_size=None,
                num_workers=1,
                multiprocessing_context="fork",
                timeout=30,
            )
            try:
                next(iter(loader))
                verdict = "ok"
            except RuntimeError as exc:
                verdict = f"no batch within 30 s ({str(exc)[:60]})"
            rows.append({"library": name, "forked_worker": verdict})
            print(f"{name:>14} forked worker: {verdict}", flush=True)
    finally:
        stop_s3_server(server)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="rows (crops of 2x1x32x32 uint16)")
    p.add_argument("--chunk-i", type=int, default=100, help="rows per chunk")
    p.add_argument("--latency", type=float, nargs="+", default=[0, 20, 100], help="ms per get")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--buffer-chunks", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--s3", action="store_true", help="also compare fsspec and obstore on moto")
    p.add_argument("--repeat", type=int, default=2, help="repeats of the S3 comparison")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args()
    out: dict[str, Any] = {
        "args": vars(args),
        "zarr_async_concurrency": zarr.config.get("async.concurrency"),
    }
    print(
        f"{args.n} crops (2, 1, 32, 32) uint16, {args.chunk_i} rows per chunk, "
        f"batch 256, zarr async.concurrency={out['zarr_async_concurrency']}"
    )
    print(
        f"{'latency ms':>10} {'workers':>7} {'buffer_chunks':>13} {'samples/s':>11} {'vs local':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out["latency"] = latency_table(args, tmp)
    if args.s3:
        print(
            f"\nmoto S3 server on 127.0.0.1, workers 0\n{'library':>14} {'buffer_chunks':>13} "
            f"{'samples/s':>11}"
        )
        out["s3"] = s3_table(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
