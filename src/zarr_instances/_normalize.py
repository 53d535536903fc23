"""Vectorised normalisation and casting of whole buffers of crops."""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ArgumentError

__all__ = ["NORMALIZE_MODES", "check_normalize", "empty_output", "normalize_batch"]

NORMALIZE_MODES = ("minmax01", "unit", "none", None)
_EPS = np.float32(1e-8)


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


def normalize_batch(
    x: np.ndarray, mode: str, x_dtype: torch.dtype, shared: bool = False
) -> torch.Tensor:
    """Normalise a batch of crops ``(n, c, z, y, x)`` and cast it to ``x_dtype``.

    Parameters
    ----------
    x
        Crops as stored.
    mode
        Canonical mode from :func:`check_normalize`. ``"minmax01"`` scales each
        instance and channel to ``(x - min) / (max - min + 1e-8)`` in float32;
        ``"unit"`` divides integers by the maximum of their dtype (floats unchanged);
        ``"none"`` casts only.
    x_dtype
        Output dtype.
    shared
        Allocate the result in shared memory (inside DataLoader workers).

    Returns
    -------
    torch.Tensor
        A new tensor that owns its memory.
    """
    if mode == "none":
        out = empty_output(x.shape, x_dtype, shared)
        out.copy_(torch.from_numpy(np.ascontiguousarray(x)))
        return out
    direct = x_dtype == torch.float32
    out = empty_output(x.shape, torch.float32, shared and direct)
    xf = out.numpy()
    if mode == "minmax01":
        if x.size:
            # min/max on the stored dtype (fewer bytes; float32 rounding is monotonic,
            # so the result equals min/max of the float32 values), then one fused
            # cast-and-subtract pass and one divide pass.
            lo = x.min(axis=(2, 3, 4), keepdims=True).astype(np.float32)
            hi = x.max(axis=(2, 3, 4), keepdims=True).astype(np.float32)
            np.subtract(x, lo, out=xf, dtype=np.float32)
            np.divide(xf, (hi - lo) + _EPS, out=xf)
    elif mode == "unit":
        scale = _unit_scale(x.dtype)
        if scale is None:
            xf[...] = x
        else:
            np.divide(x, np.float32(scale), out=xf, dtype=np.float32)
    if direct:
        return out
    cast = empty_output(x.shape, x_dtype, shared)
    cast.copy_(out)
    return cast
