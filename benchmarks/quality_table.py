"""Shuffle quality per configuration: distinct source chunks and label entropy per batch.

Computed from the epoch plan (no pixel data is read), next to a uniform random
permutation of the same rows. Labels are clustered along the rows, as in a store written
in instance-id (roughly spatial) order; the preshuffled row models a store written with
``extract_instances(order="random")``.

Example::

    python benchmarks/quality_table.py --rows 200000 --chunk 1024 --batch 256
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import zarr

from zarr_instances import ZarrIterableInstances, shuffle_quality


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--run", type=int, default=5000, help="rows per run of one class")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/q.zarr"
        zarr.create_array(
            path, shape=(args.rows, 1, 1, 1, 1), chunks=(args.chunk, 1, 1, 1, 1), dtype="uint8"
        )
        rng = np.random.default_rng(0)
        runs = rng.integers(0, args.classes, size=-(-args.rows // args.run))
        clustered = np.repeat(runs, args.run)[: args.rows]
        preshuffled = rng.permutation(clustered)
        ids = np.arange(args.rows)
        shuffles = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 0}
        configs = [
            ("no shuffle (harpy default)", clustered, {}),
            ("chunk-wise shuffle (harpy)", clustered, {**shuffles}),
            ("buffer_chunks=8", clustered, {**shuffles, "buffer_chunks": 8}),
            ("buffer_chunks=32", clustered, {**shuffles, "buffer_chunks": 32}),
            ("preshuffled store, chunk-wise", preshuffled, {**shuffles}),
            ("preshuffled store, buffer_chunks=8", preshuffled, {**shuffles, "buffer_chunks": 8}),
        ]
        rows = []
        for name, labels, kw in configs:
            ds = ZarrIterableInstances(path, ids, labels, **kw)
            q = shuffle_quality(ds, args.batch)
            rows.append({"config": name, **q.as_dict()})
    print(f"rows={args.rows} chunk={args.chunk} batch={args.batch} classes={args.classes}")
    print("| configuration | chunks/batch | global | label entropy (bits) | global |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['chunks_per_batch']:.1f} | {r['chunks_per_batch_global']:.1f}"
            f" | {r['label_entropy']:.2f} | {r['label_entropy_global']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
