"""Cost of :func:`block_histogram` next to :func:`label_sums` on the same mask block.

One 1024x1024 block, ~1000 disc-shaped labels covering ~41% of the pixels, two
channels. The calls are interleaved and the best of 40 rounds is kept (the machine
is shared), so the ratios are the numbers to read.

Run: ``ZARR_INSTANCES_NUMBA=1 PYTHONPATH=src python benchmarks/intensity_bench.py``
(``ZARR_INSTANCES_NUMBA=0`` times NumPy's ``label_sums`` instead of the kernel).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from zarr_instances._geometry import label_sums
from zarr_instances._intensity import block_histogram, combine, percentiles

try:  # label_sums uses the compiled kernel when numba is loaded
    import numba  # noqa: F401
except ImportError:
    pass


def main(n: int = 1024, rounds: int = 40) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:n, :n]
    cy, cx = (yy // 32) * 32 + 16, (xx // 32) * 32 + 16
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 11.6**2
    mask = np.where(disc, (yy // 32) * 32 + xx // 32 + 1, 0).astype(np.uint32)[None]
    u16 = rng.normal(1000, 300, (2, 1, n, n)).clip(0, 65535).astype(np.uint16)
    images = {
        "uint16": u16,
        "uint8": (u16 // 8).astype(np.uint8),
        "int16": (u16.astype(np.int32) - 1000).astype(np.int16),
        "float16": rng.lognormal(5, 1, u16.shape).astype(np.float16),
        "float32": rng.lognormal(5, 1, u16.shape).astype(np.float32),
    }
    calls: dict[str, Callable[[], object]] = {"label_sums": lambda: label_sums(mask)}
    for name, img in images.items():
        calls[f"hist {name}"] = lambda img=img: block_histogram(img, mask)
    best = dict.fromkeys(calls, float("inf"))
    for f in calls.values():
        f()
    for r in range(rounds):
        for k, f in calls.items():
            if k == "hist float32" and r >= 5:  # slow (sorts); a few rounds suffice
                continue
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    mp = n * n / 1e6
    print(f"object pixels: {(mask > 0).mean():.0%} of {n}x{n}, 2 channels")
    for k, v in best.items():
        print(f"{k:14s} {v * 1e6 / mp:8.0f} us/MP  {v / best['label_sums']:6.2f}x label_sums")
    for name in ("uint16", "float32"):
        h = block_histogram(images[name], mask)
        print(f"{name} summary: {h.nbytes / 1024:.0f} KiB, binned {h.binned}")
    t = time.perf_counter()
    merged = combine([block_histogram(u16, mask)] * 64)
    print(f"combine 64 uint16 blocks: {(time.perf_counter() - t) * 1e3:.1f} ms")
    print("percentiles (0.1, 1, 99, 99.9) of uint16:\n", percentiles(merged))


if __name__ == "__main__":
    main()
