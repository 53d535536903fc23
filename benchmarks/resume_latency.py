"""Time to the first batch after a mid-epoch resume, vs a fresh start and vs a replay.

Example::

    python benchmarks/resume_latency.py --n 40960 --chunk 1024
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from zarr_instances import ZarrDataLoader, ZarrIterableInstances
from zarr_instances.testing import make_instance_array


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=40_960)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--at", type=float, default=0.9, help="fraction of the epoch consumed")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/s.zarr"
        make_instance_array(path, n=args.n, shape=(2, 1, 64, 64), chunk_i=args.chunk)

        def loader() -> ZarrDataLoader:
            ds = ZarrIterableInstances(
                path,
                np.arange(args.n),
                shuffle_chunks=True,
                shuffle_within_chunk=True,
                buffer_seed=0,
                buffer_chunks=4,
                batch_size=args.batch,
            )
            return ZarrDataLoader(ds, batch_size=None)

        cut = int(args.at * args.n / args.batch)
        fresh, resumed = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            next(iter(loader()))
            fresh.append(time.perf_counter() - t)
            first = loader()
            it = iter(first)
            for _ in range(cut):
                next(it)
            state = first.state_dict()
            del it
            again = loader()
            again.load_state_dict(state)
            t = time.perf_counter()
            next(iter(again))
            resumed.append(time.perf_counter() - t)
        t = time.perf_counter()
        it = iter(loader())
        for _ in range(cut + 1):
            next(it)
        replay = time.perf_counter() - t
    print(f"first batch, fresh start:        {np.median(fresh):.3f} s (median of {args.repeats})")
    print(f"first batch, resumed at {args.at:.0%}:     {np.median(resumed):.3f} s")
    print(f"replaying to the same point:     {replay:.3f} s")


if __name__ == "__main__":
    main()
