"""Where streaming's CPU goes: CPU-microseconds per sample, stage by stage (issue 19).

For a zstd store (zarr's default codec) and a Blosc-lz4 store (ours), both
``(n, 2, 1, 64, 64)`` uint16 in chunks of 1024 rows, this measures with
``time.process_time`` (every thread of the process; for DataLoader workers, their
CPU too):

* **decode**: every stored chunk decoded into a reused buffer by our direct route
  (``_reader.read_chunks``, 4 chunks per call as a buffer of ``buffer_chunks=4``);
* **gather + cast (no scaling)**: the rows of a decoded buffer gathered in shuffled
  order into float32 batches of 256 (``normalize_rows`` with ``"none"``);
* **gather + cast + minmax01**: the same with the default normalisation (the fused
  kernel where numba is loaded);
* **the dataset, 0 workers**: steady-state epochs, batched (``batch_size=256,
  buffer_chunks=4``), as the CPU of the process (the CPU of a 1-epoch run subtracted
  from that of a longer run: start-up cancels out); what it costs beyond decode and
  normalisation is the plan, the shuffle, the threads' hand-offs and Python;
* **the DataLoader, 2 workers** (``ZarrDataLoader``): the same epochs through 2 worker
  processes, float32 out, and stored dtype out normalised in the consumer (workers'
  and main process's CPU); what it costs beyond 0 workers is the batches' transfer
  and the processes.

The wall-clock limit of a row on this machine is ``cores / CPU per sample``. Run::

    PYTHONPATH=src python benchmarks/stream_profile.py --n 60000 --repeats 3 \\
        --json benchmarks/results/stream_profile.json
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

from _common import markdown_table, median
from stream_bench import RECOMMENDED, make_store, run_loader


def _cpu_us(fn: Any, n: int, repeats: int) -> float:
    """Median CPU-microseconds per sample of ``fn()`` (which handles ``n`` samples)."""
    fn()  # warm-up: page cache, kernels, threads
    out = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        out.append((time.process_time() - c0) / n * 1e6)
    return median(out)


def in_process(path: str, repeats: int) -> dict[str, float]:
    """Decode, gather/cast and normalise costs, in this process."""
    import torch
    import zarr

    from zarr_instances import _runtime
    from zarr_instances._normalize import normalize_rows
    from zarr_instances._reader import chunk_decoder, read_chunks

    arr = zarr.open_array(path, mode="r")
    decoder = chunk_decoder(arr)
    assert decoder is not None, "the direct route does not read this store"
    size = int(arr.chunks[0])
    n = int(arr.shape[0])
    n_chunks = -(-n // size)
    buf = np.empty((4 * size, *arr.shape[1:]), dtype=arr.dtype)
    threads = _runtime.cores()

    def decode() -> None:
        for a in range(0, n_chunks, 4):
            chunks = np.arange(a, min(a + 4, n_chunks))
            read_chunks(arr, chunks, buf, decoder, threads=threads)

    read_chunks(arr, np.arange(min(4, n_chunks)), buf, decoder, threads=threads)
    perm = np.random.default_rng(0).permutation(buf.shape[0])

    def gather(mode: str) -> Any:
        def run() -> None:
            for k in range(0, n, 256):
                at = k % buf.shape[0]
                idx = perm[at : at + 256]
                normalize_rows(buf, idx, mode, torch.float32)

        return run

    from zarr_instances import _kernels

    _kernels.warm_up(arr.dtype)
    _runtime.wait_for_kernels()
    return {
        "decode": _cpu_us(decode, n, repeats),
        "gather + cast (no scaling)": _cpu_us(gather("none"), n, repeats),
        "gather + cast + minmax01": _cpu_us(gather("minmax01"), n, repeats),
    }


def loaders(path: str, repeats: int) -> dict[str, float]:
    """The dataset's CPU per sample at 0 and 2 workers (fresh subprocesses).

    Each configuration runs twice, for 1 epoch and for ``1 + repeats`` epochs; the
    difference is the CPU of ``repeats`` steady-state epochs (start-up, imports and
    the kernels' loading cancel out). Through ``ZarrDataLoader``.
    """
    base = {"path": path, "impl": "ours", **RECOMMENDED, "loader": "zarr"}
    out = {}
    for label, cfg in (
        ("the dataset, 0 workers", {**base, "workers": 0}),
        ("the DataLoader, 2 workers, float32 out", {**base, "workers": 2}),
        (
            "the DataLoader, 2 workers, stored dtype out, normalised in the consumer",
            {**base, "workers": 2, "normalize_in": "consumer"},
        ),
    ):
        one = run_loader({**cfg, "repeats": 1}, sys.executable, dict(os.environ))
        more = run_loader({**cfg, "repeats": 1 + repeats}, sys.executable, dict(os.environ))

        def cpu(res: dict[str, Any]) -> float:
            return float(res.get("cpu_main_s", np.nan)) + float(res.get("cpu_workers_s", 0.0))

        samples = sum(more.get("samples", [])) - sum(one.get("samples", []))
        out[label] = (cpu(more) - cpu(one)) / max(samples, 1) * 1e6
        out[label + " (samples/s)"] = median(more.get("rates", [np.nan])[1:])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="zi-stream-profile-")
    results: dict[str, Any] = {}
    try:
        for codec in ("default", "blosc-lz45-shuffle"):
            store = make_store(root, args.n, args.chunk, codec, f"{codec}.zarr")
            res = in_process(store["path"], args.repeats)
            res |= loaders(store["path"], args.repeats)
            results[codec] = res
            print(codec, json.dumps(res, indent=1), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    names = [k for k in results["default"] if not k.endswith("(samples/s)")]
    rows = []
    for name in names:
        cells = [name]
        for codec in ("default", "blosc-lz45-shuffle"):
            us = results[codec][name]
            rate = results[codec].get(name + " (samples/s)")
            cells.append(f"{us:.1f}" + (f" ({rate:,.0f}/s)" if rate else ""))
        rows.append(cells)
    print(markdown_table(["stage", "zstd: CPU µs/sample", "Blosc-lz4: CPU µs/sample"], rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
