"""The sampling settings of a dataset, as one frozen value."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._intervals import Intervals
from ._plan import WorkerPlan, plan_worker
from ._selection import RowSelection

__all__ = ["Sampling"]


@dataclass(frozen=True)
class Sampling:
    """How an epoch is drawn from the kept rows (see ``ZarrIterableInstances``).

    Attributes
    ----------
    shuffle_chunks
        Shuffle the chunk order per epoch.
    chunk_seed
        Seed of the chunk order.
    shuffle_within
        Permute the rows inside each buffer.
    buffer_seed
        Seed of the in-buffer permutation.
    buffer_chunks
        Chunks per buffer (one read).
    drop_last
        Drop the tail instead of padding every rank to the same count.
    """

    shuffle_chunks: bool = False
    chunk_seed: int = 0
    shuffle_within: bool = False
    buffer_seed: int = 0
    buffer_chunks: int = 1
    drop_last: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """Return the settings a saved position depends on, except ``buffer_seed``.

        ``buffer_seed`` travels in the state itself, so that a dataset built with
        another (or a random) seed resumes with the saved one.
        """
        values = asdict(self)
        del values["buffer_seed"]
        return values

    def plan(
        self,
        selection: RowSelection,
        *,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        worker: int = 0,
        num_workers: int = 1,
        domain: Intervals | None = None,
        generation: int = 0,
    ) -> WorkerPlan:
        """Return the epoch plan of one (rank, worker) under these settings.

        See :func:`._plan.plan_worker` for the parameters.
        """
        return plan_worker(
            selection,
            epoch=epoch,
            rank=rank,
            world=world,
            worker=worker,
            num_workers=num_workers,
            shuffle_chunks=self.shuffle_chunks,
            chunk_seed=self.chunk_seed,
            shuffle_within=self.shuffle_within,
            buffer_seed=self.buffer_seed,
            buffer_chunks=self.buffer_chunks,
            drop_last=self.drop_last,
            domain=domain,
            generation=generation,
        )
