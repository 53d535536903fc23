"""Labels and filters from the instance table vs the same rows given as arrays.

A study of ``--sources`` synthetic fields of view (2 channels, uint16, ~``--cells``
cells each) with a ``cell_type`` metadata column is extracted once into
``--workdir``. Each round then streams one epoch twice, in alternating order, in
this process:

* **table**: ``ZarrIterableInstances(store, None, labels="cell_type",
  where={"source": half of the sources}, ...)``;
* **arrays**: the same labels as an integer array and the same rows as a boolean
  ``where`` array;

each for ``--epochs`` epochs.

Both are batched (``batch_size=256, buffer_chunks=4``, shuffled chunks and rows,
``minmax01``), 0 workers. Reported: median samples/s of each and the ratio (issue
target: table >= 0.95x arrays).

    PYTHONPATH=src python benchmarks/labels_bench.py --rounds 5 \
        --json benchmarks/results/labels.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median


def _store(workdir: str, sources: int, size: int, cells: int) -> str:
    from zarr_instances import extract_instances
    from zarr_instances.testing import make_image_and_mask

    out = os.path.join(workdir, f"labels_{sources}_{size}_{cells}.zarr")
    if os.path.exists(os.path.join(out, "obs")):
        return out
    images, masks, meta = {}, {}, []
    rng = np.random.default_rng(0)
    types = np.array(["B", "T", "NK", "macrophage"])
    for k in range(sources):
        name = f"slide{k:02d}"
        images[name], masks[name] = make_image_and_mask((size, size), cells, 32, seed=k)
        ids = np.unique(masks[name])
        ids = ids[ids > 0]
        meta.append(
            pd.DataFrame(
                {"source": name, "instance_id": ids, "cell_type": rng.choice(types, ids.size)}
            )
        )
    extract_instances(
        images, masks, 32, out=out, metadata=pd.concat(meta), overwrite=True, progress=False
    )
    return out


def _epochs(ds: Any, first: int, epochs: int) -> float:
    """Samples per second over ``epochs`` epochs from epoch ``first``."""
    t0 = time.perf_counter()
    n = 0
    for e in range(first, first + epochs):
        ds.set_epoch(e)
        for batch in ds:
            n += int(batch[0].shape[0])
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10, help="epochs per measurement")
    p.add_argument("--workdir", default="/tmp/zi-labels-bench")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)

    from zarr_instances import ZarrIterableInstances, read_table

    store = _store(args.workdir, args.sources, args.size, args.cells)
    table = read_table(store)
    names = list(table["source"].cat.categories)
    keep = names[::2]
    codes = table["cell_type"].cat.codes.to_numpy().astype(np.int64)  # NA -> -1
    rows = table["source"].isin(keep).to_numpy()
    common = {
        "shuffle_chunks": True,
        "shuffle_within_chunk": True,
        "buffer_seed": 0,
        "batch_size": 256,
        "buffer_chunks": 4,
    }
    table_ds = ZarrIterableInstances(
        store, None, labels="cell_type", where={"source": keep}, **common
    )
    array_ds = ZarrIterableInstances(store, None, codes, where=rows, **common)
    assert len(table_ds) == len(array_ds)
    rates: dict[str, list[float]] = {"table": [], "arrays": []}
    _epochs(table_ds, 0, 1), _epochs(array_ds, 0, 1)  # warm: kernels, page cache
    for r in range(args.rounds):
        order = ("table", "arrays") if r % 2 == 0 else ("arrays", "table")
        for which in order:
            ds = table_ds if which == "table" else array_ds
            rates[which].append(_epochs(ds, 1 + r * args.epochs, args.epochs))
        print(f"[{r}] table {rates['table'][-1]:,.0f}/s, arrays {rates['arrays'][-1]:,.0f}/s")
    t, a = median(rates["table"]), median(rates["arrays"])
    print(
        f"{len(table_ds)} rows kept of {len(table)}; table {t:,.0f}/s, arrays {a:,.0f}/s, "
        f"ratio {t / a:.3f}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "rates": rates, "ratio": t / a}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
