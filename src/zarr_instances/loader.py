"""``ZarrDataLoader``: a DataLoader that sets epochs and resumes mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from . import _runtime
from ._pooled_collate import collate_samples
from ._resume import EpochStart, Step, consumed_after_batches
from ._validate import check_int
from .dataset import STATE_KEY, STATE_VERSION, ZarrIterableInstances
from .errors import ArgumentError, ArgumentTypeError

__all__ = ["ZarrDataLoader", "merge_worker_states"]


def _find_states(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        if obj.get(STATE_KEY) is not None:
            yield obj
            return
        for value in obj.values():
            yield from _find_states(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _find_states(value)


def merge_worker_states(states: Any) -> dict[str, Any]:
    """Merge the stream states of one rank's workers into one resumable state.

    Parameters
    ----------
    states
        The workers' :meth:`ZarrIterableInstances.state_dict` values, in any nesting
        of dicts and lists — e.g. a whole ``StatefulDataLoader.state_dict()``.

    Returns
    -------
    dict
        A state that :meth:`ZarrIterableInstances.load_state_dict` resumes exactly on
        the same world size and worker count and elastically on others. Under DDP all
        ranks advance in lockstep, so the state of any one rank serves every rank.

    Raises
    ------
    ArgumentError
        If no started stream state is found, or the states disagree.
    """
    found = [st for st in _find_states(states) if st.get("started")]
    if not found:
        msg = "merge_worker_states: no started zarr-instances stream state found"
        raise ArgumentError(msg)
    ref = found[0]
    history, last = ref["steps"][:-1], ref["steps"][-1]
    consumed = [0] * int(last["num_workers"])
    for st in found:
        same = (st["epoch"], st["steps"][:-1]) == (ref["epoch"], history)
        if not same or st["steps"][-1]["num_workers"] != last["num_workers"]:
            msg = "merge_worker_states: the states belong to different epochs or runs"
            raise ArgumentError(msg)
        consumed[int(st["role"])] = int(st["steps"][-1]["consumed"][int(st["role"])])
    step = Step(int(last["world"]), int(last["num_workers"]), tuple(consumed))
    return {
        STATE_KEY: STATE_VERSION,
        "epoch": ref["epoch"],
        "steps": [*history, step.as_dict()],
        "buffer_seed": ref["buffer_seed"],
        "fingerprint": ref["fingerprint"],
    }


class _Run:
    """The current epoch of a loader: where its streams started, batches yielded since."""

    def __init__(self, start: EpochStart) -> None:
        self.start = start
        self.batches = 0


class ZarrDataLoader(DataLoader):
    """A ``DataLoader`` that calls ``dataset.set_epoch`` at every ``iter()``.

    Before it starts worker processes it waits for the normalisation kernels that the
    dataset began loading when it was built (a few seconds at most, once), so that
    forked workers inherit them instead of loading them each.

    With a :class:`ZarrIterableInstances` it also counts the batches it yields, so
    that :meth:`state_dict` / :meth:`load_state_dict` resume mid-epoch exactly (same
    world size and workers: batch for batch) or elastically (other world size or
    worker count: every unseen row once), without replaying the epoch.

    Parameters
    ----------
    dataset
        The dataset; ``set_epoch`` is called on it if it has one.
    *args
        Passed to :class:`torch.utils.data.DataLoader`.
    start_epoch
        Epoch of the first iteration.
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader`. With workers,
        ``persistent_workers`` defaults to ``True``: the workers start once and serve
        every epoch (the epoch reaches them through shared memory); pass ``False`` to
        start them at every ``iter()``. :meth:`load_state_dict` stops persistent
        workers, so that the next ``iter()`` starts workers that resume from the state.
        With ``batch_size`` (per-sample datasets) and no ``collate_fn``, workers
        collate each batch into shared memory they reuse from batch to batch; the
        batches equal ``default_collate``'s.
    """

    def __init__(self, dataset: Any, *args: Any, start_epoch: int = 0, **kwargs: Any) -> None:
        workers = kwargs.get("num_workers", args[4] if len(args) > 4 else 0)
        if workers and "persistent_workers" not in kwargs:
            # a worker's start (import, fork or spawn, opening the store) is paid once
            kwargs["persistent_workers"] = True
        batch_size = kwargs.get("batch_size", args[0] if args else 1)
        if batch_size is not None and "collate_fn" not in kwargs and len(args) <= 5:
            # per-sample mode: batches collated into the worker's reused segments
            kwargs["collate_fn"] = collate_samples
        super().__init__(dataset, *args, **kwargs)
        self.epoch = check_int(start_epoch, "start_epoch", minimum=0)
        self._run: _Run | None = None

    def __iter__(self) -> Any:
        ds = self.dataset
        set_epoch = getattr(ds, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        epoch = self.epoch
        self.epoch += 1
        if self.num_workers > 0:
            # workers started now inherit kernels that finished loading (with fork)
            _runtime.wait_for_kernels()
        if not isinstance(ds, ZarrIterableInstances):
            return super().__iter__()
        self._run = _Run(ds.epoch_start(epoch, max(1, self.num_workers)))
        it = super().__iter__()  # workers hold their copy of the loaded state now
        ds.discard_loaded_state()
        return self._counting(it, self._run)

    def __len__(self) -> int:
        """Return the batches per epoch, counting every worker's partial last batch."""
        ds = self.dataset
        if not isinstance(ds, ZarrIterableInstances):
            return super().__len__()
        if ds.batch_size is not None:
            return ds.num_batches(self.num_workers)
        return ds.num_batches(self.num_workers, int(self.batch_size or 1), bool(self.drop_last))

    @staticmethod
    def _counting(it: Iterator[Any], run: _Run) -> Iterator[Any]:
        for batch in it:
            run.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Return the position in the current epoch (the same on every DDP rank)."""
        ds = self.dataset
        if not isinstance(ds, ZarrIterableInstances):
            msg = "ZarrDataLoader.state_dict needs a ZarrIterableInstances dataset"
            raise ArgumentTypeError(msg)
        base = {
            STATE_KEY: STATE_VERSION,
            "buffer_seed": ds.buffer_seed,
            "fingerprint": ds.fingerprint(),
        }
        run = self._run
        if run is None:
            return {**base, "epoch": self.epoch, "steps": []}
        if ds.batch_size is not None:
            size, drop = ds.batch_size, ds.drop_last
        else:
            size, drop = int(self.batch_size or 1), bool(self.drop_last)
        start = run.start
        consumed, nxt = consumed_after_batches(
            start.per_worker, start.starts, run.batches, size, drop, start.shift
        )
        remaining = start.per_worker - consumed
        if size > 1 and drop:
            remaining = remaining // size * size
        if not remaining.any():
            return {**base, "epoch": start.epoch + 1, "steps": []}
        step = Step(start.world, start.num_workers, tuple(int(c) for c in consumed))
        return {
            **base,
            "epoch": start.epoch,
            "steps": [st.as_dict() for st in (*start.history, step)],
            "shift": nxt,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (or a merged worker state) at the next ``iter()``."""
        ds = self.dataset
        if not isinstance(ds, ZarrIterableInstances):
            msg = "ZarrDataLoader.load_state_dict needs a ZarrIterableInstances dataset"
            raise ArgumentTypeError(msg)
        ds.load_state_dict(state)
        self.epoch = int(state["epoch"])
        self._stop_persistent_workers()  # they hold the dataset as it was: start anew

    def _stop_persistent_workers(self) -> None:
        """Shut down persistent workers, so that the next ``iter()`` starts fresh ones."""
        iterator = getattr(self, "_iterator", None)
        if iterator is not None:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()
            self._iterator = None
