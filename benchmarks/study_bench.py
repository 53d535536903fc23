"""A study of many fields of view against one image of the same pixels and cells (issue 17).

    PYTHONPATH=src python benchmarks/study_bench.py --rounds 3 --json benchmarks/results/study.json
    PYTHONPATH=src python benchmarks/study_bench.py --fovs 16 --fov-size 512 --rounds 1  # smoke

Inputs, generated once into ``--workdir`` (kept for later runs): ``--fovs`` fields of
view (a square number), each a 2-channel uint16 image ``(2, S, S)`` and an int32 mask
``(S, S)`` of about ``--cells`` round cells (``make_image_and_mask``, cell diameter 20,
seed = FOV index), Zarr v3 with zarr's default codec, chunked ``min(S, 1024)``; and
the ``sqrt(fovs) x sqrt(fovs)`` mosaic of the same FOVs, FOV ``f`` at row
``f // sqrt(fovs)``, column ``f % sqrt(fovs)``, chunked alike. In the mosaic the
labels of FOV ``f`` are offset by ``f * 1024`` so that they stay unique: the single
image holds the same pixels and the same cells (a cell cut by an FOV border is cut
there in both; with background removal its crops are the same too).

Rows (each run: a fresh subprocess that opens the inputs by path and runs
``extract_instances(..., 32, out=<new store>, overwrite=True)`` on Dask threads;
the parent deletes the store after the run):
  study         image and mask as mappings ``{"fov0000": path, ...}``: one store
  single        the mosaic's image and mask paths

An untimed first pair of runs (also a warm-up) checks that both stores hold the same
crops for the same (FOV, cell): the instance table gives ``source`` and
``instance_id``; mosaic ids map back as ``(id // 1024, id % 1024)``. Then ``--rounds``
rounds, the two rows interleaved, in reverse order every other round (a run right
after another is slower). Reported: per row the median seconds, crops/s and peak RSS
(``VmHWM`` of the run's process, not ``ru_maxrss``: on Linux that keeps the RSS of the
process that forked it; after imports in brackets), the ratio study / single, and
every round's values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))

from _common import fmt_num, markdown_table, median  # noqa: E402
from extract_bench import _child as run_child  # noqa: E402

LABEL_STRIDE = 1024  # mosaic label = FOV index * LABEL_STRIDE + local label
CELL_DIAMETER = 20
DIAMETER = 32

_RUN = """
import json, resource, sys, time
def rss():  # peak RSS of this process (MiB): VmHWM, which execve resets; ru_maxrss does
    # not on Linux (it keeps the forking parent's RSS, here the benchmark's own)
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
args = json.loads(sys.argv[1])
import dask
from zarr_instances import extract_instances
prof = {}
if args.get("profile"):  # time the steps of extract_instances and every Dask computation
    import dask.threaded
    import zarr_instances.extract as ex
    def timed(mod, name, key):
        f = getattr(mod, name)
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                prof[key] = prof.get(key, 0.0) + time.perf_counter() - t
        setattr(mod, name, g)
    for name in ("open_sources", "mask_pass", "clipping", "_rows", "write_store"):
        timed(ex, name, name.strip("_"))
    from dask.callbacks import Callback
    tasks = []
    Callback(start=lambda dsk: tasks.append(len(dsk))).register()  # the graph as it runs
    get = dask.threaded.get
    def counted(dsk, keys, **kw):
        t = time.perf_counter()
        try:
            return get(dsk, keys, **kw)
        finally:
            prof.setdefault("computes", []).append([tasks[-1], time.perf_counter() - t])
    dask.threaded.get = counted
base = rss()
t0 = time.perf_counter()
with dask.config.set(scheduler="threads"):
    ids, _ = extract_instances(args["image"], args["mask"], args["diameter"], out=args["out"],
                               overwrite=True, progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "n": int(ids.size), "rss_mib": rss(), "base_mib": base,
                  **({"profile": prof} if prof else {})}))
"""


def _child(args: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    return run_child(sys.executable, _RUN, args, timeout)


# ----------------------------------------------------------------------------- inputs


def _name(f: int) -> str:
    return f"fov{f:04d}"


def _paths(data: Path, fovs: int) -> dict[str, Any]:
    fov = data / "fovs"
    return {
        "study_image": {_name(f): str(fov / f"{_name(f)}_image.zarr") for f in range(fovs)},
        "study_mask": {_name(f): str(fov / f"{_name(f)}_mask.zarr") for f in range(fovs)},
        "single_image": str(data / "mosaic_image.zarr"),
        "single_mask": str(data / "mosaic_mask.zarr"),
    }


def generate(data: Path, fovs: int, size: int, cells: int) -> dict[str, Any]:
    """Write the FOVs and their mosaic into ``data`` unless a finished set is there."""
    import numpy as np
    import zarr

    from zarr_instances.testing import make_image_and_mask

    paths = _paths(data, fovs)
    done = data / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(data, ignore_errors=True)
    (data / "fovs").mkdir(parents=True)
    side = math.isqrt(fovs)
    chunk = min(size, 1024)
    t0 = time.perf_counter()
    mos_img = zarr.create_array(
        paths["single_image"], shape=(2, side * size, side * size), chunks=(2, chunk, chunk),
        dtype="uint16",
    )  # fmt: skip
    mos_msk = zarr.create_array(
        paths["single_mask"], shape=(side * size, side * size), chunks=(chunk, chunk),
        dtype="int32",
    )  # fmt: skip
    labels = 0
    for row in range(side):
        band_img = np.empty((2, size, side * size), dtype=np.uint16)
        band_msk = np.empty((size, side * size), dtype=np.int32)
        for col in range(side):
            f = row * side + col
            image, mask = make_image_and_mask((size, size), cells, CELL_DIAMETER, seed=f)
            labels += int(np.unique(mask).size - 1)
            name = _name(f)
            zarr.create_array(paths["study_image"][name], data=image, chunks=(2, chunk, chunk))
            zarr.create_array(paths["study_mask"][name], data=mask, chunks=(chunk, chunk))
            xs = slice(col * size, (col + 1) * size)
            band_img[:, :, xs] = image
            band_msk[:, xs] = np.where(mask > 0, mask + f * LABEL_STRIDE, 0)
        ys = slice(row * size, (row + 1) * size)
        mos_img[:, ys, :] = band_img
        mos_msk[ys, :] = band_msk
    info = {"fovs": fovs, "fov_size": size, "cells_drawn": cells, "cells": labels}
    done.write_text(json.dumps(info))
    print(f"generated {fovs} FOVs, {labels} cells in {time.perf_counter() - t0:.0f} s", flush=True)
    return info


# ----------------------------------------------------------------------------- check


def compare(study: str, single: str) -> dict[str, Any]:
    """Whether both stores hold the same crops for the same (FOV, cell)."""
    import numpy as np
    import zarr

    from zarr_instances import read_table

    ts, t1 = read_table(study), read_table(single)
    fov_s = np.array([int(str(s)[3:]) for s in ts["source"]], dtype=np.int64)
    key_s = fov_s * LABEL_STRIDE + ts["instance_id"].to_numpy(np.int64)
    key_1 = t1["instance_id"].to_numpy(np.int64)  # = FOV * stride + local id already
    out: dict[str, Any] = {"study_rows": int(key_s.size), "single_rows": int(key_1.size)}
    common, pos_s, pos_1 = np.intersect1d(key_s, key_1, assume_unique=True, return_indices=True)
    out["only_study"] = int(key_s.size - common.size)
    out["only_single"] = int(key_1.size - common.size)
    out["same_row_order"] = bool(key_s.size == key_1.size and np.array_equal(key_s, key_1))
    xs = zarr.open_group(study, mode="r")["image"]
    x1 = zarr.open_group(single, mode="r")["image"]
    differ = 0
    step = 8192
    for a in range(0, common.size, step):
        ps, p1 = pos_s[a : a + step], pos_1[a : a + step]
        cs = xs.get_orthogonal_selection((ps,))
        c1 = x1.get_orthogonal_selection((p1,))
        differ += int(np.any(cs != c1, axis=tuple(range(1, cs.ndim))).sum())
    out["crops_differ"] = differ
    out["ok"] = differ == 0 and out["only_study"] == 0 and out["only_single"] == 0
    return out


# ----------------------------------------------------------------------------- main


def _profile_text(res: dict[str, Any]) -> str:
    prof = res["profile"]
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in prof.items() if k != "computes")
    computes = "; ".join(f"{n} tasks {t:.2f} s" for n, t in prof.get("computes", []))
    return f"total {res['seconds']:.2f} s: {steps}; Dask computations: {computes}"


def _rate(r: dict[str, Any]) -> float:
    return r["n"] / r["seconds"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fovs", type=int, default=256, help="fields of view (a square number)")
    p.add_argument("--fov-size", type=int, default=1024, help="FOV height and width in pixels")
    p.add_argument("--cells", type=int, default=150, help="cells drawn per FOV")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "zi-study-bench"))
    p.add_argument("--no-check", action="store_true", help="skip the untimed check pair")
    p.add_argument(
        "--profile",
        action="store_true",
        help="then one more run per row timing the steps of extract_instances and each Dask "
        "computation (tasks, seconds)",
    )
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if math.isqrt(args.fovs) ** 2 != args.fovs:
        p.error(f"--fovs must be a square number, got {args.fovs}")
    if args.cells >= LABEL_STRIDE:
        p.error(f"--cells must be below {LABEL_STRIDE}")

    data = Path(args.workdir) / f"f{args.fovs}_s{args.fov_size}_c{args.cells}"
    info = generate(data, args.fovs, args.fov_size, args.cells)
    paths = _paths(data, args.fovs)
    tmp = Path(tempfile.mkdtemp(prefix="stores-", dir=args.workdir))
    runs = [
        ("study", paths["study_image"], paths["study_mask"]),
        ("single", paths["single_image"], paths["single_mask"]),
    ]
    load = [os.getloadavg()[0]]
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
    check = None
    profiles: dict[str, dict[str, Any]] = {}
    try:
        if not args.no_check:  # untimed: also warms the page cache and imports
            for name, image, mask in runs:
                out = str(tmp / f"{name}.zarr")
                _child({"image": image, "mask": mask, "diameter": DIAMETER, "out": out})
            check = compare(str(tmp / "study.zarr"), str(tmp / "single.zarr"))
            print(f"check: {check}", flush=True)
            for name, _, _ in runs:
                shutil.rmtree(tmp / f"{name}.zarr", ignore_errors=True)
        for r in range(args.rounds):
            for name, image, mask in runs if r % 2 == 0 else runs[::-1]:
                out = str(tmp / f"{name}.zarr")
                res = _child({"image": image, "mask": mask, "diameter": DIAMETER, "out": out})
                shutil.rmtree(out, ignore_errors=True)
                res["round"] = r
                per_round[name].append(res)
                print(
                    f"[{r}] {name}: {res['seconds']:.2f} s, {_rate(res):,.0f} crops/s, "
                    f"peak RSS {res['rss_mib']:.0f} MiB (after imports {res['base_mib']:.0f})",
                    flush=True,
                )
            load.append(os.getloadavg()[0])
        if args.profile:
            for name, image, mask in runs:
                out = str(tmp / f"{name}.zarr")
                res = _child(
                    {"image": image, "mask": mask, "diameter": DIAMETER, "out": out, "profile": 1}
                )
                shutil.rmtree(out, ignore_errors=True)
                profiles[name] = res
                print(f"profile {name}: {_profile_text(res)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows: dict[str, dict[str, Any]] = {}
    for name, rs in per_round.items():
        rows[name] = {
            "n": rs[0]["n"],
            "seconds": median([x["seconds"] for x in rs]),
            "crops_per_s": median([_rate(x) for x in rs]),
            "rss_mib": median([x["rss_mib"] for x in rs]),
            "base_mib": median([x["base_mib"] for x in rs]),
        }
    study, single = rows["study"], rows["single"]
    speed = study["crops_per_s"] / single["crops_per_s"]
    rss = study["rss_mib"] / single["rss_mib"]
    command = "PYTHONPATH=src python " + " ".join(["benchmarks/study_bench.py", *sys.argv[1:]])
    side, s = math.isqrt(args.fovs), args.fov_size
    print(
        f"\n{args.fovs} FOVs (2, {s}, {s}) uint16 + int32 mask vs one ({side * s} x {side * s}) "
        f"mosaic; {study['n']:,} cells; diameter {DIAMETER}; {os.cpu_count()} CPUs; "
        f"load {' '.join(f'{x:.1f}' for x in load)}"
    )
    table = markdown_table(
        ["input", "seconds", "crops/s", "peak RSS MiB (after imports)", "per round crops/s"],
        [
            [
                f"{name}: {args.fovs} FOVs" if name == "study" else f"single {side * s}²",
                fmt_num(row["seconds"], 1),
                fmt_num(row["crops_per_s"]),
                f"{fmt_num(row['rss_mib'])} ({fmt_num(row['base_mib'])})",
                ", ".join(fmt_num(_rate(x)) for x in per_round[name]),
            ]
            for name, row in rows.items()
        ],
    )
    print(f"`{command}`\n\n{table}\n")
    print(
        f"study / single: crops/s {speed:.2f}x (issue 17: >= 0.8x), "
        f"peak RSS {rss:.2f}x (<= 1.0x); check: {'ok' if check and check['ok'] else check}"
    )
    if args.json:
        result = {
            "command": command,
            "cpus": os.cpu_count(),
            "load_1min": load,
            "inputs": info,
            "diameter": DIAMETER,
            "check": check,
            "rows": rows,
            "ratio": {"crops_per_s": speed, "peak_rss": rss},
            "rounds": per_round,
            "profiles": profiles,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
