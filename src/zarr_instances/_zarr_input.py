"""A Zarr input as Dask reads it: checked chunk reads, one Dask block per stored chunk.

:class:`CheckedZarr` reads a block (one stored chunk) straight from its bytes where
the layout allows it, and turns a failed read into a ``ChunkReadError`` naming the
input, the array and the chunk; :func:`_from_zarr` wraps it for Dask, optionally with
length-1 axes added in the same layer.
"""

from __future__ import annotations

import itertools
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from . import _chunk_io
from .errors import ChunkReadError

__all__ = ["CheckedZarr", "_from_zarr"]


class CheckedZarr:
    """A ``zarr.Array`` as Dask reads it, turning a failed chunk read into ``ChunkReadError``.

    Dask calls ``__getitem__`` with the region of one block (integers and slices).
    A region that is exactly one stored chunk of a layout read directly
    (:func:`._chunk_io.direct_layout`) is fetched and decoded straight into a new
    array, past zarr's indexing and codec pipeline; any other region is read through
    zarr. When a read fails, each stored chunk (or shard) of the region is read
    again through zarr on its own to find the one that fails, and the error names
    the input, the array and that chunk's key and index.
    """

    def __init__(self, array: zarr.Array, name: str) -> None:
        self.array = array
        self.name = name
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.ndim = array.ndim
        layout = _chunk_io.direct_layout(array)
        self._decode = None if layout is None else layout.decoder
        self._file = _chunk_io.local_dir(array) if layout is not None else None

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            if self._decode is not None:
                idx = self._one_chunk(key)
                if idx is not None:
                    return self._read_chunk(idx, key)
            return np.asarray(self.array[key])
        except MemoryError:
            raise
        except Exception as exc:
            raise ChunkReadError(self._message(key, exc)) from exc

    def _one_chunk(self, key: Any) -> tuple[int, ...] | None:
        """Index of the stored chunk that ``key`` covers exactly (Dask's blocks), or ``None``."""
        if not isinstance(key, tuple) or len(key) != self.ndim:
            return None
        idx = []
        for k, n, c in zip(key, self.shape, self.array.chunks, strict=True):
            if not isinstance(k, slice) or k.step not in (None, 1):
                return None
            if k.start is None or k.stop is None or k.start % c or k.stop != min(k.start + c, n):
                return None
            if not 0 <= k.start < k.stop:
                return None
            idx.append(k.start // c)
        return tuple(idx)

    def _read_chunk(self, idx: tuple[int, ...], key: tuple[slice, ...]) -> np.ndarray:
        """Fetch one stored chunk and decode it straight into a new array (no zarr pipeline).

        zarr stores edge chunks whole; the part inside the array is returned (a view).
        A chunk that is not stored reads as the fill value, as in zarr.
        """
        assert self._decode is not None
        raw = _chunk_io.fetch(self.array, _chunk_io.chunk_key(self.array, idx), self._file)
        region = tuple(slice(0, k.stop - k.start) for k in key)  # exact, from _one_chunk
        if raw is None:
            fill = _chunk_io.fill_value(self.array)
            return np.full(tuple(r.stop for r in region), fill, dtype=self.dtype)
        out = np.empty(self.array.chunks, dtype=self.dtype)
        self._decode(raw, out)
        return out[region]

    def _chunks_of(self, key: Any) -> list[tuple[int, ...]] | None:
        """Return the indexes of the stored chunks under ``key`` (``None``: not a box)."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != self.ndim:
            return None
        grid = self.array.shards or self.array.chunks
        ranges = []
        for k, n, c in zip(key, self.shape, grid, strict=True):
            if isinstance(k, (int, np.integer)):
                i = int(k) % n if n else 0
                ranges.append(range(i // c, i // c + 1))
            elif isinstance(k, slice) and k.step in (None, 1):
                start, stop, _ = k.indices(n)
                ranges.append(range(start // c, -(-stop // c)))
            else:
                return None
        return list(itertools.product(*ranges))

    def _message(self, key: Any, exc: Exception) -> str:
        where = str(self.array.store_path)
        grid = self.array.shards or self.array.chunks
        chunks = self._chunks_of(key)
        failed = None
        for idx in chunks or ():
            region = tuple(
                slice(i * c, min((i + 1) * c, n))
                for i, c, n in zip(idx, grid, self.shape, strict=True)
            )
            try:
                self.array[region]
            except Exception as inner:  # any failure names the chunk
                failed, exc = idx, inner
                break
        if failed is not None:
            key_name = _chunk_io.chunk_key(self.array, failed)
            chunk = f"chunk {key_name!r} (chunk index {failed})"
        elif chunks:
            chunk = f"one of the chunks with index {chunks[0]} to {chunks[-1]}"
        else:
            chunk = f"the chunks under {key!r}"
        return (
            f"Could not read {chunk} of the {self.name} array {where!r}: "
            f"{type(exc).__name__}: {exc}. The stored bytes are corrupt or could not be "
            f"fetched; rewrite that chunk of the {self.name}, or check the store"
        )


class _WithAxes:
    """An array-like read as if it had length-1 axes at positions ``add`` (no copy)."""

    def __init__(self, data: Any, add: tuple[int, ...]) -> None:
        self.data, self.add = data, add
        self.ndim = data.ndim + len(add)
        inner = iter(data.shape)
        self.shape = tuple(1 if i in add else next(inner) for i in range(self.ndim))
        self.dtype = data.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        inner = tuple(k for i, k in enumerate(key) if i not in self.add)
        out = np.asarray(self.data[inner])
        positions, pos = [], 0
        for i, k in enumerate(key):
            if isinstance(k, slice):
                if i in self.add:
                    positions.append(pos)
                pos += 1
        return np.expand_dims(out, tuple(positions)) if positions else out


def _from_zarr(name: str, array: zarr.Array | CheckedZarr, add: tuple[int, ...] = ()) -> da.Array:
    """Wrap a Zarr array for Dask (one block per stored chunk) with checked chunk reads.

    ``add``: positions of length-1 axes to add (in the same Dask layer, without a
    slicing layer on top).
    """
    checked = array if isinstance(array, CheckedZarr) else CheckedZarr(array, name)
    array = checked.array
    data: Any = _WithAxes(checked, add) if add else checked
    chunks = iter(array.chunks)
    block = tuple(1 if i in add else next(chunks) for i in range(data.ndim))
    # Named by where it is stored and its layout (tokenizing the zarr.Array itself pickles
    # its metadata, a large part of opening a small source); ``meta`` spares Dask an
    # empty read through zarr.
    where = str(array.store_path)
    token = f"zi-{name}-{tokenize(where, array.shape, array.chunks, str(array.dtype), add)}"
    meta = np.empty((0,) * data.ndim, dtype=array.dtype)
    return da.from_array(data, chunks=block, name=token, asarray=False, meta=meta)
