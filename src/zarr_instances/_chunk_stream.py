"""The reading side of the dataset: open the crop array, read a plan's buffers, read ahead."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from . import _chunk_io, _runtime
from ._plan import Buffer, WorkerPlan
from ._reader import Decoder, chunk_decoder, local_dir, read_chunks, read_rows
from ._store import OpenedInstances, ZarrPath, open_instances, open_with_zarrs, zarrs_allowed

__all__ = ["ChunkStream", "Loaded", "ReadSettings"]

# a buffer with its decoded rows: ``src[index]`` are the buffer's rows in yield order
Loaded = tuple[Buffer, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ReadSettings:
    """How the crop array is opened and read.

    Attributes
    ----------
    zarr_path
        Path, URL or opened Zarr node of the crops; or a tuple of them, whose rows are
        concatenated in order (several stores as one dataset).
    storage_options
        Options of a URL's store.
    codec_pipeline
        ``None`` or a zarr codec pipeline (``"zarrs"``).
    chunk_i
        Rows per logical chunk; for several stores, also one size per store.
    check_missing
        Raise on chunks missing from the store.
    read_ahead
        Read the next buffer in a background thread.
    """

    zarr_path: ZarrPath | tuple[ZarrPath, ...]
    storage_options: dict[str, Any] | None
    codec_pipeline: str | None
    chunk_i: int | tuple[int, ...]
    check_missing: bool
    read_ahead: bool


class ChunkStream:
    """Reads the buffers of a worker's plan into reused memory, one buffer ahead.

    The array is opened lazily in each process (and reopened after ``fork``: a
    parent's codec pipeline may hold dead threads and remote clients are bound to
    the parent's event loop). When the logical chunks are the stored chunks and the
    layout is a plain one, whole stored chunks are decoded straight into the read
    buffer; otherwise rows are read through zarr's codec pipeline.

    Parameters
    ----------
    settings
        How to open and read the array.
    shape, dtype
        Shape and dtype of the crop array.
    where
        Name of the array for error messages.
    """

    def __init__(
        self, settings: ReadSettings, shape: tuple[int, ...], dtype: np.dtype, where: str
    ) -> None:
        self.settings = settings
        self.shape = shape
        self.dtype = dtype
        self.where = where
        self._pid = os.getpid()
        self._array: OpenedInstances | None = None
        self._array_pid = 0
        self._decoder: Decoder | None = None
        # several stores: each opened store, its decoder, and the global row offsets
        self._parts: list[tuple[OpenedInstances, Decoder | None]] = []
        self._offsets = np.zeros(1, np.int64)
        self._roots: list[str | None] = []  # each store's local directory (None: not local)
        self._zeros: list[tuple[int, ...]] = []  # the chunk grid index past axis 0
        self._sizes = np.zeros(0, np.int64)  # each store's rows per logical chunk

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = state["_decoder"] = None
        state["_parts"], state["_roots"], state["_zeros"] = [], [], []
        return state

    def opened(self) -> OpenedInstances:
        """Return the array opened in this process."""
        pid = os.getpid()
        if self._array is None or self._array_pid != pid:
            s = self.settings
            paths = s.zarr_path if isinstance(s.zarr_path, tuple) else (s.zarr_path,)
            parts = []
            sizes = s.chunk_i if isinstance(s.chunk_i, tuple) else (s.chunk_i,) * len(paths)
            for path, size in zip(paths, sizes, strict=True):
                if isinstance(path, (zarr.Array, zarr.Group)) and pid != self._pid:
                    # an opened node is rebuilt from its pickled form, as a spawned worker does
                    path = pickle.loads(pickle.dumps(path))
                one = open_instances(path, s.storage_options, s.codec_pipeline)
                direct = s.codec_pipeline is None and size == one.array.chunks[0]
                decoder = chunk_decoder(one.array) if direct else None
                if decoder is None and s.codec_pipeline is None and zarrs_allowed():
                    # not read directly: through the zarrs pipeline, where installed
                    one = open_with_zarrs(path, s.storage_options) or one
                parts.append((one, decoder))
            self._array_pid = pid
            self._parts = parts
            self._array, self._decoder = parts[0]
            if len(parts) > 1 and any(d is None for _, d in parts):
                self._decoder = None  # several stores: direct only if every store is
            rows = [int(one.array.shape[0]) for one, _ in parts]
            self._offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
            self._roots = [local_dir(one.array) for one, _ in parts]
            self._zeros = [(0,) * (one.array.ndim - 1) for one, _ in parts]
            self._sizes = np.asarray(sizes, np.int64)
        assert self._array is not None
        return self._array

    @property
    def direct(self) -> bool:
        """Whether stored chunks are decoded straight into the read buffer (opens the array)."""
        self.opened()
        return self._decoder is not None

    def load(
        self, buffer: Buffer, slot: Callable[[int], np.ndarray], threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read a buffer; return ``(src, index)``: its rows in yield order are ``src[index]``.

        ``slot(n)`` returns a reusable array of at least ``n`` rows to read into;
        ``threads`` bounds the chunks decoded at once.
        """
        array = self.opened().array
        if len(self._parts) > 1:
            return self._load_many(buffer, slot, threads)
        decoder = self._decoder
        check = self.settings.check_missing
        if decoder is not None:
            size = int(self.settings.chunk_i)  # type: ignore[arg-type]  # one store: an int
            chunk_of, offset = np.divmod(buffer.rows, size)
            chunks, inverse = np.unique(chunk_of, return_inverse=True)
            src = slot(chunks.size * size)
            read_chunks(
                array, chunks, src, decoder, self.where, check, rows=buffer.rows, threads=threads
            )
            return src, inverse.reshape(-1) * size + offset
        n_read = buffer.n_read
        src = slot(n_read)[:n_read]
        labels = [p.chunk for p in buffer.pieces]
        read_rows(array, buffer.read, self.where, src, check, labels)
        return src, buffer.source

    def _load_many(
        self, buffer: Buffer, slot: Callable[[int], np.ndarray], threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`load` over several stores: a logical chunk lies in one store."""
        offsets = self._offsets
        check = self.settings.check_missing
        if self._decoder is not None:
            sizes = self._sizes
            store = np.searchsorted(offsets, buffer.rows, side="right") - 1
            chunk_of, offset = np.divmod(buffer.rows - offsets[store], sizes[store])
            keys, inverse = np.unique(store * (offsets[-1] + 1) + chunk_of, return_inverse=True)
            key_store, key_chunk = np.divmod(keys, offsets[-1] + 1)
            # chunk j of the buffer fills src[block[j] : block[j + 1]] (its store's size)
            block = np.concatenate([[0], np.cumsum(sizes[key_store])]).astype(np.int64)
            src = slot(int(block[-1]))

            def read_store(s_idx: int) -> None:
                one, decoder = self._parts[s_idx]
                assert decoder is not None
                at = np.flatnonzero(key_store == s_idx)
                out = src[block[at[0]] : block[at[-1] + 1]]
                rows = buffer.rows[store == s_idx] - offsets[s_idx]
                read_chunks(one.array, key_chunk[at], out, decoder, one.where, check, rows, threads)

            first = np.flatnonzero(np.diff(key_store, prepend=-1))  # key_store is sorted
            touched = key_store[first].tolist()
            roots = [self._roots[k] for k in touched]
            if len(touched) == 1:
                read_store(touched[0])
            elif all(r is not None for r in roots):
                # local stores: every chunk file of the buffer on the decode threads at once,
                # as one store's; a store with a missing or bad chunk is read again by
                # read_chunks, which fills or raises naming it
                jobs = []
                pairs = zip(key_store.tolist(), key_chunk.tolist(), strict=True)
                for j, (k, c) in enumerate(pairs):
                    one, decoder = self._parts[k]
                    key = _chunk_io.chunk_key(one.array, (c, *self._zeros[k]))
                    path = _chunk_io.chunk_path(self._roots[k], key)
                    jobs.append((path, src[block[j] : block[j + 1]], decoder))
                results = _chunk_io.decode_files(jobs, threads)
                for k in sorted({key_store[j] for j, r in enumerate(results) if r is not None}):
                    read_store(int(k))
            else:  # remote stores: their requests in flight together
                for fut in [_runtime.store_pool().submit(read_store, k) for k in touched]:
                    fut.result()
            return src, block[inverse.reshape(-1)] + offset
        n_read = buffer.n_read
        src = slot(n_read)[:n_read]
        pos = 0
        for piece, rows in zip(buffer.pieces, buffer.read, strict=True):
            if rows.size == 0:
                continue
            s_idx = int(np.searchsorted(offsets, rows[0], side="right")) - 1
            one = self._parts[s_idx][0]
            out = src[pos : pos + rows.size]
            read_rows(one.array, [rows - offsets[s_idx]], one.where, out, check, [piece.chunk])
            pos += rows.size
        return src, buffer.source

    def _slots(self) -> Callable[[int], Callable[[int], np.ndarray]]:
        n_slots = 2 if self.settings.read_ahead else 1
        slots: list[np.ndarray | None] = [None] * n_slots

        def slot_for(k: int) -> Callable[[int], np.ndarray]:
            def get(n: int) -> np.ndarray:
                arr = slots[k % n_slots]
                if arr is None or arr.shape[0] < n:
                    arr = np.empty((max(1, n), *self.shape[1:]), dtype=self.dtype)
                    slots[k % n_slots] = arr
                return arr

            return get

        return slot_for

    def loaded(self, plan: WorkerPlan, start: int, threads: int) -> Iterator[Loaded]:
        """Yield each buffer of ``plan`` from sample ``start`` on, with ``(src, index)``.

        The decoded rows live in reusable slots (two with read-ahead: one being read
        while the other is consumed), so steady-state iteration allocates no raw
        memory. A yielded ``src`` is only valid until the next buffer is requested.
        """
        buffers = plan.buffers(start)
        slot_for = self._slots()
        if not self.settings.read_ahead:
            for buf in buffers:
                yield buf, self.load(buf, slot_for(0), threads)
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr_instances_read")
        try:
            pending: tuple[Buffer, Future[tuple[np.ndarray, np.ndarray]]] | None = None
            for k, buf in enumerate(buffers):
                fut = pool.submit(self.load, buf, slot_for(k), threads)
                if pending is not None:
                    yield pending[0], pending[1].result()
                pending = (buf, fut)
            if pending is not None:
                yield pending[0], pending[1].result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
