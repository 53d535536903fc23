from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from _ddp import run_ranks
from zarr_instances import ZarrDataLoader, ZarrIterableInstances


def rows_of(loader) -> list[int]:
    out: list[int] = []
    for batch in loader:
        out.extend(batch[-1].tolist())
    return out


@pytest.mark.parametrize(
    ("workers", "ctx"), [(0, None), (2, "fork"), (2, "spawn"), (2, "forkserver")]
)
def test_dataloader_covers_every_kept_row_once(store, workers, ctx):
    path = str(store.store_path.store.root)
    labels = store["labels"][...]
    ds = ZarrIterableInstances(
        path, None, labels, shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=0
    )
    loader = DataLoader(ds, batch_size=32, num_workers=workers, multiprocessing_context=ctx)
    rows: list[int] = []
    for x, y, iid, row in loader:
        assert x.shape[1:] == (2, 1, 16, 16) and x.dtype == torch.float32
        assert y.dtype == torch.long and iid.tolist() == (row + 1000).tolist()
        assert (y >= 0).all()
        rows.extend(row.tolist())
    assert sorted(rows) == np.flatnonzero(labels >= 0).tolist()


def test_persistent_workers_follow_set_epoch(store):
    path = str(store.store_path.store.root)
    ds = ZarrIterableInstances(
        path,
        None,
        store["labels"][...],
        shuffle_chunks=True,
        shuffle_within_chunk=True,
        buffer_seed=0,
    )
    loader = ZarrDataLoader(
        ds, batch_size=50, num_workers=2, persistent_workers=True, multiprocessing_context="spawn"
    )
    assert loader.epoch == 0
    e0 = rows_of(loader)
    assert loader.epoch == 1 and ds.epoch == 0
    e1 = rows_of(loader)
    assert ds.epoch == 1
    assert e0 != e1 and sorted(e0) == sorted(e1)
    # same epoch again on a fresh loader reproduces epoch 1 exactly
    again = ZarrDataLoader(ds, batch_size=50, num_workers=2, start_epoch=1)
    assert rows_of(again) == e1


def test_batched_mode_with_workers(store):
    path = str(store.store_path.store.root)
    labels = store["labels"][...]
    ds = ZarrIterableInstances(
        path,
        None,
        labels,
        batch_size=64,
        buffer_chunks=4,
        shuffle_chunks=True,
        shuffle_within_chunk=True,
        buffer_seed=1,
    )
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    rows = rows_of(loader)
    assert sorted(rows) == np.flatnonzero(labels >= 0).tolist()


def _ddp_rows(rank, world, path, labels, ctx, out_dir, build_before_init_marker):
    # the dataset is built in the rank; the DataLoader workers are started with `ctx`
    ds = ZarrIterableInstances(
        path, None, labels, shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=0
    )
    loader = DataLoader(ds, batch_size=16, num_workers=2, multiprocessing_context=ctx)
    rows = rows_of(loader)
    assert len(rows) == len(ds)
    np.save(f"{out_dir}/rows{rank}.npy", np.array(rows, dtype=np.int64))


@pytest.mark.slow
@pytest.mark.parametrize(("world", "ctx"), [(2, "spawn"), (2, "forkserver")])
def test_ddp_ranks_partition_rows(store, tmp_path, world, ctx):
    path = str(store.store_path.store.root)
    labels = store["labels"][...]
    run_ranks(_ddp_rows, world, path, labels, ctx, str(tmp_path), False, tmp_path=tmp_path)
    per_rank = [np.load(tmp_path / f"rows{r}.npy") for r in range(world)]
    kept = np.flatnonzero(labels >= 0)
    total = kept.size
    share = -(-total // world)
    assert [len(r) for r in per_rank] == [share] * world
    allrows = np.concatenate(per_rank)
    # every kept row is seen; the only repeats are the padding to equal shares
    assert set(allrows.tolist()) == set(kept.tolist())
    assert allrows.size - np.unique(allrows).size == share * world - total


@pytest.mark.parametrize(
    ("normalize", "x_dtype"),
    [("minmax01", torch.float32), ("unit", torch.float16), (None, torch.int32)],
)
def test_batches_from_workers_equal_in_process(store, normalize, x_dtype):
    path = str(store.store_path.store.root)
    kw = {
        "batch_size": 48,
        "buffer_chunks": 2,
        "normalize": normalize,
        "x_dtype": x_dtype,
        "shuffle_chunks": True,
        "shuffle_within_chunk": True,
        "buffer_seed": 3,
    }
    ref = {}
    for x, _iid, rows in ZarrIterableInstances(path, **kw):
        ref.update(zip(rows.tolist(), x, strict=True))
    loader = DataLoader(
        ZarrIterableInstances(path, **kw),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
    )
    seen = 0
    for x, _iid, rows in loader:
        assert x.dtype == x_dtype
        for r, xi in zip(rows.tolist(), x, strict=True):
            assert torch.equal(xi, ref[r])
            seen += 1
    assert seen == len(ref) == 1050


def test_worker_batches_send_per_row_columns_in_one_block(store):
    # labels, ids and rows of a batch travel in one shared-memory block (one fd
    # handshake instead of three), separate from the crops
    path = str(store.store_path.store.root)
    ds = ZarrIterableInstances(
        path, None, store["labels"][...], batch_size=32, return_row_index=True
    )
    loader = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork")
    x, y, ids, rows = next(iter(loader))
    ptrs = {t.untyped_storage().data_ptr() for t in (y, ids, rows)}
    assert len(ptrs) == 1
    assert x.untyped_storage().data_ptr() not in ptrs
    raw_ids = store["instance_ids"][...]
    assert torch.equal(ids, torch.from_numpy(raw_ids[rows.numpy()]))
    assert torch.equal(y, torch.from_numpy(store["labels"][...][rows.numpy()]).long())


def test_workers_persist_by_default_and_resume_restarts_them(store):
    path = str(store.store_path.store.root)
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 1}
    kw |= {"batch_size": 20, "buffer_chunks": 2}

    def loader(**extra):
        ds = ZarrIterableInstances(path, None, store["labels"][...], **kw)
        return ZarrDataLoader(ds, batch_size=None, num_workers=2,
                              multiprocessing_context="fork", **extra)  # fmt: skip

    assert loader().persistent_workers is True
    assert loader(persistent_workers=False).persistent_workers is False
    assert ZarrDataLoader(loader().dataset, batch_size=None).persistent_workers is False
    # an interrupted epoch 0 saved after 5 batches
    first = loader()
    it = iter(first)
    head = [next(it)[3].tolist() for _ in range(5)]
    state = first.state_dict()
    del it
    full = [b[3].tolist() for b in loader()]
    # the same loader, whose persistent workers already ran, resumes from the state
    pids = {w.pid for w in first._iterator._workers}
    first.load_state_dict(state)
    assert first._iterator is None  # the old workers are gone
    rest = [b[3].tolist() for b in first]
    assert head + rest == full
    assert pids.isdisjoint({w.pid for w in first._iterator._workers})
    # and the next epoch runs on the same (persistent) workers, with the shared epoch
    pids = {w.pid for w in first._iterator._workers}
    nxt = [b[3].tolist() for b in first]
    assert pids == {w.pid for w in first._iterator._workers}
    assert nxt != full and sorted(r for b in nxt for r in b) == sorted(r for b in full for r in b)
