"""Optional compiled kernels (numba): gather + cast + scale of crops in one pass.

With the ``fast`` extra (``pip install "zarr-instances[fast]"``) the batched and
per-sample normalisation of integer crops runs through these kernels: each row and
channel is read once for its minimum and maximum (the stored values, in cache) and once
to write the float32 output, with no temporaries. They give bit-identical results to
the NumPy path in :mod:`._normalize` (same float32 operations in the same order), which
is what runs without numba, for float input, or with ``ZARR_INSTANCES_NUMBA=0``.

numba is imported lazily and the kernels compiled once per process and stored dtype
(cached on disk by numba where it can write its cache): about half a second. The
dataset starts that in a background thread (:func:`warm_up`) when it is built, and
normalises with NumPy until the kernels are ready, so the first batches are not
delayed; results are the same either way. A fork waits for a warm-up in flight, so
that forked DataLoader workers inherit ready kernels instead of importing numba each
(which non-persistent workers would do every epoch).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["enabled", "gather_scale", "prepare", "warm_up"]

_KERNELS: dict[str, Callable[..., Any]] | None = None
_TRIED = False
_READY: set[str] = set()  # dtypes (``dtype.str``) whose kernels are compiled
_LOCK = threading.Lock()  # guards _WARMING
_COMPILE_LOCK = threading.Lock()  # one import/compile at a time
_WARMING: threading.Thread | None = None
_IN_PROGRESS = 0  # imports/compiles running now (in any thread)
_OFF_AFTER_FORK = False


def _after_fork_in_child() -> None:
    """Reset the locks in a forked child; no kernels there if a compile was cut short.

    A thread of the parent that was importing numba or compiling holds locks (ours,
    numba's, the import system's) that nobody releases in the child: the child then
    normalises with NumPy instead of risking a deadlock.
    """
    global _LOCK, _COMPILE_LOCK, _WARMING, _OFF_AFTER_FORK
    _LOCK, _COMPILE_LOCK, _WARMING = threading.Lock(), threading.Lock(), None
    if _IN_PROGRESS:
        _OFF_AFTER_FORK = True


def _finish_warming() -> None:
    """Wait for a warm-up in flight (before a fork, and at exit).

    Before a fork, so that the child inherits ready kernels (and no half-done import);
    at exit, so that the interpreter does not stop while the thread imports. Runs
    without taking our locks: the forking thread may hold one.
    """
    warming = _WARMING
    if warming is not None and warming.is_alive() and warming is not threading.current_thread():
        warming.join(timeout=30)  # a first compile takes seconds; the child copes if not


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_finish_warming, after_in_child=_after_fork_in_child)
atexit.register(_finish_warming)


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
    with _COMPILE_LOCK:
        if not _TRIED:
            _KERNELS = _compile()
            _TRIED = True
    return _KERNELS


def _switched_off() -> bool:
    if _OFF_AFTER_FORK:
        return True
    return os.environ.get("ZARR_INSTANCES_NUMBA", "1").strip().lower() in ("0", "false", "no")


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
    global _IN_PROGRESS
    dtype = np.dtype(dtype)
    if dtype.str in _READY or not _applies(dtype):
        return
    with _LOCK:
        _IN_PROGRESS += 1
    try:
        kernels = _kernels()
        if kernels is None:
            return
        src = np.zeros((1, 1, 1), dtype)
        out = np.empty((1, 1, 1), np.float32)
        rows = np.zeros(1, np.int64)
        with _COMPILE_LOCK:
            kernels["minmax01"](src, rows, out)
            kernels["unit"](src, rows, out, np.float32(1.0))
        _READY.add(dtype.str)
    finally:
        with _LOCK:
            _IN_PROGRESS -= 1


def warm_up(dtype: np.dtype) -> threading.Thread | None:
    """Start :func:`prepare` in a background thread; return it (the caller joins it).

    While it runs, :func:`gather_scale` declines (the caller normalises with NumPy)
    instead of waiting. Returns ``None`` when there is nothing to do. An iteration
    joins the thread before it ends; a fork (DataLoader workers) and the interpreter's
    exit wait for it, too.
    """
    global _WARMING
    dtype = np.dtype(dtype)
    if dtype.str in _READY or not _applies(dtype) or (_TRIED and _KERNELS is None):
        return None
    with _LOCK:
        if _WARMING is None or not _WARMING.is_alive():
            _WARMING = threading.Thread(
                target=prepare, args=(dtype,), name="zarr_instances_jit", daemon=True
            )
            _WARMING.start()
        return _WARMING


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
    if src.dtype.str not in _READY:
        warming = _WARMING
        if warming is not None and warming.is_alive():
            return False
        prepare(src.dtype)
        if src.dtype.str not in _READY:  # no numba
            return False
    kernels = _KERNELS
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
