"""Command line: ``zarr-instances extract | inspect | demo``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from .errors import ZarrInstancesError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .dataset import ZarrIterableInstances
    from .extract import extract_instances
    from .loader import ZarrDataLoader
    from .testing import make_image_and_mask

    with tempfile.TemporaryDirectory(prefix="zarr-instances-demo-") as tmp:
        store = f"{tmp}/demo.zarr"
        # synthetic image + mask of round cells -> extract_instances -> stream
        side = int(np.sqrt(args.n) * 44)
        t0 = time.perf_counter()
        image, mask = make_image_and_mask((side, side), args.n, 32, seed=0)
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids, _ = extract_instances(image, mask, 32, out=store, chunk_i=256, progress=False)
        t_extract = time.perf_counter() - t0
        labels = np.random.default_rng(0).integers(-1, 4, size=ids.size)
        rows = []
        modes: tuple[tuple[str, dict[str, Any]], ...] = (
            ("per-sample (harpy-compatible)", {}),
            ("batched, 4-chunk buffers", {"batch_size": 128, "buffer_chunks": 4}),
        )
        for mode, kwargs in modes:
            ds = ZarrIterableInstances(
                store,
                None,
                labels,
                shuffle_chunks=True,
                shuffle_within_chunk=True,
                buffer_seed=0,
                **kwargs,
            )
            if "batch_size" in kwargs:
                loader = ZarrDataLoader(ds, batch_size=None, num_workers=args.workers)
            else:
                loader = ZarrDataLoader(ds, batch_size=128, num_workers=args.workers)
            t0 = time.perf_counter()
            samples = batches = 0
            first = None
            for batch in loader:
                x = batch[0]
                first = first or time.perf_counter() - t0
                samples += x.shape[0]
                batches += 1
            dt = time.perf_counter() - t0
            assert isinstance(x, torch.Tensor)
            rows.append((mode, samples, batches, samples / dt, first or 0.0))
        print(
            f"image: (2, {side}, {side}) uint16 with {ids.size} round cells (made in "
            f"{t_make:.1f} s); extract_instances: {ids.size} crops of (2, 1, 32, 32) in "
            f"{t_extract:.2f} s ({ids.size / t_extract:.0f} crops/s), chunks of 256 rows"
        )
        print(f"kept (label >= 0): {int((labels >= 0).sum())}, workers: {args.workers}")
        print(f"{'mode':32} {'samples':>8} {'batches':>8} {'samples/s':>10} {'1st batch s':>12}")
        for mode, s, b, rate, first_s in rows:
            print(f"{mode:32} {s:8d} {b:8d} {rate:10.0f} {first_s:12.3f}")
    return 0


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _json_object(text: str) -> dict[str, Any]:
    """Parse the value of ``--storage-options``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"must be a JSON object, e.g. '{{\"anon\": true}}', got {text!r} ({exc})"
        raise argparse.ArgumentTypeError(msg) from exc
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "null")
        msg = f"must be a JSON object, e.g. '{{\"anon\": true}}', got {text!r} (a JSON {kind})"
        raise argparse.ArgumentTypeError(msg)
    return value


def _extract(args: argparse.Namespace) -> int:
    import dask

    from .extract import extract_instances

    compressors: Any = {"auto": "auto", "none": None}.get(args.compressor, args.compressor)
    if args.compressor not in ("auto", "none"):
        from zarr.codecs import BloscCodec, ZstdCodec

        compressors = (
            ZstdCodec(level=args.clevel)
            if args.compressor == "zstd"
            else BloscCodec(
                cname=args.compressor.removeprefix("blosc-"), clevel=args.clevel, shuffle="shuffle"
            )
        )
    kwargs = {
        "out": args.out,
        "remove_background": not args.keep_background,
        "extract_mask": args.extract_mask,
        "chunk_i": args.chunk_i,
        "order": args.order,
        "seed": args.seed,
        "overwrite": args.overwrite,
        "shards": args.shards,
        "compressors": compressors,
        "zarr_format": args.zarr_format,
        "tile_size": args.tile_size,
        "memory_limit": int(args.memory_limit * 2**20),
        "progress": False if args.no_progress else None,
        "storage_options": args.storage_options,
    }
    t0 = time.perf_counter()
    if args.scheduler == "distributed":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1) as cluster, Client(cluster):
            ids, inst = extract_instances(args.image, args.mask, args.diameter, **kwargs)
    else:
        with dask.config.set(scheduler=args.scheduler, num_workers=args.workers):
            ids, inst = extract_instances(args.image, args.mask, args.diameter, **kwargs)
    dt = time.perf_counter() - t0
    print(
        f"wrote {ids.size} crops {tuple(inst.shape[1:])} {inst.dtype} to {args.out} "
        f"in {dt:.2f} s ({ids.size / dt:.0f} crops/s)"
    )
    return 0


def _add_extract(sub: Any) -> None:
    p = sub.add_parser(
        "extract",
        help="image + mask -> instance store (one crop per label)",
        description="Cut one DIAMETER x DIAMETER crop per non-zero label of MASK out of IMAGE "
        "and write the instance store OUT. An interrupted run resumes when rerun.",
    )
    p.add_argument("image", help="Zarr / OME-Zarr image (c, y, x) or (c, z, y, x)")
    p.add_argument("mask", help="Zarr / OME-Zarr integer mask (y, x) or (z, y, x)")
    p.add_argument("out", help="instance store to write")
    p.add_argument("--diameter", type=int, required=True, help="crop size in y and x")
    p.add_argument(
        "--keep-background",
        action="store_true",
        help="keep pixels of other labels and background (remove_background=False)",
    )
    p.add_argument("--extract-mask", action="store_true", help="also write the mask crops")
    p.add_argument("--chunk-i", type=int, default=None, help="rows per chunk (default ~2 MiB)")
    p.add_argument("--shards", type=int, default=None, help="rows per shard (Zarr v3)")
    p.add_argument("--order", choices=("id", "random"), default="id", help="row order")
    p.add_argument("--seed", type=int, default=0, help="seed of --order random")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    p.add_argument(
        "--compressor", default="auto", choices=("auto", "none", "zstd", "blosc-zstd", "blosc-lz4")
    )
    p.add_argument("--clevel", type=int, default=3, help="compression level")
    p.add_argument("--tile-size", type=int, default=1024, help="tile edge in pixels")
    p.add_argument("--memory-limit", type=float, default=256, help="MiB of crops per pass")
    p.add_argument(
        "--scheduler",
        default="threads",
        choices=("threads", "processes", "synchronous", "distributed"),
        help="Dask scheduler; distributed starts a LocalCluster",
    )
    p.add_argument("--workers", type=int, default=None, help="threads / processes / workers")
    p.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for URLs (s3://, gs://, https://) of IMAGE, MASK and OUT, as a "
        'JSON object, e.g. \'{"anon": true}\' or \'{"client_kwargs": {"endpoint_url": '
        '"http://localhost:9000"}}\'; not used for local paths',
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract)


def _inspect(args: argparse.Namespace) -> int:
    from ._inspect import format_summary, montage, summarize

    info = summarize(args.store, args.storage_options)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_summary(info))
    if args.montage:
        k = montage(
            args.store,
            args.montage,
            n=args.n,
            channel=args.channel,
            storage_options=args.storage_options,
        )
        print(f"montage: {k} crops (channel {args.channel}) -> {args.montage}")
    return 0


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="summary of an instance store or crop array")
    p.add_argument("store", help="instance store group or crop array (i, c, z, y, x)")
    p.add_argument("--montage", default=None, help="save a PNG grid of crops with their ids")
    p.add_argument("--n", type=int, default=64, help="crops in the montage")
    p.add_argument("--channel", type=int, default=0, help="channel shown in the montage")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for a STORE URL (s3://, gs://, https://), as a JSON object; "
        "not used for local paths",
    )
    p.set_defaults(func=_inspect)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(prog="zarr-instances", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_extract(sub)
    _add_inspect(sub)
    demo = sub.add_parser(
        "demo", help="synthetic image + mask -> extract_instances -> stream one epoch"
    )
    demo.add_argument("--n", type=int, default=20_000, help="number of cells drawn")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ZarrInstancesError as exc:
        print(f"zarr-instances {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
