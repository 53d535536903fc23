"""The output side of the dataset: samples or batches, normalised, in reused memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _kernels, _runtime
from ._chunk_stream import Loaded
from ._normalize import OutputPool, empty_output, normalize_rows
from ._percentile import SourceScales
from ._prefetch import in_background
from ._row_data import RowData
from ._shared_batches import WorkerBatchPool

__all__ = ["WORKER_POOL_SIZE", "Batcher", "Counter", "OutputSettings"]

_SAMPLE_BLOCK = 256  # rows normalised together in per-sample mode
_BATCHES_AHEAD = 2  # batches normalised ahead of the consumer (with read_ahead)
# shared-memory segments a worker reuses beyond those: the DataLoader's prefetch
# (2 per worker by default), the consumer's current and previous batch, and slack
_WORKER_SEGMENTS = 6
WORKER_POOL_SIZE = _BATCHES_AHEAD + _WORKER_SEGMENTS  # segments in a worker's pool

Pool = OutputPool | WorkerBatchPool | None


@dataclass(frozen=True)
class OutputSettings:
    """What the dataset yields.

    Attributes
    ----------
    mode
        Canonical normalisation mode (``"minmax01"``, ``"unit"``, ``"percentile"``,
        ``"none"``).
    x_dtype
        Dtype of the crops yielded.
    batch_size
        Samples per batch, or ``None`` (one sample at a time).
    drop_last
        Drop a worker's last partial batch.
    return_instance_id, return_row_index
        Columns of the yielded tuples besides ``x`` (and ``y`` with labels).
    read_ahead
        Gather and normalise batches in a background thread.
    scales
        The row sources and per-source percentiles of ``"percentile"``.
    """

    mode: str
    x_dtype: torch.dtype
    batch_size: int | None
    drop_last: bool
    return_instance_id: bool
    return_row_index: bool
    read_ahead: bool
    scales: SourceScales | None = None


class Counter:
    """Samples handed to the consumer so far in the current iteration."""

    def __init__(self, start: int = 0) -> None:
        self.value = start


class Batcher:
    """Turns decoded buffers into the tuples the dataset yields.

    Parameters
    ----------
    settings
        What to yield.
    rows
        Instance ids and labels of every row.
    stored_dtype
        Dtype of the stored crops (the compiled kernels are loaded for it).
    """

    def __init__(self, settings: OutputSettings, rows: RowData, stored_dtype: np.dtype) -> None:
        self.settings = settings
        self.rows = rows
        self.stored_dtype = stored_dtype

    def columns(self) -> int:
        """Per-row columns of a yielded tuple besides ``x`` (y, instance id, row index)."""
        s = self.settings
        return (self.rows.labels is not None) + s.return_instance_id + s.return_row_index

    def iterate(self, loaded: Iterator[Loaded], counter: Counter, in_worker: bool) -> Iterator[Any]:
        """Yield samples or batches of ``loaded``, counting what the consumer takes.

        The compiled normalisation kernels load in a thread meanwhile (NumPy
        normalises until then); joined before this generator ends, so no thread
        outlives the iteration.
        """
        if in_worker:
            _runtime.worker_sharing()  # batches leave by segment name, not by socket
        warming = None
        if self.settings.x_dtype == torch.float32:
            warming = _kernels.warm_up(self.stored_dtype)
        try:
            if self.settings.batch_size is None:
                yield from self._samples(loaded, counter, in_worker)
            else:
                yield from self._batches(loaded, counter, in_worker)
        finally:
            if warming is not None:
                warming.join()

    def _pool(self, in_worker: bool) -> Pool:
        """Return a pool of output tensors for one iteration (used by its producing thread).

        In the main process an :class:`OutputPool`. In a DataLoader worker, whose
        batches leave the process, the worker's :class:`WorkerBatchPool` of
        shared-memory segments the main process hands back, borrowed for the iteration
        (batched mode with per-row columns, whose tuple carries the segment); otherwise
        ``None``: fresh shared memory.
        """
        if not in_worker:
            return OutputPool(_BATCHES_AHEAD + 4)
        if self.settings.batch_size is not None and self.columns():
            return _runtime.borrow_batch_pool(WORKER_POOL_SIZE)
        return None

    def _normalized(
        self,
        src: np.ndarray,
        index: np.ndarray | None,
        rows: np.ndarray,
        pool: Pool,
        in_worker: bool,
    ) -> torch.Tensor:
        """Normalise ``src[index]``, whose global rows are ``rows``."""
        s = self.settings
        # batches leave a worker through shared memory: allocate them there
        shared = s.batch_size is not None and in_worker and pool is None
        scales = None if s.scales is None else s.scales.of_rows(rows)
        return normalize_rows(src, index, s.mode, s.x_dtype, shared, pool, scales)

    def _pack(self, x: torch.Tensor, rows: np.ndarray, pool: Pool, in_worker: bool) -> Any:
        """Return a batch as the tuple of the mode: stacked ``x`` plus tensors of y/ids/rows."""
        cols: list[np.ndarray] = []
        if self.rows.labels is not None:
            cols.append(self.rows.labels[rows])
        if self.settings.return_instance_id:
            cols.append(self.rows.instance_ids[rows])
        if self.settings.return_row_index:
            cols.append(rows.astype(np.int64))
        if not cols:
            return x
        if isinstance(pool, WorkerBatchPool):
            return pool.pack(x, cols)
        if in_worker:
            # One shared-memory block for all per-row columns: a batch crosses to the
            # main process with two file-descriptor handshakes instead of up to four.
            # The columns do not share x's memory, so keeping labels alive does not
            # keep the crops alive.
            block = empty_output((len(cols), rows.size), torch.int64, shared=True)
            for k, col in enumerate(cols):
                block[k] = torch.from_numpy(col)
            return (x, *block.unbind(0))
        return (x, *(torch.from_numpy(c) for c in cols))

    def _samples(
        self, loaded: Iterator[Loaded], counter: Counter, in_worker: bool
    ) -> Iterator[Any]:
        labels, ids = self.rows.labels, self.rows.instance_ids
        with_id, with_row = self.settings.return_instance_id, self.settings.return_row_index
        pool = self._pool(in_worker)
        for buf, (src, index) in loaded:
            rows = buf.rows
            ys = None if labels is None else torch.from_numpy(labels[rows])
            id_list = ids[rows].tolist()
            row_list = rows.tolist()
            for a in range(0, rows.size, _SAMPLE_BLOCK):
                block = slice(a, a + _SAMPLE_BLOCK)
                x = self._normalized(src, index[block], rows[block], pool, in_worker)
                # one call makes the block's views (indexing row by row costs more)
                parts: list[Any] = [x.unbind(0)]
                if ys is not None:
                    parts.append(ys[block].unbind(0))
                if with_id:
                    parts.append(id_list[block])
                if with_row:
                    parts.append(row_list[block])
                if len(parts) == 1:
                    for sample in parts[0]:
                        counter.value += 1
                        yield sample
                    continue
                for sample in zip(*parts, strict=True):
                    counter.value += 1
                    yield sample

    def _batches(
        self, loaded: Iterator[Loaded], counter: Counter, in_worker: bool
    ) -> Iterator[Any]:
        stream = self._batch_stream(loaded, in_worker)
        if self.settings.read_ahead:
            # batches are gathered and normalised in a background thread (NumPy
            # releases the GIL), overlapping the consumer: the training step with
            # num_workers=0, the pickling of batches inside a DataLoader worker
            stream = in_background(stream, _BATCHES_AHEAD, "zarr_instances_batches")
        for batch, n in stream:
            counter.value += n
            yield batch

    def _batch_stream(self, loaded: Iterator[Loaded], in_worker: bool) -> Iterator[tuple[Any, int]]:
        """Yield ``(batch, samples in it)``; the caller counts what is consumed.

        Each batch is gathered from the decoded buffer and normalised into its own
        tensor in one pass; only a batch that straddles two buffers copies its stored
        rows together first.
        """
        bs = self.settings.batch_size
        assert bs is not None
        pool = self._pool(in_worker)

        def batch(src: np.ndarray, index: np.ndarray | None, rows: np.ndarray) -> Any:
            x = self._normalized(src, index, rows, pool, in_worker)
            return self._pack(x, rows, pool, in_worker)

        try:
            yield from self._cut(loaded, batch, bs)
        finally:
            if isinstance(pool, WorkerBatchPool):
                _runtime.return_batch_pool(pool)

    def _cut(
        self,
        loaded: Iterator[Loaded],
        batch: Callable[[np.ndarray, np.ndarray | None, np.ndarray], Any],
        bs: int,
    ) -> Iterator[tuple[Any, int]]:
        """Cut the buffers of ``loaded`` into batches of ``bs`` rows, made by ``batch``."""
        carry_x: np.ndarray | None = None
        carry_r: np.ndarray | None = None
        for buf, (src, index) in loaded:
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
                yield batch(carry_x, None, carry_r), bs
                carry_x = carry_r = None
            while pos + bs <= n:
                yield batch(src, index[pos : pos + bs], rows[pos : pos + bs]), bs
                pos += bs
            if pos < n:  # the slot is reused: keep a copy of the tail
                carry_x, carry_r = src[index[pos:]], rows[pos:]
        if carry_x is not None and carry_r is not None and not self.settings.drop_last:
            yield batch(carry_x, None, carry_r), carry_x.shape[0]
