"""I/O: read the chunks of a buffer from Zarr in one concurrent request.

Two routes:

* :func:`read_chunks` decodes whole stored chunks straight into a reusable buffer
  (no intermediate arrays, no copy), for arrays chunked along axis 0 only whose
  layout :mod:`._chunk_io` reads directly. :func:`chunk_decoder` says whether an
  array qualifies.
* :func:`read_rows` goes through zarr's own indexing and codec pipeline (sharded
  stores, other codecs, the zarrs pipeline, chunked inner axes).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import numpy as np
import zarr

from . import _chunk_io, _runtime
from ._chunk_io import Decoder, local_dir
from .errors import ChunkReadError

__all__ = [
    "Decoder",
    "chunk_decoder",
    "local_dir",
    "read_chunks",
    "read_rows",
    "stored_chunk_decoder",
]


def _missing_error(keys: Sequence[str]) -> FileNotFoundError:
    msg = (
        f"stored chunk(s) {', '.join(keys)} are missing from the store (zarr would silently "
        "return fill values). If the data really is all fill value and was not written "
        "(write_empty_chunks=False), pass check_missing_chunks=False"
    )
    return FileNotFoundError(msg)


def _read_error(
    array: zarr.Array, where: str, a: int, b: int, chunk: int, stored: str, exc: BaseException
) -> ChunkReadError:
    """Error for rows ``[a, b)`` of logical chunk ``chunk`` (``stored``: where they are)."""
    msg = (
        f"Could not read rows {a}-{b - 1} (logical chunk {chunk}, stored chunk index {stored}) "
        f"of Zarr array {where or str(array.store_path)}: {type(exc).__name__}: {exc}"
    )
    return ChunkReadError(msg)


def chunk_decoder(array: zarr.Array) -> Decoder | None:
    """Return a function decoding one stored chunk straight into a buffer, or ``None``.

    For crop arrays whose chunks span every axis but the first, with a layout read
    directly (:func:`stored_chunk_decoder`). Anything else returns ``None`` and goes
    through zarr's pipeline (:func:`read_rows`).
    """
    if tuple(array.chunks[1:]) != tuple(array.shape[1:]):
        return None
    return stored_chunk_decoder(array)


def stored_chunk_decoder(array: zarr.Array) -> Decoder | None:
    """``decode(raw, out)`` for one stored chunk of ``array``, or ``None`` (use zarr).

    For the layouts of :func:`._chunk_io.direct_layout`; the decoded size is checked.
    """
    layout = _chunk_io.direct_layout(array)
    return None if layout is None else layout.decoder


def read_chunks(
    array: zarr.Array,
    chunks: Sequence[int] | np.ndarray,
    out: np.ndarray,
    decoder: Decoder,
    where: str = "",
    check_missing: bool = True,
    rows: np.ndarray | None = None,
    threads: int | None = None,
) -> None:
    """Decode stored chunks ``chunks`` (along axis 0) into consecutive blocks of ``out``.

    Chunk ``chunks[k]`` lands in ``out[k * C:(k + 1) * C]`` where ``C`` is the stored
    chunk size; the last chunk of the array is decoded whole too (zarr stores edge
    chunks full size), so ``out`` holds ``len(chunks) * C`` rows. Chunks are fetched
    concurrently and decoded in threads. In a local store each chunk file is read and
    decoded by one I/O thread, through a buffer that thread reuses (one compressed
    chunk per thread stays allocated between calls), at most ``threads`` chunks at a
    time: more would only compete for the cores with the thread that normalises the
    previous buffer.

    Parameters
    ----------
    array
        The crop array; :func:`chunk_decoder` must have accepted it.
    chunks
        Stored chunk indexes along axis 0.
    out
        Destination, C-contiguous, at least ``len(chunks) * C`` rows.
    decoder
        From :func:`chunk_decoder`.
    where
        Name of the array for error messages.
    check_missing
        Raise when a chunk is absent from the store; otherwise fill its rows with the
        array's fill value (what zarr does).
    rows
        Global rows wanted from these chunks (error messages only).
    threads
        Decode threads of a local store; ``None``: one per CPU of the process.

    Raises
    ------
    ChunkReadError
        If a chunk is missing (with ``check_missing``), cannot be fetched, or does not
        decode; the message names the array, the rows and the chunk key.
    """
    size = array.chunks[0]
    zeros = (0,) * (array.ndim - 1)
    keys = [_chunk_io.chunk_key(array, (int(k), *zeros)) for k in chunks]
    results = _chunk_io.decode_chunks(array, keys, out, size, decoder, threads or _runtime.cores())
    for j, res in enumerate(results):
        if res is False:  # no such chunk
            if check_missing:
                res = _missing_error([keys[j]])
            else:
                out[j * size : (j + 1) * size] = _chunk_io.fill_value(array)
                continue
        if isinstance(res, BaseException):
            k = int(chunks[j])
            a, b = k * size, min((k + 1) * size, array.shape[0])
            if rows is not None:
                mine = rows[(rows >= a) & (rows < b)]
                if mine.size:
                    a, b = int(mine.min()), int(mine.max()) + 1
            stored = f"{k} along axis 0, key {keys[j]}"
            raise _read_error(array, where, a, b, k, stored, res) from res


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
    keys = [_chunk_io.chunk_key(array, c) for c in itertools.product(*ranges)]
    exists = await asyncio.gather(*((aarr.store_path / k).exists() for k in keys))
    return [k for k, ok in zip(keys, exists, strict=True) if not ok]


def read_rows(
    array: zarr.Array,
    requests: Sequence[np.ndarray],
    where: str = "",
    out: np.ndarray | None = None,
    check_missing: bool = True,
    labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Read the rows of ``requests`` into one array ``(n, c, z, y, x)``, in request order.

    Each request is a sorted array of global rows; it is read as one contiguous slice
    from its first to its last row (and the rows wanted picked out of it). All slices
    are requested concurrently through zarr's async API, so remote stores see many
    requests in flight.

    Parameters
    ----------
    array
        The crop array.
    requests
        Sorted global rows, one array per slice to read.
    where
        Name of the array for error messages.
    out
        Optional destination of the right shape and dtype (a reusable buffer).
    check_missing
        When a slice comes back as nothing but fill values, check that its stored
        chunks exist; zarr returns fill values for missing chunks without a word.
    labels
        The logical chunk of each request, for error messages.

    Raises
    ------
    ChunkReadError
        If a chunk cannot be read or decoded; the message names the array and chunk.
    """
    n_read = sum(r.size for r in requests)
    if out is None:
        out = np.empty((n_read, *array.shape[1:]), dtype=array.dtype)
    if n_read == 0:
        return out
    aarr = array.async_array
    fill = _chunk_io.fill_value(array)

    async def _one(r: np.ndarray) -> np.ndarray:
        a, b = _row_span(r)
        block = np.asarray(await aarr.getitem((slice(a, b),)))
        if check_missing and _all_fill(block, fill):
            missing = await _missing_keys(array, a, b)
            if missing:
                raise _missing_error(missing)
        return block

    async def _all() -> list[np.ndarray | BaseException]:
        return await asyncio.gather(*(_one(r) for r in requests), return_exceptions=True)

    results = _chunk_io.run(_all())
    pos = 0
    for j, (r, res) in enumerate(zip(requests, results, strict=True)):
        a, b = _row_span(r)
        if isinstance(res, BaseException):
            stored = array.chunks[0]
            first, last = a // stored, (b - 1) // stored
            span = f"{first}" if first == last else f"{first}-{last}"
            label = first if labels is None else int(labels[j])
            raise _read_error(array, where, a, b, label, f"{span} along axis 0", res) from res
        block = np.asarray(res)
        out[pos : pos + r.size] = block if r.size == b - a else block[r - a]
        pos += r.size
    return out
