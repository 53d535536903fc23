"""I/O: read the chunks of a buffer from Zarr in one concurrent request.

Two routes:

* :func:`read_chunks` fetches whole stored chunks and decodes each one straight
  into a reusable buffer (no intermediate arrays, no copy), for the common layout of
  crop stores: chunked along axis 0 only, no sharding, a byte codec plus at most one
  Blosc/Zstd/LZ4/GZip/Zlib compressor. :func:`chunk_decoder` says whether an array
  qualifies.
* :func:`read_rows` goes through zarr's own indexing and codec pipeline (sharded
  stores, other codecs, the zarrs pipeline, chunked inner axes).
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from . import _runtime
from .errors import ChunkReadError

__all__ = [
    "chunk_decoder",
    "local_dir",
    "read_chunks",
    "read_rows",
    "stored_chunk_decoder",
]

Decoder = Callable[[object, np.ndarray], None]


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

    For crop arrays whose chunks span every axis but the first, with a plain codec
    layout (:func:`stored_chunk_decoder`). Anything else returns ``None`` and goes
    through zarr's pipeline.
    """
    if tuple(array.chunks[1:]) != tuple(array.shape[1:]):
        return None
    return stored_chunk_decoder(array)


def stored_chunk_decoder(array: zarr.Array) -> Decoder | None:
    """``decode(raw, out)`` for one stored chunk of ``array``, or ``None`` (use zarr).

    Plain layouts only: no sharding, C order, native byte order, and (Zarr format 3) a
    ``BytesCodec`` plus at most one Zstd or Blosc codec, or (format 2) no filters and at
    most one Blosc, Zstd, LZ4, GZip or Zlib compressor. The decoded size is checked.
    """
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    dtype = np.dtype(array.dtype)
    if array.shards is not None or dtype.hasobject or not dtype.isnative:
        return None
    meta = array.metadata
    if meta.zarr_format == 2:
        if meta.filters or meta.order != "C":
            return None
        comp = meta.compressor
        if comp is None:
            return _decode_raw
        if getattr(comp, "codec_id", None) not in {"blosc", "zstd", "lz4", "gzip", "zlib"}:
            return None
        return _CheckedDecoder(comp)
    codecs = list(meta.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    endian = codecs[0].endian
    if endian is not None and dtype.itemsize > 1 and endian.value != sys.byteorder:
        return None
    if len(codecs) == 1:
        return _decode_raw
    if len(codecs) != 2:
        return None
    import numcodecs

    if isinstance(codecs[1], BloscCodec):
        return _CheckedDecoder(numcodecs.Blosc())
    if isinstance(codecs[1], ZstdCodec):
        return _CheckedDecoder(numcodecs.Zstd())
    return None


def _decode_raw(raw: Any, out: np.ndarray) -> None:
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size != out.nbytes:
        msg = f"uncompressed chunk has {data.size} bytes, expected {out.nbytes}"
        raise ValueError(msg)
    out.reshape(-1).view(np.uint8)[...] = data


class _CheckedDecoder:
    """``codec.decode(raw, out=out)`` after checking the decoded size, when it is known.

    numcodecs accepts an ``out`` larger than the data and leaves the rest untouched, so
    the size the chunk decodes to is read from its header first (Blosc; a Zstd frame
    with its content size); where it cannot be known, the chunk is decoded on its own
    and copied. A class (not a closure), so that Dask can pickle it.
    """

    def __init__(self, codec: Any) -> None:
        self.codec = codec

    def __call__(self, raw: Any, out: np.ndarray) -> None:
        size = _decoded_size(self.codec.codec_id, raw)
        if size is None:
            _decode_raw(np.frombuffer(self.codec.decode(raw), dtype=np.uint8), out)
            return
        if size != out.nbytes:
            msg = f"chunk decodes to {size} bytes, expected {out.nbytes}"
            raise ValueError(msg)
        self.codec.decode(raw, out=out)


def _decoded_size(codec_id: str, raw: Any) -> int | None:
    """Bytes a Blosc buffer or a single Zstd frame decodes to, from its header; else ``None``."""
    buf = memoryview(raw).cast("B")
    if codec_id == "blosc":
        if len(buf) < 16:
            return None
        return int.from_bytes(buf[4:8], "little")
    if codec_id != "zstd" or len(buf) < 6 or bytes(buf[:4]) != b"\x28\xb5\x2f\xfd":
        return None
    fhd = buf[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(buf) < pos + width:
        return None
    size = int.from_bytes(buf[pos : pos + width], "little")
    return size + 256 if width == 2 else size


def local_dir(array: zarr.Array) -> str | None:
    """Directory of ``array`` in a plain local store (its chunks are files), else ``None``."""
    from zarr.storage import LocalStore

    store = array.store_path.store
    if type(store) is not LocalStore:
        return None
    return os.path.join(str(store.root), array.store_path.path)


# Chunk files from this size up are decoded straight from a read-only mapping of the
# file (its pages in the OS cache, mapped at once with MAP_POPULATE) instead of being
# copied into a buffer first (ZARR_INSTANCES_MMAP=0 switches it off).
_MMAP_FROM = 1 << 20


def _read_and_decode(path: str, dest: np.ndarray, decoder: Decoder) -> bool:
    """Read the chunk file ``path`` into this thread's reused buffer and decode it.

    Returns ``False`` when the file does not exist. Reading into a reused buffer
    instead of fresh bytes saves the page faults of a new allocation per chunk; a
    file of 1 MiB or more is decoded from a mapping of it instead (no copy at all).
    """
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        return False
    with f:
        size = os.fstat(f.fileno()).st_size
        flags = _runtime.mmap_flags()
        if flags and size >= _MMAP_FROM:
            m = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
            mv = memoryview(m)
            try:
                decoder(mv, dest)
            finally:
                try:
                    mv.release()
                    m.close()
                except BufferError:  # a view is still held (an error's traceback)
                    pass  # the mapping goes with it
            return True
        view = memoryview(_runtime.scratch(size))[:size]
        got = 0
        while got < size:
            k = f.readinto(view[got:])
            if not k:
                break
            got += k
    decoder(view[:got], dest)
    return True


def _decode_local(
    paths: Sequence[str], out: np.ndarray, size: int, decoder: Decoder, threads: int
) -> list[Any]:
    """Read and decode local chunk files into consecutive blocks of ``out``.

    The files are queued on ``threads`` decode threads of this process
    (:func:`._runtime.decode_pool`), so at most that many chunks are decoded at a
    time. Returns per file ``None`` (done), ``False`` (no such file) or the exception
    raised.
    """

    def one(j: int) -> Any:
        try:
            found = _read_and_decode(paths[j], out[j * size : (j + 1) * size], decoder)
        except Exception as exc:  # reported per chunk by the caller
            return exc
        return None if found else False

    return list(_runtime.decode_pool(threads).map(one, range(len(paths))))


def read_chunks(
    array: zarr.Array,
    chunks: Sequence[int],
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
    aarr = array.async_array
    keys = [aarr.metadata.encode_chunk_key((int(k),) + (0,) * (array.ndim - 1)) for k in chunks]
    proto = default_buffer_prototype()
    local = local_dir(array)

    async def _one(j: int) -> bool:
        buf = await (aarr.store_path / keys[j]).get(prototype=proto)
        if buf is None:
            return False
        await asyncio.to_thread(decoder, buf.as_numpy_array(), out[j * size : (j + 1) * size])
        return True

    async def _all() -> list[Any]:
        # every fetch in flight at once (remote reads are latency-bound)
        return await asyncio.gather(*(_one(j) for j in range(len(keys))), return_exceptions=True)

    if local is not None:  # CPU-bound: one chunk per core at a time, into reused memory
        paths = [os.path.join(local, *k.split("/")) for k in keys]
        results = _decode_local(paths, out, size, decoder, threads or _runtime.cores())
    else:
        results = sync(_all())
    for j, res in enumerate(results):
        if res is False:  # no such chunk
            if check_missing:
                res = _missing_error([keys[j]])
            else:
                out[j * size : (j + 1) * size] = array.fill_value
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
    keys = [aarr.metadata.encode_chunk_key(tuple(c)) for c in itertools.product(*ranges)]
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

    async def _one(r: np.ndarray) -> np.ndarray:
        a, b = _row_span(r)
        block = await aarr.getitem((slice(a, b),))
        if check_missing and _all_fill(block, array.fill_value):
            missing = await _missing_keys(array, a, b)
            if missing:
                raise _missing_error(missing)
        return block

    async def _all() -> list[np.ndarray | BaseException]:
        return await asyncio.gather(*(_one(r) for r in requests), return_exceptions=True)

    results = sync(_all())
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
