"""Where the extraction's graphs run: the scheduler Dask would pick, and a progress bar.

With no scheduler passed, Dask imports ``distributed`` to look for an active client.
None can exist when ``distributed`` was never imported, so :func:`compute` then hands
Dask the scheduler it would choose (the threaded one, or the one named in
``dask.config``) as a function, which Dask uses without that import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.local
import dask.threaded
from dask.callbacks import Callback

__all__ = ["client", "compute", "run_with_progress", "scheduler"]


def client() -> Any:
    """Return the active ``distributed`` client, or ``None`` (``distributed`` is not imported)."""
    if "distributed" not in sys.modules:  # no client can exist without it
        return None
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _named(name: str) -> Callable[..., Any] | None:
    """Return the local scheduler Dask calls ``name`` (from its public modules), or ``None``."""
    name = name.lower()
    if name in ("sync", "synchronous", "single-threaded"):
        return dask.local.get_sync
    if name in ("threads", "threading"):
        return dask.threaded.get
    if name in ("processes", "multiprocessing"):
        from dask import multiprocessing

        return multiprocessing.get
    return None


def scheduler() -> Callable[..., Any] | None:
    """Return the scheduler Dask would pick, found without importing ``distributed``.

    ``None`` when ``distributed`` is imported (a client may exist), when ``dask.config``
    sets ``get``, or names a scheduler other than Dask's local ones: Dask then decides.
    """
    if "distributed" in sys.modules or dask.config.get("get", None) is not None:
        return None
    name = dask.config.get("scheduler", None)
    if name is None:
        return dask.threaded.get
    if isinstance(name, str):
        return _named(name)
    return None


def compute(*tasks: Any) -> tuple[Any, ...]:
    """``dask.compute(*tasks)`` on the scheduler Dask would choose (see :func:`scheduler`)."""
    get = scheduler()
    if get is None:
        return dask.compute(*tasks)
    return dask.compute(*tasks, scheduler=get)


class _CountDone(Callback):
    """Advance ``bar`` by ``len(result)`` for each finished task whose key has ``prefix``."""

    def __init__(self, bar: Any, prefix: str) -> None:
        super().__init__()
        self.bar = bar
        self.prefix = prefix

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, str) and key.startswith(self.prefix):
            self.bar.update(len(result))


def run_with_progress(
    tasks: Sequence[Any], bar: Any, prefix: str, on: Any, extra: Sequence[Any] = ()
) -> list[Any]:
    """Compute ``tasks`` and ``extra`` together, advancing ``bar`` by the length of each result.

    On the ``distributed`` client ``on``, by results as they complete; with ``on=None``,
    on a local scheduler, by the tasks whose keys start with ``prefix``. Returns the
    results of ``extra`` (those of ``tasks`` only count for the bar).
    """
    if on is not None:
        from distributed import as_completed

        futures = on.compute([*tasks, *extra])
        for fut in as_completed(futures[: len(tasks)]):
            bar.update(len(fut.result()))
        return list(on.gather(futures[len(tasks) :]))
    with _CountDone(bar, prefix):
        got = compute(*tasks, *extra)
    return list(got[len(tasks) :])
