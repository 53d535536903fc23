"""Argument checks shared by the public classes."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ArgumentError, ArgumentTypeError

__all__ = ["as_int_vector", "check_int"]


def as_int_vector(value: Any, name: str, length: int) -> np.ndarray:
    """Return ``value`` as a 1-D ``int64`` array of ``length``, or raise naming ``name``."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        msg = f"{name} must be one-dimensional, got shape {arr.shape}"
        raise ArgumentError(msg)
    if arr.shape[0] != length:
        msg = f"{name} must have length i={length} (rows of the Zarr array), got {arr.shape[0]}"
        raise ArgumentError(msg)
    if not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        msg = f"{name} must hold integers, got dtype {arr.dtype}"
        raise ArgumentTypeError(msg)
    return arr.astype(np.int64, copy=False)


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name`` (optionally ``>= minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        msg = f"{name} must be an integer, got {type(value).__name__}: {value!r}"
        raise ArgumentTypeError(msg)
    if minimum is not None and value < minimum:
        msg = f"{name} must be >= {minimum}, got {value!r}"
        raise ArgumentError(msg)
    return int(value)
