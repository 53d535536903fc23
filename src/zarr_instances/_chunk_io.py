"""Direct chunk I/O: the stored chunks of plain Zarr layouts, read and written as bytes.

zarr's indexing and codec pipeline costs, per chunk, a zero-filled output array, a
decoded temporary, a copy and hand-offs between the caller's thread, zarr's event
loop and its codec threads. For the plain layouts of crop stores and most images,
this module fetches the stored bytes of a chunk itself and decodes them straight
into the caller's buffer (or encodes a chunk and writes its file), with the
numcodecs codec zarr uses for that layout, so the values read and the bytes written
are zarr's own (``tests/test_chunk_io.py`` compares them for every known layout).

The layouts it knows are those of :mod:`._chunk_layout` (plain codec chains, no
sharding). **Everything else goes through zarr's own API**: :func:`direct_layout`
(reads) and :func:`chunk_writer` (writes) return ``None`` and the caller uses
``zarr.Array``.

**zarr internals** used here and nowhere else in the package, each imported lazily:
``zarr.core.sync.sync`` (run a coroutine on zarr's event loop, where its stores keep
their async resources) and ``default_buffer_prototype`` (``zarr.buffer``, public
since zarr 3.1, else ``zarr.core.buffer``). Without them, chunks are read directly
from local stores only (plain files) and :func:`run` runs coroutines on an event
loop of its own in a helper thread.
"""

from __future__ import annotations

import asyncio
import functools
import mmap
import os
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import zarr

from . import _runtime
from ._chunk_layout import (
    Decoder,
    Layout,
    decoded_size,
    fill_value,
    known_layout,
)

__all__ = [
    "MMAP_FROM",
    "ChunkWriter",
    "Decoder",
    "Layout",
    "atomic_write",
    "chunk_key",
    "chunk_path",
    "chunk_writer",
    "decode_chunks",
    "decoded_size",
    "direct_layout",
    "fetch",
    "fill_value",
    "known_layout",
    "local_dir",
    "read_file",
    "run",
]

T = TypeVar("T")

# --------------------------------------------------------------------------- keys and files


def chunk_key(array: zarr.Array, index: tuple[int, ...]) -> str:
    """Return the store key of the stored chunk at grid position ``index`` (Python ints)."""
    return array.metadata.encode_chunk_key(index)


def local_dir(array: zarr.Array) -> str | None:
    """Directory of ``array`` in a plain local store (its chunks are files), else ``None``."""
    from zarr.storage import LocalStore

    store = array.store_path.store
    if type(store) is not LocalStore:
        return None
    return os.path.join(str(store.root), array.store_path.path)


def chunk_path(root: str, key: str) -> str:
    """Return the file of chunk ``key`` in the local array directory ``root``."""
    return os.path.join(root, *key.split("/"))


def read_file(path: str) -> bytes | None:
    """Return the bytes of the chunk file ``path`` (``None``: no such file)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# Chunk files from this size up are decoded straight from a read-only mapping of the
# file (its pages in the OS cache, mapped at once with MAP_POPULATE) instead of being
# copied into a buffer first (ZARR_INSTANCES_MMAP=0 switches it off).
MMAP_FROM = 1 << 20


def _read_and_decode(path: str, dest: np.ndarray, decoder: Decoder) -> bool:
    """Read the chunk file ``path`` into this thread's reused buffer and decode it.

    Returns ``False`` when the file does not exist. Reading into a reused buffer
    instead of fresh bytes saves the page faults of a new allocation per chunk; a
    file of :data:`MMAP_FROM` bytes or more is decoded from a mapping of it instead
    (no copy at all).
    """
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        return False
    with f:
        size = os.fstat(f.fileno()).st_size
        flags = _runtime.mmap_flags()
        if flags and size >= MMAP_FROM:
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


# --------------------------------------------------------------------------- fetching


@dataclass(frozen=True)
class _StoreIO:
    sync: Callable[[Any], Any]
    prototype: Any


@functools.cache
def _store_io() -> _StoreIO | None:
    """Return zarr's ``sync`` and default buffer prototype, or ``None`` if this zarr lacks them."""
    try:
        from zarr.core.sync import sync
    except ImportError:
        return None
    try:
        from zarr.buffer import default_buffer_prototype
    except ImportError:
        try:
            from zarr.core.buffer import default_buffer_prototype
        except ImportError:
            return None
    return _StoreIO(sync, default_buffer_prototype())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code and return its result.

    On zarr's event loop (``zarr.core.sync.sync``); where this zarr has none, on a
    new event loop in a helper thread (so that a caller inside a running loop is not
    blocked by ``asyncio.run``).
    """
    io = _store_io()
    if io is not None:
        result: T = io.sync(coro)
        return result
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _store_get(array: zarr.Array) -> Callable[[str], Coroutine[Any, Any, Any]]:
    """Return ``get(key)``: a coroutine giving the stored bytes of ``key`` or ``None``."""
    io = _store_io()
    assert io is not None, "direct_layout() admits store reads only with zarr's store I/O"
    store_path, prototype = array.async_array.store_path, io.prototype

    async def get(key: str) -> np.ndarray | None:
        buf = await (store_path / key).get(prototype=prototype)
        return None if buf is None else buf.as_numpy_array()

    return get


def fetch(array: zarr.Array, key: str, root: str | None = None) -> Any:
    """Return the stored bytes of chunk ``key`` of ``array`` (``None``: not stored).

    From the file under ``root`` (:func:`local_dir`) when given, else from the store.
    """
    if root is not None:
        return read_file(chunk_path(root, key))
    return run(_store_get(array)(key))


def decode_files(jobs: Sequence[tuple[str, np.ndarray, Decoder]], threads: int) -> list[Any]:
    """Decode local chunk files ``(path, destination, decoder)`` on ``threads`` decode threads.

    Returns per job ``None`` (decoded), ``False`` (no such file) or the exception raised.
    The jobs may come from several arrays (several stores read as one buffer).
    """

    def one(job: tuple[str, np.ndarray, Decoder]) -> Any:
        try:
            found = _read_and_decode(*job)
        except Exception as exc:  # reported per chunk by the caller
            return exc
        return None if found else False

    return list(_runtime.decode_pool(threads).map(one, jobs))


def decode_chunks(
    array: zarr.Array,
    keys: Sequence[str],
    out: np.ndarray,
    size: int,
    decoder: Decoder,
    threads: int,
) -> list[Any]:
    """Fetch stored chunks ``keys`` and decode each into the next ``size`` rows of ``out``.

    In a local store each chunk file is read and decoded by one of ``threads`` decode
    threads of this process (:func:`._runtime.decode_pool`), through a buffer that
    thread reuses; elsewhere every chunk is requested at once (remote reads are
    latency-bound) and decoded in a thread as it arrives.

    Returns
    -------
    list
        Per key ``None`` (decoded), ``False`` (not stored) or the exception raised.
    """
    root = local_dir(array)
    if root is not None:
        jobs = [
            (chunk_path(root, k), out[j * size : (j + 1) * size], decoder)
            for j, k in enumerate(keys)
        ]
        return decode_files(jobs, threads)

    get = _store_get(array)

    async def _one(j: int) -> bool | None:
        raw = await get(keys[j])
        if raw is None:
            return False
        await asyncio.to_thread(decoder, raw, out[j * size : (j + 1) * size])
        return None

    async def _all() -> list[Any]:
        return await asyncio.gather(*(_one(j) for j in range(len(keys))), return_exceptions=True)

    return run(_all())


# --------------------------------------------------------------------------- writing


def atomic_write(path: str, data: Any) -> None:
    """Write ``data`` to the file ``path`` through a temporary file renamed over it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ChunkWriter:
    """Writes whole chunks (along axis 0) of an array in a local store as zarr would.

    Made by :func:`chunk_writer`. Each chunk is encoded with the layout's codec and
    written as its file (a temporary file, then renamed). The last chunk of the
    array is written whole, its rows past the end set to the fill value; a chunk
    that is all fill value is not stored (its file removed) unless the array's
    ``write_empty_chunks`` is set, as in zarr.
    """

    array: zarr.Array
    root: str
    layout: Layout
    write_empty: bool

    def write_rows(self, r0: int, data: np.ndarray) -> None:
        """Write ``data`` as rows ``r0, r0 + 1, ...``: whole chunks, or up to the end."""
        array, layout = self.array, self.layout
        step = int(array.chunks[0])
        zeros = (0,) * (array.ndim - 1)
        fill = fill_value(array)
        for c0 in range(r0, r0 + data.shape[0], step):
            part = data[c0 - r0 : c0 - r0 + step]
            if part.shape[0] < step:  # zarr stores the last chunk whole
                full = np.full((step, *part.shape[1:]), fill, dtype=array.dtype)
                full[: part.shape[0]] = part
                part = full
            path = chunk_path(self.root, chunk_key(array, (c0 // step, *zeros)))
            if not self.write_empty and _all_equal(part, fill):
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                continue
            part = np.ascontiguousarray(part, dtype=array.dtype)
            atomic_write(path, layout.encode(part))


def _all_equal(block: np.ndarray, fill: Any) -> bool:
    """Whether every value of ``block`` is ``fill`` (NaN equal to NaN)."""
    f = np.asarray(fill)
    if f.dtype.kind in "fc" and bool(np.isnan(f)):
        return bool(np.all(np.isnan(block)))
    return bool(np.all(block == f))


def direct_layout(array: zarr.Array) -> Layout | None:
    """Return the layout to read ``array``'s chunks directly with, or ``None`` (use zarr).

    The one place that decides the read route: a :func:`known_layout` whose chunks
    this module can fetch (files of a local store, or any store while zarr's
    internals used for fetching are importable).
    """
    layout = known_layout(array)
    if layout is None or (local_dir(array) is None and _store_io() is None):
        return None
    return layout


def chunk_writer(array: zarr.Array) -> ChunkWriter | None:
    """Return a :class:`ChunkWriter` for ``array``, or ``None`` (write through zarr).

    For arrays of a :func:`known_layout` in a local store whose chunks span every
    axis but the first; the one place that decides the write route.
    """
    config = getattr(array, "config", None)
    write_empty = getattr(config, "write_empty_chunks", None)
    if write_empty is None or tuple(array.chunks[1:]) != tuple(array.shape[1:]):
        return None
    root = local_dir(array)
    layout = known_layout(array) if root is not None else None
    if root is None or layout is None:
        return None
    return ChunkWriter(array, root, layout, bool(write_empty))
