from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from zarr_instances import (
    ArgumentError,
    ZarrDataLoader,
    ZarrIterableInstances,
    merge_worker_states,
)
from zarr_instances._plan import select_rows, split_evenly
from zarr_instances._resume import Step, domain_after, resolve, resumed_plan, round_robin
from zarr_instances._sampling import Sampling

SAMPLING = {
    "shuffle_chunks": True,
    "chunk_seed": 1,
    "shuffle_within": True,
    "buffer_seed": 7,
    "buffer_chunks": 2,
    "drop_last": False,
}


def stream(sel, epoch, rank, world, worker, k, resume=None, **sampling):
    sampling = Sampling(**sampling)
    resume = resume or resolve(sel, sampling, epoch, None, world, k, worker)
    plan = resumed_plan(sel, sampling, epoch, (rank, world, worker, k), resume)
    parts = [b.rows for b in plan.buffers(resume.start)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(5, 300),
    chunk=st.integers(1, 40),
    old=st.tuples(st.integers(1, 5), st.integers(1, 3)),
    new=st.tuples(st.integers(1, 5), st.integers(1, 3)),
    frac=st.floats(0, 1),
    drop_last=st.booleans(),
)
def test_elastic_resume_sees_every_row_once(n, chunk, old, new, frac, drop_last):
    sampling = {**SAMPLING, "drop_last": drop_last}
    sel = select_rows(n, chunk)
    (w_old, k_old), (w_new, k_new) = old, new
    full = [
        stream(sel, 2, r, w_old, w, k_old, **sampling) for r in range(w_old) for w in range(k_old)
    ]
    counts = [len(s) for s in full[:k_old]]
    consumed = tuple(int(c * frac) for c in counts)  # lockstep: the same on every rank
    prefix = np.concatenate([s[: consumed[i % k_old]] for i, s in enumerate(full)])
    state = {"epoch": 2, "steps": [Step(w_old, k_old, consumed).as_dict()]}
    rest = []
    for r in range(w_new):
        for w in range(k_new):
            res = resolve(sel, Sampling(**sampling), 2, state, w_new, k_new, w)
            rest.append(stream(sel, 2, r, w_new, w, k_new, resume=res, **sampling))
    # equal per-rank counts after the resume
    per_rank = [sum(len(s) for s in rest[r * k_new : (r + 1) * k_new]) for r in range(w_new)]
    assert len(set(per_rank)) == 1
    seen = np.concatenate([prefix, *rest])
    if (w_new, k_new) == (w_old, k_old):
        # exact: the rest of every stream is the uninterrupted stream's suffix
        assert all(
            np.array_equal(rest[i], full[i][consumed[i % k_old] :]) for i in range(len(full))
        )
    if not drop_last:
        assert set(seen.tolist()) == set(range(n))
    unseen_before = set(range(n)) - set(prefix.tolist())
    new_rows = np.concatenate(rest) if rest else np.empty(0, np.int64)
    # nothing that was seen before is repeated, except as padding
    repeats = np.intersect1d(new_rows, prefix).size
    pad = w_new * per_rank[0] - len(unseen_before) if not drop_last else 0
    assert repeats <= max(pad, 0) or (w_new, k_new) == (w_old, k_old)
    if drop_last:
        assert np.unique(new_rows).size == new_rows.size


def test_round_robin_skips_exhausted_workers():
    taken, nxt = round_robin(np.array([3, 2, 2]), 5)
    assert taken.tolist() == [2, 2, 1] and nxt == 2
    taken, nxt = round_robin(np.array([3, 1]), 3)
    assert taken.tolist() == [2, 1] and nxt == 0
    taken, nxt = round_robin(np.array([2, 2]), 1, first=1)
    assert taken.tolist() == [0, 1] and nxt == 0


def test_domain_after_two_interruptions_removes_consumed():
    sel = select_rows(200, 16)
    steps = [Step(2, 2, (10, 7)), Step(3, 1, (5,))]
    dom = domain_after(sel, Sampling(**SAMPLING), 0, steps)
    size = int((dom[1] - dom[0]).sum())
    first = 2 * (10 + 7)
    # second step re-partitions the 166 left over 3 ranks of one worker each
    assert size == 200 - first - 3 * 5


# ------------------------------------------------------------------ dataset level
def _ds(store, **kw):
    path = str(store.store_path.store.root)
    base = {
        "shuffle_chunks": True,
        "shuffle_within_chunk": True,
        "buffer_seed": 5,
        "buffer_chunks": 2,
    }
    return ZarrIterableInstances(path, None, store["labels"][...], **{**base, **kw})


@pytest.mark.parametrize("batch_size", [None, 32])
@pytest.mark.parametrize("cut", [0, 1, 37, 400, 795])
def test_dataset_state_resumes_in_process(store, batch_size, cut):
    ds = _ds(store, batch_size=batch_size)
    ds.set_epoch(3)
    full = [it[3] if batch_size is None else it[3].tolist() for it in ds]
    rows_all = full if batch_size is None else flat(full)
    it = iter(ds)
    taken = 0
    while taken < cut and taken < len(rows_all):
        item = next(it)
        taken += 1 if batch_size is None else len(item[3])
    state = ds.state_dict()
    ds2 = _ds(store, batch_size=batch_size)
    ds2.load_state_dict(state)
    assert ds2.epoch == 3
    rest = [x[3] if batch_size is None else x[3].tolist() for x in ds2]
    rest_flat = rest if batch_size is None else flat(rest)
    assert rest_flat == rows_all[taken:]


def test_state_fingerprint_mismatch(store):
    ds = _ds(store)
    next(iter(ds))
    with pytest.raises(ArgumentError, match="buffer_chunks: saved 2, now 3"):
        _ds(store, buffer_chunks=3).load_state_dict(ds.state_dict())
    with pytest.raises(ArgumentError, match="Not a zarr-instances state"):
        ds.load_state_dict({"epoch": 1})


def flat(lists):
    return [x for sub in lists for x in sub]


def _batches_rows(batches):
    return [b[3].tolist() for b in batches]


def _resume_child(path, labels, state_file, workers, batched, out_file):
    """Fresh process: load the torch.save'd state, finish the epoch and run the next."""
    state = torch.load(state_file, weights_only=False)
    loader = _make_loader(
        path, labels, workers, batched, start_epoch=0, multiprocessing_context="fork"
    )
    loader.load_state_dict(state)
    rest = _batches_rows(loader)
    nxt = _batches_rows(loader)
    torch.save({"rest": rest, "next": nxt}, out_file)


def _make_loader(path, labels, workers, batched, start_epoch=1, **loader_kw):
    ds = ZarrIterableInstances(
        path,
        None,
        labels,
        shuffle_chunks=True,
        shuffle_within_chunk=True,
        buffer_seed=5,
        buffer_chunks=2,
        batch_size=32 if batched else None,
    )
    return ZarrDataLoader(
        ds,
        batch_size=None if batched else 32,
        num_workers=workers,
        start_epoch=start_epoch,
        **loader_kw,
    )


def _interrupt(loader, cut):
    it = iter(loader)
    head = [next(it)[3].tolist() for _ in range(cut)]
    state = loader.state_dict()
    del it
    return head, state


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("batched", "cut"), [(False, 5), (True, 12), (False, 0), (True, 999)])
def test_zarr_dataloader_resume(store, workers, batched, cut):
    path = str(store.store_path.store.root)
    labels = store["labels"][...]
    ref_loader = _make_loader(path, labels, workers, batched)
    ref = _batches_rows(ref_loader)
    ref_next = _batches_rows(ref_loader)
    assert sum(len(b) for b in ref) == int((labels >= 0).sum())
    cut = min(cut, len(ref))  # 999: stop exactly at the epoch edge
    head, state = _interrupt(_make_loader(path, labels, workers, batched), cut)
    assert head == ref[:cut]
    resumed = _make_loader(path, labels, workers, batched, start_epoch=0)
    resumed.load_state_dict(state)
    rest = _batches_rows(resumed)
    if cut == len(ref):
        assert rest == ref_next  # a finished epoch resumes at the next one
        return
    assert rest == ref[cut:]  # batch for batch
    assert _batches_rows(resumed) == ref_next
    # interrupted twice in one epoch
    if cut + 4 < len(ref):
        again = _make_loader(path, labels, workers, batched, start_epoch=0)
        again.load_state_dict(state)
        head2, state2 = _interrupt(again, 4)
        last = _make_loader(path, labels, workers, batched, start_epoch=0)
        last.load_state_dict(state2)
        assert head2 + _batches_rows(last) == ref[cut:]


def test_zarr_dataloader_resume_in_fresh_process(store, tmp_path):
    path = str(store.store_path.store.root)
    labels = store["labels"][...]
    ref_loader = _make_loader(path, labels, 2, True)
    ref = _batches_rows(ref_loader)
    ref_next = _batches_rows(ref_loader)
    _, state = _interrupt(_make_loader(path, labels, 2, True), 9)
    torch.save(state, tmp_path / "state.pt")
    proc = mp.get_context("spawn").Process(
        target=_resume_child,
        args=(path, labels, str(tmp_path / "state.pt"), 2, True, str(tmp_path / "out.pt")),
    )
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert out["rest"] == ref[9:]
    assert out["next"] == ref_next


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resume(store, workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def make():
        ds = _ds(store)
        ds.set_epoch(4)
        return StatefulDataLoader(ds, batch_size=16, num_workers=workers)

    ref = _batches_rows(make())
    for cut in (3, 17):
        loader = make()
        it = iter(loader)
        head = [next(it)[3].tolist() for _ in range(cut)]
        state = loader.state_dict()
        del it
        resumed = make()
        resumed.load_state_dict(state)
        rest = _batches_rows(resumed)
        assert head + rest == ref
        # the merged worker states resume the same rows through a ZarrDataLoader
        merged = merge_worker_states(state)
        assert merged["epoch"] == 4
        zl = ZarrDataLoader(_ds(store), batch_size=16, num_workers=workers)
        zl.load_state_dict(merged)
        assert sorted(flat(_batches_rows(zl))) == sorted(flat(ref[cut:]))


def test_elastic_resume_with_datasets(store, monkeypatch):
    """Save at world 4 (2 workers each), resume at world 2 and 3."""
    import zarr_instances.dataset as dsmod

    labels = store["labels"][...]
    kept = set(np.flatnonzero(labels >= 0).tolist())

    def rank_ds(rank, world):
        monkeypatch.setattr(dsmod, "current_rank_world", lambda: (rank, world))
        return _ds(store)

    # old world: 4 ranks x 2 workers, each DataLoader stopped after 3 batches of 16
    prefix = []
    state = None
    for rank in range(4):
        loader = ZarrDataLoader(rank_ds(rank, 4), batch_size=16, num_workers=2)
        it = iter(loader)
        for _ in range(3):
            prefix.extend(next(it)[3].tolist())
        s = loader.state_dict()
        assert state is None or s["steps"] == state["steps"]  # lockstep: same on every rank
        state = s
        del it
    for new_world in (2, 3):
        rest = []
        per_rank = []
        for rank in range(new_world):
            ds = rank_ds(rank, new_world)
            loader = ZarrDataLoader(ds, batch_size=16, num_workers=2)
            loader.load_state_dict(state)
            rows = flat(_batches_rows(loader))
            per_rank.append(len(rows))
            rest.extend(rows)
        assert len(set(per_rank)) == 1
        unseen = kept - set(prefix)
        assert set(rest) == unseen
        assert len(rest) - len(unseen) < new_world  # padding only
        assert split_evenly(len(unseen), new_world).max() == per_rank[0]


def test_plain_dataloader_without_zarr_loader_still_works(store):
    loader = DataLoader(_ds(store), batch_size=50)
    assert sum(len(b[3]) for b in loader) == int((store["labels"][...] >= 0).sum())
