from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances._plan import (
    chunk_order,
    compact_ranges,
    plan_worker,
    rank_share,
    rng_for,
    select_rows,
    split_evenly,
)
from zarr_instances.errors import ArgumentError


def stream_rows(plan, start: int = 0) -> np.ndarray:
    parts = [b.rows for b in plan.buffers(start)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def epoch_rows(sel, *, world, workers, epoch=0, **kw):
    """Rows per (rank, worker), as a nested list."""
    return [
        [
            stream_rows(
                plan_worker(
                    sel, epoch=epoch, rank=r, world=world, worker=w, num_workers=workers, **kw
                )
            )
            for w in range(workers)
        ]
        for r in range(world)
    ]


def epoch_sequence(sel, epoch, shuffle, seed):
    return np.concatenate([sel.chunk_rows(c) for c in chunk_order(sel, epoch, shuffle, seed)])


@st.composite
def selections(draw):
    n = draw(st.integers(1, 400))
    chunk_i = draw(st.integers(1, 64))
    keep = None
    if draw(st.booleans()):
        keep = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    n_chunks = -(-n // chunk_i)
    allowed = None
    if draw(st.booleans()):
        allowed = draw(st.lists(st.integers(0, n_chunks - 1), min_size=1, max_size=n_chunks))
    return select_rows(n, chunk_i, keep, allowed), n, chunk_i, keep, allowed


def kept_rows(n, chunk_i, keep, allowed):
    rows = np.arange(n)
    mask = np.ones(n, bool) if keep is None else keep.copy()
    if allowed is not None:
        mask &= np.isin(rows // chunk_i, allowed)
    return rows[mask]


@settings(max_examples=150, deadline=None)
@given(
    sel_info=selections(),
    world=st.integers(1, 8),
    workers=st.integers(1, 4),
    epoch=st.integers(0, 5),
    shuffle=st.booleans(),
    within=st.booleans(),
    buffer_chunks=st.integers(1, 5),
    drop_last=st.booleans(),
)
def test_every_kept_row_once_plus_padding(
    sel_info, world, workers, epoch, shuffle, within, buffer_chunks, drop_last
):
    sel, n, chunk_i, keep, allowed = sel_info
    expected = kept_rows(n, chunk_i, keep, allowed)
    assert sel.total == expected.size
    if sel.total == 0:
        return
    out = epoch_rows(
        sel,
        world=world,
        workers=workers,
        epoch=epoch,
        shuffle_chunks=shuffle,
        chunk_seed=3,
        shuffle_within=within,
        buffer_seed=5,
        buffer_chunks=buffer_chunks,
        drop_last=drop_last,
    )
    per_rank = [sum(len(w) for w in r) for r in out]
    per_worker = [[len(w) for w in r] for r in out]
    # equal counts on every rank, identical per-worker count vectors
    assert len(set(per_rank)) == 1
    assert all(v == per_worker[0] for v in per_worker)
    assert per_rank[0] == rank_share(sel.total, world, drop_last)
    allrows = np.concatenate([w for r in out for w in r])
    seq = epoch_sequence(sel, epoch, shuffle, 3)
    if drop_last:
        # no repeats; exactly world * (total // world) distinct kept rows
        assert np.unique(allrows).size == allrows.size
        assert np.isin(allrows, expected).all()
        assert allrows.size == world * (sel.total // world)
    else:
        # every kept row at least once; extra copies are exactly the padding rows
        pad = world * per_rank[0] - sel.total
        assert pad < world
        counts = np.bincount(allrows, minlength=n)
        assert (counts[expected] >= 1).all()
        assert counts.sum() == sel.total + pad
        padding = np.resize(seq, pad) if pad else np.empty(0, np.int64)
        extra = np.repeat(np.arange(n), np.maximum(counts - 1, 0))
        assert np.array_equal(np.sort(extra), np.sort(padding))


@settings(max_examples=60, deadline=None)
@given(sel_info=selections(), world=st.integers(1, 4), workers=st.integers(1, 3))
def test_order_without_shuffle_is_ascending_per_stream(sel_info, world, workers):
    sel = sel_info[0]
    if sel.total == 0:
        return
    out = epoch_rows(sel, world=world, workers=workers, drop_last=True)
    for r in out:
        for w in r:
            assert np.all(np.diff(w) > 0)


def test_same_seed_same_order_different_epoch_different_order():
    sel = select_rows(5000, 50)
    kw = {"shuffle_chunks": True, "chunk_seed": 11, "shuffle_within": True, "buffer_seed": 2}
    a = stream_rows(plan_worker(sel, epoch=3, **kw))
    b = stream_rows(plan_worker(sel, epoch=3, **kw))
    c = stream_rows(plan_worker(sel, epoch=4, **kw))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(np.sort(a), np.sort(c))


def test_no_seed_plus_epoch_collision():
    # harpy used seed + epoch, so (seed 0, epoch 1) == (seed 1, epoch 0)
    sel = select_rows(100 * 40, 100)
    assert not np.array_equal(chunk_order(sel, 1, True, 0), chunk_order(sel, 0, True, 1))
    orders = {tuple(chunk_order(sel, e, True, s)) for s in range(6) for e in range(6)}
    assert len(orders) == 36


def test_rng_for_distinguishes_negative_keys():
    a = rng_for(-1, 0).integers(0, 2**32, 4)
    b = rng_for(1, 0).integers(0, 2**32, 4)
    assert not np.array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(
    sel_info=selections(),
    buffer_chunks=st.integers(1, 4),
    within=st.booleans(),
    data=st.data(),
)
def test_resume_is_suffix(sel_info, buffer_chunks, within, data):
    sel = sel_info[0]
    if sel.total == 0:
        return
    plan = plan_worker(
        sel,
        epoch=1,
        shuffle_chunks=True,
        shuffle_within=within,
        buffer_seed=9,
        buffer_chunks=buffer_chunks,
    )
    full = stream_rows(plan)
    start = data.draw(st.integers(0, full.size))
    assert np.array_equal(stream_rows(plan, start), full[start:])


def test_split_evenly():
    assert split_evenly(10, 3).tolist() == [4, 3, 3]
    assert split_evenly(2, 4).tolist() == [1, 1, 0, 0]
    assert split_evenly(0, 2).tolist() == [0, 0]


def test_more_ranks_than_chunks_still_equal():
    sel = select_rows(30, 100)  # one chunk
    out = epoch_rows(sel, world=4, workers=2)
    assert [sum(len(w) for w in r) for r in out] == [8, 8, 8, 8]


def test_partial_last_chunk_and_custom_chunk_i():
    sel = select_rows(1050, 128)
    assert sel.n_chunks == 9
    assert sel.chunk_bounds(8) == (1024, 1050)
    assert sel.counts[-1] == 26


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, None])
def test_select_rows_rejects_bad_chunk_i(bad):
    with pytest.raises(ArgumentError, match="chunk_i must be a positive integer"):
        select_rows(10, bad)


def test_allowed_chunks_out_of_range_lists_valid():
    with pytest.raises(ArgumentError, match=r"do not exist: 7, 12; valid chunk indexes are 0-4"):
        select_rows(50, 10, allowed_chunks=[0, 7, 12])


def test_keep_mask_wrong_length():
    with pytest.raises(ArgumentError, match=r"shape \(10,\)"):
        select_rows(10, 3, keep=np.ones(9, bool))


def test_compact_ranges():
    assert compact_ranges([5, 0, 1, 2, 9, 10]) == "0-2, 5, 9-10"
    assert compact_ranges([]) == "(none)"


def test_plan_rejects_bad_coordinates():
    sel = select_rows(10, 3)
    with pytest.raises(ArgumentError, match="rank must be in"):
        plan_worker(sel, epoch=0, rank=2, world=2)
    with pytest.raises(ArgumentError, match="worker must be in"):
        plan_worker(sel, epoch=0, worker=3, num_workers=3)
    with pytest.raises(ArgumentError, match="buffer_chunks must be >= 1"):
        plan_worker(sel, epoch=0, buffer_chunks=0)
