"""Pure epoch plans: which rows, in which order, on which rank and worker.

Nothing here reads Zarr or asks ``torch.distributed``; every function is a pure
function of sizes, seeds, the epoch and the (rank, worker) coordinates, so that
it can be tested exhaustively and run at any scale in a simulator.

The model
---------
1. :func:`select_rows` decides which rows are *kept* (labels, ``allowed_chunk_indexes``)
   and counts them per logical chunk of ``chunk_i`` rows.
2. :func:`chunk_order` orders the chunks that keep at least one row for an epoch.
   Concatenating the kept rows of the ordered chunks gives the *epoch sequence*,
   positions ``0 .. total - 1``.
3. The epoch sequence is cut into ``world`` contiguous, equally long rank shares
   (padding wraps around to the start of the sequence; ``drop_last`` drops the tail)
   and each rank share into ``num_workers`` contiguous worker shares whose lengths
   depend only on the total, the world size and the worker count.
4. A worker walks its share as *pieces* (the part of one chunk it owns), groups
   ``buffer_chunks`` pieces into a *buffer* (one read), and optionally permutes
   the rows of each buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ._intervals import Intervals
from ._selection import RowSelection, compact_ranges, select_rows
from .errors import ArgumentError

__all__ = [
    "Buffer",
    "Piece",
    "RowSelection",
    "WorkerPlan",
    "chunk_order",
    "compact_ranges",
    "piece_rows",
    "plan_worker",
    "rank_share",
    "rng_for",
    "select_rows",
    "split_evenly",
]

_MASK64 = (1 << 64) - 1
_TAG_CHUNKS = 0x43484E4B  # "CHNK": chunk order
_TAG_BUFFER = 0x42554646  # "BUFF": order inside a buffer


def rng_for(*keys: int) -> np.random.Generator:
    """Return a generator seeded by a sequence of integers.

    Unlike ``seed + epoch`` this never maps two different key tuples of the same
    length to the same stream: the keys are hashed by :class:`numpy.random.SeedSequence`.
    Negative keys are taken modulo ``2**64``.
    """
    return np.random.default_rng(np.random.SeedSequence([int(k) & _MASK64 for k in keys]))


def chunk_order(selection: RowSelection, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
    """Return the chunks that keep a row, in the order of this epoch.

    Ascending without ``shuffle``; else a permutation that is a deterministic
    function of ``(seed, epoch)`` only.
    """
    ids = np.flatnonzero(selection.counts).astype(np.int64)
    if shuffle:
        ids = rng_for(_TAG_CHUNKS, seed, epoch).permutation(ids)
    return ids


def split_evenly(n: int, parts: int) -> np.ndarray:
    """Split ``n`` items into ``parts`` counts that differ by at most one (larger first)."""
    base, extra = divmod(int(n), int(parts))
    out = np.full(parts, base, dtype=np.int64)
    out[:extra] += 1
    return out


def rank_share(total: int, world: int, drop_last: bool) -> int:
    """Return the samples every rank yields in an epoch of ``total`` kept rows.

    ``ceil(total / world)`` with padding, ``total // world`` with ``drop_last``.
    """
    if total == 0:
        return 0
    return total // world if drop_last else -(-total // world)


@dataclass(frozen=True, eq=False)
class Piece:
    """The part of one chunk that a worker owns, in epoch-sequence terms.

    Attributes
    ----------
    chunk
        Logical chunk index.
    lo, hi
        Offsets into the chunk's kept rows (``RowSelection.chunk_rows(chunk)[lo:hi]``).
    position
        Virtual position of the first row in the stream's domain (``>=`` the domain
        size for padding); seeds the in-buffer shuffle.
    orig
        Epoch-sequence position of the chunk's first kept row, so that row ``j`` of the
        piece sits at epoch position ``orig + offsets()[j]``.
    take
        Explicit sorted offsets into the chunk's kept rows, replacing ``lo:hi`` (only
        after an elastic resume left a chunk fragmented).
    """

    chunk: int
    lo: int
    hi: int
    position: int
    orig: int = 0
    take: np.ndarray | None = None

    @property
    def size(self) -> int:
        """Number of rows in the piece."""
        return self.hi - self.lo if self.take is None else int(self.take.size)

    def offsets(self) -> np.ndarray:
        """Offsets of the piece's rows into the chunk's kept rows."""
        if self.take is not None:
            return self.take
        return np.arange(self.lo, self.hi, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Buffer:
    """One read: a few pieces, and the order in which their rows are yielded.

    Attributes
    ----------
    first
        Position in the worker's stream of the buffer's first sample.
    skip
        Samples of this buffer already yielded (non-zero only when resuming).
    pieces
        The pieces read, in order.
    read
        The sorted global rows of each piece, in read order: what to read.
    rows
        Global rows to yield, in yield order, already past ``skip``.
    source
        For each entry of ``rows``, its index in the concatenation of ``read``
        (the row of the buffer as read).
    """

    first: int
    skip: int
    pieces: tuple[Piece, ...]
    read: tuple[np.ndarray, ...]
    rows: np.ndarray
    source: np.ndarray

    @property
    def n_read(self) -> int:
        """Rows read for this buffer."""
        return sum(r.size for r in self.read)


def piece_rows(selection: RowSelection, piece: Piece) -> np.ndarray:
    """Return the global rows of a piece, in read order."""
    rows = selection.chunk_rows(piece.chunk)
    return rows[piece.lo : piece.hi] if piece.take is None else rows[piece.take]


@dataclass(frozen=True, eq=False)
class WorkerPlan:
    """The epoch plan of one (rank, worker).

    Attributes
    ----------
    selection
        Kept rows and chunking.
    pieces
        Pieces in stream order.
    n_samples
        Samples this worker yields in the epoch.
    epoch
        The epoch.
    buffer_chunks
        Pieces per buffer.
    shuffle_within
        Whether rows are permuted inside each buffer.
    buffer_seed
        Seed of the in-buffer permutation.
    generation
        Number of elastic re-partitions of this epoch before this plan (seeds shuffles).
    """

    selection: RowSelection
    pieces: tuple[Piece, ...]
    n_samples: int
    epoch: int
    buffer_chunks: int
    shuffle_within: bool
    buffer_seed: int
    generation: int = 0

    def _groups(self) -> Iterator[tuple[int, tuple[Piece, ...]]]:
        first = 0
        for b in range(0, len(self.pieces), self.buffer_chunks):
            group = self.pieces[b : b + self.buffer_chunks]
            yield first, group
            first += sum(p.size for p in group)

    def _order(self, group: tuple[Piece, ...], size: int) -> np.ndarray:
        if not self.shuffle_within:
            return np.arange(size, dtype=np.int64)
        keys = (_TAG_BUFFER, self.buffer_seed, self.epoch, self.generation, group[0].position)
        return rng_for(*keys).permutation(size).astype(np.int64)

    def buffers(self, start: int = 0) -> Iterator[Buffer]:
        """Yield the buffers of the stream from sample ``start`` on.

        Buffers entirely before ``start`` are skipped without computing their rows;
        the buffer holding ``start`` is yielded with ``skip`` set.
        """
        for first, group in self._groups():
            size = sum(p.size for p in group)
            if first + size <= start:
                continue
            read = tuple(piece_rows(self.selection, p) for p in group)
            rows = np.concatenate(read)
            skip = max(0, start - first)
            source = self._order(group, size)[skip:]
            yield Buffer(first, skip, group, read, rows=rows[source], source=source)

    def consumed_positions(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch positions of the first ``count`` samples of the stream, as intervals.

        Returns
        -------
        tuple of numpy.ndarray
            ``(starts, ends)`` of half-open intervals (unsorted, may overlap).
        """
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        for first, group in self._groups():
            if first >= count:
                break
            size = sum(p.size for p in group)
            offs = np.concatenate([p.orig + p.offsets() for p in group])
            if first + size > count:
                offs = offs[self._order(group, size)[: count - first]]
            starts.append(offs)
            ends.append(offs + 1)
        if not starts:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(starts), np.concatenate(ends)


def _pieces(
    selection: RowSelection,
    order: np.ndarray,
    ends: np.ndarray,
    domain: Intervals,
    a: int,
    b: int,
) -> list[Piece]:
    """Pieces covering virtual positions ``[a, b)`` of ``domain`` (wrapping at its size)."""
    dstarts, dends = domain
    dcum = np.concatenate([[0], np.cumsum(dends - dstarts)])
    size = int(dcum[-1])
    pieces: list[Piece] = []
    pos = a
    while pos < b:
        q = pos % size
        d = int(np.searchsorted(dcum, q, side="right")) - 1
        real = int(dstarts[d]) + (q - int(dcum[d]))
        run = min(int(dends[d]) - real, b - pos)
        k = int(np.searchsorted(ends, real, side="right"))
        chunk_start = int(ends[k - 1]) if k else 0
        lo = real - chunk_start
        hi = min(int(ends[k]) - chunk_start, lo + run)
        piece = Piece(chunk=int(order[k]), lo=lo, hi=hi, position=pos, orig=chunk_start)
        prev = pieces[-1] if pieces else None
        if prev is not None and prev.chunk == piece.chunk and prev.offsets()[-1] < lo:
            # a chunk fragmented by an elastic resume: keep it as one piece
            take = np.concatenate([prev.offsets(), piece.offsets()])
            piece = Piece(
                prev.chunk, int(take[0]), int(take[-1]) + 1, prev.position, prev.orig, take
            )
            pieces[-1] = piece
        else:
            pieces.append(piece)
        pos += hi - lo
    return pieces


def plan_worker(
    selection: RowSelection,
    *,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    shuffle_chunks: bool = False,
    chunk_seed: int = 0,
    shuffle_within: bool = False,
    buffer_seed: int = 0,
    buffer_chunks: int = 1,
    drop_last: bool = False,
    domain: Intervals | None = None,
    generation: int = 0,
) -> WorkerPlan:
    """Plan the epoch of one (rank, worker).

    Every rank gets :func:`rank_share` samples of the domain, split over its workers by
    :func:`split_evenly`; the per-(rank, worker) counts therefore depend only on the
    domain size, ``world`` and ``num_workers``.

    Parameters
    ----------
    selection
        Kept rows.
    epoch, rank, world, worker, num_workers
        Coordinates of the stream.
    shuffle_chunks, chunk_seed, shuffle_within, buffer_seed, buffer_chunks, drop_last
        Sampling settings (see ``ZarrIterableInstances``).
    domain
        Epoch positions still to be yielded, as sorted disjoint intervals; ``None``
        is the whole epoch ``[0, total)``. Used by elastic resume.
    generation
        Elastic re-partitions before this plan; part of the in-buffer shuffle seed.

    Raises
    ------
    ArgumentError
        If a coordinate is out of range.
    """
    if not 0 <= rank < world:
        msg = f"rank must be in [0, world={world}), got {rank!r}"
        raise ArgumentError(msg)
    if not 0 <= worker < num_workers:
        msg = f"worker must be in [0, num_workers={num_workers}), got {worker!r}"
        raise ArgumentError(msg)
    if buffer_chunks < 1:
        msg = f"buffer_chunks must be >= 1, got {buffer_chunks!r}"
        raise ArgumentError(msg)
    order = chunk_order(selection, epoch, shuffle_chunks, chunk_seed)
    ends = np.cumsum(selection.counts[order])
    if domain is None:
        domain = (np.array([0], np.int64), np.array([selection.total], np.int64))
    size = int((domain[1] - domain[0]).sum())
    per_rank = rank_share(size, world, drop_last)
    per_worker = split_evenly(per_rank, num_workers)
    a = rank * per_rank + int(per_worker[:worker].sum())
    n = int(per_worker[worker])
    pieces = _pieces(selection, order, ends, domain, a, a + n) if n else []
    return WorkerPlan(
        selection=selection,
        pieces=tuple(pieces),
        n_samples=n,
        epoch=epoch,
        buffer_chunks=buffer_chunks,
        shuffle_within=shuffle_within,
        buffer_seed=buffer_seed,
        generation=generation,
    )
