"""Vectorised normalisation and casting of whole buffers of crops."""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ArgumentError

__all__ = [
    "NORMALIZE_MODES",
    "check_normalize",
    "empty_output",
    "normalize_rows",
]

NORMALIZE_MODES = ("minmax01", "unit", "none", None)
_EPS = np.float32(1e-8)
_BLOCK_BYTES = 256 * 1024  # float32 bytes normalised per step: fits in L2


def check_normalize(mode: object) -> str:
    """Validate a normalisation mode and return its canonical name.

    Raises
    ------
    ArgumentError
        If ``mode`` is not one of ``"minmax01"``, ``"unit"``, ``"none"`` or ``None``.
    """
    if mode is None or mode == "none":
        return "none"
    if mode in ("minmax01", "unit"):
        return str(mode)
    msg = f"normalize must be one of 'minmax01', 'unit', 'none' or None, got {mode!r}"
    raise ArgumentError(msg)


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
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * itemsize)
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)
    return torch.empty(shape, dtype=dtype)


def normalize_rows(
    src: np.ndarray,
    index: np.ndarray | None,
    mode: str,
    x_dtype: torch.dtype,
    shared: bool = False,
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
        ``"none"`` casts only.
    x_dtype
        Output dtype.
    shared
        Allocate the result in shared memory (inside DataLoader workers).

    Returns
    -------
    torch.Tensor
        A new tensor ``(len(index), c, z, y, x)`` that owns its memory.
    """
    n = src.shape[0] if index is None else int(index.size)
    shape = (n, *src.shape[1:])
    row = max(1, math.prod(src.shape[1:]))
    block = max(1, _BLOCK_BYTES // (4 * row))

    def rows(a: int, b: int) -> np.ndarray:
        return src[a:b] if index is None else src[index[a:b]]

    if mode == "none":
        out = empty_output(shape, x_dtype, shared)
        if index is None:
            out.copy_(torch.from_numpy(np.ascontiguousarray(src)))
        else:
            for a in range(0, n, block):
                out[a : a + block].copy_(torch.from_numpy(rows(a, a + block)))
        return out
    direct = x_dtype == torch.float32
    out = empty_output(shape, x_dtype if not direct else torch.float32, shared)
    scale = _unit_scale(src.dtype) if mode == "unit" else None

    xf = out.numpy() if direct else np.empty((block, *src.shape[1:]), np.float32)
    for a in range(0, n, block):
        b = min(a + block, n)
        blk = rows(a, b)
        o = xf[a:b] if direct else xf[: b - a]
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
        elif scale is not None:
            np.multiply(o, np.float32(1 / scale), out=o)
        if not direct:
            out[a:b].copy_(torch.from_numpy(o))

    return out
