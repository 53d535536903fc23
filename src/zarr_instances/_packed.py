"""Arrays held compressed while they wait for a later task (:class:`Packed`)."""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
from numcodecs import Blosc

__all__ = ["Packed", "unpacked"]

# Blosc-LZ4 level 1 without shuffle: fast to encode and decode, about 2.5x smaller on
# crops (BENCHMARKS.md has the figures).
_PACK_CODEC = Blosc(cname="lz4", clevel=1, shuffle=Blosc.NOSHUFFLE)
# Compressed data from this size on gets a memory mapping of its own.
_MMAP_ABOVE = 64 * 1024


class Packed:
    """An array held compressed until it is needed (:meth:`unpack`).

    The compressed bytes (from 64 KiB on) get a memory mapping of their own: packed
    parts are many, live across a tile row and die in another order than they were
    made, so in the heap they would leave holes between the large short-lived
    buffers of the tile cuts. Pickled (to another process) as plain bytes.
    """

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, array: np.ndarray) -> None:
        self.shape = array.shape
        self.dtype = array.dtype
        self.data = _own_mapping(_PACK_CODEC.encode(np.ascontiguousarray(array)))

    def __reduce__(self) -> tuple[Any, ...]:
        return _packed, (self.shape, self.dtype, bytes(self.data))

    def unpack(self) -> np.ndarray:
        """Return the array."""
        out = np.empty(self.shape, dtype=self.dtype)
        if out.size:
            _PACK_CODEC.decode(self.data, out=out)
        return out

    def __sizeof__(self) -> int:  # what Dask counts as held
        return object.__sizeof__(self) + len(self.data)


def unpacked(a: Any) -> Any:
    """Return ``a`` unpacked if it is :class:`Packed`, else ``a`` itself."""
    return a.unpack() if isinstance(a, Packed) else a


def _own_mapping(data: bytes) -> bytes | mmap.mmap:
    if len(data) < _MMAP_ABOVE:
        return data
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


def _packed(shape: tuple[int, ...], dtype: Any, data: bytes) -> Packed:
    out = Packed.__new__(Packed)
    out.shape, out.dtype, out.data = shape, dtype, _own_mapping(data)
    return out
