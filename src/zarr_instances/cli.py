"""Command line: ``zarr-instances demo | ...``."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .dataset import ZarrDataLoader, ZarrIterableInstances
    from .testing import make_instance_store

    with tempfile.TemporaryDirectory(prefix="zarr-instances-demo-") as tmp:
        store = f"{tmp}/demo.zarr"
        group = make_instance_store(store, n=args.n, shape=(2, 1, 32, 32), chunk_i=256)
        labels = group["labels"][...]
        rows = []
        for mode, kwargs in (
            ("per-sample (harpy-compatible)", {}),
            ("batched, 4-chunk buffers", {"batch_size": 128, "buffer_chunks": 4}),
        ):
            ds = ZarrIterableInstances(
                store, None, labels, shuffle_chunks=True, shuffle_within_chunk=True,
                buffer_seed=0, **kwargs,
            )
            if "batch_size" in kwargs:
                loader = ZarrDataLoader(ds, batch_size=None, num_workers=args.workers)
            else:
                loader = ZarrDataLoader(ds, batch_size=128, num_workers=args.workers)
            t0 = time.perf_counter()
            samples = batches = 0
            first = None
            for batch in loader:
                x = batch[0]
                first = first or time.perf_counter() - t0
                samples += x.shape[0]
                batches += 1
            dt = time.perf_counter() - t0
            assert isinstance(x, torch.Tensor)
            rows.append((mode, samples, batches, samples / dt, first or 0.0))
        print(f"store: {args.n} crops of (2, 1, 32, 32) uint16, chunks of 256 rows")
        print(f"kept (label >= 0): {int((labels >= 0).sum())}, workers: {args.workers}")
        print(f"{'mode':32} {'samples':>8} {'batches':>8} {'samples/s':>10} {'1st batch s':>12}")
        for mode, s, b, rate, first_s in rows:
            print(f"{mode:32} {s:8d} {b:8d} {rate:10.0f} {first_s:12.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(prog="zarr-instances", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="make a small synthetic store and stream one epoch")
    demo.add_argument("--n", type=int, default=20_000, help="number of crops")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
