"""Codec study for instance stores: decode speed x compression ratio on crop-like data.

For each codec and chunk size, writes ``--n`` crop-like rows ``(2, 1, 64, 64)``
uint16 (Zarr v3) and measures the compression ratio and the decode speed of reading
the whole array (rows/s, median of ``--repeats`` passes, warm page cache): one chunk
at a time and in slabs of 16 chunks with zarr-python, and in slabs with the zarrs
pipeline when installed. Also a sharded variant. ``rows/s @ 200 MB/s`` models a
storage-bound reader (network or disk at 200 MB/s): ``1 / (1/decode + bytes/row /
ratio / bandwidth)``.

Example::

    /work/venv/bin/python benchmarks/codec_bench.py --n 32768 --json codecs.json
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


def _decode(path: str, chunk: int, slab: int, zarrs: bool, repeats: int) -> float:
    import zarr

    cfg = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"} if zarrs else {}
    with zarr.config.set(cfg):
        arr = zarr.open_array(path, mode="r")
        n = arr.shape[0]
        step = chunk * slab
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for a in range(0, n, step):
                arr[a : min(a + step, n)]
            rates.append(n / (time.perf_counter() - t0))
    return median(rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32768, help="rows per store")
    p.add_argument("--chunks", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--codecs", nargs="+", default=CODECS)
    p.add_argument("--shard-chunks", type=int, default=16, help="chunks per shard (sharded rows)")
    p.add_argument("--sharded-codecs", nargs="+", default=["default", "blosc-lz45-shuffle"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bandwidth-mb", type=float, default=200.0)
    p.add_argument("--dir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    try:
        import zarrs  # noqa: F401

        have_zarrs = True
    except ImportError:
        have_zarrs = False

    root = args.dir or tempfile.mkdtemp(prefix="zi-codec-bench-")
    os.makedirs(root, exist_ok=True)
    bank = crop_like(np.random.default_rng(0), min(args.n, 16384))
    jobs = [(c, ch, None) for ch in args.chunks for c in args.codecs]
    jobs += [(c, ch, args.shard_chunks) for ch in args.chunks for c in args.sharded_codecs]
    results = []
    try:
        for codec, chunk, shard in jobs:
            path = os.path.join(root, f"{codec}-{chunk}-{shard}.zarr")
            t0 = time.perf_counter()
            info = write_store(path, args.n, chunk, codec, shard_chunks=shard, data=bank)
            info["write_rows_s"] = args.n / (time.perf_counter() - t0)
            drop_page_cache_hint(path)
            info["chunk"], info["shard_chunks"] = chunk, shard
            info["zp_1"] = _decode(path, chunk, 1, False, args.repeats)
            info["zp_16"] = _decode(path, chunk, 16, False, args.repeats)
            info["zarrs_16"] = _decode(path, chunk, 16, True, args.repeats) if have_zarrs else None
            best = max(v for v in (info["zp_1"], info["zp_16"], info["zarrs_16"]) if v)
            bw = args.bandwidth_mb * 1e6
            info["io_bound"] = 1 / (1 / best + ROW_BYTES / info["ratio"] / bw)
            results.append(info)
            shutil.rmtree(path, ignore_errors=True)
            print(
                f"  {codec} chunk={chunk} shards={shard}: ratio {info['ratio']:.2f}, "
                f"zp1 {info['zp_1']:,.0f} zp16 {info['zp_16']:,.0f} "
                f"zarrs16 {fmt_num(info['zarrs_16'])}",
                flush=True,
            )
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
            f"rows/s @ {bw:.0f} MB/s",
            "write rows/s",
        ],
        rows,
    )


if __name__ == "__main__":
    raise SystemExit(main())
