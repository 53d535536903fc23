"""Benchmark extract_instances against the zarr write limit, a NumPy loop and harpy.

Each measurement runs in its own subprocess (clean peak RSS). Data are generated once
into ``--data`` (a 2-channel uint16 image chunked (2, 1024, 1024) and an int32 mask
chunked (1024, 1024), both Zarr v3 with zarr's default codec).

    python benchmarks/extract_bench.py                    # 8k x 8k, 25k cells, d = 64
    python benchmarks/extract_bench.py --size 16384 --cells 100000
    python benchmarks/extract_bench.py --harpy-python /work/bench-venv-extract/bin/python

Rows:
  ours          extract_instances(image path, mask path, 64, out=...) on Dask threads
  write limit   only writing the same output array (same chunks and codec) with zarr,
                from memory: the ceiling for any extractor writing this store with zarr
  direct write  the same, with the chunk encoding and file writes extract_instances does
                itself for a local store's default layout (byte-identical chunks), 4
                chunks per call on a thread per CPU (as its write tasks)
  numpy loop    read image + mask into memory, bincount centroids, one crop at a time
  harpy         harpy.tb.extract_instances on a SpatialData object (separate venv)
  before        (--before-src DIR) ours from another source tree, e.g. main's src
  ours (numba)  (--numba) ours with the compiled kernels forced on
  ours, zstd store / write limit, zstd
                (--zstd-rows) ours and the write limit with zarr's default codec for
                format 3 (zstd level 0) instead of ours (Blosc-lz4): the write limit
                of the issue (17,460 crops/s on an idle machine)

With --repeats N every row (harpy's too; not the NumPy loop) runs N times, the rows
interleaved (so that load from other jobs hits them alike) and in reverse order every
other round (a run right after another is slower); each row reports its median run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

_COMMON = """
import json, os, resource, sys, time
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
args = json.loads(sys.argv[1])
"""

_GEN = (
    _COMMON
    + """
import numpy as np, zarr
from zarr_instances.testing import make_image_and_mask
image, mask = make_image_and_mask((args["size"], args["size"]), args["cells"], args["diameter"],
                                  seed=0)
zarr.create_array(args["image"], data=image, chunks=(2, 1024, 1024), overwrite=True)
zarr.create_array(args["mask"], data=mask, chunks=(1024, 1024), overwrite=True)
print(json.dumps({"labels": int(np.unique(mask).size - 1)}))
"""
)

_OURS = (
    _COMMON
    + """
import dask
from zarr_instances import extract_instances
kw = {}
if args.get("zstd"):  # zarr's default codec for format 3 instead of ours
    from zarr.codecs import ZstdCodec
    kw["compressors"] = ZstdCodec(level=0)
base = rss()
t0 = time.perf_counter()
with dask.config.set(scheduler=args["scheduler"]):
    ids, inst = extract_instances(args["image"], args["mask"], args["diameter"],
                                  out=args["out"], order=args["order"], progress=False, **kw)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "n": int(ids.size), "rss_mib": rss(), "base_mib": base}))
"""
)

_WRITE_LIMIT = (
    _COMMON
    + """
import numpy as np, zarr
src = zarr.open_array(args["src"], mode="r")
data = src[...]
base = rss()
t0 = time.perf_counter()
codecs = {} if args.get("zarr_default") else {"compressors": src.compressors,
                                                "filters": src.filters}
dst = zarr.create_array(args["out"], shape=src.shape, chunks=src.chunks, dtype=src.dtype,
                        overwrite=True, config={"write_empty_chunks": True}, **codecs)
step = src.chunks[0] * 32
if args.get("direct"):  # the chunk writes extract_instances does itself (no zarr pipeline)
    # as its write tasks: 4 chunks per call, one call per thread, a thread per CPU
    from concurrent.futures import ThreadPoolExecutor
    from zarr_instances._write import write_rows
    step = src.chunks[0] * 4
    def one(a):
        write_rows(dst, a, min(a + step, src.shape[0]), data[a:a + step])
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, range(0, src.shape[0], step)))
else:
    for a in range(0, src.shape[0], step):
        dst[a:a + step] = data[a:a + step]
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "n": int(src.shape[0]), "rss_mib": rss(), "base_mib": base}))
"""
)

_NUMPY = (
    _COMMON
    + """
import numpy as np, zarr
base = rss()
t0 = time.perf_counter()
image = zarr.open_array(args["image"], mode="r")[...]
mask = zarr.open_array(args["mask"], mode="r")[...]
d = args["diameter"]
flat = mask.ravel()
count = np.bincount(flat)
yy, xx = np.divmod(np.arange(flat.size), mask.shape[1])
sy = np.bincount(flat, weights=yy)
sx = np.bincount(flat, weights=xx)
del yy, xx
ids = np.flatnonzero(count)
ids = ids[ids != 0]
cy = np.rint(sy[ids] / count[ids]).astype(int)
cx = np.rint(sx[ids] / count[ids]).astype(int)
chunk = 128
out = zarr.create_array(args["out"], shape=(ids.size, image.shape[0], 1, d, d),
                        chunks=(chunk, image.shape[0], 1, d, d), dtype=image.dtype,
                        overwrite=True)
h, w = mask.shape
buf = np.zeros((chunk, image.shape[0], 1, d, d), dtype=image.dtype)
for a in range(0, ids.size, chunk):
    b = min(ids.size, a + chunk)
    buf[:] = 0
    for k in range(a, b):
        y0, x0 = cy[k] - d // 2, cx[k] - d // 2
        ya, yb, xa, xb = max(y0, 0), min(y0 + d, h), max(x0, 0), min(x0 + d, w)
        win = image[:, ya:yb, xa:xb] * (mask[ya:yb, xa:xb] == ids[k])
        buf[k - a, :, 0, ya - y0:yb - y0, xa - x0:xb - x0] = win
    out[a:b] = buf[: b - a]
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "n": int(ids.size), "rss_mib": rss(), "base_mib": base}))
"""
)

_HARPY = (
    _COMMON
    + """
import dask, dask.array as da, zarr
import harpy as hp
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel
image = da.from_zarr(zarr.open_array(args["image"], mode="r"))
mask = da.from_zarr(zarr.open_array(args["mask"], mode="r"))
sdata = SpatialData(
    images={"image": Image2DModel.parse(image, dims=("c", "y", "x"))},
    labels={"labels": Labels2DModel.parse(mask, dims=("y", "x"))},
)
base = rss()
t0 = time.perf_counter()
with dask.config.set(scheduler=args["scheduler"]):
    ids, inst = hp.tb.extract_instances(
        sdata, image_name="image", labels_name="labels", diameter=args["diameter"],
        zarr_output_path=args["out"], name_instances_image="image.zarr", batch_size=128,
    )
dt = time.perf_counter() - t0
import numpy as np
np.save(os.path.join(args["out"], "ids.npy"), np.asarray(ids))
print(json.dumps({"seconds": dt, "n": int(len(ids)), "rss_mib": rss(), "base_mib": base}))
"""
)


def _child(
    python: str,
    code: str,
    args: dict,
    timeout: float = 3600,
    src: str | None = None,
    env_extra: dict | None = None,
) -> dict:
    env = {**os.environ, "PYTHONPATH": src or str(SRC), "PYTHONWARNINGS": "ignore"}
    env.update(env_extra or {})
    res = subprocess.run(
        [python, "-c", textwrap.dedent(code), json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if res.returncode != 0:
        raise RuntimeError(f"child failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _compare(a: str, b: str, ids_a: str | None = None, ids_b: str | None = None) -> str:
    import numpy as np
    import zarr

    x = zarr.open_array(a, mode="r")
    y = zarr.open_array(b, mode="r")
    if x.shape != y.shape:
        return f"shapes differ {x.shape} vs {y.shape}"
    if ids_a and ids_b:
        ia = zarr.open_array(ids_a, mode="r")[...]
        ib = np.load(ids_b).ravel()
        order = np.argsort(ib)
        pos = order[np.searchsorted(ib, ia, sorter=order)]
    else:
        pos = np.arange(x.shape[0])
    differ = 0
    step = 2048
    for s in range(0, x.shape[0], step):
        xa = x[s : s + step]
        ya = y.get_orthogonal_selection((pos[s : s + step],))
        differ += int(np.any(xa != ya, axis=(1, 2, 3, 4)).sum())
    return f"{differ} of {x.shape[0]} crops differ"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--cells", type=int, default=25_000)
    p.add_argument("--diameter", type=int, default=64)
    p.add_argument("--order", default="id", choices=("id", "random"))
    p.add_argument("--data", default=str(HERE.parent / "bench-data"))
    p.add_argument(
        "--repeats", type=int, default=1, help="median of N runs (rows interleaved) for each row"
    )
    p.add_argument("--harpy-python", default=None, help="python of a venv with harpy-analysis")
    p.add_argument("--skip-numpy", action="store_true")
    p.add_argument("--skip-limit", action="store_true", help="do not run the write limit")
    p.add_argument(
        "--zstd-rows",
        action="store_true",
        help="add 'ours, zstd store' and 'write limit, zstd': both with zarr's default codec",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--numba",
        action="store_true",
        help="add a row 'ours (numba)': the compiled kernels forced on (ZARR_INSTANCES_NUMBA=1)",
    )
    p.add_argument(
        "--before-src",
        default=None,
        help="add a row 'before': ours from another source tree (e.g. a checkout of main's src)",
    )
    args = p.parse_args()

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    tag = f"{args.size}_{args.cells}_{args.diameter}"
    image, mask = str(data / f"image_{tag}.zarr"), str(data / f"mask_{tag}.zarr")
    py = sys.executable
    if not (Path(image).exists() and Path(mask).exists()):
        t0 = time.perf_counter()
        info = _child(
            py,
            _GEN,
            {
                "size": args.size,
                "cells": args.cells,
                "diameter": args.diameter,
                "image": image,
                "mask": mask,
            },
        )
        print(f"generated {info['labels']} cells in {time.perf_counter() - t0:.0f} s")
    tmp = Path(tempfile.mkdtemp(prefix="zi-extract-bench-", dir=data))
    common = {"image": image, "mask": mask, "diameter": args.diameter, "order": args.order}
    rows: dict[str, dict] = {}
    try:
        ours = {"scheduler": "threads", "out": str(tmp / "ours.zarr")}
        runs = [("ours (threads)", _OURS, ours, None, None, py)]
        if args.before_src:
            before = {**ours, "out": str(tmp / "before.zarr")}
            runs.insert(0, ("before (threads)", _OURS, before, args.before_src, None, py))
        if args.numba:
            on = {"ZARR_INSTANCES_NUMBA": "1"}
            numba_run = {**ours, "out": str(tmp / "numba.zarr")}
            runs.append(("ours (numba)", _OURS, numba_run, None, on, py))
        if not args.skip_limit:
            limit = {"src": str(tmp / "ours.zarr/image"), "out": str(tmp / "limit.zarr")}
            runs.append(("write limit", _WRITE_LIMIT, limit, None, None, py))
            direct = {**limit, "out": str(tmp / "direct.zarr"), "direct": True}
            runs.append(("direct write", _WRITE_LIMIT, direct, None, None, py))
        if args.zstd_rows:  # the write limit: zarr's default codec (zstd)
            zs = {**ours, "out": str(tmp / "ours-zstd.zarr"), "zstd": True}
            runs.append(("ours, zstd store", _OURS, zs, None, None, py))
            zl = {"src": str(tmp / "ours.zarr/image"), "out": str(tmp / "limit-zstd.zarr")}
            zl["zarr_default"] = True
            runs.append(("write limit, zstd", _WRITE_LIMIT, zl, None, None, py))
        if args.harpy_python:  # interleaved with ours, so that both see the same load
            hp = {"scheduler": "threads", "out": str(tmp / "harpy")}
            runs.append(("harpy (threads)", _HARPY, hp, None, None, args.harpy_python))
        times: dict[str, list[dict]] = {}
        for r in range(args.repeats):
            # every other round in reverse order: the run after another one is slower
            # (the page cache holds the first one's output), so no row always comes second
            for name, code, extra, src, env, python in runs if r % 2 == 0 else runs[::-1]:
                shutil.rmtree(extra["out"], ignore_errors=True)
                try:
                    res = _child(python, code, {**common, **extra}, src=src, env_extra=env)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    if python == py:
                        raise
                    print(f"{name} failed: {exc}")
                    continue
                times.setdefault(name, []).append(res)
                done = sorted(times[name], key=lambda x: x["seconds"])
                rows[name] = done[(len(done) - 1) // 2]  # the median (lower one if even)
                print(
                    f"[{r}] {name}: {res['seconds']:.2f} s, {res['n'] / res['seconds']:.0f} "
                    f"crops/s, peak RSS {res['rss_mib']:.0f} MiB",
                    flush=True,
                )
        compared = (
            ("before (threads)", "before.zarr"),
            ("ours (numba)", "numba.zarr"),
            ("ours, zstd store", "ours-zstd.zarr"),
        )
        for name, out in compared:
            if name in rows:
                rows[name]["check"] = _compare(
                    str(tmp / "ours.zarr/image"), str(tmp / out / "image")
                )
        if not args.skip_numpy:
            rows["numpy loop"] = _child(py, _NUMPY, {**common, "out": str(tmp / "np.zarr")})
            print(f"numpy loop: {rows['numpy loop']['seconds']:.2f} s", flush=True)
            rows["numpy loop"]["check"] = _compare(
                str(tmp / "ours.zarr/image"), str(tmp / "np.zarr")
            )
        if "harpy (threads)" in rows:
            rows["harpy (threads)"]["check"] = _compare(
                str(tmp / "ours.zarr/image"),
                str(tmp / "harpy/image.zarr"),
                str(tmp / "ours.zarr/instance_ids"),
                str(tmp / "harpy/ids.npy"),
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def rate_of(name: str) -> float:
        return rows[name]["n"] / rows[name]["seconds"] if name in rows else float("nan")

    limit, limit_zstd = rate_of("write limit"), rate_of("write limit, zstd")
    harpy = rows.get("harpy (threads)")
    print(
        f"\nimage (2, {args.size}, {args.size}) uint16, chunks (2, 1024, 1024); mask int32; "
        f"{rows['ours (threads)']['n']} cells; diameter {args.diameter}; order {args.order}; "
        f"{os.cpu_count()} CPUs"
    )
    head = f"{'method':18} {'seconds':>8} {'crops/s':>9} {'vs limit':>9} {'vs harpy':>9}"
    print(head + f" {'peak RSS MiB':>13} {'(after imports)':>15}  check")
    for name, res in rows.items():
        rate = res["n"] / res["seconds"]
        vs_h = f"{rate / (harpy['n'] / harpy['seconds']):8.1f}x" if harpy else f"{'-':>9}"
        vs_l = rate / (limit_zstd if "zstd" in name else limit)  # the same codec
        print(
            f"{name:18} {res['seconds']:8.2f} {rate:9.0f} {vs_l:8.0%} {vs_h} "
            f"{res['rss_mib']:13.0f} {res['base_mib']:15.0f}  {res.get('check', '')}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
