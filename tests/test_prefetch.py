from __future__ import annotations

import threading

import pytest

from zarr_instances._prefetch import in_background


def test_items_in_order_from_another_thread():
    seen_threads = set()

    def gen():
        for i in range(50):
            seen_threads.add(threading.current_thread().name)
            yield i

    assert list(in_background(gen(), 2, "bg")) == list(range(50))
    assert seen_threads == {"bg"}


def test_producer_error_reaches_the_consumer():
    def gen():
        yield 1
        raise KeyError("chunk 7")

    it = in_background(gen(), 2, "bg")
    assert next(it) == 1
    with pytest.raises(KeyError, match="chunk 7"):
        next(it)


def test_early_stop_closes_the_producer_and_joins():
    closed = threading.Event()

    def gen():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = in_background(gen(), 3, "bg")
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed.is_set()
    assert not any(t.name == "bg" for t in threading.enumerate())


def test_does_not_run_ahead_more_than_depth():
    produced = []

    def gen():
        for i in range(100):
            produced.append(i)
            yield i

    it = in_background(gen(), 2, "bg")
    assert next(it) == 0
    import time

    time.sleep(0.2)
    # consumed 1, queue holds 2, one more may be waiting to be put
    assert len(produced) <= 1 + 2 + 1
    it.close()
