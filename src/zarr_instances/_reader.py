"""I/O: read the pieces of a buffer from Zarr in one concurrent request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import zarr
from zarr.core.sync import sync

from ._plan import Piece, RowSelection, piece_rows
from .errors import ChunkReadError

__all__ = ["read_pieces"]


def _row_span(rows: np.ndarray) -> tuple[int, int]:
    return int(rows[0]), int(rows[-1]) + 1


def read_pieces(
    array: zarr.Array, selection: RowSelection, pieces: Sequence[Piece], where: str = ""
) -> np.ndarray:
    """Read the rows of ``pieces`` into one array ``(n, c, z, y, x)``.

    Each piece is read as one contiguous slice of its chunk; all slices of the
    buffer are requested concurrently through zarr's async API, so remote
    stores see many requests in flight.

    Raises
    ------
    ChunkReadError
        If a chunk cannot be read or decoded; the message names the array and chunk.
    """
    rows = [piece_rows(selection, p) for p in pieces]
    n = sum(r.size for r in rows)
    out = np.empty((n, *array.shape[1:]), dtype=array.dtype)
    if n == 0:
        return out
    aarr = array.async_array

    async def _one(r: np.ndarray) -> np.ndarray:
        a, b = _row_span(r)
        return await aarr.getitem((slice(a, b),))

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
        if r.size == b - a:
            out[pos : pos + r.size] = block
        else:
            out[pos : pos + r.size] = block[r - a]
        pos += r.size
    return out
