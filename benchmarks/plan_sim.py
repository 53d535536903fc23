"""Simulate the pure epoch plan at internet scale: time, memory, per-rank spread, padding.

Example::

    python benchmarks/plan_sim.py --rows 100000000 --chunk 1000 --world 1024 --workers 8
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from zarr_instances._plan import plan_worker, rank_share, select_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=100_000_000)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--world", type=int, default=1024)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--buffer-chunks", type=int, default=8)
    p.add_argument(
        "--keep-fraction",
        type=float,
        default=1.0,
        help="< 1 drops a random fraction of rows (a label mask)",
    )
    p.add_argument(
        "--all-ranks",
        action="store_true",
        help="plan every (rank, worker) to measure the spread of counts",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()

    keep = None
    if args.keep_fraction < 1:
        keep = np.random.default_rng(0).random(args.rows) < args.keep_fraction
    t0 = time.perf_counter()
    sel = select_rows(args.rows, args.chunk, keep)
    t_sel = time.perf_counter() - t0
    sampling = {
        "shuffle_chunks": True,
        "chunk_seed": 0,
        "shuffle_within": True,
        "buffer_seed": 0,
        "buffer_chunks": args.buffer_chunks,
        "drop_last": False,
    }

    # one worker's plan, as a worker process builds it, plus its rows materialised
    tracemalloc.start()
    t0 = time.perf_counter()
    plan = plan_worker(
        sel,
        epoch=3,
        rank=args.world - 1,
        world=args.world,
        worker=args.workers - 1,
        num_workers=args.workers,
        **sampling,
    )
    n_rows = sum(b.rows.size for b in plan.buffers())
    t_plan = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    result = {
        "rows": args.rows,
        "kept": sel.total,
        "chunks": sel.n_chunks,
        "world": args.world,
        "workers": args.workers,
        "select_rows_s": round(t_sel, 3),
        "one_worker_plan_s": round(t_plan, 3),
        "one_worker_peak_MB": round(peak / 2**20, 2),
        "worker_samples": n_rows,
        "per_rank": rank_share(sel.total, args.world, False),
        "padding": args.world * rank_share(sel.total, args.world, False) - sel.total,
    }
    if args.all_ranks:
        t0 = time.perf_counter()
        per_rank = np.zeros(args.world, dtype=np.int64)
        for r in range(args.world):
            for w in range(args.workers):
                per_rank[r] += plan_worker(
                    sel,
                    epoch=3,
                    rank=r,
                    world=args.world,
                    worker=w,
                    num_workers=args.workers,
                    **sampling,
                ).n_samples
        result["all_plans_s"] = round(time.perf_counter() - t0, 1)
        result["per_rank_min"], result["per_rank_max"] = int(per_rank.min()), int(per_rank.max())
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
