"""``ZarrIterableInstances``: chunk-wise streaming of crops from Zarr into PyTorch."""

from __future__ import annotations

import os
import pickle
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import IterableDataset

from . import _kernels
from ._normalize import OutputPool, check_normalize, empty_output, normalize_rows
from ._plan import Buffer, WorkerPlan, compact_ranges, plan_worker, rank_share, select_rows
from ._prefetch import in_background
from ._reader import Decoder, chunk_decoder, read_chunks, read_rows
from ._resume import (
    Resume,
    Step,
    batches_per_worker,
    per_worker_counts,
    resolve,
)
from ._shared_batches import WorkerBatchPool
from ._store import OpenedInstances, ZarrPath, codec_pipeline_config, open_instances
from ._validate import as_int_vector, check_int
from ._world import current_rank_world, current_worker, in_worker
from .errors import ArgumentError, ArgumentTypeError

__all__ = ["STATE_KEY", "STATE_VERSION", "ZarrIterableInstances"]

STATE_KEY = "zarr_instances_state"
_SAMPLE_BLOCK = 256  # rows normalised together in per-sample mode
_BATCHES_AHEAD = 2  # batches normalised ahead of the consumer (with read_ahead)
# shared-memory segments a worker reuses beyond those: the DataLoader's prefetch
# (2 per worker by default), the consumer's current and previous batch, and slack
_WORKER_SEGMENTS = 6
STATE_VERSION = 1


class ZarrIterableInstances(IterableDataset):
    """Chunk-wise iterable dataset of per-instance crops stored in Zarr.

    A drop-in replacement for ``harpy.tb.ZarrIterableInstances``: same positional
    parameters, defaults, modes and yielded tuples. It

    * iterates chunk by chunk (or ``buffer_chunks`` chunks per read),
    * optionally shuffles chunks deterministically per epoch,
    * partitions rows across DDP ranks and DataLoader workers, giving every rank
      the same number of samples,
    * supervised (``labels`` given): yields ``(x, y[, instance_id][, row_idx])``,
    * inference (no labels): yields ``x`` or ``(x[, instance_id][, row_idx])``.

    Parameters
    ----------
    zarr_path
        Path or URL of a Zarr array ``(i, c, z, y, x)``, of an instance store written by
        :func:`zarr_instances.extract_instances` (a group holding ``image`` and
        ``instance_ids``), or an opened ``zarr.Array`` / ``zarr.Group``.
    instance_ids
        One-dimensional integers of length ``i``, the instance id of each row. May be
        ``None`` when ``zarr_path`` is an instance store.
    labels
        Optional one-dimensional integers of length ``i``. ``None`` means inference mode.
    chunk_i
        Rows per logical chunk. ``None`` uses the array's chunk size along axis 0.
    shuffle_chunks
        Shuffle the chunk order, as a deterministic function of ``(chunk_seed, epoch)``.
    chunk_seed
        Seed of the chunk order.
    shuffle_within_chunk
        Shuffle rows within each loaded buffer.
    buffer_seed
        Seed of the within-buffer shuffle. ``None`` draws one at random when the
        dataset is built (kept in ``state_dict`` so resumes stay exact).
    normalize
        ``"minmax01"`` (per instance and channel), ``"unit"`` (divide by the maximum
        of the stored integer dtype), ``None`` or ``"none"``.
    x_dtype
        Dtype of the yielded crops.
    return_instance_id
        Append the instance id to each output.
    return_row_index
        Append the global row index to each output.
    drop_unlabeled
        With ``labels``, drop rows whose label is ``< 0``.
    allowed_chunk_indexes
        Restrict to these logical chunk indexes (e.g. a train/validation split).
    batch_size
        If given, yield ready batches of this many samples (stacked tensors; ids and
        rows as ``int64`` tensors). Use with ``DataLoader(batch_size=None)``.
    buffer_chunks
        Chunks read in one request and shuffled together (``1`` = chunk-wise, as harpy).
    drop_last
        ``False`` (default): every DDP rank yields ``ceil(total / world)`` samples,
        padding with rows repeated from the start of the epoch. ``True``: every rank
        yields ``total // world`` samples and, with ``batch_size``, partial batches
        are dropped.
    read_ahead
        Read the next buffer in a background thread (started inside the worker, after
        fork) while the current one is consumed; in batched mode, also gather and
        normalise batches in a second thread, at most two ahead of the consumer.
        Holds two read buffers in the stored dtype plus those two batches.
    storage_options
        Passed to the store of a URL (e.g. S3 credentials).
    codec_pipeline
        ``None``: stores chunked along axis 0 only (no sharding; Blosc, Zstd, LZ4,
        GZip, Zlib or no compressor) are decoded chunk by chunk straight into a reused
        buffer; other layouts go through zarr's codec pipeline. ``"zarrs"`` reads
        everything through the Rust ``zarrs`` pipeline (``pip install
        'zarr-instances[zarrs]'``), bound to the array in each worker; its thread pool
        does not survive ``fork``: if the dataset was iterated in the parent, start
        workers with ``spawn`` or ``forkserver``.
    check_missing_chunks
        Raise :class:`ChunkReadError` naming the chunk when a stored chunk does not
        exist (zarr silently returns fill values for missing chunks). On the direct
        decode route this costs nothing; through zarr's pipeline the existence check
        runs only for reads that come back as fill values only.
    """

    def __init__(
        self,
        zarr_path: ZarrPath,
        instance_ids: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        chunk_i: int | None = None,
        shuffle_chunks: bool = False,
        chunk_seed: int = 0,
        shuffle_within_chunk: bool = False,
        buffer_seed: int | None = None,
        normalize: str | None = "minmax01",
        x_dtype: torch.dtype = torch.float32,
        return_instance_id: bool = True,
        return_row_index: bool = True,
        drop_unlabeled: bool = True,
        allowed_chunk_indexes: np.ndarray | None = None,
        *,
        batch_size: int | None = None,
        buffer_chunks: int = 1,
        drop_last: bool = False,
        read_ahead: bool = True,
        storage_options: dict[str, Any] | None = None,
        codec_pipeline: str | None = None,
        check_missing_chunks: bool = True,
    ) -> None:
        super().__init__()
        opened = open_instances(zarr_path, storage_options)
        n_rows = int(opened.array.shape[0])
        self.zarr_path = zarr_path
        self.storage_options = storage_options
        self._where = opened.where
        self.shape = tuple(int(s) for s in opened.array.shape)
        self.dtype = opened.array.dtype

        if instance_ids is None:
            if opened.instance_ids is None:
                msg = (
                    f"instance_ids is None but zarr_path={self._where} is a bare array; pass "
                    "instance_ids, or an instance store group that holds 'instance_ids'"
                )
                raise ArgumentError(msg)
            instance_ids = opened.instance_ids
        self.instance_ids = as_int_vector(instance_ids, "instance_ids", n_rows)
        self.labels = None if labels is None else as_int_vector(labels, "labels", n_rows)

        if chunk_i is None:
            chunk_i = int(opened.array.chunks[0])
        self.chunk_i = check_int(chunk_i, "chunk_i", minimum=1)
        self.shuffle_chunks = bool(shuffle_chunks)
        self.chunk_seed = check_int(chunk_seed, "chunk_seed")
        self.shuffle_within_chunk = bool(shuffle_within_chunk)
        if buffer_seed is None:
            buffer_seed = secrets.randbits(63)
        self.buffer_seed = check_int(buffer_seed, "buffer_seed")
        self.normalize = normalize
        self._mode = check_normalize(normalize)
        if not isinstance(x_dtype, torch.dtype):
            msg = f"x_dtype must be a torch.dtype, got {type(x_dtype).__name__}: {x_dtype!r}"
            raise ArgumentTypeError(msg)
        self.x_dtype = x_dtype
        self.return_instance_id = bool(return_instance_id)
        self.return_row_index = bool(return_row_index)
        self.drop_unlabeled = bool(drop_unlabeled)
        if batch_size is not None:
            batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.batch_size = batch_size
        self.buffer_chunks = check_int(buffer_chunks, "buffer_chunks", minimum=1)
        self.drop_last = bool(drop_last)
        self.read_ahead = bool(read_ahead)
        codec_pipeline_config(codec_pipeline, record=False)  # validate early
        self.codec_pipeline = codec_pipeline
        self.check_missing_chunks = bool(check_missing_chunks)

        keep = None
        if self.labels is not None and self.drop_unlabeled:
            keep = self.labels >= 0
        self.allowed_chunk_indexes = allowed_chunk_indexes
        self._selection = select_rows(n_rows, self.chunk_i, keep, allowed_chunk_indexes)
        self._share_per_row_arrays()
        if self._selection.total == 0:
            valid = compact_ranges(range(self._selection.n_chunks))
            msg = (
                "No rows to iterate: the chunks selected by allowed_chunk_indexes="
                f"{allowed_chunk_indexes!r} keep no row (labels < 0 are dropped when "
                f"drop_unlabeled=True); valid chunk indexes are {valid}"
            )
            raise ArgumentError(msg)

        self._pid = os.getpid()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._rank_world = current_rank_world() or (0, 1)
        self._array: OpenedInstances | None = None
        self._array_pid = 0
        self._decoder: Decoder | None = None
        self._resume: dict[str, Any] | None = None
        self._yielded = 0
        self._iter_epoch = 0
        self._iter_coords = (0, 1, 0, 1)
        self._iter_resume = Resume()
        self._started = False
        self._in_worker = False
        if self.x_dtype == torch.float32:
            # numba's kernels load in a background thread from now on: ready before
            # the first batch in most scripts, and inherited by forked workers
            _kernels.warm_up(self.dtype)

    # ------------------------------------------------------------------ epochs
    @property
    def epoch(self) -> int:
        """The epoch that the next iteration streams."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Call this once per epoch; seen by all workers, persistent ones included."""
        self._epoch.fill_(check_int(epoch, "epoch", minimum=0))
        self._refresh_rank_world()

    # ------------------------------------------------------------------ world
    def _refresh_rank_world(self) -> None:
        found = current_rank_world()
        if found is not None:
            self._rank_world = found

    def _coords(self) -> tuple[int, int, int, int]:
        # In a forked worker the process group is inherited and readable; under
        # spawn/forkserver it is not, and the value captured in the parent at
        # pickling time (__getstate__) is used instead.
        self._refresh_rank_world()
        rank, world = self._rank_world
        worker, num_workers = current_worker()
        return rank, world, worker, num_workers

    def _share_per_row_arrays(self) -> None:
        # Per-row arrays live in shared memory: DataLoader workers started with spawn
        # or forkserver map them instead of each receiving a copy of all N rows.
        shared = {
            "instance_ids": self.instance_ids,
            "labels": self.labels,
            "keep": self._selection.keep,
        }
        self._shared = {
            k: torch.from_numpy(np.ascontiguousarray(v)).share_memory_()
            for k, v in shared.items()
            if v is not None
        }
        self._attach_shared()

    def _attach_shared(self) -> None:
        views = {k: t.numpy() for k, t in self._shared.items()}
        self.instance_ids = views["instance_ids"]
        self.labels = views.get("labels")
        self._selection = replace(self._selection, keep=views.get("keep"))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach_shared()

    def __getstate__(self) -> dict[str, Any]:
        self._refresh_rank_world()
        state = self.__dict__.copy()
        state["_array"] = state["_decoder"] = None
        state["instance_ids"] = state["labels"] = None
        state["_selection"] = replace(self._selection, keep=None)
        return state

    # ------------------------------------------------------------------ sizes
    @property
    def _sampling(self) -> dict[str, Any]:
        return {
            "shuffle_chunks": self.shuffle_chunks,
            "chunk_seed": self.chunk_seed,
            "shuffle_within": self.shuffle_within_chunk,
            "buffer_seed": self.buffer_seed,
            "buffer_chunks": self.buffer_chunks,
            "drop_last": self.drop_last,
        }

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "n_rows": self.shape[0],
            "chunk_i": self.chunk_i,
            "kept": self._selection.total,
            "batch_size": self.batch_size,
            **{k: v for k, v in self._sampling.items() if k != "buffer_seed"},
        }

    def _plan(self, epoch: int, coords: tuple[int, int, int, int], resume: Resume) -> WorkerPlan:
        rank, world, worker, num_workers = coords
        return plan_worker(
            self._selection,
            epoch=epoch,
            rank=rank,
            world=world,
            worker=worker if resume.role is None else resume.role,
            num_workers=num_workers,
            domain=resume.domain,
            generation=resume.generation,
            **self._sampling,
        )

    def _resolve(self, epoch: int, world: int, num_workers: int, worker: int) -> Resume:
        return resolve(
            self._selection, self._sampling, epoch, self._resume, world, num_workers, worker
        )

    def __len__(self) -> int:
        """Return the number of samples this rank yields per epoch (also with ``batch_size``).

        Use :meth:`num_batches` for the number of batches.
        """
        self._refresh_rank_world()
        return rank_share(self._selection.total, self._rank_world[1], self.drop_last)

    def num_batches(
        self, num_workers: int = 0, batch_size: int | None = None, drop_last: bool | None = None
    ) -> int:
        """Return the batches this rank yields per epoch with ``num_workers`` workers.

        Every worker cuts its own stream into batches, so the count depends on the
        worker count. ``batch_size`` and ``drop_last`` default to the dataset's (for
        batched mode); pass the DataLoader's in per-sample mode.
        """
        size = batch_size if batch_size is not None else self.batch_size
        if size is None:
            msg = "num_batches needs batch_size (the dataset has none)"
            raise ArgumentError(msg)
        drop = self.drop_last if drop_last is None else drop_last
        counts = per_worker_counts(len(self), 1, max(1, num_workers), False)
        return int(batches_per_worker(counts, size, drop).sum())

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Return the position of this stream in its epoch (torchdata ``Stateful``).

        Called inside a DataLoader worker (as ``StatefulDataLoader`` does) it
        describes that worker's stream; use :func:`merge_worker_states` to combine the
        workers of one rank into a state that also resumes on another world size.
        """
        rank, world, worker, num_workers = self._iter_coords
        role = worker if self._iter_resume.role is None else self._iter_resume.role
        consumed = [-1] * num_workers
        consumed[role] = self._yielded
        steps = [*self._iter_resume.history, Step(world, num_workers, tuple(consumed))]
        return {
            STATE_KEY: STATE_VERSION,
            "epoch": self._iter_epoch,
            "steps": [st.as_dict() for st in steps],
            "role": role,
            "rank": rank,
            "started": self._started,
            "buffer_seed": self.buffer_seed,
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a saved state at the next iteration.

        Accepts a stream state from :meth:`state_dict` (exact resume of that stream),
        or a merged state from :func:`merge_worker_states` or
        :meth:`ZarrDataLoader.state_dict` (exact resume on the same world size and
        worker count; elastic resume on another).

        Raises
        ------
        ArgumentError
            If the state is not a zarr-instances state, or was saved with other data or
            sampling settings.
        """
        if not isinstance(state, dict) or state.get(STATE_KEY) != STATE_VERSION:
            msg = f"Not a zarr-instances state (version {STATE_VERSION}): {state!r:.200}"
            raise ArgumentError(msg)
        mine = self._fingerprint()
        theirs = state.get("fingerprint", {})
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            msg = f"load_state_dict: the state was saved with other settings ({details})"
            raise ArgumentError(msg)
        self.buffer_seed = int(state["buffer_seed"])
        self._epoch.fill_(int(state["epoch"]))
        self._resume = dict(state)

    # ------------------------------------------------------------------ iteration
    def _opened(self) -> OpenedInstances:
        pid = os.getpid()
        if self._array is None or self._array_pid != pid:
            # Reopen after fork: a parent's codec pipeline may hold dead threads, and
            # remote clients (e.g. an aiohttp session) are bound to the parent's event
            # loop. An opened zarr.Array / Group is rebuilt from its pickled form, as a
            # spawned worker does.
            path = self.zarr_path
            if isinstance(path, (zarr.Array, zarr.Group)) and pid != self._pid:
                path = pickle.loads(pickle.dumps(path))
            self._array_pid = pid
            self._array = open_instances(path, self.storage_options, self.codec_pipeline)
            # Whole stored chunks decode straight into the read buffer when the
            # logical chunks are the stored ones (zarrs keeps zarr's pipeline).
            direct = self.codec_pipeline is None and self.chunk_i == self._array.array.chunks[0]
            self._decoder = chunk_decoder(self._array.array) if direct else None
        return self._array

    def _load(
        self, buffer: Buffer, slot: Callable[[int], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read a buffer; return ``(src, index)``: its rows in yield order are ``src[index]``.

        ``slot(n)`` returns a reusable array of at least ``n`` rows to read into.
        """
        opened = self._opened()
        decoder = self._decoder
        if decoder is not None:
            size = self.chunk_i
            chunk_of, offset = np.divmod(buffer.rows, size)
            chunks, inverse = np.unique(chunk_of, return_inverse=True)
            src = slot(chunks.size * size)
            read_chunks(
                opened.array,
                chunks,
                src,
                decoder,
                self._where,
                check_missing=self.check_missing_chunks,
                rows=buffer.rows,
            )
            return src, inverse.reshape(-1) * size + offset
        n_read = buffer.n_read
        src = slot(n_read)[:n_read]
        read_rows(
            opened.array,
            buffer.read,
            self._where,
            out=src,
            check_missing=self.check_missing_chunks,
            labels=[p.chunk for p in buffer.pieces],
        )
        return src, buffer.source

    def _loaded(
        self, plan: WorkerPlan, start: int
    ) -> Iterator[tuple[Buffer, tuple[np.ndarray, np.ndarray]]]:
        """Yield each buffer with ``(src, index)``: its rows in yield order are ``src[index]``.

        The decoded rows live in reusable slots (two with read-ahead: one being read
        while the other is consumed), so steady-state iteration allocates no raw
        memory. A yielded ``src`` is only valid until the next buffer is requested.
        """
        buffers = plan.buffers(start)
        n_slots = 2 if self.read_ahead else 1
        slots: list[np.ndarray | None] = [None] * n_slots

        def slot_for(k: int) -> Callable[[int], np.ndarray]:
            def get(n: int) -> np.ndarray:
                arr = slots[k % n_slots]
                if arr is None or arr.shape[0] < n:
                    arr = np.empty((max(1, n), *self.shape[1:]), dtype=self.dtype)
                    slots[k % n_slots] = arr
                return arr

            return get

        # numba's kernels load in a thread meanwhile (NumPy normalises until then);
        # joined before this generator ends, so no thread outlives the iteration
        warming = _kernels.warm_up(self.dtype) if self.x_dtype == torch.float32 else None
        try:
            if not self.read_ahead:
                for buf in buffers:
                    yield buf, self._load(buf, slot_for(0))
                return
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr_instances_read")
            try:
                pending: tuple[Buffer, Future[tuple[np.ndarray, np.ndarray]]] | None = None
                for k, buf in enumerate(buffers):
                    fut = pool.submit(self._load, buf, slot_for(k))
                    if pending is not None:
                        yield pending[0], pending[1].result()
                    pending = (buf, fut)
                if pending is not None:
                    yield pending[0], pending[1].result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if warming is not None:
                warming.join()

    def _output_pool(self) -> OutputPool | WorkerBatchPool | None:
        """Return a pool of output tensors for one iteration (used by its one producing thread).

        In the main process an :class:`OutputPool`. In a DataLoader worker, whose
        batches leave the process, a :class:`WorkerBatchPool` of shared-memory
        segments the main process hands back (batched mode with per-row columns,
        whose tuple carries the segment); otherwise ``None``: fresh shared memory.
        """
        if not self._in_worker:
            return OutputPool(_BATCHES_AHEAD + 4)
        if self.batch_size is not None and self._columns():
            return WorkerBatchPool(_BATCHES_AHEAD + _WORKER_SEGMENTS)
        return None

    def _columns(self) -> int:
        """Per-row columns of a yielded tuple besides ``x`` (y, instance id, row index)."""
        return (
            (self.labels is not None) + bool(self.return_instance_id) + bool(self.return_row_index)
        )

    def _normalized(
        self, src: np.ndarray, index: np.ndarray | None, pool: OutputPool | WorkerBatchPool | None
    ) -> torch.Tensor:
        # batches leave a worker through shared memory: allocate them there
        shared = self.batch_size is not None and self._in_worker and pool is None
        return normalize_rows(src, index, self._mode, self.x_dtype, shared, pool)

    def _pack_batch(
        self, x: torch.Tensor, rows: np.ndarray, pool: OutputPool | WorkerBatchPool | None
    ) -> Any:
        """Return a batch as the tuple of the mode: stacked ``x`` plus tensors of y/ids/rows."""
        cols: list[np.ndarray] = []
        if self.labels is not None:
            cols.append(self.labels[rows])
        if self.return_instance_id:
            cols.append(self.instance_ids[rows])
        if self.return_row_index:
            cols.append(rows.astype(np.int64))
        if not cols:
            return x
        if isinstance(pool, WorkerBatchPool):
            return pool.pack(x, cols)
        if self._in_worker:
            # One shared-memory block for all per-row columns: a batch crosses to the
            # main process with two file-descriptor handshakes instead of up to four
            # (each costs about a millisecond). The columns do not share x's memory,
            # so keeping labels alive does not keep the crops alive.
            block = empty_output((len(cols), rows.size), torch.int64, shared=True)
            for k, col in enumerate(cols):
                block[k] = torch.from_numpy(col)
            return (x, *block.unbind(0))
        return (x, *(torch.from_numpy(c) for c in cols))

    def __iter__(self) -> Iterator[Any]:
        # Not a generator: the plan (and a pending resume) is fixed when iter() is
        # called, so a DataLoader can drop the pending resume right after.
        coords = self._coords()
        epoch = self.epoch
        resume = self._resolve(epoch, coords[1], coords[3], coords[2])
        self._resume = None
        plan = self._plan(epoch, coords, resume)
        start = resume.start
        self._iter_epoch, self._iter_coords, self._yielded = epoch, coords, start
        self._iter_resume = resume
        self._started = True
        self._in_worker = in_worker()
        if self.batch_size is None:
            return self._samples(plan, start)
        return self._batches(plan, start)

    def _samples(self, plan: WorkerPlan, start: int) -> Iterator[Any]:
        labels, ids = self.labels, self.instance_ids
        with_id, with_row = self.return_instance_id, self.return_row_index
        pool = self._output_pool()
        for buf, (src, index) in self._loaded(plan, start):
            rows = buf.rows
            ys = None if labels is None else torch.from_numpy(labels[rows])
            id_list = ids[rows].tolist()
            row_list = rows.tolist()
            for a in range(0, rows.size, _SAMPLE_BLOCK):
                x = self._normalized(src, index[a : a + _SAMPLE_BLOCK], pool)
                for j in range(a, min(a + _SAMPLE_BLOCK, rows.size)):
                    out: list[Any] = [x[j - a]]
                    if ys is not None:
                        out.append(ys[j])
                    if with_id:
                        out.append(id_list[j])
                    if with_row:
                        out.append(row_list[j])
                    self._yielded += 1
                    yield out[0] if len(out) == 1 else tuple(out)

    def _batches(self, plan: WorkerPlan, start: int) -> Iterator[Any]:
        stream = self._batch_stream(plan, start)
        if self.read_ahead:
            # batches are gathered and normalised in a background thread (NumPy
            # releases the GIL), overlapping the consumer: the training step with
            # num_workers=0, the pickling of batches inside a DataLoader worker
            stream = in_background(stream, _BATCHES_AHEAD, "zarr_instances_batches")
        for batch, n in stream:
            self._yielded += n
            yield batch

    def _batch_stream(self, plan: WorkerPlan, start: int) -> Iterator[tuple[Any, int]]:
        """Yield ``(batch, samples in it)``; the caller counts what is consumed."""
        # Each batch is gathered from the decoded buffer and normalised into its own
        # tensor in one pass; only a batch that straddles two buffers copies its
        # stored rows together first.
        bs = self.batch_size
        assert bs is not None
        carry_x: np.ndarray | None = None
        carry_r: np.ndarray | None = None
        pool = self._output_pool()
        for buf, (src, index) in self._loaded(plan, start):
            rows = buf.rows
            n = index.size
            pos = 0
            if carry_x is not None and carry_r is not None:
                need = bs - carry_x.shape[0]
                carry_x = np.concatenate([carry_x, src[index[:need]]])
                carry_r = np.concatenate([carry_r, rows[:need]])
                pos = min(need, n)
                if carry_x.shape[0] < bs:
                    continue
                yield self._pack_batch(self._normalized(carry_x, None, pool), carry_r, pool), bs
                carry_x = carry_r = None
            while pos + bs <= n:
                x = self._normalized(src, index[pos : pos + bs], pool)
                yield self._pack_batch(x, rows[pos : pos + bs], pool), bs
                pos += bs
            if pos < n:  # the slot is reused: keep a copy of the tail
                carry_x, carry_r = src[index[pos:]], rows[pos:]
        if carry_x is not None and carry_r is not None and not self.drop_last:
            x = self._normalized(carry_x, None, pool)
            yield self._pack_batch(x, carry_r, pool), carry_x.shape[0]

    def __repr__(self) -> str:
        mode = "supervised" if self.labels is not None else "inference"
        return (
            f"ZarrIterableInstances({self._where}, shape={self.shape}, dtype={self.dtype}, "
            f"{mode}, kept={self._selection.total}, chunk_i={self.chunk_i}, "
            f"chunks={int(np.count_nonzero(self._selection.counts))}, pid={os.getpid()})"
        )
