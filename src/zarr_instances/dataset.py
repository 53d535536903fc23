"""``ZarrIterableInstances``: chunk-wise streaming of crops from Zarr into PyTorch.

The dataset is the public face; it delegates the work to three parts:

* the plan (:mod:`._plan`, :mod:`._sampling`, :mod:`._resume`): which rows, in which
  order, on which rank and worker, from where after a resume (pure);
* :class:`._chunk_stream.ChunkStream`: opening the array in each process and reading
  the plan's buffers, one ahead;
* :class:`._batching.Batcher`: samples or batches, normalised, in reused memory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import IterableDataset

from . import _kernels, _runtime
from ._batching import Batcher, Counter, OutputSettings
from ._chunk_stream import ChunkStream, ReadSettings
from ._consumer_normalize import (
    BatchNormalizer,
    check_normalize_in,
    check_x_dtype,
    stored_torch_dtype,
)
from ._multi_store import instance_ids_of, open_source
from ._normalize import check_normalize
from ._percentile import source_scales
from ._plan import rank_share
from ._resume import (
    EpochStart,
    Resume,
    batches_per_worker,
    check_state,
    epoch_start,
    per_worker_counts,
    resolve,
    resumed_plan,
    stream_state,
)
from ._row_data import RowData
from ._sampling import Sampling
from ._selection import RowSelection, check_not_empty, select_rows
from ._store import ZarrPath, codec_pipeline_config
from ._table_rows import selection_digest, table_rows
from ._validate import check_int
from ._world import current_rank_world, current_worker, in_worker
from .errors import ArgumentError

__all__ = ["STATE_KEY", "STATE_VERSION", "ZarrIterableInstances"]

STATE_KEY = "zarr_instances_state"
STATE_VERSION = 1


@dataclass
class _Position:
    """Where the current (or last) iteration of this process stands."""

    epoch: int = 0
    coords: tuple[int, int, int, int] = (0, 1, 0, 1)  # rank, world, worker, num_workers
    resume: Resume = field(default_factory=Resume)
    yielded: Counter = field(default_factory=Counter)
    started: bool = False


class ZarrIterableInstances(IterableDataset):
    """Chunk-wise iterable dataset of per-instance crops stored in Zarr.

    A drop-in replacement for harpy's ``ZarrIterableInstances``: same positional
    parameters, defaults and yielded tuples (``normalize="unit"`` divides by the
    stored dtype's maximum, harpy by 65535; docs/migration-harpy.md). It

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
        ``instance_ids``), or an opened ``zarr.Array`` / ``zarr.Group``; or a list of
        those (same crop shape and dtype), streamed as the concatenation of their rows.
    instance_ids
        One-dimensional integers of length ``i``, the instance id of each row. May be
        ``None`` when ``zarr_path`` is an instance store.
    labels
        Optional one-dimensional integers of length ``i``, or the name of a column of
        the store's instance table (:func:`~zarr_instances.read_table`): categories,
        strings and bools become codes in category (or sorted) order, listed in
        :attr:`classes`; integers stay as they are; missing values are ``-1``
        (unlabelled). ``None`` means inference mode.
    chunk_i
        Rows per logical chunk. ``None`` uses the array's chunk size along axis 0 (for a
        list of stores chunked differently, each store's own: :attr:`chunk_i` is then
        a tuple of one size per store).
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
        of the stored integer dtype), ``"percentile"`` (per source and channel,
        ``clip((x - p1) / (p99 - p1), 0, 1)`` with the object-pixel percentiles of the
        crop's own source, 0 where they are equal; an instance store of this version),
        ``("percentile", low, high)`` (other stored percentiles), ``None`` or ``"none"``.
    x_dtype
        Dtype of the yielded crops.
    normalize_in
        ``"dataset"``: crops are normalised where they are read (in the DataLoader
        worker) and yielded in ``x_dtype``. ``"consumer"``: yielded in their stored
        dtype (half the bytes of float32 for uint16 through the workers), to be
        normalised with :attr:`normalizer` where they are used, e.g. on the GPU;
        the result equals the ``"dataset"`` output.
    return_instance_id
        Append the instance id to each output.
    return_row_index
        Append the global row index to each output.
    drop_unlabeled
        With ``labels``, drop rows whose label is ``< 0``.
    allowed_chunk_indexes
        Restrict to these logical chunk indexes (e.g. a train/validation split).
    where
        Select rows: a mapping ``{column: value or list of values}`` over the instance
        table (AND over columns), or a boolean array of length ``i`` (e.g. one part of
        :func:`~zarr_instances.group_split`). ANDed with the two options above.
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
        zarrs``, the ``[zarrs]`` extra), bound to the array in each worker; its thread pool
        does not survive ``fork``: if the dataset was iterated in the parent, start
        workers with ``spawn`` or ``forkserver``.
    check_missing_chunks
        Raise :class:`ChunkReadError` naming the chunk when a stored chunk does not
        exist (zarr silently returns fill values for missing chunks). On the direct
        decode route this costs nothing; through zarr's pipeline the existence check
        runs only for reads that come back as fill values only.

    Attributes
    ----------
    classes
        With ``labels`` a categorical, string or bool column: the class of each code
        (``classes[y]``), the same whatever ``where`` selects; else ``None``. Saved
        in :meth:`state_dict`: a store whose categories changed is refused on resume.
    label_column
        The column ``labels`` named, or ``None``.
    """

    def __init__(
        self,
        zarr_path: ZarrPath | Sequence[ZarrPath],
        instance_ids: np.ndarray | None = None,
        labels: np.ndarray | str | None = None,
        chunk_i: int | None = None,
        shuffle_chunks: bool = False,
        chunk_seed: int = 0,
        shuffle_within_chunk: bool = False,
        buffer_seed: int | None = None,
        normalize: str | tuple[str, float, float] | None = "minmax01",
        x_dtype: torch.dtype = torch.float32,
        return_instance_id: bool = True,
        return_row_index: bool = True,
        drop_unlabeled: bool = True,
        allowed_chunk_indexes: np.ndarray | None = None,
        *,
        where: Mapping[str, Any] | np.ndarray | None = None,
        batch_size: int | None = None,
        buffer_chunks: int = 1,
        drop_last: bool = False,
        read_ahead: bool = True,
        storage_options: dict[str, Any] | None = None,
        codec_pipeline: str | None = None,
        check_missing_chunks: bool = True,
        normalize_in: str = "dataset",
    ) -> None:
        super().__init__()
        opened = open_source(zarr_path, storage_options)
        n_rows = opened.shape[0]
        self.zarr_path = cast(
            "ZarrPath | tuple[ZarrPath, ...]",
            tuple(zarr_path) if isinstance(zarr_path, (list, tuple)) else zarr_path,
        )
        self.storage_options = storage_options
        self.shape, self.dtype = opened.shape, opened.dtype
        self.stored_chunk_i = opened.stored_chunk_i
        ids = instance_ids_of(instance_ids, opened.instance_ids, opened.where, n_rows)
        rows = table_rows(zarr_path, storage_options, labels, where, n_rows, opened.store_rows)
        self.classes, self.label_column = rows.classes, rows.column
        self.chunk_i = (
            self.stored_chunk_i if chunk_i is None else check_int(chunk_i, "chunk_i", minimum=1)
        )
        self.shuffle_chunks = bool(shuffle_chunks)
        self.chunk_seed = check_int(chunk_seed, "chunk_seed")
        self.shuffle_within_chunk = bool(shuffle_within_chunk)
        seed = secrets.randbits(63) if buffer_seed is None else buffer_seed
        self.buffer_seed = check_int(seed, "buffer_seed")
        self.normalize = normalize
        self._scales = source_scales(normalize, opened.stores, opened.store_rows or [n_rows])
        self.x_dtype = check_x_dtype(x_dtype)
        self.normalize_in = check_normalize_in(normalize_in)
        self.return_instance_id = bool(return_instance_id)
        self.return_row_index = bool(return_row_index)
        self.drop_unlabeled = bool(drop_unlabeled)
        self.batch_size = (
            None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
        )
        self.buffer_chunks = check_int(buffer_chunks, "buffer_chunks", minimum=1)
        self.drop_last = bool(drop_last)
        self.read_ahead = bool(read_ahead)
        codec_pipeline_config(codec_pipeline, record=False)  # validate early
        self.codec_pipeline = codec_pipeline
        self.check_missing_chunks = bool(check_missing_chunks)
        self.allowed_chunk_indexes = allowed_chunk_indexes
        keep = rows.keep(self.drop_unlabeled)
        selection = select_rows(
            n_rows, self.chunk_i, keep, allowed_chunk_indexes, opened.store_rows
        )
        check_not_empty(selection, allowed_chunk_indexes, where is not None)
        self._digest, self._store_rows = selection_digest(selection), opened.store_rows
        self._assemble(RowData(ids, rows.labels, selection), opened.where)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._rank_world = current_rank_world() or (0, 1)
        self._pending: dict[str, Any] | None = None  # a loaded state, used by the next iter()
        self._position = _Position()
        if self.x_dtype == torch.float32 and self.normalize_in == "dataset":
            # numba's kernels load in a background thread from now on: ready before
            # the first batch in most scripts, and before ZarrDataLoader forks workers
            _kernels.warm_up(self.dtype)

    def _assemble(self, rows: RowData, where: str) -> None:
        """Build the parts the dataset delegates to: rows, reader, batcher."""
        self._rows = rows
        read = ReadSettings(
            self.zarr_path, self.storage_options, self.codec_pipeline, self.chunk_i,
            self.check_missing_chunks, self.read_ahead,
        )  # fmt: skip
        self._stream = ChunkStream(read, self.shape, self.dtype, where)
        mode, x_dtype = check_normalize(self.normalize), self.x_dtype
        if self.normalize_in == "consumer":  # yield as stored; self.normalizer does the rest
            mode, x_dtype = "none", stored_torch_dtype(self.dtype)
        output = OutputSettings(
            mode, x_dtype, self.batch_size, self.drop_last,
            self.return_instance_id, self.return_row_index, self.read_ahead, self._scales,
        )  # fmt: skip
        self._batcher = Batcher(output, rows, self.dtype)

    # ------------------------------------------------------------------ what is streamed
    @property
    def normalizer(self) -> BatchNormalizer:
        """A new :class:`BatchNormalizer` of this dataset's mode (build it once, reuse it)."""
        mode = check_normalize(self.normalize)
        return BatchNormalizer(mode, self.x_dtype, self.dtype, self._scales)

    @property
    def instance_ids(self) -> np.ndarray:
        """The instance id of every row."""
        return self._rows.instance_ids

    @property
    def labels(self) -> np.ndarray | None:
        """The label of every row, or ``None`` (inference)."""
        return self._rows.labels

    @property
    def selection(self) -> RowSelection:
        """The rows an epoch draws from, counted per logical chunk."""
        return self._rows.selection

    @property
    def sampling(self) -> Sampling:
        """The sampling settings, as one frozen value."""
        return Sampling(
            shuffle_chunks=self.shuffle_chunks,
            chunk_seed=self.chunk_seed,
            shuffle_within=self.shuffle_within_chunk,
            buffer_seed=self.buffer_seed,
            buffer_chunks=self.buffer_chunks,
            drop_last=self.drop_last,
        )

    def rank_world(self) -> tuple[int, int]:
        """Return ``(rank, world size)``: the process group's if one is initialised.

        In a spawned DataLoader worker, where the group is not readable, the value
        seen by the parent when the dataset was sent to the worker.
        """
        found = current_rank_world()
        if found is not None:
            self._rank_world = found
        return self._rank_world

    # ------------------------------------------------------------------ epochs and sizes
    @property
    def epoch(self) -> int:
        """The epoch that the next iteration streams."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Call this once per epoch; seen by all workers, persistent ones included."""
        self._epoch.fill_(check_int(epoch, "epoch", minimum=0))
        self.rank_world()

    def __len__(self) -> int:
        """Return the number of samples this rank yields per epoch (also with ``batch_size``).

        Use :meth:`num_batches` for the number of batches.
        """
        return rank_share(self.selection.total, self.rank_world()[1], self.drop_last)

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
    def fingerprint(self) -> dict[str, Any]:
        """Return the data and sampling settings a saved state must match."""
        return {
            "n_rows": self.shape[0],
            "chunk_i": self.chunk_i if isinstance(self.chunk_i, int) else list(self.chunk_i),
            "kept": self.selection.total,
            "batch_size": self.batch_size,
            "rows": self._digest,
            "label_column": self.label_column,
            "classes": self.classes,
            **({"stores": self._store_rows} if self._store_rows is not None else {}),
            **self.sampling.fingerprint(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the position of this stream in its epoch (torchdata ``Stateful``).

        Called inside a DataLoader worker (as ``StatefulDataLoader`` does) it
        describes that worker's stream; use :func:`merge_worker_states` to combine the
        workers of one rank into a state that also resumes on another world size.
        """
        pos = self._position
        return {
            STATE_KEY: STATE_VERSION,
            **stream_state(pos.epoch, pos.coords, pos.resume, pos.yielded.value),
            "started": pos.started,
            "buffer_seed": self.buffer_seed,
            "fingerprint": self.fingerprint(),
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
            If the state is not a zarr-instances state, or was saved with other rows,
            classes or sampling settings.
        """
        check_state(state, self.fingerprint(), STATE_KEY, STATE_VERSION)
        self.buffer_seed = int(state["buffer_seed"])
        self._epoch.fill_(int(state["epoch"]))
        self._pending = dict(state)

    def epoch_start(self, epoch: int, num_workers: int) -> EpochStart:
        """Return where each of ``num_workers`` streams of this rank starts ``epoch``.

        Takes a state loaded with :meth:`load_state_dict` into account (used by
        :class:`~zarr_instances.ZarrDataLoader` to count batches for its own state).
        """
        world = self.rank_world()[1]
        return epoch_start(self.selection, self.sampling, epoch, self._pending, world, num_workers)

    def discard_loaded_state(self) -> None:
        """Forget a loaded state once the iteration that resumes from it has started."""
        self._pending = None

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Any]:
        # Not a generator: the plan (and a pending resume) is fixed when iter() is
        # called, so a DataLoader can drop the pending resume right after.
        rank, world = self.rank_world()
        worker, num_workers = current_worker()
        coords = (rank, world, worker, num_workers)
        epoch = self.epoch
        sampling = self.sampling
        resume = resolve(self.selection, sampling, epoch, self._pending, world, num_workers, worker)
        self._pending = None
        plan = resumed_plan(self.selection, sampling, epoch, coords, resume)
        counter = Counter(resume.start)
        self._position = _Position(epoch, coords, resume, counter, started=True)
        worker_process = in_worker()
        # a worker's decode threads: its share of the cores
        threads = max(1, _runtime.cores() // num_workers) if worker_process else _runtime.cores()
        loaded = self._stream.loaded(plan, resume.start, threads)
        return self._batcher.iterate(loaded, counter, worker_process)

    def __getstate__(self) -> dict[str, Any]:
        self.rank_world()  # a spawned worker cannot read the process group: keep the parent's
        return self.__dict__.copy()

    def __repr__(self) -> str:
        mode = "supervised" if self.labels is not None else "inference"
        sel = self.selection
        return (
            f"ZarrIterableInstances({self._stream.where}, shape={self.shape}, "
            f"dtype={self.dtype}, {mode}, kept={sel.total}, chunk_i={self.chunk_i}, "
            f"chunks={int(np.count_nonzero(sel.counts))}, pid={os.getpid()})"
        )
