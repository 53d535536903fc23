"""Optional compiled kernels (numba): gather + cast + scale of crops in one pass.

With the ``fast`` extra (``pip install "zarr-instances[fast]"``) the batched and
per-sample normalisation of integer crops runs through these kernels: each row and
channel is read once for its minimum and maximum (the stored values, in cache) and once
to write the float32 output, with no temporaries. They give bit-identical results to
the NumPy path in :mod:`._normalize` (same float32 operations in the same order), which
is what runs without numba, for float input, or with ``ZARR_INSTANCES_NUMBA=0``.

numba is imported lazily, on the first batch, and the kernels are compiled then (once
per stored dtype; cached on disk by numba where it can write its cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["enabled", "gather_scale", "prepare"]

_KERNELS: dict[str, Callable[..., Any]] | None = None
_TRIED = False


def _compile() -> dict[str, Callable[..., Any]] | None:
    try:
        import numba
    except ImportError:
        return None

    jit = numba.njit(nogil=True, cache=True, boundscheck=False)

    @jit
    def minmax01(src: Any, index: Any, out: Any) -> None:  # pragma: no cover - compiled
        eps = np.float32(1e-8)
        one = np.float32(1.0)
        for r in range(index.size):
            s = index[r]
            for ch in range(src.shape[1]):
                row = src[s, ch]
                lo = row[0]
                hi = row[0]
                for k in range(1, row.size):
                    v = row[k]
                    if v < lo:
                        lo = v
                    if v > hi:
                        hi = v
                flo = np.float32(lo)
                inv = one / (np.float32(hi) - flo + eps)
                o = out[r, ch]
                for k in range(row.size):
                    o[k] = (np.float32(row[k]) - flo) * inv

    @jit
    def scale(src: Any, index: Any, out: Any, factor: Any) -> None:  # pragma: no cover
        for r in range(index.size):
            s = index[r]
            for ch in range(src.shape[1]):
                row = src[s, ch]
                o = out[r, ch]
                for k in range(row.size):
                    o[k] = np.float32(row[k]) * factor

    return {"minmax01": minmax01, "unit": scale, "none": scale}


def _kernels() -> dict[str, Callable[..., Any]] | None:
    global _KERNELS, _TRIED
    if not _TRIED:
        _TRIED = True
        _KERNELS = _compile()
    return _KERNELS


def enabled() -> bool:
    """Whether the compiled kernels are used (numba importable, not switched off).

    ``ZARR_INSTANCES_NUMBA=0`` in the environment switches them off.
    """
    if os.environ.get("ZARR_INSTANCES_NUMBA", "1").strip().lower() in ("0", "false", "no"):
        return False
    return _kernels() is not None


def prepare(dtype: np.dtype) -> None:
    """Import numba and compile (or load from its cache) the kernels for ``dtype``.

    The loader calls this while its first buffer is being read, so that the one-off
    cost (about half a second) overlaps the first read instead of delaying the first
    batch. No-op without numba, when switched off, or for non-integer dtypes.
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer) or not enabled():
        return
    src = np.zeros((1, 1, 1), dtype)
    out = np.empty((1, 1, 1), np.float32)
    gather_scale(src, None, "minmax01", out)
    gather_scale(src, None, "unit", out, 1.0)


def gather_scale(
    src: np.ndarray,
    index: np.ndarray | None,
    mode: str,
    out: np.ndarray,
    factor: float | None = None,
) -> bool:
    """Write ``normalise(src[index])`` into the float32 array ``out``; ``False`` if not applicable.

    Parameters
    ----------
    src
        Crops ``(n, c, ...)`` of an integer dtype, C-contiguous.
    index
        Rows of ``src`` in output order, or ``None`` for all rows.
    mode
        ``"minmax01"``, ``"unit"`` (multiply by ``factor``) or ``"none"`` (cast only).
    out
        Float32 destination ``(len(index), c, ...)``, C-contiguous.
    factor
        Multiplier of ``"unit"``, already the float32 reciprocal of the dtype maximum.

    Returns
    -------
    bool
        ``True`` when the kernel wrote ``out``; ``False`` when the caller must use
        the NumPy path (no numba, switched off, float or non-contiguous input).
    """
    if (
        not np.issubdtype(src.dtype, np.integer)
        or out.dtype != np.float32
        or not src.flags.c_contiguous
        or not out.flags.c_contiguous
        or src.ndim < 2
        or not enabled()
    ):
        return False
    kernels = _kernels()
    assert kernels is not None
    n, c = src.shape[0], src.shape[1]
    rows = np.arange(n, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        return False
    if rows.size == 0 or out.size == 0:
        return True
    s3 = src.reshape(n, c, -1)
    o3 = out.reshape(rows.size, c, -1)
    if mode == "minmax01":
        kernels["minmax01"](s3, rows, o3)
    else:
        mult = np.float32(1.0) if mode == "none" else np.float32(factor)
        kernels[mode](s3, rows, o3, mult)
    return True
