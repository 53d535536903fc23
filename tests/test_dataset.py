from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import zarr

from zarr_instances import (
    ArgumentError,
    ArgumentTypeError,
    ChunkReadError,
    StoreNotFoundError,
    ZarrIterableInstances,
)
from zarr_instances.testing import make_instance_array


def ref_minmax(x: np.ndarray) -> np.ndarray:
    """harpy's per-sample minmax01 on one crop (c, z, y, x)."""
    x = x.astype(np.float32)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    return (x - lo) / (hi - lo + np.float32(1e-8))


def test_supervised_tuple_types(store):
    labels = store["labels"][...]
    ds = ZarrIterableInstances(store.store_path.store.root, store["instance_ids"][...], labels)
    raw = store["image"][...]
    items = list(ds)
    kept = np.flatnonzero(labels >= 0)
    assert len(items) == kept.size == len(ds)
    x, y, iid, row = items[0]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert x.shape == (2, 1, 16, 16)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.long and y.ndim == 0
    assert type(iid) is int and type(row) is int
    rows = [it[3] for it in items]
    assert rows == kept.tolist()  # no shuffles: ascending row order
    for x, y, iid, row in items[::97]:
        assert iid == 1000 + row
        assert int(y) == labels[row]
        np.testing.assert_allclose(x.numpy(), ref_minmax(raw[row]), rtol=1e-6, atol=1e-7)


def test_group_without_instance_ids_argument(store):
    path = str(store.store_path.store.root)
    ds = ZarrIterableInstances(path)
    x, iid, row = next(iter(ds))
    assert (iid, row) == (1000, 0)
    assert x.shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    ("with_id", "with_row", "expected_len"), [(True, True, 3), (True, False, 2), (False, True, 2)]
)
def test_inference_tuples(array_path, ids530, with_id, with_row, expected_len):
    ds = ZarrIterableInstances(
        array_path, ids530, return_instance_id=with_id, return_row_index=with_row
    )
    item = next(iter(ds))
    assert isinstance(item, tuple) and len(item) == expected_len
    if with_id:
        assert item[1] == ids530[0]
    if with_row:
        assert item[-1] == 0


def test_inference_x_alone(array_path, ids530):
    ds = ZarrIterableInstances(array_path, ids530, return_instance_id=False, return_row_index=False)
    items = list(ds)
    assert len(items) == 530
    assert all(isinstance(x, torch.Tensor) for x in items)


def test_supervised_without_id_and_row(array_path, ids530):
    labels = np.arange(530) % 3
    ds = ZarrIterableInstances(
        array_path, ids530, labels, return_instance_id=False, return_row_index=False
    )
    x, y = next(iter(ds))
    assert x.shape == (2, 1, 16, 16) and int(y) == 0


def test_drop_unlabeled_false_keeps_all(array_path, ids530):
    labels = np.where(np.arange(530) % 2, -1, 1)
    assert len(list(ZarrIterableInstances(array_path, ids530, labels))) == 265
    assert len(list(ZarrIterableInstances(array_path, ids530, labels, drop_unlabeled=False))) == 530


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_unit_divides_by_dtype_max(tmp_path, dtype):
    path = tmp_path / "a.zarr"
    arr = make_instance_array(path, n=20, chunk_i=8, dtype=dtype)
    raw = arr[...]
    ds = ZarrIterableInstances(str(path), np.arange(20), normalize="unit")
    x = torch.stack([it[0] for it in ds]).numpy()
    scale = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}[dtype]
    np.testing.assert_allclose(x, raw.astype(np.float32) / np.float32(scale), rtol=1e-6)


@pytest.mark.parametrize("mode", [None, "none"])
def test_none_casts_only(array_path, ids530, mode):
    raw = zarr.open_array(array_path)[...]
    ds = ZarrIterableInstances(array_path, ids530, normalize=mode, x_dtype=torch.int32)
    x = torch.stack([it[0] for it in ds])
    assert x.dtype == torch.int32
    assert np.array_equal(x.numpy(), raw.astype(np.int32))


def test_x_dtype_half(array_path, ids530):
    x = next(iter(ZarrIterableInstances(array_path, ids530, x_dtype=torch.float16)))[0]
    assert x.dtype == torch.float16


def test_chunk_i_different_from_storage(array_path, ids530):
    ds = ZarrIterableInstances(array_path, ids530, chunk_i=64, allowed_chunk_indexes=[8])
    rows = [it[2] for it in ds]
    assert rows == list(range(512, 530))  # partial last logical chunk


def test_allowed_chunks_split_is_disjoint(array_path, ids530):
    train = ZarrIterableInstances(array_path, ids530, allowed_chunk_indexes=np.arange(0, 8))
    val = ZarrIterableInstances(array_path, ids530, allowed_chunk_indexes=np.array([8, 9, 10]))
    a = {it[2] for it in train}
    b = {it[2] for it in val}
    assert not a & b and len(a | b) == 530


def test_shuffles_deterministic_and_epoch_dependent(array_path, ids530):
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 4}
    ds1 = ZarrIterableInstances(array_path, ids530, **kw)
    ds2 = ZarrIterableInstances(array_path, ids530, **kw)
    r1 = [it[2] for it in ds1]
    assert r1 == [it[2] for it in ds2]
    assert sorted(r1) == list(range(530)) and r1 != sorted(r1)
    ds1.set_epoch(1)
    assert ds1.epoch == 1
    r2 = [it[2] for it in ds1]
    assert r2 != r1 and sorted(r2) == sorted(r1)
    # rows stay inside their chunk when only shuffle_within_chunk is on
    ds3 = ZarrIterableInstances(array_path, ids530, shuffle_within_chunk=True, buffer_seed=1)
    r3 = np.array([it[2] for it in ds3])
    assert np.array_equal(r3 // 50, np.sort(r3) // 50) and not np.array_equal(r3, np.sort(r3))


def test_buffer_seed_none_is_random(array_path, ids530):
    a = [it[2] for it in ZarrIterableInstances(array_path, ids530, shuffle_within_chunk=True)]
    b = [it[2] for it in ZarrIterableInstances(array_path, ids530, shuffle_within_chunk=True)]
    assert a != b


def test_batched_equals_per_sample(store):
    path = str(store.store_path.store.root)
    labels = store["labels"][...]
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 3}
    for buffer_chunks in (1, 3, 20):
        samples = list(ZarrIterableInstances(path, None, labels, buffer_chunks=buffer_chunks, **kw))
        batches = list(
            ZarrIterableInstances(
                path, None, labels, batch_size=64, buffer_chunks=buffer_chunks, **kw
            )
        )
        assert [b[0].shape[0] for b in batches[:-1]] == [64] * (len(batches) - 1)
        assert torch.equal(torch.cat([b[0] for b in batches]), torch.stack([s[0] for s in samples]))
        assert torch.equal(torch.cat([b[1] for b in batches]), torch.stack([s[1] for s in samples]))
        assert torch.cat([b[3] for b in batches]).tolist() == [s[3] for s in samples]
        assert torch.cat([b[2] for b in batches]).tolist() == [s[2] for s in samples]
        assert batches[0][1].dtype == torch.long and batches[0][3].dtype == torch.int64


def test_batched_drop_last(store):
    path = str(store.store_path.store.root)
    ds = ZarrIterableInstances(path, None, store["labels"][...], batch_size=100, drop_last=True)
    batches = list(ds)
    assert all(b[0].shape[0] == 100 for b in batches)
    assert len(batches) == ds.num_batches() == ds.selection.total // 100
    assert len(ds) == ds.selection.total  # samples of the rank, before batching


def test_read_ahead_off_same_result(array_path, ids530):
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 3}
    a = list(ZarrIterableInstances(array_path, ids530, read_ahead=False, **kw))
    b = list(ZarrIterableInstances(array_path, ids530, read_ahead=True, **kw))
    assert [i[2] for i in a] == [i[2] for i in b]
    assert torch.equal(torch.stack([i[0] for i in a]), torch.stack([i[0] for i in b]))


def test_pickles(array_path, ids530):
    ds = ZarrIterableInstances(array_path, ids530, shuffle_chunks=True)
    next(iter(ds))
    ds2 = pickle.loads(pickle.dumps(ds))
    assert [i[2] for i in ds2] == [i[2] for i in ds]


def test_accepts_open_zarr_array(array_path, ids530):
    arr = zarr.open_array(array_path, mode="r")
    assert len(list(ZarrIterableInstances(arr, ids530))) == 530


# ---------------------------------------------------------------- errors (SPEC §8)
def test_missing_path(tmp_path):
    with pytest.raises(StoreNotFoundError, match=r"zarr_path='.*nope.zarr'"):
        ZarrIterableInstances(str(tmp_path / "nope.zarr"), np.arange(3))
    with pytest.raises(FileNotFoundError):
        ZarrIterableInstances(str(tmp_path / "nope.zarr"), np.arange(3))


def test_group_without_image(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("other", shape=(3,), dtype="int32")
    with pytest.raises(ValueError, match=r"without an 'image' array .*\['other'\]"):
        ZarrIterableInstances(str(tmp_path / "g.zarr"), np.arange(3))


def test_not_5d(tmp_path):
    zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 3, 3), dtype="uint8")
    with pytest.raises(ValueError, match=r"must be a 5-D array .*got shape \(4, 3, 3\)"):
        ZarrIterableInstances(str(tmp_path / "a.zarr"), np.arange(4))


def test_bare_array_needs_ids(array_path):
    with pytest.raises(ValueError, match="instance_ids is None"):
        ZarrIterableInstances(array_path)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"instance_ids": np.arange(529)}, ArgumentError, "instance_ids must have length i=530"),
        ({"instance_ids": np.zeros((530, 2))}, ArgumentError, "must be one-dimensional"),
        ({"instance_ids": np.arange(530) + 0.5}, ArgumentTypeError, "must hold integers"),
        (
            {"labels": np.arange(10)},
            ArgumentError,
            r"labels must have length i=530 \(rows of the Zarr array\), got 10",
        ),
        ({"labels": np.full(530, 0.5)}, ArgumentTypeError, "labels must hold integers"),
        ({"chunk_i": 0}, ArgumentError, "chunk_i must be >= 1, got 0"),
        ({"chunk_i": -3}, ArgumentError, "chunk_i must be >= 1, got -3"),
        ({"chunk_i": 2.5}, ArgumentTypeError, "chunk_i must be an integer"),
        ({"normalize": "zscore"}, ArgumentError, "normalize must be one of .* got 'zscore'"),
        ({"x_dtype": np.float32}, ArgumentTypeError, "x_dtype must be a torch.dtype"),
        ({"batch_size": 0}, ArgumentError, "batch_size must be >= 1"),
        ({"buffer_chunks": 0}, ArgumentError, "buffer_chunks must be >= 1"),
        ({"allowed_chunk_indexes": [99]}, ArgumentError, r"99; valid chunk indexes are 0-10"),
        (
            {"allowed_chunk_indexes": []},
            ArgumentError,
            r"No rows to iterate.*valid chunk indexes are 0-10",
        ),
        (
            {"labels": np.full(530, -1)},
            ArgumentError,
            "No rows to iterate",
        ),
    ],
)
def test_bad_arguments(array_path, ids530, kwargs, exc, match):
    kwargs = {"instance_ids": ids530, **kwargs}
    with pytest.raises(exc, match=match):
        ZarrIterableInstances(array_path, **kwargs)


def test_bad_epoch(array_path, ids530):
    ds = ZarrIterableInstances(array_path, ids530)
    with pytest.raises(ArgumentError, match="epoch must be >= 0, got -1"):
        ds.set_epoch(-1)


def test_corrupt_chunk_names_chunk(tmp_path):
    path = tmp_path / "c.zarr"
    make_instance_array(path, n=100, chunk_i=10)
    (path / "c" / "3" / "0" / "0" / "0" / "0").write_bytes(b"garbage")
    ds = ZarrIterableInstances(str(path), np.arange(100))
    with pytest.raises(ChunkReadError, match=r"rows 30-39 \(logical chunk 3, stored chunk index 3"):
        list(ds)


@pytest.mark.parametrize("shards", [None, 20])
def test_missing_chunk_names_chunk(tmp_path, shards):
    import shutil

    path = tmp_path / "m.zarr"
    make_instance_array(path, n=100, chunk_i=10, shards=shards)
    victim = path / "c" / ("3" if shards is None else "1")
    shutil.rmtree(victim)
    ds = ZarrIterableInstances(str(path), np.arange(100))
    with pytest.raises(ChunkReadError, match=r"stored chunk\(s\) c/[13]/0/0/0/0 are missing"):
        list(ds)
    # opting out reads fill values, as zarr does
    ds = ZarrIterableInstances(
        str(path), np.arange(100), normalize=None, check_missing_chunks=False
    )
    assert sum(int(x.sum() == 0) for x, *_ in ds) == (10 if shards is None else 20)


def test_all_zero_chunk_that_exists_is_fine(tmp_path):
    path = tmp_path / "z.zarr"
    arr = make_instance_array(path, n=40, chunk_i=10)
    with zarr.config.set({"array.write_empty_chunks": True}):
        zarr.open_array(str(path), mode="r+")[10:20] = 0
    assert arr[10:20].sum() == 0
    rows = [r for _x, _i, r in ZarrIterableInstances(str(path), np.arange(40))]
    assert rows == list(range(40))


def test_storage_options_are_ignored_for_a_local_path(array_path, ids530):
    # one config (e.g. S3 credentials) may serve local and remote datasets alike
    ds = ZarrIterableInstances(array_path, ids530, storage_options={"anon": True}, batch_size=64)
    assert sum(b[0].shape[0] for b in ds) == 530
