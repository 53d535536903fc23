"""Pure mid-epoch resume: what is left of an epoch, and who yields it next.

An epoch may be interrupted several times. Each interruption is a :class:`Step`: the
world size and worker count that ran, and how many samples each worker stream had
yielded. Streams of all ranks advance in lockstep under DDP (every rank yields the same
per-worker counts, see :mod:`._plan`), so one rank's counts describe every rank.

* Resuming with the same world size and worker count continues every stream exactly
  where it stopped (same samples, same order).
* Resuming with another world size or worker count removes what any old stream
  yielded from the epoch and re-partitions the rest (*elastic* resume): every
  not-yet-seen row exactly once, plus padding to equal rank shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._intervals import Intervals, merge_intervals, subtract_intervals
from ._plan import WorkerPlan, rank_share, split_evenly
from ._sampling import Sampling
from ._selection import RowSelection
from .errors import ArgumentError

__all__ = [
    "EpochStart",
    "Resume",
    "Step",
    "batches_per_worker",
    "check_state",
    "consumed_after_batches",
    "domain_after",
    "epoch_start",
    "resolve",
    "resumed_plan",
    "stream_state",
]


@dataclass(frozen=True)
class Step:
    """One interrupted run of an epoch."""

    world: int
    num_workers: int
    consumed: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """Return a plain-data form for ``state_dict``."""
        return {
            "world": self.world,
            "num_workers": self.num_workers,
            "consumed": list(self.consumed),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        """Inverse of :meth:`as_dict`."""
        return cls(int(d["world"]), int(d["num_workers"]), tuple(int(c) for c in d["consumed"]))


@dataclass(frozen=True)
class Resume:
    """Where a stream starts in an epoch."""

    domain: Intervals | None = None
    generation: int = 0
    history: tuple[Step, ...] = ()
    start: int = 0
    role: int | None = None


def domain_after(
    selection: RowSelection, sampling: Sampling, epoch: int, steps: Sequence[Step]
) -> Intervals | None:
    """Epoch positions not yet yielded after ``steps`` (``None`` = the whole epoch)."""
    domain: Intervals | None = None
    for gen, step in enumerate(steps):
        if domain is None:
            domain = (np.array([0], np.int64), np.array([selection.total], np.int64))
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        for rank in range(step.world):
            for worker in range(step.num_workers):
                if step.consumed[worker] == 0:
                    continue
                plan = sampling.plan(
                    selection,
                    epoch=epoch,
                    rank=rank,
                    world=step.world,
                    worker=worker,
                    num_workers=step.num_workers,
                    domain=domain,
                    generation=gen,
                )
                s, e = plan.consumed_positions(step.consumed[worker])
                starts.append(s)
                ends.append(e)
        if starts:
            used = merge_intervals(np.concatenate(starts), np.concatenate(ends))
            domain = subtract_intervals(domain, used)
    return domain


def domain_size(selection: RowSelection, domain: Intervals | None) -> int:
    """Return the number of epoch positions in ``domain``."""
    return selection.total if domain is None else int((domain[1] - domain[0]).sum())


def batches_per_worker(samples: np.ndarray, batch_size: int, drop_last: bool) -> np.ndarray:
    """Batches each worker stream yields for its number of samples."""
    return samples // batch_size if drop_last else -(-samples // batch_size)


def round_robin(n_batches: np.ndarray, consumed: int, first: int = 0) -> tuple[np.ndarray, int]:
    """Batches taken from each worker after ``consumed`` batches of a DataLoader.

    A DataLoader takes batches from its workers in a fixed cycle starting at worker
    ``first``, skipping workers that are exhausted.

    Returns
    -------
    tuple
        Batches taken per worker, and the worker whose batch comes next.
    """
    k = n_batches.size
    taken = np.zeros(k, dtype=np.int64)
    cycle = [(first + i) % k for i in range(k)]
    full = int(n_batches.min()) if k else 0
    rounds = min(full, consumed // k) if k else 0
    taken += rounds
    left = consumed - rounds * k
    pos = 0
    while left > 0 and (taken < n_batches).any():
        w = cycle[pos % k]
        if taken[w] < n_batches[w]:
            taken[w] += 1
            left -= 1
        pos += 1
    # the next worker with a batch left, in cycle order
    nxt = first
    for i in range(k):
        w = cycle[(pos + i) % k]
        if taken[w] < n_batches[w]:
            nxt = w
            break
    return taken, nxt


def consumed_after_batches(
    per_worker: np.ndarray,
    starts: np.ndarray,
    batches: int,
    batch_size: int,
    drop_last: bool,
    first: int = 0,
) -> tuple[np.ndarray, int]:
    """Return the samples consumed per worker after ``batches`` DataLoader batches.

    ``starts`` are the samples each worker had yielded before this run.
    """
    remaining = per_worker - starts
    taken, nxt = round_robin(batches_per_worker(remaining, batch_size, drop_last), batches, first)
    return starts + np.minimum(taken * batch_size, remaining), nxt


def per_worker_counts(total: int, world: int, num_workers: int, drop_last: bool) -> np.ndarray:
    """Return the samples of each worker stream (the same on every rank)."""
    return split_evenly(rank_share(total, world, drop_last), num_workers)


def resolve(
    selection: RowSelection,
    sampling: Sampling,
    epoch: int,
    state: dict[str, Any] | None,
    world: int,
    num_workers: int,
    worker: int,
) -> Resume:
    """Decide where a stream starts, given a loaded state (or ``None``).

    ``state["steps"]`` lists the interrupted runs. In a per-stream state (from a
    worker's ``state_dict``, ``state["role"]`` set) the last step knows only that
    stream's own count; other counts are ``-1``. A global state may carry ``shift``:
    DataLoader worker ``i`` then plays stream ``(i + shift) % num_workers``, so that
    a plain DataLoader, which always starts its cycle at worker 0, continues the
    interrupted cycle batch for batch.

    Raises
    ------
    ValueError
        If a per-stream state is resumed with another world size or worker count.
    """
    if state is None or int(state["epoch"]) != epoch or not state["steps"]:
        return Resume()
    steps = [Step.from_dict(d) for d in state["steps"]]
    *before, last = steps
    same = (last.world, last.num_workers) == (world, num_workers)
    if same:
        domain = domain_after(selection, sampling, epoch, before)
        if state.get("role") is not None:
            role = int(state["role"])
        else:
            role = (worker + int(state.get("shift", 0))) % num_workers
        return Resume(
            domain=domain,
            generation=len(before),
            history=tuple(before),
            start=int(last.consumed[role]),
            role=role,
        )
    if min(last.consumed) < 0:
        msg = (
            f"Cannot resume a per-worker state saved with world={last.world}, "
            f"num_workers={last.num_workers} on world={world}, num_workers={num_workers}: "
            "an elastic resume needs the counts of every worker; pass the merged state "
            "(zarr_instances.merge_worker_states or ZarrDataLoader.state_dict())"
        )
        raise ValueError(msg)
    domain = domain_after(selection, sampling, epoch, steps)
    return Resume(domain=domain, generation=len(steps), history=tuple(steps))


@dataclass(frozen=True)
class EpochStart:
    """Where every worker stream of one rank starts an epoch, given a loaded state.

    Attributes
    ----------
    epoch
        The epoch.
    world, num_workers
        The run's world size and worker count.
    history
        Interrupted runs of this epoch before this one.
    starts
        Samples already yielded by each stream (indexed by stream role).
    per_worker
        Samples of each stream in this run's domain.
    shift
        DataLoader worker ``i`` plays stream ``(i + shift) % num_workers``.
    """

    epoch: int
    world: int
    num_workers: int
    history: tuple[Step, ...]
    starts: np.ndarray
    per_worker: np.ndarray
    shift: int


def epoch_start(
    selection: RowSelection,
    sampling: Sampling,
    epoch: int,
    state: dict[str, Any] | None,
    world: int,
    num_workers: int,
) -> EpochStart:
    """Resolve the start of every worker stream of a rank (see :func:`resolve`)."""
    resumes = [
        resolve(selection, sampling, epoch, state, world, num_workers, w)
        for w in range(num_workers)
    ]
    first = resumes[0]
    starts = np.zeros(num_workers, dtype=np.int64)
    for w, res in enumerate(resumes):
        starts[w if res.role is None else res.role] = res.start
    total = domain_size(selection, first.domain)
    return EpochStart(
        epoch=epoch,
        world=world,
        num_workers=num_workers,
        history=first.history,
        starts=starts,
        per_worker=per_worker_counts(total, world, num_workers, sampling.drop_last),
        shift=int(state.get("shift", 0)) if state else 0,
    )


def resumed_plan(
    selection: RowSelection,
    sampling: Sampling,
    epoch: int,
    coords: tuple[int, int, int, int],
    resume: Resume,
) -> WorkerPlan:
    """Return the plan of stream ``coords = (rank, world, worker, num_workers)`` after ``resume``.

    The stream plays ``resume.role`` when the resume assigns one (a shifted
    DataLoader cycle), else its own worker index.
    """
    rank, world, worker, num_workers = coords
    return sampling.plan(
        selection,
        epoch=epoch,
        rank=rank,
        world=world,
        worker=worker if resume.role is None else resume.role,
        num_workers=num_workers,
        domain=resume.domain,
        generation=resume.generation,
    )


def stream_state(
    epoch: int, coords: tuple[int, int, int, int], resume: Resume, yielded: int
) -> dict[str, Any]:
    """Return the position of one stream (without the dataset's settings).

    ``yielded`` counts the samples the stream handed out in this run; the counts of
    the other streams of its rank are unknown here (``-1``).
    """
    rank, world, worker, num_workers = coords
    role = worker if resume.role is None else resume.role
    consumed = [-1] * num_workers
    consumed[role] = yielded
    steps = [*resume.history, Step(world, num_workers, tuple(consumed))]
    return {"epoch": epoch, "steps": [st.as_dict() for st in steps], "role": role, "rank": rank}


# Fingerprint keys that states saved by earlier versions lack: not compared then.
_NEWER_KEYS = ("rows", "label_column", "classes")


def check_state(state: Any, mine: dict[str, Any], key: str, version: int) -> None:
    """Refuse a state that is not ours or was saved with other rows or settings.

    Raises
    ------
    ArgumentError
        Naming what differs; a label column whose classes changed gets its own message.
    """
    if not isinstance(state, dict) or state.get(key) != version:
        msg = f"Not a zarr-instances state (version {version}): {state!r:.200}"
        raise ArgumentError(msg)
    theirs = state.get("fingerprint", {})
    diff = {
        k: (theirs.get(k), v)
        for k, v in mine.items()
        if theirs.get(k) != v and (k in theirs or k not in _NEWER_KEYS)
    }
    column = mine.get("label_column")
    if "classes" in diff and "label_column" not in diff and column is not None:
        saved, now = diff["classes"]
        msg = (
            f"load_state_dict: the store's categories of {column!r} changed since the "
            f"state was saved: saved {saved!r}, now {now!r}; the saved position and "
            "labels do not apply to this store"
        )
        raise ArgumentError(msg)
    if diff:
        details = ", ".join(
            "rows: other rows are selected (labels, where or allowed_chunk_indexes)"
            if k == "rows"
            else f"{k}: saved {a!r}, now {b!r}"
            for k, (a, b) in diff.items()
        )
        msg = f"load_state_dict: the state was saved with other settings ({details})"
        raise ArgumentError(msg)
