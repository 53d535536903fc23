"""The numba kernels of :mod:`._extract_kernels` (imported only when numba is installed).

Defined at module level so that numba's on-disk cache finds them again in a new
process (functions built inside a closure are recompiled every time). Imported inside
:func:`._runtime.numba_cache_for`, which picks the cache folder (or none).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from . import _runtime

__all__ = ["cut_mask", "cut_multiply", "cut_plain", "cut_select", "label_sums"]

jit = numba.njit(cache=_runtime.numba_caching(), nogil=True, boundscheck=False)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# per label: count, sums of z, y, x, then min z, y, x and max z, y, x
_COLS = 10
_BIG = np.iinfo(np.int64).max


@jit
def _find(keys: Any, used: Any, key: Any, shift: Any) -> Any:
    mask = np.int64(keys.size - 1)
    s = np.int64((np.uint64(key) * _GOLDEN) >> shift)
    while used[s] and keys[s] != key:
        s = (s + np.int64(1)) & mask
    return s


@jit
def _grow(keys: Any, used: Any, acc: Any, bits: int) -> tuple[Any, Any, Any]:
    size = 1 << bits
    shift = np.uint64(64 - bits)
    nkeys = np.zeros(size, dtype=np.int64)
    nused = np.zeros(size, dtype=np.bool_)
    nacc = np.zeros((size, _COLS), dtype=np.int64)
    for s in range(keys.size):
        if used[s]:
            t = _find(nkeys, nused, keys[s], shift)
            nused[t] = True
            nkeys[t] = keys[s]
            for j in range(_COLS):
                nacc[t, j] = acc[s, j]
    return nkeys, nused, nacc


@jit
def label_sums(m: Any, oz: int, oy: int, ox: int) -> tuple[Any, Any]:
    """Per-label pixel count, ``z``/``y``/``x`` sums and extents of ``m`` ``(z, y, x)``."""
    nz, ny, nx = m.shape
    bits = 10
    keys = np.zeros(1 << bits, dtype=np.int64)
    used = np.zeros(1 << bits, dtype=np.bool_)
    acc = np.zeros((1 << bits, _COLS), dtype=np.int64)
    shift = np.uint64(64 - bits)
    n = 0
    last_key = np.int64(0)
    last = -1
    for z in range(nz):
        for y in range(ny):
            row = m[z, y]
            prev = row[0]
            start = 0
            for x in range(1, nx + 1):
                if x < nx:
                    v = row[x]
                    if v == prev:
                        continue
                else:
                    v = prev
                if prev != 0:
                    key = np.int64(prev)
                    if last < 0 or key != last_key:
                        s = _find(keys, used, key, shift)
                        if not used[s]:
                            used[s] = True
                            keys[s] = key
                            for j in range(4, 7):
                                acc[s, j] = _BIG
                                acc[s, j + 3] = -_BIG
                            n += 1
                            if 2 * n > keys.size:
                                bits += 1
                                shift = np.uint64(64 - bits)
                                keys, used, acc = _grow(keys, used, acc, bits)
                                s = _find(keys, used, key, shift)
                        last, last_key = s, key
                    ln = x - start
                    acc[last, 0] += ln
                    acc[last, 1] += ln * (z + oz)
                    acc[last, 2] += ln * (y + oy)
                    acc[last, 3] += ln * (start + ox) + ln * (ln - 1) // 2
                    acc[last, 4] = min(acc[last, 4], z + oz)
                    acc[last, 5] = min(acc[last, 5], y + oy)
                    acc[last, 6] = min(acc[last, 6], start + ox)
                    acc[last, 7] = max(acc[last, 7], z + oz)
                    acc[last, 8] = max(acc[last, 8], y + oy)
                    acc[last, 9] = max(acc[last, 9], x - 1 + ox)
                prev = v
                start = x
    labels = np.empty(n, dtype=np.int64)
    sums = np.empty((n, _COLS), dtype=np.int64)
    k = 0
    for s in range(keys.size):
        if used[s]:
            labels[k] = keys[s]
            sums[k] = acc[s]
            k += 1
    order = np.argsort(labels)
    return labels[order], sums[order]


@jit
def cut_plain(image: Any, oy: int, ox: int, starts: Any, zs: Any, d: int, crops: Any) -> None:
    """Copy the windows at ``starts`` (global; ``(oy, ox)``: the box origin) into ``crops``.

    Window ``k`` takes planes ``zs[k]`` to ``zs[k] + depth - 1`` of the box (``depth``:
    ``crops.shape[2]``); so do the other cuts.
    """
    c, depth = image.shape[0], crops.shape[2]
    for k in range(starts.shape[0]):
        y0 = starts[k, 0] - oy
        x0 = starts[k, 1] - ox
        for ch in range(c):
            for z in range(depth):
                for dy in range(d):
                    src = image[ch, zs[k] + z, y0 + dy, x0 : x0 + d]
                    dst = crops[k, ch, z, dy]
                    for dx in range(d):
                        dst[dx] = src[dx]


@jit
def cut_multiply(
    image: Any, mask: Any, oy: int, ox: int, starts: Any, zs: Any, labels: Any, d: int, crops: Any
) -> None:
    """``cut_plain`` keeping only the window's label (integer images: times 0 or 1)."""
    c, depth = image.shape[0], crops.shape[2]
    keep = np.empty(d, crops.dtype)
    for k in range(starts.shape[0]):
        y0 = starts[k, 0] - oy
        x0 = starts[k, 1] - ox
        lab = labels[k]
        for z in range(depth):
            zi = zs[k] + z
            for dy in range(d):
                mrow = mask[zi, y0 + dy, x0 : x0 + d]
                for dx in range(d):
                    keep[dx] = mrow[dx] == lab
                for ch in range(c):
                    src = image[ch, zi, y0 + dy, x0 : x0 + d]
                    dst = crops[k, ch, z, dy]
                    for dx in range(d):
                        dst[dx] = src[dx] * keep[dx]


@jit
def cut_select(
    image: Any, mask: Any, oy: int, ox: int, starts: Any, zs: Any, labels: Any, d: int, crops: Any
) -> None:
    """``cut_multiply`` for float images: other labels become 0 (NaN and inf too)."""
    c, depth = image.shape[0], crops.shape[2]
    keep = np.empty(d, np.bool_)
    for k in range(starts.shape[0]):
        y0 = starts[k, 0] - oy
        x0 = starts[k, 1] - ox
        lab = labels[k]
        for z in range(depth):
            zi = zs[k] + z
            for dy in range(d):
                mrow = mask[zi, y0 + dy, x0 : x0 + d]
                for dx in range(d):
                    keep[dx] = mrow[dx] == lab
                for ch in range(c):
                    src = image[ch, zi, y0 + dy, x0 : x0 + d]
                    dst = crops[k, ch, z, dy]
                    for dx in range(d):
                        dst[dx] = src[dx] if keep[dx] else 0


@jit
def cut_mask(
    mask: Any, oy: int, ox: int, starts: Any, zs: Any, labels: Any, d: int, mcrops: Any
) -> None:
    """Write each window's own mask into ``mcrops`` ``(n, 1, depth, d, d)``: 1 on its label."""
    depth = mcrops.shape[2]
    for k in range(starts.shape[0]):
        y0 = starts[k, 0] - oy
        x0 = starts[k, 1] - ox
        lab = labels[k]
        for z in range(depth):
            for dy in range(d):
                src = mask[zs[k] + z, y0 + dy, x0 : x0 + d]
                dst = mcrops[k, 0, z, dy]
                for dx in range(d):
                    dst[dx] = 1 if src[dx] == lab else 0
