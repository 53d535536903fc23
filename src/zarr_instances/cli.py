"""Command line: ``zarr-instances extract | inspect | demo``.

No user input ends in a traceback: a bad flag or value, or an error the library
raises for its input, ends with exit code 2 and one line on stderr naming the flag
and the fix in CLI words (the library's messages name Python parameters; see
:func:`cli_words`). Unexpected internal errors still show their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ._cli_words import (
    USER_ERRORS,
    CommandParser,
    Parser,
    cli_words,
    diameter,
    fail,
    int_at_least,
    json_object,
    mib,
)
from ._store import is_url
from .errors import (
    ArgumentError,
    ClippedInstancesWarning,
    UnmatchedMetadataWarning,
    ZarrInstancesError,
)

__all__ = ["main"]


def _step(message: str) -> None:
    """Report a step of a command on stderr (stdout keeps its results)."""
    print(message, file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .dataset import ZarrIterableInstances
    from .extract import extract_instances
    from .loader import ZarrDataLoader
    from .testing import make_image_and_mask

    modes: tuple[tuple[str, dict[str, Any]], ...] = (
        ("per-sample (harpy-compatible)", {}),
        ("batched, 4-chunk buffers", {"batch_size": 128, "buffer_chunks": 4}),
    )
    steps = 2 + len(modes)
    with tempfile.TemporaryDirectory(prefix="zarr-instances-demo-") as tmp:
        store = f"{tmp}/demo.zarr"
        # synthetic image + mask of round cells -> extract_instances -> stream
        side = int(np.sqrt(args.n) * 44)
        _step(f"demo: [1/{steps}] drawing {args.n} round cells on a {side} x {side} image")
        t0 = time.perf_counter()
        image, mask = make_image_and_mask((side, side), args.n, 32, seed=0)
        t_make = time.perf_counter() - t0
        _step(f"demo: [2/{steps}] extract_instances: one 32 x 32 crop per cell -> {store}")
        t0 = time.perf_counter()
        ids, _ = extract_instances(image, mask, 32, out=store, chunk_i=256, progress=False)
        t_extract = time.perf_counter() - t0
        labels = np.random.default_rng(0).integers(-1, 4, size=ids.size)
        rows = []
        for k, (mode, kwargs) in enumerate(modes, start=3):
            _step(f"demo: [{k}/{steps}] streaming one epoch, {mode}, {args.workers} workers")
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
        _step("demo: done")
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


def _extract(args: argparse.Namespace) -> int:
    import dask

    from ._cli_study import study_inputs
    from .extract import extract_instances

    image, mask, n_sources = study_inputs(args.image, args.mask, args.manifest)
    if args.diameter is None and not args.append:
        msg = (
            "the following arguments are required: --diameter (a crop size such as 32, or "
            "'auto'; only --append takes the store's)"
        )
        raise ArgumentError(msg)
    kwargs = {
        "out": args.out,
        "remove_background": not args.keep_background,
        "extract_mask": args.extract_mask,
        "chunk_i": args.chunk_i,
        "order": args.order,
        "seed": args.seed,
        "overwrite": args.overwrite,
        "shards": args.shards,
        "compressors": _compressors(args.compressor, args.clevel),
        "zarr_format": args.zarr_format,
        "tile_size": args.tile_size,
        "memory_limit": int(args.memory_limit * 2**20),
        "progress": False if args.no_progress else None,
        "storage_options": args.storage_options,
        "axes": args.axes,
        "metadata": args.metadata,
        "append": args.append,
    }
    d = "auto" if args.diameter is None else args.diameter  # --append: the store's
    if d == "auto" and not args.append:
        kwargs["auto_quantile"] = args.auto_quantile
    finished = (
        not args.overwrite and not args.append and _complete_store(args.out, args.storage_options)
    )
    t0 = time.perf_counter()
    with _reported():
        if args.scheduler == "distributed":
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1)
            with cluster, Client(cluster):
                ids, inst = extract_instances(image, mask, d, **kwargs)
        else:
            with dask.config.set(scheduler=args.scheduler, num_workers=args.workers):
                ids, inst = extract_instances(image, mask, d, **kwargs)
    dt = time.perf_counter() - t0
    sources = f"{n_sources} source{'s' if n_sources != 1 else ''}"
    if finished:  # extract_instances checked that this command made it
        print(
            f"{args.out} is complete already: {ids.size} crops {tuple(inst.shape[1:])} "
            f"{inst.dtype} extracted with these arguments; nothing to write ({sources}, "
            f"checked in {dt:.2f} s)"
        )
        return 0
    print(
        f"{'appended' if args.append else 'wrote'} {ids.size} crops {tuple(inst.shape[1:])} "
        f"{inst.dtype} from {sources} to {args.out} in {dt:.2f} s "
        f"({ids.size / max(dt, 1e-9):.0f} crops/s)"
    )
    return 0


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Show the library's log lines (size estimate, chosen diameter) and warnings on stderr.

    Each as one line, without a source location.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("zarr-instances: %(message)s"))
    log = logging.getLogger("zarr_instances")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ClippedInstancesWarning)
            warnings.simplefilter("always", UnmatchedMetadataWarning)
            yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    for w in caught:
        if issubclass(w.category, (ClippedInstancesWarning, UnmatchedMetadataWarning)):
            text = str(w.message)
            if text.startswith("metadata: "):  # the CLI's flag
                text = "--" + text
            print(f"zarr-instances extract: warning: {text}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _compressors(compressor: str, clevel: int) -> Any:
    """Return the ``compressors`` of ``--compressor`` and ``--clevel``."""
    if compressor in ("auto", "none"):
        return None if compressor == "none" else "auto"
    from zarr.codecs import BloscCodec, ZstdCodec

    low, high = (-131072, 22) if compressor == "zstd" else (0, 9)
    if not low <= clevel <= high:
        msg = f"--clevel must be in {low}..{high} for --compressor {compressor}, got {clevel}"
        raise ArgumentError(msg)
    if compressor == "zstd":
        return ZstdCodec(level=clevel)
    cname: Any = compressor.removeprefix("blosc-")
    return BloscCodec(cname=cname, clevel=clevel, shuffle="shuffle")


def _complete_store(out: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether ``out`` holds a complete instance store (read before extracting)."""
    import zarr

    from ._store import open_zarr
    from ._write import ATTRS_KEY

    if not is_url(out) and not os.path.isdir(out):
        return False
    try:
        node = open_zarr(out, storage_options, name="out", group=True)
    except (ZarrInstancesError, OSError, ValueError, KeyError, TypeError):
        return False
    attrs = node.attrs.get(ATTRS_KEY) if isinstance(node, zarr.Group) else None
    return isinstance(attrs, dict) and attrs.get("complete") is True


def _add_extract(sub: Any) -> None:
    from ._cli_study import PAIRING_RULE

    p = sub.add_parser(
        "extract",
        usage="%(prog)s IMAGE MASK OUT --diameter D [options]\n"
        "       %(prog)s 'images/*.tif' 'masks/*.tif' OUT --diameter D [options]\n"
        "       %(prog)s --manifest study.csv OUT --diameter D [options]",
        help="image + mask (or a study of many) -> instance store (one crop per label)",
        description="Cut one DIAMETER x DIAMETER crop per non-zero label of MASK out of IMAGE "
        "and write the instance store OUT, with its instance table (obs). A study of many "
        "images goes into one store: give --manifest study.csv OUT, or glob patterns as IMAGE "
        f"and MASK. {PAIRING_RULE} Rerunning the same command resumes an interrupted run and "
        "does nothing on a complete store.",
    )
    p.add_argument(
        "image",
        nargs="?",
        help="Zarr / OME-Zarr image (c, y, x) or (c, z, y, x), TIFF, OME-TIFF or .npy; "
        "or a glob pattern of the images of a study",
    )
    p.add_argument(
        "mask",
        nargs="?",
        help="integer mask (y, x) or (z, y, x) in the same formats; or a glob pattern",
    )
    p.add_argument("out", help="instance store to write")
    p.add_argument(
        "--manifest",
        default=None,
        metavar="CSV",
        help="a study instead of IMAGE MASK: a CSV with columns source,image,mask, one row "
        "per source (relative paths are read from the CSV's folder)",
    )
    p.add_argument(
        "--metadata",
        default=None,
        metavar="CSV",
        help="per-instance metadata joined onto the instance table: a CSV with columns "
        "source,instance_id (one image: instance_id) and any others",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add the (new) sources to the existing store OUT; --diameter defaults to the store's",
    )
    p.add_argument(
        "--diameter",
        type=diameter,
        default=None,
        help="crop size in y and x, or 'auto': the smallest window holding whole objects "
        "for --auto-quantile of them (required, except with --append)",
    )
    p.add_argument(
        "--auto-quantile",
        type=float,
        default=0.99,
        help="share of objects a --diameter auto window holds whole (default 0.99)",
    )
    p.add_argument(
        "--keep-background",
        action="store_true",
        help="keep pixels of other labels and background (remove_background=False)",
    )
    p.add_argument("--extract-mask", action="store_true", help="also write the mask crops")
    p.add_argument("--axes", default=None, help="image axes if not recorded, e.g. yxc or zyx")
    p.add_argument(
        "--chunk-i", type=int_at_least(1), default=None, help="rows per chunk (default ~2 MiB)"
    )
    p.add_argument("--shards", type=int_at_least(1), default=None, help="rows per shard (Zarr v3)")
    p.add_argument("--order", choices=("id", "random"), default="id", help="row order")
    p.add_argument("--seed", type=int, default=0, help="seed of --order random")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    p.add_argument(
        "--compressor", default="auto", choices=("auto", "none", "zstd", "blosc-zstd", "blosc-lz4")
    )
    p.add_argument(
        "--clevel", type=int, default=3, help="compression level (blosc 0-9, zstd up to 22)"
    )
    p.add_argument("--tile-size", type=int_at_least(1), default=1024, help="tile edge in pixels")
    p.add_argument("--memory-limit", type=mib, default=256, help="MiB of crops per pass")
    p.add_argument(
        "--scheduler",
        default="threads",
        choices=("threads", "processes", "synchronous", "distributed"),
        help="Dask scheduler; distributed starts a LocalCluster",
    )
    p.add_argument(
        "--workers", type=int_at_least(1), default=None, help="threads / processes / workers"
    )
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for URLs (s3://, gs://, https://) of IMAGE, MASK and OUT, as a "
        'JSON object, e.g. \'{"anon": true}\' or \'{"client_kwargs": {"endpoint_url": '
        '"http://localhost:9000"}}\'; not used for local paths',
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing store (not a file)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract)


def _inspect(args: argparse.Namespace) -> int:
    from ._inspect import format_summary, montage, summarize

    if args.montage is not None:
        _check_montage(args.montage)
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


def _check_montage(png: str) -> None:
    """Refuse ``--montage`` before any work when it cannot be written."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        msg = (
            "--montage needs pillow: pip install pillow (the [montage] extra), "
            "or leave out --montage"
        )
        raise ArgumentError(msg) from None
    folder = os.path.dirname(os.path.abspath(png))
    if not os.path.isdir(folder):
        msg = f"--montage {png!r}: the folder {folder!r} does not exist; create it first"
        raise ArgumentError(msg)


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="summary of an instance store or crop array")
    p.add_argument("store", help="instance store group or crop array (i, c, z, y, x)")
    p.add_argument("--montage", default=None, help="save a PNG grid of crops with their ids")
    p.add_argument("--n", type=int_at_least(1), default=64, help="crops in the montage")
    p.add_argument("--channel", type=int, default=0, help="channel shown in the montage")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for a STORE URL (s3://, gs://, https://), as a JSON object; "
        "not used for local paths",
    )
    p.set_defaults(func=_inspect)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="zarr-instances", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"zarr-instances {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    _add_extract(sub)
    _add_inspect(sub)
    demo = sub.add_parser(
        "demo", help="synthetic image + mask -> extract_instances -> stream one epoch"
    )
    demo.add_argument("--n", type=int_at_least(1), default=20_000, help="number of cells drawn")
    demo.add_argument("--workers", type=int_at_least(0), default=2, help="DataLoader workers")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (2: bad input, one line on stderr)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        message = cli_words(str(exc), args.command)
        if not isinstance(exc, ZarrInstancesError):
            message = f"{type(exc).__name__}: {message}"
        return fail(args.command, message)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
