"""Several stores as one dataset (issue 18): a list of 8 stores vs one store of their rows.

Target: the list streams at >= 0.95x the samples/s of the concatenated store.
The stores hold ragged row counts (``rows + 37 k``: not multiples of the chunk size,
as stores of real slides), batched mode, 0 workers; the epochs of the two datasets
alternate, and the ratio is the median over rounds of (list / one) in each round.
Run: PYTHONPATH=src python benchmarks/multistore_bench.py [--rows 4000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from zarr_instances import ZarrIterableInstances
from zarr_instances.testing import make_instance_store


def _build(root: Path, stores: int, rows: int, chunk_i: int) -> tuple[list[str], str]:
    paths = [str(root / f"s{k}.zarr") for k in range(stores)]
    groups = [make_instance_store(p, n=rows + 37 * k, chunk_i=chunk_i, seed=k,
                                  shape=(2, 1, 32, 32))
              for k, p in enumerate(paths)]  # fmt: skip
    image = np.concatenate([np.asarray(g["image"][...]) for g in groups])
    ids = np.concatenate([np.asarray(g["instance_ids"][...]) for g in groups])
    concat = zarr.open_group(str(root / "concat.zarr"), mode="w")
    arr = concat.create_array("image", shape=image.shape, dtype=image.dtype,
                              chunks=(chunk_i, *image.shape[1:]))  # fmt: skip
    arr[:] = image
    concat.create_array("instance_ids", shape=ids.shape, dtype="int64", chunks=ids.shape)[:] = ids
    return paths, str(root / "concat.zarr")


def _epoch(ds: ZarrIterableInstances, epoch: int) -> float:
    ds.set_epoch(epoch)
    t = time.perf_counter()
    n = sum(int(b[0].shape[0]) for b in ds)
    return n / (time.perf_counter() - t)


def _rates(one: object, many: object, repeat: int) -> tuple[float, float, float]:
    """Median samples/s of each and median per-round ratio, epochs interleaved."""
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_chunks": 4}
    a = ZarrIterableInstances(one, batch_size=256, buffer_seed=1, **kw)
    b = ZarrIterableInstances(many, batch_size=256, buffer_seed=1, **kw)
    _epoch(a, 0), _epoch(b, 0)  # warm-up: open, page cache
    ra, rb = [], []
    for epoch in range(1, repeat + 1):
        for ds in (a, b) if epoch % 2 else (b, a):
            (ra if ds is a else rb).append(_epoch(ds, epoch))
    ratio = float(np.median(np.array(rb) / np.array(ra)))
    return float(np.median(ra)), float(np.median(rb)), ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--chunk-i", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths, concat = _build(Path(tmp), args.stores, args.rows, args.chunk_i)
        one, many, ratio = _rates(concat, paths, args.repeat)
    print(f"one store: {one:,.0f} samples/s; {args.stores} stores: {many:,.0f} samples/s "
          f"(medians of {args.repeat}); median ratio {ratio:.3f} (target >= 0.95)")  # fmt: skip


if __name__ == "__main__":
    main()
