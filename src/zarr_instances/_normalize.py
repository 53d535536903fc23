"""Vectorised normalisation and casting of whole buffers of crops."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

from . import _kernels, _refcount
from .errors import ArgumentError

__all__ = [
    "DEFAULT_PERCENTILES",
    "NORMALIZE_MODES",
    "OutputPool",
    "TensorSource",
    "check_normalize",
    "empty_output",
    "normalize_rows",
    "percentile_range",
]

NORMALIZE_MODES = ("minmax01", "unit", "percentile", "none", None)
DEFAULT_PERCENTILES = (1.0, 99.0)  # normalize="percentile"
_EPS = np.float32(1e-8)
_BLOCK_BYTES = 256 * 1024  # float32 bytes normalised per step: fits in L2


def check_normalize(mode: object) -> str:
    """Validate a normalisation mode and return its canonical name.

    ``"percentile"`` and ``("percentile", low, high)`` both give ``"percentile"``
    (:func:`percentile_range` returns their percentiles).

    Raises
    ------
    ArgumentError
        If ``mode`` is not one of ``"minmax01"``, ``"unit"``, ``"percentile"``,
        ``("percentile", low, high)``, ``"none"`` or ``None``.
    """
    if percentile_range(mode) is not None:
        return "percentile"
    if mode is None or mode == "none":
        return "none"
    if mode in ("minmax01", "unit"):
        return str(mode)
    msg = (
        "normalize must be one of 'minmax01', 'unit', 'percentile', "
        f"('percentile', low, high), 'none' or None, got {mode!r}"
    )
    raise ArgumentError(msg)


def percentile_range(mode: object) -> tuple[float, float] | None:
    """Return the ``(low, high)`` percentiles of a ``"percentile"`` mode, else ``None``.

    ``"percentile"`` means :data:`DEFAULT_PERCENTILES`; ``("percentile", low, high)``
    (a tuple or list) chooses them, ``0 <= low < high <= 100``.

    Raises
    ------
    ArgumentError
        If ``mode`` is a sequence starting with ``"percentile"`` but not of that form.
    """
    if isinstance(mode, str):
        return DEFAULT_PERCENTILES if mode == "percentile" else None
    if not isinstance(mode, (tuple, list)) or not mode or not _is_str(mode[0], "percentile"):
        return None
    bounds = mode[1:]
    ok = len(bounds) == 2 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        for v in bounds
    )
    if ok:
        low, high = float(bounds[0]), float(bounds[1])
        if 0 <= low < high <= 100:
            return low, high
    msg = (
        "normalize=('percentile', low, high) needs two numbers with "
        f"0 <= low < high <= 100, got {tuple(mode)!r}"
    )
    raise ArgumentError(msg)


def _is_str(value: object, text: str) -> bool:
    return isinstance(value, str) and value == text


def _unit_scale(dtype: np.dtype) -> float | None:
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    if dtype == np.bool_:
        return 1.0
    return None


def empty_output(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """Allocate an output tensor, in shared memory when ``shared``.

    A DataLoader worker sends its batches to the main process through shared memory;
    allocating them there up front saves torch a full copy per batch (the same trick
    ``default_collate`` uses in workers).
    """
    if shared:
        itemsize = torch.empty(0, dtype=dtype).element_size()
        storage = _refcount.new_shared(math.prod(shape) * itemsize)
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)
    return torch.empty(shape, dtype=dtype)


class TensorSource(Protocol):
    """Anything handing out output tensors: ``take(shape, dtype)``."""

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return a tensor of ``shape``/``dtype`` to write a result into."""
        ...


class OutputPool:
    """Output tensors reused once nothing but the pool references them.

    Writing a batch into freshly allocated memory costs a page fault per 4 KiB (an 8 MiB
    float32 batch: 2,048 faults). The pool keeps the last ``size`` tensors it handed
    out and hands one out again only when nothing references it or its memory any
    more (:func:`._refcount.only_in`: no other name or container, view, NumPy array,
    DLPack capsule, autograd record or storage object). Anything the caller still
    holds is never overwritten: it simply stays out of the pool. If the reference
    counts fail their self-test, every tensor is fresh (``enabled`` is ``False``).

    Not for tensors that leave the process (DataLoader workers): their receiver's
    references are invisible here. A tensor the caller sends to another process anyway
    (a ``torch.multiprocessing`` queue moves it to shared memory) is never reused. Not
    thread-safe: one pool per iteration, used by the one thread that produces its outputs.

    Parameters
    ----------
    size
        Tensors kept; about the batches in flight (read-ahead queue + consumer).
    """

    def __init__(self, size: int = 6) -> None:
        self.size = size
        self._items: list[torch.Tensor] = []
        self.enabled = _refcount.reuse_enabled()

    def _free(self, k: int, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
        if not _refcount.only_in(self._items, k):
            return False
        t = self._items[k]
        return (
            t.dtype == dtype
            and tuple(t.shape) == shape
            # sent to another process (moved to shared memory on the way): its
            # receiver's mapping is invisible here, so never reuse it
            and not t.untyped_storage().is_shared()
        )

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return a tensor of ``shape``/``dtype``: a free pooled one, or a new one."""
        if self.enabled:
            for k in range(len(self._items)):
                if self._free(k, shape, dtype):
                    t = self._items.pop(k)
                    self._items.append(t)
                    return t
        t = torch.empty(shape, dtype=dtype)
        if self.enabled:
            self._items.append(t)
            if len(self._items) > self.size:
                del self._items[0]
        return t


def normalize_rows(
    src: np.ndarray,
    index: np.ndarray | None,
    mode: str,
    x_dtype: torch.dtype,
    shared: bool = False,
    pool: TensorSource | None = None,
    scales: tuple[np.ndarray, np.ndarray] | None = None,
) -> torch.Tensor:
    """Gather rows ``src[index]`` of crops ``(n, c, z, y, x)``, normalise, cast.

    Works through the rows in blocks of about 256 KiB of float32 so that the gather,
    the cast and the scaling of a block happen while it sits in the CPU cache: the
    output is written once, and the stored rows are read once (no separately
    gathered or float copy of the whole batch).

    Parameters
    ----------
    src
        Crops as stored (C-contiguous along the row axis).
    index
        Rows of ``src`` to take, in output order; ``None`` takes all rows in order.
    mode
        Canonical mode from :func:`check_normalize`. ``"minmax01"`` scales each
        instance and channel to ``(x - min) / (max - min + 1e-8)`` in float32
        (multiplying by the reciprocal: within a float32 rounding of the division);
        ``"unit"`` divides integers by the maximum of their dtype (floats unchanged);
        ``"percentile"`` computes ``clip((x - low) * inv, 0, 1)`` with ``scales``;
        ``"none"`` casts only.
    x_dtype
        Output dtype.
    shared
        Allocate the result in shared memory (inside DataLoader workers).
    pool
        Take the result from this pool (an :class:`OutputPool`, or a worker's pool
        of shared-memory segments); not with ``shared``.
    scales
        ``"percentile"`` only: ``(low, inv)``, float32 ``(len(index), c)`` each, the
        low percentile and ``1 / (high - low)`` (``0`` where ``high == low``) of each
        output row's source and channel (:meth:`._percentile.SourceScales.of_rows`).

    Returns
    -------
    torch.Tensor
        A tensor ``(len(index), c, z, y, x)`` that owns its memory (from ``pool``:
        one nobody else references any more).
    """
    n = src.shape[0] if index is None else int(index.size)
    shape = (n, *src.shape[1:])
    if pool is not None and not shared:
        out = pool.take(shape, x_dtype)
    else:
        out = empty_output(shape, x_dtype, shared)
    scale = _unit_scale(src.dtype) if mode == "unit" else None
    factor = None if scale is None else np.float32(1 / scale)
    if mode == "percentile" and scales is None:
        raise ValueError("normalize_rows: mode 'percentile' needs scales")
    if x_dtype == torch.float32 and _kernels.gather_scale(
        src, index, mode, out.numpy(), factor, scales
    ):
        return out
    _normalize_blocks(src, index, mode, out, factor, scales)
    return out


def _normalize_blocks(
    src: np.ndarray,
    index: np.ndarray | None,
    mode: str,
    out: torch.Tensor,
    factor: np.float32 | None,
    scales: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write ``normalise(src[index])`` into ``out`` with NumPy, block by block in cache."""
    n = int(out.shape[0])
    row = max(1, math.prod(src.shape[1:]))
    block = max(1, _BLOCK_BYTES // (4 * row))

    def rows(a: int, b: int) -> np.ndarray:
        return src[a:b] if index is None else src[index[a:b]]

    if mode == "none":
        if index is None:
            out.copy_(torch.from_numpy(np.ascontiguousarray(src)))
        else:
            for a in range(0, n, block):
                out[a : a + block].copy_(torch.from_numpy(rows(a, a + block)))
        return
    direct = out.dtype == torch.float32
    xf = out.numpy() if direct else np.empty((block, *src.shape[1:]), np.float32)
    # "percentile" subtracts from stored values that float32 holds exactly directly
    exact = mode == "percentile" and np.can_cast(src.dtype, np.float32, casting="safe")
    for a in range(0, n, block):
        b = min(a + block, n)
        blk = rows(a, b)
        o = xf[a:b] if direct else xf[: b - a]
        if not exact:
            np.copyto(o, blk, casting="unsafe")
        if mode == "minmax01" and blk.size:
            # min/max on the stored dtype (fewer bytes; float32 rounding is
            # monotonic, so they equal min/max of the float32 values)
            flat = blk.reshape(b - a, blk.shape[1], -1)
            lo = flat.min(axis=2).astype(np.float32)
            span = flat.max(axis=2).astype(np.float32) - lo + _EPS
            bshape = (b - a, blk.shape[1]) + (1,) * (blk.ndim - 2)
            np.subtract(o, lo.reshape(bshape), out=o)
            np.multiply(o, (np.float32(1) / span).reshape(bshape), out=o)
        elif mode == "percentile" and scales is not None:
            # the same float32 operations as the compiled kernel; clip is one pass
            # (maximum then minimum: two slower ones)
            bshape = (b - a, blk.shape[1]) + (1,) * (blk.ndim - 2)
            low, inv = (v[a:b].reshape(bshape) for v in scales)
            np.subtract(blk if exact else o, low, out=o)  # small ints: no separate cast
            np.multiply(o, inv, out=o)
            np.clip(o, np.float32(0), np.float32(1), out=o)
        elif factor is not None:
            np.multiply(o, factor, out=o)
        if not direct:
            out[a:b].copy_(torch.from_numpy(o))
