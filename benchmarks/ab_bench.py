"""Side by side: this source tree against a baseline source tree, in interleaved rounds.

For a change that must not cost speed (a restructuring, a dependency bump), every
streaming row below runs once per round for the baseline and once for this tree, in
alternating order, each in a fresh subprocess (``_loader_runner.py``) with
``PYTHONPATH`` set to that tree's ``src``; the table shows medians over the rounds
and the ratio. ``--extract`` adds the extraction benchmark (``extract_bench.py
--before-src``, which interleaves the same way).

    git worktree add /tmp/base <commit>           # the baseline, e.g. main before
    python benchmarks/ab_bench.py --base-src /tmp/base/src --rounds 3 \\
        --extract --json benchmarks/results/ab.json

Rows (2-channel 64 x 64 uint16 crops, shuffled chunks and rows, minmax01, float32,
labels; batched mode with ``batch_size=256, buffer_chunks=4``):

* zstd store (zarr's default codec), 1,024-row chunks: batched with 0 and 2 workers,
  per-sample mode (``DataLoader(batch_size=256)``) with 0 and 2 workers;
* Blosc-lz4 store (our default codec): batched with 0 workers and with 2
  non-persistent workers (forked every epoch);
* through ``ZarrDataLoader`` (persistent workers): per-sample on the zstd store and
  batched on the Blosc-lz4 store, 2 workers.

``--only TEXT`` runs the rows whose label contains ``TEXT``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median
from stream_bench import RECOMMENDED, make_store, run_loader

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _rows(zstd: str, lz4: str, repeats: int) -> list[tuple[str, dict[str, Any]]]:
    batched = {"impl": "ours", "repeats": repeats, **RECOMMENDED}
    sample = {"impl": "ours", "repeats": repeats, "loader_batch": 256}
    return [
        ("zstd store, batched, 0 workers", {**batched, "path": zstd, "workers": 0}),
        ("zstd store, batched, 2 workers", {**batched, "path": zstd, "workers": 2}),
        ("zstd store, per-sample, 0 workers", {**sample, "path": zstd, "workers": 0}),
        ("zstd store, per-sample, 2 workers", {**sample, "path": zstd, "workers": 2}),
        ("Blosc-lz4 store, batched, 0 workers", {**batched, "path": lz4, "workers": 0}),
        (
            "Blosc-lz4 store, batched, 2 workers (non-persistent)",
            {**batched, "path": lz4, "workers": 2, "persistent": False},
        ),
        (
            "zstd store, per-sample, ZarrDataLoader, 2 workers",
            {**sample, "path": zstd, "workers": 2, "loader": "zarr"},
        ),
        (
            "Blosc-lz4 store, batched, ZarrDataLoader, 2 workers (persistent)",
            {**batched, "path": lz4, "workers": 2, "loader": "zarr"},
        ),
    ]


def _run(cfg: dict[str, Any], src: str) -> float:
    env = {**os.environ, "PYTHONPATH": src}
    res = run_loader(cfg, sys.executable, env)
    if "error" in res:
        print(res["error"], file=sys.stderr)
    return float(res["rate_median"])


def _stream(args: argparse.Namespace, root: str) -> list[dict[str, Any]]:
    zstd = make_store(root, args.n_zstd, 1024, "default", "zstd.zarr")["path"]
    lz4 = make_store(root, args.n_lz4, 1024, "blosc-lz45-shuffle", "lz4.zarr")["path"]
    rows = [r for r in _rows(zstd, lz4, args.repeats) if args.only in r[0]]
    rates: dict[str, dict[str, list[float]]] = {name: {"base": [], "new": []} for name, _ in rows}
    trees = {"base": args.base_src, "new": str(SRC)}
    for r in range(args.rounds):
        for k, (name, cfg) in enumerate(rows):
            order = ("base", "new") if (r + k) % 2 == 0 else ("new", "base")
            for which in order:
                rates[name][which].append(_run(cfg, trees[which]))
            got = rates[name]
            print(f"[{r}] {name}: base {got['base'][-1]:,.0f}/s, new {got['new'][-1]:,.0f}/s")
    table = []
    for name, _cfg in rows:
        base, new = median(rates[name]["base"]), median(rates[name]["new"])
        runs = {"base_runs": rates[name]["base"], "new_runs": rates[name]["new"]}
        table.append({"row": name, "base": base, "new": new, "ratio": new / base, **runs})
    return table


def _extract(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "extract.json")
        cmd = [
            sys.executable,
            str(HERE / "extract_bench.py"),
            "--before-src",
            args.base_src,
            "--repeats",
            str(args.rounds),
            "--skip-numpy",
            "--skip-limit",
            "--json",
            out,
        ]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(SRC)})
        rows = json.loads(Path(out).read_text())["rows"]
    before, ours = rows["before (threads)"], rows["ours (threads)"]
    return {
        "base_s": before["seconds"],
        "new_s": ours["seconds"],
        "base_rss_mib": before["rss_mib"],
        "new_rss_mib": ours["rss_mib"],
        "check": before.get("check", ""),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base-src", required=True, help="src directory of the baseline tree")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    p.add_argument("--repeats", type=int, default=3, help="epochs per loader run (median)")
    p.add_argument("--n-zstd", type=int, default=60_000, help="rows of the zstd store")
    p.add_argument("--n-lz4", type=int, default=100_000, help="rows of the Blosc-lz4 store")
    p.add_argument("--extract", action="store_true", help="add the 8k extraction rows")
    p.add_argument("--skip-stream", action="store_true", help="extraction rows only")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--only", default="", help="run only the rows whose label contains this")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"args": vars(args), "loadavg_start": os.getloadavg()}
    t0 = time.perf_counter()
    if not args.skip_stream:
        with tempfile.TemporaryDirectory(prefix="zi-ab-") as root:
            results["stream"] = _stream(args, root)
        print(f"\n{'row':55} {'base /s':>9} {'new /s':>9} {'new/base':>9}")
        for row in results["stream"]:
            print(f"{row['row']:55} {row['base']:9,.0f} {row['new']:9,.0f} {row['ratio']:9.3f}")
    if args.extract:
        ex = results["extract"] = _extract(args)
        print(
            f"\nextraction 8k: base {ex['base_s']:.2f} s / {ex['base_rss_mib']:.0f} MiB, "
            f"new {ex['new_s']:.2f} s / {ex['new_rss_mib']:.0f} MiB "
            f"(time {ex['new_s'] / ex['base_s']:.3f}x, RSS "
            f"{ex['new_rss_mib'] / ex['base_rss_mib']:.3f}x); {ex['check']}"
        )
    results["wall_s"] = time.perf_counter() - t0
    results["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
