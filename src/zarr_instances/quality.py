"""Shuffle quality, measured from the epoch plan (no data is read).

Two figures per configuration, each next to a uniform random permutation of the same
rows (the best any shuffle can do):

* ``chunks_per_batch`` — mean number of distinct *stored* chunks a batch draws from.
  Chunk-wise loading gives about 1; a global shuffle gives about ``batch_size``.
* ``label_entropy`` — mean Shannon entropy (bits) of the labels in a batch. Low when
  batches come from few chunks of a store ordered by space or class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._plan import rng_for
from .errors import ArgumentError

__all__ = ["ShuffleQuality", "batch_metrics", "shuffle_quality"]


@dataclass(frozen=True)
class ShuffleQuality:
    """Shuffle quality of a configuration and of a global random permutation."""

    batch_size: int
    batches: int
    chunks_per_batch: float
    chunks_per_batch_global: float
    label_entropy: float | None
    label_entropy_global: float | None

    def as_dict(self) -> dict[str, Any]:
        """Return the figures as a plain dict."""
        return asdict(self)


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def batch_metrics(
    batches: list[np.ndarray], stored_chunk: int, labels: np.ndarray | None
) -> tuple[float, float | None]:
    """Return mean distinct stored chunks and mean label entropy over batches of rows."""
    if not batches:
        return 0.0, None
    chunks = float(np.mean([np.unique(b // stored_chunk).size for b in batches]))
    if labels is None:
        return chunks, None
    return chunks, float(np.mean([_entropy(labels[b]) for b in batches]))


def _cut(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [rows[i : i + batch_size] for i in range(0, rows.size, batch_size)]


def shuffle_quality(
    dataset: Any,
    batch_size: int = 256,
    *,
    num_workers: int = 0,
    epoch: int = 0,
    labels: np.ndarray | None = None,
    seed: int = 0,
) -> ShuffleQuality:
    """Measure the shuffle quality of a :class:`~zarr_instances.ZarrIterableInstances`.

    The batches are the ones rank 0 of the dataset's world would yield with
    ``num_workers`` DataLoader workers (each worker batches its own stream).

    Parameters
    ----------
    dataset
        The dataset; its settings (shuffles, seeds, ``buffer_chunks``) are used.
    batch_size
        Samples per batch (the dataset's own ``batch_size`` if it has one).
    num_workers
        DataLoader workers.
    epoch
        Epoch to measure.
    labels
        Labels per row for the entropy figure; defaults to the dataset's labels.
    seed
        Seed of the global random permutation.

    Returns
    -------
    ShuffleQuality
        The figures.
    """
    size = int(getattr(dataset, "batch_size", None) or batch_size)
    if size < 1:
        msg = f"batch_size must be >= 1, got {batch_size!r}"
        raise ArgumentError(msg)
    labels = dataset.labels if labels is None else np.asarray(labels)
    stored = dataset.stored_chunk_i
    if not isinstance(stored, int):  # stores of several chunk sizes: the largest
        stored = max(stored)
    rank, world = dataset.rank_world()
    selection, sampling = dataset.selection, dataset.sampling
    batches: list[np.ndarray] = []
    for worker in range(max(1, num_workers)):
        plan = sampling.plan(
            selection,
            epoch=epoch,
            rank=rank,
            world=world,
            worker=worker,
            num_workers=max(1, num_workers),
        )
        parts = [b.rows for b in plan.buffers()]
        if parts:
            batches.extend(_cut(np.concatenate(parts), size))
    chunks, entropy = batch_metrics(batches, stored, labels)
    n = sum(b.size for b in batches)
    everything = np.concatenate([selection.chunk_rows(c) for c in np.flatnonzero(selection.counts)])
    perm = rng_for(seed, epoch).permutation(everything)[:n]
    g_chunks, g_entropy = batch_metrics(_cut(perm, size), stored, labels)
    return ShuffleQuality(size, len(batches), chunks, g_chunks, entropy, g_entropy)
