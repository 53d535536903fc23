"""Per-sample batches collated in workers into reused segments equal default_collate's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from zarr_instances import ZarrDataLoader, ZarrIterableInstances
from zarr_instances import _pooled_collate as pc
from zarr_instances import _shared_batches as sb

SHUFFLED = {
    "shuffle_chunks": True,
    "chunk_seed": 3,
    "shuffle_within_chunk": True,
    "buffer_seed": 4,
}


def assert_same_batches(got: list, want: list) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w)
        if isinstance(w, torch.Tensor):
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)
            continue
        assert len(g) == len(w)
        for a, b in zip(g, w, strict=True):
            assert type(a) is type(b) is torch.Tensor
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def epochs(loader, n: int = 2) -> list:
    out = []
    for epoch in range(n):
        loader.dataset.set_epoch(epoch)
        out += [[t.clone() for t in b] if isinstance(b, list) else b.clone() for b in loader]
    return out


@pytest.mark.parametrize(
    ("ctx", "kw"),
    [
        ("fork", {}),
        ("fork", {"return_row_index": True, "normalize_in": "consumer"}),
        ("fork", {"labels": None}),
        ("fork", {"labels": None, "return_instance_id": False}),  # the store's labels only
        ("spawn", {"return_row_index": True}),
    ],
    ids=["labels-ids", "stored-dtype-rows", "store-labels", "store-labels-no-ids", "spawn"],
)
def test_workers_collate_as_default_collate_does(store, ctx, kw):
    path = str(store.store_path.store.root)
    labels = None if "labels" in kw else np.asarray(store["labels"][:], dtype=np.int64)
    kw = {k: v for k, v in kw.items() if k != "labels"}

    def loader(cls):
        ds = ZarrIterableInstances(path, labels=labels, **SHUFFLED, **kw)
        return cls(
            ds,
            batch_size=64,
            num_workers=2,
            multiprocessing_context=ctx,
            persistent_workers=True,
        )

    plain = loader(DataLoader)
    ours = loader(ZarrDataLoader)
    assert plain.collate_fn is default_collate and ours.collate_fn is pc.collate_samples
    reused = sb.reused_segments()
    got = epochs(ours)
    reused = sb.reused_segments() - reused
    want = epochs(plain)
    assert_same_batches(got, want)
    # every kept row arrived, each epoch (each worker's last batch partial)
    rows = len(ours.dataset)
    assert rows >= 800
    assert sum(len(b[0]) if isinstance(b, list) else len(b) for b in got) == 2 * rows
    assert reused >= 4  # batches came in the workers' segments again


def test_a_collate_function_given_is_kept(store):
    path = str(store.store_path.store.root)
    ds = ZarrIterableInstances(path)
    assert ZarrDataLoader(ds, batch_size=4, collate_fn=default_collate).collate_fn is (
        default_collate
    )
    # batched datasets: the DataLoader does not batch, nothing to collate
    batched = ZarrIterableInstances(path, batch_size=32)
    assert ZarrDataLoader(batched, batch_size=None).collate_fn is not pc.collate_samples


def test_collate_falls_back_on_anything_else(monkeypatch):
    monkeypatch.setattr(pc, "get_worker_info", lambda: object())  # as in a worker
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    rows = list(range(4))
    fast = [(x[k], torch.tensor(k), k * 3) for k in rows]
    got = pc.collate_samples(fast)
    assert isinstance(got, sb.SharedBatch)  # written into the worker's pool
    want = default_collate(fast)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want, strict=True))
    others = {
        "int32 labels": [(x[k], torch.tensor(k, dtype=torch.int32), k) for k in rows],
        "bool column": [(x[k], k % 2 == 0) for k in rows],
        "float column": [(x[k], float(k)) for k in rows],
        "NumPy ints": [(x[k], np.int64(k)) for k in rows],
        "shapes differ": [(x[k, : k + 1], k) for k in rows],
        "dtypes differ": [(x[k].to(torch.float64 if k else torch.float32), k) for k in rows],
        "a 1-d column": [(x[k], torch.tensor([k])) for k in rows],
        "crops only": [x[k] for k in rows],
        "dicts": [{"x": x[k], "y": k} for k in rows],
        "too large for int64": [(x[k], 2**63 + k) for k in rows],
    }
    for name, batch in others.items():
        try:
            want = default_collate(batch)
        except (RuntimeError, ValueError) as exc:  # the same error from ours
            with pytest.raises(type(exc)):
                pc.collate_samples(batch)
            continue
        got = pc.collate_samples(batch)
        assert not isinstance(got, sb.SharedBatch), name
        assert type(got) is type(want), name
        if isinstance(want, torch.Tensor):
            assert torch.equal(got, want)
        elif isinstance(want, dict):
            assert all(torch.equal(got[k], want[k]) for k in want)
        else:
            pairs = zip(got, want, strict=True)
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in pairs)
