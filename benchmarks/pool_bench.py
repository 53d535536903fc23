"""Per-batch cost of the output pools' bookkeeping: take, pack, release.

Runs in one process, without a DataLoader, so that it measures the pools alone:

* worker side: a :class:`WorkerBatchPool` takes and packs each batch; the consumer
  drops it (or keeps its ids) and the main process's release is simulated by
  writing ``FREE`` into the blocks it would release (the crops always, the column
  block unless its ids are kept);
* main side: :func:`_shared_batches._received` registers each arriving batch while
  0 or 1,000 column blocks of earlier batches stay held (ids kept for joining);
* in-process: an :class:`OutputPool` hands out each batch.

Times are CPU time of the process (one torch thread), so that other load on the
machine changes them little. Only the interfaces that ``dataset.py`` uses are
called (plus the header flag), so the script runs unchanged against an older
checkout (``PYTHONPATH=old/src``).

Example::

    PYTHONPATH=src python benchmarks/pool_bench.py --batches 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from zarr_instances import _shared_batches as sb
from zarr_instances._normalize import OutputPool

SMALL = (256, 2, 1, 4, 4)
LARGE = (256, 2, 1, 64, 64)  # 8 MiB of float32


def _mark_free(block: torch.Tensor) -> None:
    """Write ``FREE`` into a block's header, as the main process does on release."""
    if hasattr(sb, "_state"):  # before _refcount
        sb._state(block.data_ptr()).value = sb._FREE
    else:
        from zarr_instances import _refcount

        _refcount.write_flag(block, sb._FREE)


def worker_cycle(batches: int, shape: tuple[int, ...], keep_ids: bool, write: bool) -> float:
    """CPU microseconds per batch: take, (fill), pack, drop (keep the ids), release."""
    pool = sb.WorkerBatchPool(8)
    cols = [np.arange(shape[0], dtype=np.int64)] * 3
    kept: list[Any] = []
    start = time.process_time()
    for _ in range(batches):
        x = pool.take(shape, torch.float32)
        if write:
            x.fill_(1.0)
        seg = pool._by_ptr.get(x.untyped_storage().data_ptr())
        batch = pool.pack(x, cols)
        if keep_ids:
            kept.append(batch[1])
        del x, batch
        if seg is not None:
            _mark_free(seg.data)
            if not keep_ids and seg.cols is not None:
                _mark_free(seg.cols)
    return (time.process_time() - start) / batches * 1e6


def _dummy(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = sb.WorkerBatchPool(1).take((n, 4), torch.float32)  # a fresh shared segment
    return x, torch.zeros((3, n), dtype=torch.int64).share_memory_()[1]


def main_cycle(batches: int, held: int) -> float:
    """CPU microseconds per arrival registered while ``held`` column blocks stay held."""
    sb.drop_kept_segments()
    kept = []
    for _ in range(held):
        batch = sb._received(_dummy(4))
        kept.append(batch[1])
        del batch
    arriving = [_dummy(4) for _ in range(batches)]  # each dropped once registered
    start = time.process_time()
    while arriving:
        sb._received(arriving.pop())
    elapsed = time.process_time() - start
    del kept
    for _ in range(2 * 64):  # release what this case held
        sb._received(_dummy(4))
    sb.drop_kept_segments()
    return elapsed / batches * 1e6


def output_cycle(batches: int, shape: tuple[int, ...], keep_ids: bool, write: bool) -> float:
    """CPU microseconds per batch: take from an :class:`OutputPool`, (fill), drop."""
    pool = OutputPool(6)
    ids = np.arange(shape[0], dtype=np.int64)
    kept: list[Any] = []
    start = time.process_time()
    for _ in range(batches):
        x = pool.take(shape, torch.float32)
        if write:
            x.fill_(1.0)
        if keep_ids:
            kept.append(torch.from_numpy(ids))
        del x
    return (time.process_time() - start) / batches * 1e6


CASES: dict[str, tuple[Any, ...]] = {
    "worker: take+pack, small batch": (worker_cycle, SMALL, False, False),
    "worker: take+pack, small batch, ids kept": (worker_cycle, SMALL, True, False),
    "worker: take+fill+pack, 8 MiB batch": (worker_cycle, LARGE, False, True),
    "worker: take+fill+pack, 8 MiB batch, ids kept": (worker_cycle, LARGE, True, True),
    "main: arrival, 0 blocks held": (main_cycle, 0),
    "main: arrival, 1000 id blocks held": (main_cycle, 1000),
    "in-process: take, small batch": (output_cycle, SMALL, False, False),
    "in-process: take+fill, 8 MiB batch": (output_cycle, LARGE, False, True),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=2000, help="batches per case and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {name: [] for name in CASES}
    for _round in range(args.rounds):
        for name, (fn, *case) in CASES.items():
            large = len(case) > 1 and case[-1]
            n = max(50, args.batches // 10) if large else args.batches
            results[name].append(fn(n, *case))
    print(f"{'case':48s} {'CPU us/batch (median)':>18s}  rounds")
    for name, values in results.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:48s} {statistics.median(values):18.1f}  {rounds}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: statistics.median(v) for k, v in results.items()}, f, indent=2)


if __name__ == "__main__":
    main()
