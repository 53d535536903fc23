"""Side-by-side streaming benchmark (issue 6): raw decode limit, harpy, ours.

Writes a crop-like store ``(n, 2, 1, 64, 64)`` uint16, chunks of ``--chunk`` rows,
zarr's default codec (zstd), and prints one table:

1. raw decode limit: plain reads of every chunk, no torch (zarr-python one chunk
   at a time and in slabs of 16 chunks; the same with the zarrs pipeline);
2. harpy's ``ZarrIterableInstances`` through ``DataLoader(batch_size=256)``
   (run in the baseline venv ``--harpy-python`` via ``_loader_runner.py``);
3. ours, per-sample mode, same settings;
4. ours, batched mode (``batch_size``, ``DataLoader(batch_size=None)``).

All loader rows: shuffle_chunks=True, shuffle_within_chunk=True,
normalize="minmax01", float32, labels given (supervised tuples). Every loader
configuration runs in a fresh subprocess; medians over ``--repeats`` epochs.

``--rounds R`` runs the decode-limit table instead: on a zstd store (``--n``) and a
Blosc-lz4 store (``--target-n``), every configuration once per round (raw zarrs decode
in slabs of 16 chunks, ours batched at 0 and 2 workers, ours batched at 2 workers
yielding the stored dtype normalised in the consumer, ours per-sample and harpy at 2
workers), ``R`` rounds, medians over rounds, ratios to the raw decode and to harpy.

Examples::

    PYTHONPATH=/work/main/src /work/venv/bin/python benchmarks/stream_bench.py --n 20000
    PYTHONPATH=/work/main/src /work/venv/bin/python benchmarks/stream_bench.py \\
        --n 200000 --sweep --json benchmarks/results/stream.json
    PYTHONPATH=src python benchmarks/stream_bench.py --rounds 3 --n 60000 --target-n 100000 \\
        --json benchmarks/results/stream_rounds.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    crop_like,
    drop_page_cache_hint,
    fmt_num,
    markdown_table,
    median,
    write_store,
)

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "_loader_runner.py"
DEFAULT_HARPY_PY = "/work/bench-venv/bin/python"
DEFAULT_ANNBATCH_PY = "/work/annbatch-venv/bin/python"
HARPY_MODULE_REL = "harpy/table/featurization/_zarr_iterable_instances.py"

# Recommended batched settings (the ones README.md and BENCHMARKS.md report).
RECOMMENDED = {"batch_size": 256, "buffer_chunks": 4, "read_ahead": True}


# --------------------------------------------------------------------------- store
def make_store(root: str, n: int, chunk: int, codec: str, name: str) -> dict[str, Any]:
    path = os.path.join(root, name)
    bank = crop_like(np.random.default_rng(0), min(n, 32768))
    t0 = time.perf_counter()
    info = write_store(path, n, chunk, codec, data=bank)
    info["write_s"] = time.perf_counter() - t0
    drop_page_cache_hint(path)
    return info


def write_flat_copy(src: str, dst: str, chunk: int) -> None:
    """2-D ``(n, c*z*y*x)`` copy of the store with the same codecs (annbatch's layout)."""
    import zarr

    a = zarr.open_array(src, mode="r")
    n = a.shape[0]
    width = int(np.prod(a.shape[1:]))
    b = zarr.create_array(
        dst,
        shape=(n, width),
        chunks=(chunk, width),
        dtype=a.dtype,
        compressors=a.compressors,
        filters=a.filters,
        overwrite=True,
    )
    for i in range(0, n, 16 * chunk):
        j = min(i + 16 * chunk, n)
        b[i:j] = a[i:j].reshape(j - i, width)
    drop_page_cache_hint(dst)


# --------------------------------------------------------------------------- raw
def raw_decode(path: str, chunk: int, slab: int, zarrs: bool, repeats: int) -> dict[str, Any]:
    import zarr

    ctx = (
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
        if zarrs
        else zarr.config.set({})
    )
    with ctx:
        arr = zarr.open_array(path, mode="r")
        n = arr.shape[0]
        step = chunk * slab
        rates, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for a in range(0, n, step):
                arr[a : min(a + step, n)]
            rates.append(n / (time.perf_counter() - t0))
            cpu.append(n / (time.process_time() - c0))
    return {"rates": rates, "rate_median": median(rates), "samples_per_cpu_s": median(cpu)}


def zarrs_available() -> bool:
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- loaders
def run_loader(cfg: dict[str, Any], python: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [python, str(RUNNER), json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"cfg": cfg, "error": (proc.stderr or proc.stdout)[-2000:], "rate_median": float("nan")}


def harpy_module(python: str) -> str | None:
    code = (
        "import importlib.util,os;s=importlib.util.find_spec('harpy');"
        "print(os.path.dirname(s.origin) if s else '')"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    except OSError:
        return None
    base = out.stdout.strip()
    if not base:
        return None
    mod = os.path.join(base, HARPY_MODULE_REL.split("/", 1)[1])
    return mod if os.path.exists(mod) else None


# --------------------------------------------------------------------------- table
def _rss(res: dict[str, Any]) -> str:
    if "rss_main_peak_mb" not in res:
        return "-"
    workers = res.get("rss_worker_peak_mb") or []
    w = " / ".join(f"{x:,.0f}" for x in workers)
    return f"{res['rss_main_peak_mb']:,.0f}" + (f" + [{w}]" if w else "")


def build_table(rows: list[dict[str, Any]]) -> str:
    limit = max(
        (r["rate"] for r in rows if r["kind"] == "raw" and r["rate"] == r["rate"]),
        default=float("nan"),
    )
    harpy_by_w = {r["workers"]: r["rate"] for r in rows if r["kind"] == "harpy"}
    # rows on the target store compare with harpy on that same store, where measured
    target_by_w = {r["workers"]: r["rate"] for r in rows if r["kind"] == "harpy-target"}
    touch_by_w = {r["workers"]: r["rate"] for r in rows if r["kind"] == "harpy-target-touch"}
    out = []
    for r in rows:
        by_w = harpy_by_w
        if r["kind"] == "ours-target" and target_by_w:
            by_w = target_by_w
        elif r["kind"] == "ours-target-touch" and touch_by_w:
            by_w = touch_by_w
        hr = by_w.get(r.get("workers"))
        no_h = hr is None or hr != hr or r["kind"].startswith(("raw", "harpy"))
        vs_h = "-" if no_h else f"{r['rate'] / hr:.2f}x"
        first = r.get("first")
        out.append(
            [
                r["label"],
                fmt_num(r["rate"]),
                f"{r['rate'] / limit:.0%}" if limit == limit and r["rate"] == r["rate"] else "-",
                vs_h,
                fmt_num(r.get("cpu_rate")),
                "-" if first is None else f"{first * 1000:,.0f} ms",
                r.get("rss", "-"),
            ]
        )
    headers = [
        "row",
        "samples/s (median)",
        "vs decode limit",
        "vs harpy same workers (same store)",
        "samples per CPU-s",
        "first batch (cold)",
        "peak RSS MiB main + [workers]",
    ]
    return markdown_table(headers, out)


def loader_row(kind: str, label: str, workers: int, res: dict[str, Any]) -> dict[str, Any]:
    if "error" in res:
        print(f"  ! {label} failed: {res['error']}", file=sys.stderr)
    return {
        "kind": kind,
        "label": label,
        "workers": workers,
        "rate": res.get("rate_median", float("nan")),
        "cpu_rate": res.get("samples_per_cpu_s", float("nan")),
        "first": res.get("first_batch_cold_s"),
        "rss": _rss(res),
        "raw": res,
    }


# --------------------------------------------------------------------------- main
def interleaved(args: argparse.Namespace, root: str) -> dict[str, Any]:
    """The decode-limit table: every configuration once per round, medians over rounds."""
    zstd = make_store(root, args.n, args.chunk, args.codec, "crops.zarr")
    lz4 = make_store(root, args.target_n, args.chunk, args.target_codec, "crops-target.zarr")
    hmod = None if args.skip_harpy else harpy_module(args.harpy_python)
    # ours through ZarrDataLoader (it waits for the kernels before forking its workers)
    rec = {**RECOMMENDED, "repeats": args.repeats, "loader": "zarr"}
    configs: list[tuple[str, str, dict[str, Any] | None]] = []
    for tag, store in (("zstd", zstd), ("blosc-lz4", lz4)):
        path = store["path"]
        configs += [
            (tag, "raw zarrs, slabs of 16 chunks", None),
            (tag, "ours batched, 0 workers", {"path": path, "impl": "ours", "workers": 0, **rec}),
            (tag, "ours batched, 2 workers", {"path": path, "impl": "ours", "workers": 2, **rec}),
            (
                tag,
                "ours batched, 2 workers, stored dtype out, normalised in the consumer",
                {"path": path, "impl": "ours", "workers": 2, **rec, "normalize_in": "consumer"},
            ),
        ]
        if tag == "zstd":
            sample = {"path": path, "workers": 2, "loader_batch": 256, "repeats": args.repeats}
            ours = {**sample, "impl": "ours", "loader": "zarr"}
            configs.append((tag, "ours per-sample, 2 workers", ours))
            if hmod:
                harpy = {**sample, "impl": "harpy", "harpy_module": hmod}
                configs.append((tag, "harpy, 2 workers", harpy))
    stores = {"zstd": zstd, "blosc-lz4": lz4}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(t, lb): [] for t, lb, _ in configs}
    for r in range(args.rounds):
        for tag, label, cfg in configs:
            if cfg is None:
                res = raw_decode(stores[tag]["path"], args.chunk, 16, True, args.repeats)
            else:
                python = args.harpy_python if cfg["impl"] == "harpy" else sys.executable
                res = run_loader(cfg, python, dict(os.environ))
            runs[(tag, label)].append(res)
            rate = res.get("rate_median", float("nan"))
            print(f"  round {r + 1} [{tag}] {label}: {rate:,.0f}/s", flush=True)
    rows = []
    for (tag, label), results in runs.items():
        rates = [float(x.get("rate_median", float("nan"))) for x in results]
        cpu = [float(x.get("samples_per_cpu_s", float("nan"))) for x in results]
        rows.append({"store": tag, "label": label, "rate": median(rates), "rates": rates,
                     "cpu_rate": median(cpu)})  # fmt: skip
    table = [["store", "configuration", "samples/s (median)", "vs raw decode", "vs harpy",
              "samples per CPU-s"]]  # fmt: skip
    for row in rows:
        raw = next(x["rate"] for x in rows if x["store"] == row["store"] and "raw" in x["label"])
        harpy = next((x["rate"] for x in rows if x["label"] == "harpy, 2 workers"), None)
        vs_harpy = f"{row['rate'] / harpy:.2f}x" if harpy and row["store"] == "zstd" else "-"
        table.append([row["store"], row["label"], fmt_num(row["rate"]),
                      f"{row['rate'] / raw:.2f}", vs_harpy, fmt_num(row["cpu_rate"])])  # fmt: skip
    print(markdown_table(table[0], table[1:]))
    return {"stores": stores, "rows": rows, "rounds": args.rounds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="rows of the store (default 100000)")
    p.add_argument("--chunk", type=int, default=1024, help="rows per chunk (default 1024)")
    p.add_argument("--repeats", type=int, default=3, help="epochs/passes per row (median)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--codec", default="default", help="codec of the main store (_common names)")
    p.add_argument(
        "--target-codec",
        default="blosc-lz45-shuffle",
        help="codec of the extra 'target' store (our recommended default)",
    )
    p.add_argument("--dir", default=None, help="where to write stores (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--skip-harpy", action="store_true")
    p.add_argument("--harpy-python", default=DEFAULT_HARPY_PY)
    p.add_argument(
        "--annbatch-python",
        default=DEFAULT_ANNBATCH_PY,
        help="a Python >= 3.12 with annbatch installed (row skipped if missing)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also sweep batched mode: buffer_chunks x batch_size x read_ahead x workers",
    )
    p.add_argument("--no-target", action="store_true", help="skip the target-codec store rows")
    p.add_argument("--only-sweep", action="store_true", help="run the sweep only (implies --sweep)")
    p.add_argument("--rounds", type=int, default=0, help="run the decode-limit table instead")
    p.add_argument("--target-n", type=int, default=100_000, help="rows of the Blosc-lz4 store")
    args = p.parse_args(argv)
    if args.rounds:
        root = args.dir or tempfile.mkdtemp(prefix="zi-stream-rounds-")
        try:
            out = interleaved(args, root)
            out["loadavg_end"] = os.getloadavg()
        finally:
            if not args.keep and not args.dir:
                shutil.rmtree(root, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1, default=str)
        return 0

    root = args.dir or tempfile.mkdtemp(prefix="zi-stream-bench-")
    os.makedirs(root, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "rows": [], "sweep": []}
    env = dict(os.environ)
    try:
        t0 = time.perf_counter()
        store = make_store(root, args.n, args.chunk, args.codec, "crops.zarr")
        results["store"] = store
        print(
            f"store: {args.n} x (2,1,64,64) uint16, chunks {args.chunk}, codec {args.codec}, "
            f"ratio {store['ratio']:.2f}, written in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        path = store["path"]
        rows: list[dict[str, Any]] = results["rows"]

        def measure(
            kind: str,
            label: str,
            w: int,
            cfg: dict[str, Any],
            python: str,
            extra_env: dict[str, str] | None = None,
        ) -> None:
            """Run one loader configuration in a subprocess, record and print it."""
            run_env = {**env, **(extra_env or {})}
            rows.append(loader_row(kind, label, w, run_loader(cfg, python, run_env)))
            print(f"  {label}: {rows[-1]['rate']:,.0f}/s", flush=True)

        results["loadavg_start"] = os.getloadavg()
        if args.only_sweep:
            args.sweep, args.skip_harpy, args.no_target = True, True, True
        # 1. raw decode limit
        variants = [] if args.only_sweep else [(False, 1), (False, 16)]
        if zarrs_available() and not args.only_sweep:
            variants += [(True, 1), (True, 16)]
        for zarrs, slab in variants:
            res = raw_decode(path, args.chunk, slab, zarrs, args.repeats)
            pipe = "zarrs" if zarrs else "zarr-python"
            what = "1 chunk at a time" if slab == 1 else f"slabs of {slab} chunks"
            rows.append(
                {
                    "kind": "raw",
                    "label": f"1. raw {pipe}, {what}",
                    "rate": res["rate_median"],
                    "cpu_rate": res["samples_per_cpu_s"],
                    "raw": res,
                }
            )
            print(f"  {rows[-1]['label']}: {res['rate_median']:,.0f}/s", flush=True)

        base = {"path": path, "repeats": args.repeats}
        # 2. harpy
        hmod = None if args.skip_harpy else harpy_module(args.harpy_python)
        if not args.skip_harpy and hmod is None:
            print(f"  harpy not found in {args.harpy_python}; skipping", file=sys.stderr)
        for w in args.workers if hmod else []:
            cfg = {**base, "impl": "harpy", "workers": w, "loader_batch": 256, "harpy_module": hmod}
            label = f"2. harpy, DataLoader(bs=256), {w} workers"
            measure("harpy", label, w, cfg, args.harpy_python)
        # 3. ours per-sample
        for w in [] if args.only_sweep else args.workers:
            cfg = {**base, "impl": "ours", "workers": w, "loader_batch": 256}
            label = f"3. ours per-sample, DataLoader(bs=256), {w} workers"
            measure("ours-sample", label, w, cfg, sys.executable)
        # 4. ours batched, recommended settings (+ zarrs)
        rec = RECOMMENDED
        desc = (
            f"bs={rec['batch_size']}, buffer_chunks={rec['buffer_chunks']}, "
            f"read_ahead={rec['read_ahead']}"
        )
        pipes = [False, True] if zarrs_available() else [False]
        for zarrs in [] if args.only_sweep else pipes:
            for w in args.workers:
                cfg = {**base, "impl": "ours", "workers": w, **rec, "zarrs": zarrs}
                tag = ", zarrs" if zarrs else ""
                label = f"4. ours batched ({desc}{tag}), {w} workers"
                measure("ours-batch", label, w, cfg, sys.executable)
        # annbatch (Python >= 3.12 venv, no torch: NumPy batches, 0 workers)
        if not args.only_sweep and os.path.exists(args.annbatch_python):
            flat = os.path.join(root, "crops-2d.zarr")
            write_flat_copy(path, flat, args.chunk)
            cfg = {
                "impl": "annbatch",
                "path": flat,
                "repeats": args.repeats,
                "loader_batch": 256,
                "chunk_size": args.chunk,
                "preload_nchunks": 4,
                "workers": 0,
            }
            label = (
                f"annbatch Loader(chunk_size={args.chunk}, preload_nchunks=4, bs=256), "
                "NumPy minmax, 0 workers"
            )
            measure("annbatch", label, 0, cfg, args.annbatch_python)
        elif not args.only_sweep:
            print(f"  annbatch: no Python at {args.annbatch_python}; row skipped", file=sys.stderr)
        # the DataLoader's own ceiling with workers: batches of the same shape made
        # in the workers without reading anything, sent to the main process
        for w in [x for x in args.workers if x > 0 and not args.only_sweep]:
            cfg = {**base, "impl": "ipc", "workers": w, "batch_size": RECOMMENDED["batch_size"]}
            label = f"DataLoader transfer alone (no reading, bs={cfg['batch_size']}), {w} workers"
            measure("ipc", label, w, cfg, sys.executable)
            cfg = {**cfg, "pooled": True}
            label = (
                f"DataLoader transfer alone, reused segments (no reading, bs={cfg['batch_size']}), "
                f"{w} workers"
            )
            measure("ipc", label, w, cfg, sys.executable)
        # 4b. target store: our default codec
        if not args.no_target:
            tstore = make_store(root, args.n, args.chunk, args.target_codec, "crops-target.zarr")
            results["target_store"] = tstore
            for w in args.workers if hmod else []:
                cfg = {
                    **base,
                    "path": tstore["path"],
                    "impl": "harpy",
                    "workers": w,
                    "loader_batch": 256,
                    "harpy_module": hmod,
                }
                label = f"5. harpy, {args.target_codec} store, DataLoader(bs=256), {w} workers"
                measure("harpy-target", label, w, cfg, args.harpy_python)
            for w in args.workers:
                for zarrs in pipes:
                    cfg = {
                        **base,
                        "path": tstore["path"],
                        "impl": "ours",
                        "workers": w,
                        **rec,
                        "zarrs": zarrs,
                    }
                    tag = ", zarrs" if zarrs else ""
                    label = (
                        f"5. ours batched, {args.target_codec} store (ratio "
                        f"{tstore['ratio']:.2f}){tag}, {w} workers"
                    )
                    measure("ours-target", label, w, cfg, sys.executable)
            # a consumer that reads every batch (as training does), 2 workers: the
            # main process then also pays for mapping each batch's memory
            for w in [x for x in args.workers if x > 0]:
                common = {**base, "path": tstore["path"], "workers": w, "touch": True}
                if hmod:
                    cfg = {**common, "impl": "harpy", "loader_batch": 256, "harpy_module": hmod}
                    label = (
                        f"5. harpy, {args.target_codec} store, consumer reads every batch, "
                        f"{w} workers"
                    )
                    measure("harpy-target-touch", label, w, cfg, args.harpy_python)
                cfg = {**common, "impl": "ours", **rec}
                label = (
                    f"5. ours batched, {args.target_codec} store, consumer reads every batch, "
                    f"{w} workers"
                )
                measure("ours-target-touch", label, w, cfg, sys.executable)
            # the same without the numba kernels (NumPy normalisation), for the ratio
            cfg = {**base, "path": tstore["path"], "impl": "ours", "workers": 0, **rec}
            label = f"5. ours batched, {args.target_codec} store, NumPy normalisation, 0 workers"
            measure("ours-target", label, 0, cfg, sys.executable, {"ZARR_INSTANCES_NUMBA": "0"})
            raw = raw_decode(tstore["path"], args.chunk, 16, zarrs_available(), args.repeats)
            results["target_raw_decode"] = raw
            print(f"  (target store raw decode, 16-chunk slabs: {raw['rate_median']:,.0f}/s)")

        results["loadavg_end"] = os.getloadavg()
        print()
        print(f"load average: start {results['loadavg_start']}, end {results['loadavg_end']}")
        if rows:
            print(build_table(rows))

        if args.sweep:
            sweep = results["sweep"]
            grid = itertools.product(args.workers, [1, 4, 16], [256, 1024], [False, True])
            for w, bc, bs, ra in grid:
                cfg = {
                    **base,
                    "impl": "ours",
                    "workers": w,
                    "batch_size": bs,
                    "buffer_chunks": bc,
                    "read_ahead": ra,
                }
                res = run_loader(cfg, sys.executable, env)
                sweep.append(res)
                print(
                    f"  sweep w={w} buffer_chunks={bc} bs={bs} read_ahead={ra}: "
                    f"{res.get('rate_median', float('nan')):,.0f}/s",
                    flush=True,
                )
            results["loadavg_sweep_end"] = os.getloadavg()
            print()
            print(f"load average after sweep: {results['loadavg_sweep_end']}")
            print(sweep_table(sweep))
    finally:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1, default=str)
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def sweep_table(sweep: list[dict[str, Any]]) -> str:
    out = []
    for res in sweep:
        cfg = res["cfg"]
        out.append(
            [
                str(cfg["workers"]),
                str(cfg["buffer_chunks"]),
                str(cfg["batch_size"]),
                "on" if cfg["read_ahead"] else "off",
                fmt_num(res.get("rate_median", float("nan"))),
                fmt_num(res.get("samples_per_cpu_s")),
                "-"
                if res.get("first_batch_cold_s") is None
                else f"{res['first_batch_cold_s'] * 1000:,.0f} ms",
                _rss(res),
            ]
        )
    return markdown_table(
        [
            "workers",
            "buffer_chunks",
            "batch_size",
            "read_ahead",
            "samples/s (median)",
            "samples per CPU-s",
            "first batch (cold)",
            "peak RSS MiB main + [workers]",
        ],
        out,
    )


if __name__ == "__main__":
    raise SystemExit(main())
