"""``normalize="percentile"`` against ``"minmax01"``: samples/s of the same stream.

    PYTHONPATH=src python benchmarks/percentile_bench.py --json benchmarks/results/percentile.json

Extracts a study (``--sources`` synthetic FOVs of ``make_image_and_mask``, 2-channel
uint16, brightness x1, x2, x4, ...; window diameter ``--diameter``) into an instance
store once, then streams it with each normalisation mode through ``ZarrDataLoader``
(shuffled chunks and rows, float32, instance ids and row indexes returned), the modes
interleaved (alternating which goes first) for ``--rounds`` rounds of ``--epochs``
epochs each; a row reports the median samples/s. Configurations:

  batched      ``batch_size=256, buffer_chunks=4``, ``DataLoader(batch_size=None)``
  per-sample   ``DataLoader(batch_size=256)``
  workers      batched with ``num_workers=2``
  numpy route  batched with ``ZARR_INSTANCES_NUMBA=0`` (no compiled kernels)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from zarr_instances import ZarrDataLoader, ZarrIterableInstances, extract_instances  # noqa: E402
from zarr_instances.testing import make_image_and_mask  # noqa: E402

MODES = ("minmax01", "percentile")
CONFIGS = {
    "batched": {"batched": True, "workers": 0, "numba": True},
    "per-sample": {"batched": False, "workers": 0, "numba": True},
    "batched, 2 workers": {"batched": True, "workers": 2, "numba": True},
    "batched, numpy route": {"batched": True, "workers": 0, "numba": False},
}


def make_study(out: str, sources: int, size: int, cells: int, diameter: int) -> int:
    images, masks = {}, {}
    for k in range(sources):
        image, mask = make_image_and_mask((size, size), cells, diameter * 3 // 4, seed=k)
        images[f"fov{k}"] = (image.astype(np.uint32) << min(k, 2)).astype(np.uint16)
        masks[f"fov{k}"] = mask
    ids, _ = extract_instances(
        images, masks, diameter, out=out, chunk_i=256, order="random", progress=False
    )
    return int(ids.shape[0])


def epoch_rate(store: str, mode: str, cfg: dict[str, Any], epochs: int) -> float:
    batched = cfg["batched"]
    ds = ZarrIterableInstances(
        store, None, normalize=mode, shuffle_chunks=True, shuffle_within_chunk=True,
        buffer_seed=0, batch_size=256 if batched else None, buffer_chunks=4,
    )  # fmt: skip
    loader = ZarrDataLoader(
        ds, batch_size=None if batched else 256, num_workers=cfg["workers"],
        persistent_workers=cfg["workers"] > 0,
    )  # fmt: skip
    for _ in loader:  # warm: kernels loaded, workers started, pages cached
        pass
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _ids, _rows in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--cells", type=int, default=4000)
    ap.add_argument("--diameter", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "study.zarr")
        t0 = time.perf_counter()
        n = make_study(store, args.sources, args.size, args.cells, args.diameter)
        print(f"store: {n} crops (2, 1, {args.diameter}, {args.diameter}) uint16, "
              f"extracted in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        results = []
        for name in args.configs:
            cfg = CONFIGS[name]
            os.environ["ZARR_INSTANCES_NUMBA"] = "1" if cfg["numba"] else "0"
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            for r in range(args.rounds):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    rates[mode].append(epoch_rate(store, mode, cfg, args.epochs))
            med = {m: statistics.median(v) for m, v in rates.items()}
            row = {"config": name, **cfg, "rates": rates, "median": med,
                   "ratio": med["percentile"] / med["minmax01"]}  # fmt: skip
            results.append(row)
            print(f"{name:24s} minmax01 {med['minmax01']:9.0f}/s  percentile "
                  f"{med['percentile']:9.0f}/s  ratio {row['ratio']:.3f}", flush=True)  # fmt: skip
        os.environ.pop("ZARR_INSTANCES_NUMBA", None)
    if args.json:
        doc = {
            "command": " ".join(
                ["PYTHONPATH=src python benchmarks/percentile_bench.py", *sys.argv[1:]]
            ),
            "n_crops": n,
            "crop_shape": [2, 1, args.diameter, args.diameter],
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "results": results,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
