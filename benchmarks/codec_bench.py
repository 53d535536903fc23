"""Codec study for instance stores: decode speed x compression ratio on crop-like data.

For each codec and chunk size, writes ``--n`` crop-like rows ``(2, 1, 64, 64)``
uint16 (Zarr v3) and measures the compression ratio and the decode speed of reading
the whole array (rows/s, median of ``--repeats`` passes, warm page cache): one chunk
at a time and in slabs of 16 chunks with zarr-python, and in slabs with the zarrs
pipeline when installed. Also a sharded variant. ``rows/s @ 200 MB/s`` models a
storage-bound reader (network or disk at 200 MB/s): ``1 / (1/decode + bytes/row /
ratio / bandwidth)``.

Example::

    /work/venv/bin/python benchmarks/codec_bench.py --n 32768 --json benchmarks/results/codecs.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROW_SHAPE,
    crop_like,
    drop_page_cache_hint,
    fmt_num,
    markdown_table,
    median,
    write_store,
)

CODECS = [
    "none",
    "default",
    "zstd1",
    "zstd3",
    "blosc-zstd1-noshuffle",
    "blosc-zstd1-shuffle",
    "blosc-zstd3-shuffle",
    "blosc-zstd1-bitshuffle",
    "blosc-lz41-shuffle",
    "blosc-lz45-shuffle",
    "blosc-lz45-bitshuffle",
]
ROW_BYTES = int(np.prod(ROW_SHAPE)) * 2


def _decode_once(path: str, chunk: int, slab: int, zarrs: bool) -> tuple[float, float]:
    """One pass over the whole array: (rows per wall second, rows per CPU second)."""
    import zarr

    cfg = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"} if zarrs else {}
    with zarr.config.set(cfg):
        arr = zarr.open_array(path, mode="r")
        n = arr.shape[0]
        step = chunk * slab
        t0, c0 = time.perf_counter(), time.process_time()
        for a in range(0, n, step):
            arr[a : min(a + step, n)]
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32768, help="rows per store")
    p.add_argument("--chunks", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--codecs", nargs="+", default=CODECS)
    p.add_argument("--shard-chunks", type=int, default=16, help="chunks per shard (sharded rows)")
    p.add_argument("--sharded-codecs", nargs="+", default=["default", "blosc-lz45-shuffle"])
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--bandwidth-mb", type=float, default=200.0)
    p.add_argument("--dir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    try:
        import zarrs

        have_zarrs = True
    except ImportError:
        have_zarrs = False

    root = args.dir or tempfile.mkdtemp(prefix="zi-codec-bench-")
    os.makedirs(root, exist_ok=True)
    bank = crop_like(np.random.default_rng(0), min(args.n, 16384))
    jobs = [(c, ch, None) for ch in args.chunks for c in args.codecs]
    jobs += [(c, ch, args.shard_chunks) for ch in args.chunks for c in args.sharded_codecs]
    results = []
    pipes = [("zp_1", 1, False), ("zp_16", 16, False)]
    if have_zarrs:
        pipes.append(("zarrs_16", 16, True))
    try:
        # Write every store first, then measure in interleaved rounds (every store
        # once per round), so that load changes on a shared machine hit all codecs
        # alike; wall rows/s and rows per CPU-second (robust to load) are recorded.
        for codec, chunk, shard in jobs:
            path = os.path.join(root, f"{codec}-{chunk}-{shard}.zarr")
            t0 = time.perf_counter()
            info = write_store(path, args.n, chunk, codec, shard_chunks=shard, data=bank)
            info["write_rows_s"] = args.n / (time.perf_counter() - t0)
            info["chunk"], info["shard_chunks"] = chunk, shard
            info["wall"] = {k: [] for k, _, _ in pipes}
            info["cpu"] = {k: [] for k, _, _ in pipes}
            results.append(info)
            print(
                f"  wrote {codec} chunk={chunk} shards={shard}: ratio {info['ratio']:.2f}",
                flush=True,
            )
        for rnd in range(args.repeats):
            for info in results:
                drop_page_cache_hint(info["path"])
                for key, slab, zarrs in pipes:
                    wall, cpu = _decode_once(info["path"], info["chunk"], slab, zarrs)
                    info["wall"][key].append(wall)
                    info["cpu"][key].append(cpu)
            print(f"  round {rnd + 1}/{args.repeats} done, load {os.getloadavg()}", flush=True)
        bw = args.bandwidth_mb * 1e6
        for info in results:
            for key, _, _ in pipes:
                info[key] = median(info["wall"][key])
                info[key + "_cpu"] = median(info["cpu"][key])
            info.setdefault("zarrs_16", None)
            info.setdefault("zarrs_16_cpu", None)
            best = max(info[k] for k, _, _ in pipes)
            info["best_cpu"] = max(info[k + "_cpu"] for k, _, _ in pipes)
            info["io_bound"] = 1 / (1 / best + ROW_BYTES / info["ratio"] / bw)
    finally:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"args": vars(args), "results": results}, fh, indent=1)
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(results, args.bandwidth_mb))
    return 0


def table(results: list[dict[str, Any]], bw: float) -> str:
    rows = []
    for r in results:
        name = r["codec"] + (f" (sharded x{r['shard_chunks']})" if r["shard_chunks"] else "")
        rows.append(
            [
                name,
                str(r["chunk"]),
                f"{r['ratio']:.2f}",
                fmt_num(r["zp_1"]),
                fmt_num(r["zp_16"]),
                fmt_num(r["zarrs_16"]),
                fmt_num(r["best_cpu"]),
                fmt_num(r["io_bound"]),
                fmt_num(r["write_rows_s"]),
            ]
        )
    return markdown_table(
        [
            "codec",
            "chunk rows",
            "ratio",
            "zarr-python 1 chunk rows/s",
            "zarr-python 16-chunk slabs rows/s",
            "zarrs 16-chunk slabs rows/s",
            "best rows per CPU-s",
            f"rows/s @ {bw:.0f} MB/s",
            "write rows/s",
        ],
        rows,
    )


if __name__ == "__main__":
    raise SystemExit(main())
