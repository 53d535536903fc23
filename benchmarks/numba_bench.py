"""NumPy against the numba kernels of extract_instances, step by step; and their compile cost.

    PYTHONPATH=src python benchmarks/numba_bench.py --rounds 5 --json benchmarks/results/numba.json

Two synthetic images (``make_image_and_mask``: 2-channel uint16 image, int32 mask of
discs, window diameter 64): small (1024 x 1024, 150 cells) and large (8192 x 8192,
25,000 cells). Each step runs on the pieces extraction gives it (label sums: one call
per 1024 x 1024 mask chunk; window cuts: one call per 1024 x 1024 tile, on the tile's
box), on one thread; a row is the total over the image, the median of ``--rounds``
rounds (each timing of the small image: the mean of 64 runs), NumPy and numba
interleaved (alternating which goes first). numba is warm (compiled before the rounds).

Steps (what ``_extract_kernels`` dispatches):
  label sums          label_sums: count, coordinate sums, extents per label
  cut, background     crop_windows(remove_background=True): the default
  cut, plain          crop_windows(remove_background=False)
  cut + mask crops    crop_windows(remove_background=True, with_mask=True)

Then, each in a fresh process: ``import numba``, the first call of each kernel with an
empty cache (``NUMBA_CACHE_DIR`` a new temporary folder: compile), and again in a new
process with that cache (load from cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))

SIZES = {"small": (1024, 150), "large": (8192, 25_000)}
DIAMETER = 64
BLOCK = 1024


def _pieces(size: int, cells: int) -> tuple[list[np.ndarray], list[tuple], list[tuple]]:
    """Mask chunks, per tile ``(image box, mask box, origin, starts, labels)``, chunk offsets."""
    from zarr_instances._geometry import centroids, combine_sums, label_sums_numpy

    image, mask = make(size, cells)
    blocks = [
        np.ascontiguousarray(mask[None, y : y + BLOCK, x : x + BLOCK])
        for y in range(0, size, BLOCK)
        for x in range(0, size, BLOCK)
    ]
    offsets = [(0, y, x) for y in range(0, size, BLOCK) for x in range(0, size, BLOCK)]
    sums = combine_sums([label_sums_numpy(b, o) for b, o in zip(blocks, offsets, strict=True)])
    cen = centroids(sums)[:, 1:]
    starts = cen - DIAMETER // 2
    pad = DIAMETER
    pimage = np.pad(image[:, None], [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    pmask = np.pad(mask[None], [(0, 0), (pad, pad), (pad, pad)])
    tiles = []
    tile_of = cen // BLOCK
    for ty in range(size // BLOCK):
        for tx in range(size // BLOCK):
            sel = (tile_of[:, 0] == ty) & (tile_of[:, 1] == tx)
            if not sel.any():
                continue
            st, labs = starts[sel], sums.labels[sel]
            y0, x0 = st.min(axis=0)
            y1, x1 = st.max(axis=0) + DIAMETER
            box_i = np.ascontiguousarray(pimage[:, :, y0 + pad : y1 + pad, x0 + pad : x1 + pad])
            box_m = np.ascontiguousarray(pmask[:, y0 + pad : y1 + pad, x0 + pad : x1 + pad])
            tiles.append((box_i, box_m, (int(y0), int(x0)), st, labs))
    return blocks, tiles, offsets


def make(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    from zarr_instances.testing import make_image_and_mask

    return make_image_and_mask((size, size), cells, DIAMETER, seed=0)


def _steps(blocks, offsets, tiles) -> dict[str, dict[str, Any]]:
    from zarr_instances import _extract_kernels
    from zarr_instances._geometry import crop_windows_numpy, label_sums_numpy

    def sums(fast: bool) -> None:
        for b, o in zip(blocks, offsets, strict=True):
            if fast:
                got = _extract_kernels.label_sums(b, o)
                assert got is not None
            else:
                label_sums_numpy(b, o)

    def cut(rb: bool, wm: bool):
        def run(fast: bool) -> None:
            for box_i, box_m, origin, st, labs in tiles:
                zs = np.zeros(len(st), np.int64)
                args = (box_i, box_m, origin, st, labs, DIAMETER, zs, 1)
                if fast:
                    got = _extract_kernels.cut_windows(*args, remove_background=rb, with_mask=wm)
                    assert got is not None
                else:
                    crop_windows_numpy(*args, remove_background=rb, with_mask=wm)

        return run

    return {
        "label sums": {"run": sums, "calls": len(blocks)},
        "cut, background": {"run": cut(True, False), "calls": len(tiles)},
        "cut, plain": {"run": cut(False, False), "calls": len(tiles)},
        "cut + mask crops": {"run": cut(True, True), "calls": len(tiles)},
    }


def measure(rounds: int, sizes: list[str]) -> dict[str, Any]:
    os.environ["ZARR_INSTANCES_NUMBA"] = "1"  # the kernels wherever installed
    out: dict[str, Any] = {}
    for name in sizes:
        size, cells = SIZES[name]
        t0 = time.perf_counter()
        blocks, tiles, offsets = _pieces(size, cells)
        n = sum(len(t[3]) for t in tiles)
        print(f"{name}: {size} x {size}, {n} windows, made in {time.perf_counter() - t0:.1f} s")
        steps = _steps(blocks, offsets, tiles)
        inner = max(1, 64 * BLOCK * BLOCK // (size * size))  # a small image: 64 runs per timing
        for step in steps.values():
            step["run"](True)  # compile (or load) first: numba warm
        times: dict[str, dict[str, list[float]]] = {s: {"numpy": [], "numba": []} for s in steps}
        for r in range(rounds):
            for sname, step in steps.items():
                order = (False, True) if r % 2 == 0 else (True, False)
                for fast in order:
                    t = time.perf_counter()
                    for _ in range(inner):
                        step["run"](fast)
                    took = (time.perf_counter() - t) / inner
                    times[sname]["numba" if fast else "numpy"].append(took)
        rows = {}
        for sname, t in times.items():
            a, b = statistics.median(t["numpy"]), statistics.median(t["numba"])
            rows[sname] = {
                "calls": steps[sname]["calls"],
                "numpy_s": round(a, 4),
                "numba_s": round(b, 4),
                "numpy_over_numba": round(a / b, 2),
                "runs_numpy": [round(x, 4) for x in t["numpy"]],
                "runs_numba": [round(x, 4) for x in t["numba"]],
            }
            print(f"  {sname:18s} numpy {a:8.4f} s  numba {b:8.4f} s  x{a / b:5.2f}", flush=True)
        out[name] = {"size": size, "cells": cells, "windows": n, "steps": rows}
        del blocks, tiles
    return out


_FIRST_CALLS = """
import json, sys, time
t = time.perf_counter()
import numba
times = {"import numba": time.perf_counter() - t}
t = time.perf_counter()
from zarr_instances import _extract_numba as nb
times["import kernels"] = time.perf_counter() - t
import numpy as np
m = np.zeros((1, 8, 8), np.int32)
img = np.zeros((2, 1, 8, 8), np.uint16)
st = np.zeros((1, 2), np.int64)
zs = np.zeros(1, np.int64)
labs = np.ones(1, np.int32)
crops = np.empty((1, 2, 1, 4, 4), np.uint16)
mc = np.empty((1, 1, 1, 4, 4), np.uint8)
calls = {
    "label_sums": lambda: nb.label_sums(m, 0, 0, 0),
    "cut_multiply": lambda: nb.cut_multiply(img, m, 0, 0, st, zs, labs, 4, crops),
    "cut_plain": lambda: nb.cut_plain(img, 0, 0, st, zs, 4, crops),
    "cut_mask": lambda: nb.cut_mask(m, 0, 0, st, zs, labs, 4, mc),
}
for name, call in calls.items():
    t = time.perf_counter()
    call()
    times[name] = time.perf_counter() - t
print(json.dumps(times))
"""


def first_calls(rounds: int) -> dict[str, Any]:
    """Cold compile and load-from-cache times, each in a fresh process, medians."""
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "cached": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="zi-numba-cache-") as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(SRC)}
            for kind in ("cold", "cached"):
                got = subprocess.run(
                    [sys.executable, "-c", _FIRST_CALLS],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[kind].append(json.loads(got.stdout))
    out: dict[str, Any] = {}
    for kind, rs in runs.items():
        med = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        med["total"] = round(statistics.median(sum(r.values()) for r in rs), 3)
        out[kind] = med
        print(f"{kind:7s} " + "  ".join(f"{k} {v:.3f} s" for k, v in med.items()), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile-rounds", type=int, default=3)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = {
        "command": "PYTHONPATH=src python " + " ".join(sys.argv),
        "threads": 1,
        "cpus": os.cpu_count(),
        "first_calls": first_calls(args.compile_rounds),
        "steps": measure(args.rounds, args.sizes),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
