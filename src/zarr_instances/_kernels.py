"""Optional compiled kernels (numba): gather + cast + scale of crops in one pass.

With the ``fast`` extra (numba: ``pip install -e ".[fast]"`` in a clone) the batched and
per-sample normalisation of integer crops runs through these kernels: each row and
channel is read once for its minimum and maximum (the stored values, in cache) and once
to write the float32 output, with no temporaries. They give bit-identical results to
the NumPy path in :mod:`._normalize` (same float32 operations in the same order), which
is what runs without numba, for float input, or with ``ZARR_INSTANCES_NUMBA=0``.

numba is imported lazily and the kernels compiled once per process and stored dtype
(cached on disk by numba where it can write its cache). The dataset starts that in a
background thread (:func:`warm_up`) when it is built, and normalises with NumPy until
the kernels are ready, so the first batches are not delayed; results are the same
either way. The loading state lives in :data:`._runtime.STREAM_KERNELS`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _runtime

__all__ = ["enabled", "gather_scale", "prepare", "warm_up"]

_STATE = _runtime.STREAM_KERNELS


def _compile() -> dict[str, Callable[..., Any]] | None:
    try:
        import numba
    except ImportError:
        return None

    with _runtime.numba_cache_for(os.path.dirname(os.path.abspath(__file__))):
        return _define(numba.njit(nogil=True, cache=_runtime.numba_caching(), boundscheck=False))


def _define(jit: Any) -> dict[str, Callable[..., Any]]:

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

    @jit
    def percentile(src: Any, index: Any, low: Any, inv: Any, out: Any) -> None:  # pragma: no cover
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for r in range(index.size):
            s = index[r]
            for ch in range(src.shape[1]):
                row = src[s, ch]
                lo = low[r, ch]
                k_inv = inv[r, ch]
                o = out[r, ch]
                for k in range(row.size):
                    v = (np.float32(row[k]) - lo) * k_inv
                    v = zero if v < zero else v  # selects: the loop vectorises
                    o[k] = one if v > one else v

    return {"minmax01": minmax01, "unit": scale, "none": scale, "percentile": percentile}


def _kernels() -> dict[str, Callable[..., Any]] | None:
    table: dict[str, Callable[..., Any]] | None = _STATE.load(_compile)
    return table


def _switched_off() -> bool:
    return _STATE.off_after_fork or _runtime.numba_setting() == "off"


def enabled() -> bool:
    """Whether the compiled kernels are used (numba importable, not switched off).

    ``ZARR_INSTANCES_NUMBA=0`` in the environment switches them off.
    """
    return not _switched_off() and _kernels() is not None


def _applies(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) and not _switched_off()


def prepare(dtype: np.dtype) -> None:
    """Import numba and compile (or load from its cache) the kernels for ``dtype``, now.

    No-op without numba, when switched off, or for non-integer dtypes.
    """
    dtype = np.dtype(dtype)
    if dtype.str in _STATE.ready or not _applies(dtype):
        return
    with _STATE.loading():
        kernels = _kernels()
        if kernels is None:
            return
        src = np.zeros((1, 1, 1), dtype)
        out = np.empty((1, 1, 1), np.float32)
        rows = np.zeros(1, np.int64)
        with _STATE.compile_lock:
            kernels["minmax01"](src, rows, out)
            kernels["unit"](src, rows, out, np.float32(1.0))
            scale = np.zeros((1, 1), np.float32)
            kernels["percentile"](src, rows, scale, scale, out)
        _STATE.ready.add(dtype.str)


def warm_up(dtype: np.dtype) -> threading.Thread | None:
    """Start :func:`prepare` in a background thread; return it (the caller joins it).

    While it runs, :func:`gather_scale` declines (the caller normalises with NumPy)
    instead of waiting. Returns ``None`` when there is nothing to do. An iteration
    joins the thread before it ends, and so does the interpreter's exit;
    :class:`~zarr_instances.ZarrDataLoader` waits for it before forking its workers
    (:func:`._runtime.wait_for_kernels`).
    """
    dtype = np.dtype(dtype)
    if dtype.str in _STATE.ready or not _applies(dtype) or (_STATE.tried and _STATE.table is None):
        return None
    with _STATE.lock:
        if _STATE.warming is None or not _STATE.warming.is_alive():
            _STATE.warming = threading.Thread(
                target=prepare, args=(dtype,), name="zarr_instances_jit", daemon=True
            )
            _STATE.warming.start()
        return _STATE.warming


def gather_scale(
    src: np.ndarray,
    index: np.ndarray | None,
    mode: str,
    out: np.ndarray,
    factor: float | np.floating[Any] | None = None,
    scales: tuple[np.ndarray, np.ndarray] | None = None,
) -> bool:
    """Write ``normalise(src[index])`` into the float32 array ``out``; ``False`` if not applicable.

    Parameters
    ----------
    src
        Crops ``(n, c, ...)`` of an integer dtype, C-contiguous.
    index
        Rows of ``src`` in output order, or ``None`` for all rows.
    mode
        ``"minmax01"``, ``"unit"`` (multiply by ``factor``), ``"percentile"``
        (``clip((x - low) * inv, 0, 1)`` with ``scales``) or ``"none"`` (cast only).
    out
        Float32 destination ``(len(index), c, ...)``, C-contiguous.
    factor
        Multiplier of ``"unit"``, already the float32 reciprocal of the dtype maximum.
    scales
        ``(low, inv)`` of ``"percentile"``: float32 ``(len(index), c)`` each.

    Returns
    -------
    bool
        ``True`` when the kernel wrote ``out``; ``False`` when the caller must use
        the NumPy path (no numba, switched off, float or non-contiguous input, or the
        kernels still compiling in :func:`warm_up`'s thread).
    """
    if (
        not _applies(src.dtype)
        or out.dtype != np.float32
        or not src.flags.c_contiguous
        or not out.flags.c_contiguous
        or src.ndim < 2
    ):
        return False
    if src.dtype.str not in _STATE.ready:
        warming = _STATE.warming
        if warming is not None and warming.is_alive():
            return False
        prepare(src.dtype)
        if src.dtype.str not in _STATE.ready:  # no numba
            return False
    kernels = _STATE.table
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
    elif mode == "percentile":
        assert scales is not None
        low, inv = (np.ascontiguousarray(a, dtype=np.float32) for a in scales)
        kernels["percentile"](s3, rows, low, inv, o3)
    else:
        mult = np.float32(1.0) if mode == "none" else np.float32(factor)
        kernels[mode](s3, rows, o3, mult)
    return True
