"""Shared helpers of the benchmarks: crop-like data, store writing, codecs, tables.

Kept free of ``zarr_instances`` imports so that the harpy runner (which runs in a
separate virtual environment) can use it too.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ROW_SHAPE = (2, 1, 64, 64)


_NOISE_BANK: dict[tuple[int, int], np.ndarray] = {}


def _noise_bank(h: int, w: int) -> np.ndarray:
    bank = _NOISE_BANK.get((h, w))
    if bank is None:
        bank = np.random.default_rng(12345).standard_normal((1024, h, w), dtype=np.float32)
        _NOISE_BANK[(h, w)] = bank
    return bank


def crop_like(rng: np.random.Generator, n: int, shape: tuple[int, ...] = ROW_SHAPE) -> np.ndarray:
    """``n`` uint16 crops ``(n, c, z, y, x)`` that look like cell crops.

    Each crop has a per-channel background level, one smooth elliptical blob
    (the cell, slightly off-centre, random size and brightness), a weaker second
    blob (a neighbour) and shot-like noise whose amplitude grows with the signal
    (``0.8 * sqrt(signal)``). Compression ratios with zstd are ~1.5-1.8 like real
    uint16 microscopy crops, not the ~1.0 of pure noise or the >10 of smooth
    synthetic data. Noise fields come from a fixed bank of 1024 fields, randomly
    picked and flipped per crop (drawing fresh normals is the slowest part).
    """
    c, z, h, w = shape
    out = np.empty((n, c, z, h, w), dtype=np.uint16)
    bank = _noise_bank(h, w)
    for a in range(0, n, 128):
        b = min(a + 128, n)
        out[a:b] = _crop_block(rng, b - a, c, z, h, w, bank)
    return out


def _crop_block(
    rng: np.random.Generator, n: int, c: int, z: int, h: int, w: int, bank: np.ndarray
) -> np.ndarray:
    yy = np.arange(h, dtype=np.float32)[None, :, None]
    xx = np.arange(w, dtype=np.float32)[None, None, :]
    out = np.empty((n, c, z, h, w), dtype=np.uint16)
    img = np.empty((n, h, w), dtype=np.float32)
    noise = np.empty((n, h, w), dtype=np.float32)

    def col(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(np.float32)[:, None, None]

    for ci in range(c):
        cy = (h / 2 + rng.normal(0, 3, n)).astype(np.float32)[:, None, None]
        cx = (w / 2 + rng.normal(0, 3, n)).astype(np.float32)[:, None, None]
        sy = col(6, 14)
        sx = sy * col(0.7, 1.3)
        amp = col(300, 3000)
        bg = col(80, 200)
        ny, nx = col(0, h), col(0, w)
        namp = amp * col(0, 0.5)
        # Separable Gaussians: n * (h + w) exponentials instead of n * h * w.
        gy = amp * np.exp(-0.5 * ((yy - cy) / sy) ** 2)  # (n, h, 1)
        gx = np.exp(-0.5 * ((xx - cx) / sx) ** 2)  # (n, 1, w)
        hy = namp * np.exp(-((yy - ny) ** 2) / 128.0)
        hx = np.exp(-((xx - nx) ** 2) / 128.0)
        for zi in range(z):
            np.multiply(gy, gx, out=img)
            img += hy * hx
            img += bg
            pick = rng.integers(0, bank.shape[0], n)
            np.take(bank, pick, axis=0, out=noise)
            field = noise[:, ::-1] if rng.random() < 0.5 else noise
            img += field * np.sqrt(img) * np.float32(0.8)
            np.clip(img, 0, 65535, out=img)
            out[:, ci, zi] = img
    return out


def codec_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments of ``zarr.create_array`` for a named codec.

    Names: ``default`` (zarr's v3 default: zstd level 0), ``none``,
    ``zstd1``/``zstd3`` (plain zstd), ``blosc-zstd1-shuffle`` etc.
    (``blosc-<cname><level>-<shuffle|bitshuffle|noshuffle>``).
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "default":
        return {}
    if name == "none":
        return {"compressors": None}
    if name.startswith("zstd"):
        return {"compressors": ZstdCodec(level=int(name[4:]))}
    if name.startswith("blosc-"):
        _, spec, shuffle = name.split("-")
        cname = spec.rstrip("0123456789") if not spec.startswith("lz4") else "lz4"
        level = int(spec[len(cname) :])
        return {"compressors": BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=2)}
    msg = f"unknown codec name {name!r}"
    raise ValueError(msg)


def write_store(
    path: str,
    n: int,
    chunk: int,
    codec: str = "default",
    *,
    shard_chunks: int | None = None,
    seed: int = 0,
    data: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write an ``(n, 2, 1, 64, 64)`` uint16 crop array (Zarr v3) at ``path``.

    ``data`` (a cycle of rows to repeat) avoids regenerating crops for every
    codec; otherwise fresh crops are generated chunk by chunk. Returns a small
    description (bytes on disk, ratio).
    """
    import zarr

    kwargs = codec_kwargs(codec)
    shards = None
    if shard_chunks:
        shards = (chunk * shard_chunks, *ROW_SHAPE)
    arr = zarr.create_array(
        path,
        shape=(n, *ROW_SHAPE),
        chunks=(chunk, *ROW_SHAPE),
        shards=shards,
        dtype="uint16",
        overwrite=True,
        **kwargs,
    )
    rng = np.random.default_rng(seed)
    unit = chunk * (shard_chunks or 1)
    step = unit * max(1, 16384 // unit)
    for a in range(0, n, step):
        b = min(a + step, n)
        if data is None:
            block = crop_like(rng, b - a)
        else:
            idx = np.arange(a, b) % data.shape[0]
            block = data[idx]
        arr[a:b] = block
    raw = n * int(np.prod(ROW_SHAPE)) * 2
    stored = dir_bytes(path)
    return {
        "path": path,
        "codec": codec,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": raw / stored if stored else float("nan"),
    }


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def drop_page_cache_hint(path: str) -> None:
    """Read every file once so all rows see a warm page cache (fair comparison)."""
    for root, _dirs, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt_num(x: float | None, digits: int = 0) -> str:
    if x is None or x != x:
        return "-"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + " |"

    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])
