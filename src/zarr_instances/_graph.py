"""Dask task graphs written by hand: the only module that knows how a task is spelled.

The extraction builds a plain Dask task graph (a dict, see Dask's "custom graphs")
rather than calling ``dask.delayed`` per task, whose graph merging costs seconds on
large images. A task is spelled in Dask's tuple form ``(func, *args)``; a key among the
arguments (or in a nested list or tuple of them) is replaced by that task's result.
Every such tuple is made here (:func:`task`, :func:`item_task`, :func:`task_with_parts`),
so that a change in how Dask reads them is fixed in one place; ``tests/test_graph.py``
computes a small graph built with these helpers on each scheduler the library runs on.

Two helpers keep Dask's bookkeeping small on graphs of thousands of tasks:

- :class:`Static` wraps arguments that hold no keys; Dask passes it on as one value.
- :class:`Handoff` is one result for several tasks, each taking its own item (and
  freeing it) instead of a ``getitem`` task per item.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

__all__ = [
    "Handoff",
    "after",
    "Static",
    "as_delayed",
    "block_keys",
    "item_task",
    "peek",
    "peek_ref",
    "take",
    "take_ref",
    "task",
    "task_with_parts",
]

Graph = dict[Hashable, Any]


class Handoff:
    """Results for several tasks, each taken once by its task (and then freed).

    With Dask's local schedulers a task result is held until every task reading it
    is done. A task that hands different results to several tasks returns a
    ``Handoff``; each reader takes its item (:func:`take`, inlined in its own task by
    :func:`task_with_parts`) and the item is freed with that reader, not with the last
    one. This replaces a small ``getitem`` task per item and its bookkeeping in Dask.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Any]) -> None:
        self._items: list[Any] = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, i: int) -> Any:
        """Return item ``i``, leaving it for other readers."""
        return self._items[i]

    def take(self, i: int) -> Any:
        """Return item ``i`` and drop it (each item is taken once)."""
        item = self._items[i]
        if item is _TAKEN:
            msg = f"item {i} of this hand-off was taken already"
            raise RuntimeError(msg)
        self._items[i] = _TAKEN
        return item


_TAKEN = object()


def take(handoff: Handoff, i: int) -> Any:
    """Take item ``i`` of ``handoff``, freeing it there."""
    return handoff.take(i)


def peek(parts: Handoff | Sequence[Any], i: int) -> Any:
    """Return item ``i`` of a :class:`Handoff` or a sequence, leaving it for other readers."""
    return parts.peek(i) if isinstance(parts, Handoff) else parts[i]


class Static:
    """Task arguments that hold no keys: Dask passes them on without looking inside.

    Dask turns every list, tuple and nested task among a task's arguments into
    objects of its own; wrapped, they are one value.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return Static, (self.value,)


def task(func: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """Return the task ``func(*args)``; keys among ``args`` are replaced by their results."""
    return (func, *args)


def after(spec: tuple[Any, ...], keys: Sequence[Hashable]) -> tuple[Any, ...]:
    """Return the task ``spec``, run only once the tasks ``keys`` are done (results unused)."""
    return (_first, spec, *keys)


def _first(value: Any, *_: Any) -> Any:
    return value


def item_task(key: Hashable, i: int) -> tuple[Any, ...]:
    """Return the task ``result_of_key[i]``."""
    return (operator.getitem, key, i)


def take_ref(key: Hashable, i: int) -> tuple[Any, ...]:
    """Return a part reference for :func:`task_with_parts`: take item ``i`` of ``key``."""
    return (take, key, i)


def peek_ref(key: Hashable, i: int) -> tuple[Any, ...]:
    """Return a part reference for :func:`task_with_parts`: item ``i`` of ``key``, left there."""
    return (peek, key, i)


def task_with_parts(func: Callable[..., Any], args: tuple, refs: Sequence[Any]) -> tuple[Any, ...]:
    """Return the task ``func(*args, *parts)``, where ``refs`` say where the parts come from.

    A ref is a key (the part is that task's result) or ``(getter, key, i)`` from
    :func:`take_ref` or :func:`peek_ref`. Only the keys are visible to Dask, as the
    task's arguments; ``args`` and the getters travel as one :class:`Static` value.
    """
    keys: list[Any] = []
    getters: list[tuple[Any, int] | None] = []
    for ref in refs:
        if isinstance(ref, tuple) and callable(ref[0]):  # not a block key (a tuple)
            getter, key, i = ref
            keys.append(key)
            getters.append((getter, i))
        else:
            keys.append(ref)
            getters.append(None)
    return (_call_with_parts, Static((func, args, getters)), *keys)


def _call_with_parts(spec: Static, *values: Any) -> Any:
    func, args, getters = spec.value
    parts = [v if g is None else g[0](v, g[1]) for v, g in zip(values, getters, strict=True)]
    return func(*args, *parts)


def block_keys(array: da.Array) -> tuple[Delayed, np.ndarray]:
    """Return a ``Delayed`` carrying the graph of every block of ``array``, and the block keys.

    The keys form an object array shaped as ``array.numblocks``.
    """
    # an input as read (its array and the reads): nothing to fuse, and optimising costs
    # per array
    blocks = array.to_delayed(optimize_graph=len(array.dask.layers) > 2)
    keys = np.empty(blocks.shape, dtype=object)
    for idx in np.ndindex(*blocks.shape):
        keys[idx] = blocks[idx].key
    return blocks.flat[0], keys


def as_delayed(
    name: str, graph: Graph, keys: Sequence[Hashable], sources: Sequence[Any]
) -> list[Delayed]:
    """Return ``Delayed`` objects for ``keys`` of ``graph``, whose tasks read ``sources``.

    ``sources`` carry the graphs of the keys that ``graph`` reads but does not hold
    (e.g. the blocks of the input arrays, from :func:`block_keys`).
    """
    layer = cast("dict[Any, Any]", graph)
    hlg = HighLevelGraph.from_collections(name, layer, dependencies=list(sources))
    return [Delayed(k, hlg, layer=name) for k in keys]
