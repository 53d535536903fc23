"""Hand-written Dask graphs: hand-offs, and a self-test of the tuple tasks on each scheduler.

``_graph`` is the only module that spells Dask tasks (Dask's tuple form). If a Dask
release changes how it reads them (keys inside nested arguments, values it should pass
on untouched), the graphs below compute something else, or fail, on some scheduler.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from zarr_instances._graph import (
    Handoff,
    as_delayed,
    block_keys,
    item_task,
    peek_ref,
    take,
    take_ref,
    task,
    task_with_parts,
)


def test_handoff_items_are_taken_once_and_freed():
    import gc
    import weakref

    items = [np.arange(4), np.arange(5)]
    refs = [weakref.ref(a) for a in items]
    h = Handoff(items)
    del items
    assert len(h) == 2
    np.testing.assert_array_equal(h.peek(1), np.arange(5))  # peek leaves it
    got = take(h, 0)
    np.testing.assert_array_equal(got, np.arange(4))
    del got
    gc.collect()
    assert refs[0]() is None  # freed with its reader, while the hand-off lives on
    assert refs[1]() is not None
    with pytest.raises(RuntimeError, match="item 0 of this hand-off was taken already"):
        h.take(0)


# Task functions at module level: the process pool pickles them.


def _pair(block: np.ndarray) -> tuple[int, int]:
    return int(block.sum()), int(block.max())


def _with_list(block: np.ndarray, nested: list) -> tuple[int, list]:
    return int(block[0]), nested


def _split(block: np.ndarray, handoff: bool) -> Handoff | tuple:
    parts = (block * 10, block + 100)
    return Handoff(parts) if handoff else parts


def _plain(value: object) -> object:
    """``value`` with arrays as lists and tuples as lists, to compare with ``==``."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _gather(literal: tuple, *parts: object) -> tuple:
    return literal, _plain(parts)


def _graph(handoff: bool) -> tuple[dict, list[str], object]:
    """A graph reading the blocks of ``arange(12)`` with every kind of task of ``_graph``."""
    x = da.arange(12, chunks=4)
    source, keys = block_keys(x)
    assert keys.shape == (3,)
    graph: dict = {
        "pair": task(_pair, keys[0]),
        "first": item_task("pair", 0),
        # keys inside a nested list are replaced by their results
        "listed": task(_with_list, keys[1], ["first", [keys[2], 7]]),
        "split": task(_split, keys[2], handoff),
    }
    # the literal holds a key name and a task-like tuple: Dask must pass them on as they are
    literal = ("pair", (len, "pair"), [keys[0]])
    if handoff:  # parts taken from (or left in) a hand-off, inlined in the reading task
        refs = [keys[1], "first", take_ref("split", 0), peek_ref("split", 1), "listed"]
    else:
        graph["split-0"] = item_task("split", 0)
        graph["split-1"] = item_task("split", 1)
        refs = [keys[1], "first", "split-0", "split-1", "listed"]
    graph["gather"] = task_with_parts(_gather, (literal,), refs)
    return graph, ["gather", "listed"], source


def _check(got: tuple) -> None:
    (literal, parts), listed = got
    keys = block_keys(da.arange(12, chunks=4))[1]
    # the literal arrives as written: no key replaced, no task-like tuple run
    assert literal == ("pair", (len, "pair"), [keys[0]])
    block1, block2 = [4, 5, 6, 7], [8, 9, 10, 11]
    listed_value = [4, [6, [block2, 7]]]
    assert parts == [block1, 6, [80, 90, 100, 110], [108, 109, 110, 111], listed_value]
    assert _plain(listed) == listed_value


def _compute(handoff: bool, scheduler: object) -> tuple:
    graph, keys, source = _graph(handoff)
    return dask.compute(*as_delayed("zi-self-test", graph, keys, [source]), scheduler=scheduler)


@pytest.mark.parametrize("handoff", [False, True])
@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_tuple_tasks_run_as_written_on_local_schedulers(scheduler, handoff):
    kwargs = {"num_workers": 2} if scheduler == "processes" else {}
    with dask.config.set(**kwargs):
        _check(_compute(handoff, scheduler))


def test_tuple_tasks_run_as_written_on_distributed():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # the library hands nothing off on a cluster: a task per part
        _check(_compute(False, client.get))
