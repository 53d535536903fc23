"""I/O: read the pieces of a buffer from Zarr in one concurrent request."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import numpy as np
import zarr
from zarr.core.sync import sync

from ._plan import Piece, RowSelection, piece_rows
from .errors import ChunkReadError

__all__ = ["read_pieces"]


def _row_span(rows: np.ndarray) -> tuple[int, int]:
    return int(rows[0]), int(rows[-1]) + 1


def _all_fill(block: np.ndarray, fill: object) -> bool:
    block = np.asarray(block)
    first = block[:1]
    if fill is None or not bool(np.all(first == fill)):
        return False
    return bool(np.all(block == fill))


async def _missing_keys(array: zarr.Array, a: int, b: int) -> list[str]:
    """Return the store keys of stored chunks (or shards) under rows ``[a, b)`` that are absent."""
    aarr = array.async_array
    grid = array.shards or array.chunks
    counts = [-(-s // c) for s, c in zip(array.shape, grid, strict=True)]
    ranges = [range(a // grid[0], (b - 1) // grid[0] + 1), *(range(n) for n in counts[1:])]
    keys = [aarr.metadata.encode_chunk_key(tuple(c)) for c in itertools.product(*ranges)]
    exists = await asyncio.gather(*((aarr.store_path / k).exists() for k in keys))
    return [k for k, ok in zip(keys, exists, strict=True) if not ok]


def read_pieces(
    array: zarr.Array,
    selection: RowSelection,
    pieces: Sequence[Piece],
    where: str = "",
    order: np.ndarray | None = None,
    out: np.ndarray | None = None,
    check_missing: bool = True,
) -> np.ndarray:
    """Read the rows of ``pieces`` into one array ``(n, c, z, y, x)``.

    Each piece is read as one contiguous slice of its chunk; all slices of the
    buffer are requested concurrently through zarr's async API, so remote
    stores see many requests in flight.

    Parameters
    ----------
    array
        The crop array.
    selection
        Kept rows.
    pieces
        What to read.
    where
        Name of the array for error messages.
    order
        Optional: return row ``order[j]`` of the concatenated pieces as row ``j``
        (a permutation, possibly with a prefix cut off). Applied while copying the
        decoded blocks, so the buffer is copied once.
    out
        Optional destination of the right shape and dtype (a reusable buffer).
    check_missing
        When a slice comes back as nothing but fill values, check that its stored
        chunks exist; zarr returns fill values for missing chunks without a word.

    Raises
    ------
    ChunkReadError
        If a chunk cannot be read or decoded; the message names the array and chunk.
    """
    rows = [piece_rows(selection, p) for p in pieces]
    n_read = sum(r.size for r in rows)
    identity = order is None or (
        order.size == n_read and bool(np.all(order == np.arange(n_read)))
    )
    n = n_read if order is None else int(order.size)
    if out is None:
        out = np.empty((n, *array.shape[1:]), dtype=array.dtype)
    if n == 0:
        return out
    # where each read row goes in `out` (-1: not wanted, e.g. already yielded)
    dest = None
    if not identity:
        assert order is not None
        dest = np.full(n_read, -1, dtype=np.int64)
        dest[order] = np.arange(n, dtype=np.int64)
    aarr = array.async_array

    async def _one(r: np.ndarray) -> np.ndarray:
        a, b = _row_span(r)
        block = await aarr.getitem((slice(a, b),))
        if check_missing and _all_fill(block, array.fill_value):
            missing = await _missing_keys(array, a, b)
            if missing:
                msg = (
                    f"stored chunk(s) {', '.join(missing)} are missing from the store "
                    "(zarr would silently return fill values). If the data really is all "
                    "fill value and was not written (write_empty_chunks=False), pass "
                    "check_missing_chunks=False"
                )
                raise FileNotFoundError(msg)
        return block

    async def _all() -> list[np.ndarray | BaseException]:
        return await asyncio.gather(*(_one(r) for r in rows), return_exceptions=True)

    results = sync(_all())
    pos = 0
    for piece, r, res in zip(pieces, rows, results, strict=True):
        if isinstance(res, BaseException):
            a, b = _row_span(r)
            stored = array.chunks[0]
            first, last = a // stored, (b - 1) // stored
            span = f"{first}" if first == last else f"{first}-{last}"
            msg = (
                f"Could not read rows {a}-{b - 1} (logical chunk {piece.chunk}, stored chunk "
                f"index {span} along axis 0) of Zarr array {where or str(array.store_path)}: "
                f"{type(res).__name__}: {res}"
            )
            raise ChunkReadError(msg) from res
        block = np.asarray(res)
        a, b = _row_span(r)
        local = None if r.size == b - a else r - a
        if dest is None:
            out[pos : pos + r.size] = block if local is None else block[local]
        else:
            d = dest[pos : pos + r.size]
            keep = d >= 0
            src = np.arange(r.size) if local is None else local
            out[d[keep]] = block[src[keep]]
        pos += r.size
    return out
