"""Several stores as one dataset (issue 18): the planning slice.

The chunk grid of a list of stores is each store's own chunks, concatenated
(docs/dev/multistore-design.md): no chunk straddles two stores, and the plan,
resume and elastic resume work unchanged on that irregular grid.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances._plan import chunk_order, plan_worker, rank_share, select_rows
from zarr_instances._resume import Step, resolve, resumed_plan
from zarr_instances._sampling import Sampling
from zarr_instances._selection import chunk_grid
from zarr_instances._table_rows import selection_digest
from zarr_instances.errors import ArgumentError

SAMPLING = Sampling(
    shuffle_chunks=True,
    chunk_seed=1,
    shuffle_within=True,
    buffer_seed=7,
    buffer_chunks=2,
    drop_last=False,
)


def stream(sel, sampling, epoch, rank, world, worker, k, resume=None):
    resume = resume or resolve(sel, sampling, epoch, None, world, k, worker)
    plan = resumed_plan(sel, sampling, epoch, (rank, world, worker, k), resume)
    parts = [b.rows for b in plan.buffers(resume.start)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def offsets_of(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


@st.composite
def store_lists(draw):
    sizes = draw(st.lists(st.integers(0, 120), min_size=1, max_size=5))
    if sum(sizes) == 0:
        sizes[0] = 1
    chunk_i = draw(st.integers(1, 40))
    if draw(st.booleans()):  # each store its own chunk size
        chunk_i = [draw(st.integers(1, 40)) for _ in sizes]
    n = sum(sizes)
    keep = None
    if draw(st.booleans()):
        keep = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return sizes, chunk_i, keep


def test_chunk_grid_is_each_stores_chunks():
    assert chunk_grid([10, 7, 5], 4).tolist() == [0, 4, 8, 10, 14, 17, 21, 22]
    # aligned stores (the last may be short) are the regular grid of their concatenation
    assert chunk_grid([8, 4, 5], 4) is None
    assert chunk_grid([17], 4) is None
    # empty stores add no chunk
    assert chunk_grid([0, 5, 0, 3], 4).tolist() == [0, 4, 5, 8]
    assert chunk_grid([5, 0, 0], 4) is None
    with pytest.raises(ArgumentError, match=">= 0"):
        chunk_grid([3, -1], 4)


def test_chunk_grid_with_a_chunk_size_per_store():
    assert chunk_grid([10, 7, 5], [5, 3, 5]).tolist() == [0, 5, 10, 13, 16, 17, 22]
    # one size repeated is the one-size grid; differing sizes are never "regular"
    assert chunk_grid([8, 4, 5], [4, 4, 4]) is None
    assert chunk_grid([0, 8], [3, 4]).tolist() == [0, 4, 8]
    sel = select_rows(22, [5, 3, 5], store_rows=[10, 7, 5])
    assert sel.counts.tolist() == [5, 5, 3, 3, 1, 5] and sel.chunk_i == 5
    with pytest.raises(ArgumentError, match="one per store"):
        select_rows(22, [5, 3], store_rows=[10, 7, 5])
    with pytest.raises(ArgumentError, match="one per store"):
        select_rows(22, [5, 0, 5], store_rows=[10, 7, 5])


def test_select_rows_over_stores():
    sel = select_rows(22, 4, store_rows=[10, 7, 5])
    assert sel.n_chunks == 7
    assert sel.counts.tolist() == [4, 4, 2, 4, 3, 4, 1]
    assert sel.chunk_bounds(2) == (8, 10)
    assert sel.chunk_rows(4).tolist() == [14, 15, 16]
    keep = np.ones(22, bool)
    keep[[8, 9, 15]] = False
    sel = select_rows(22, 4, keep, allowed_chunks=[2, 4, 6], store_rows=[10, 7, 5])
    assert sel.counts.tolist() == [0, 0, 0, 0, 2, 0, 1]
    assert sel.chunk_rows(4).tolist() == [14, 16]
    with pytest.raises(ArgumentError, match="valid chunk indexes are 0-6"):
        select_rows(22, 4, allowed_chunks=[7], store_rows=[10, 7, 5])
    with pytest.raises(ArgumentError, match="do not sum"):
        select_rows(21, 4, store_rows=[10, 7, 5])


def test_aligned_stores_plan_like_their_concatenation():
    one = select_rows(23, 4)
    many = select_rows(23, 4, store_rows=[8, 12, 3])
    assert many.bounds is None
    assert selection_digest(one) == selection_digest(many)
    for r in range(2):
        for w in range(2):
            a = stream(one, SAMPLING, 3, r, 2, w, 2)
            b = stream(many, SAMPLING, 3, r, 2, w, 2)
            assert np.array_equal(a, b)


def test_digest_tells_irregular_grids_apart():
    regular = select_rows(22, 4)
    ragged = select_rows(22, 4, store_rows=[10, 7, 5])
    other = select_rows(22, 4, store_rows=[7, 10, 5])
    digests = {selection_digest(s) for s in (regular, ragged, other)}
    assert len(digests) == 3
    # the digest of one store is what it always was (saved states stay valid)
    assert selection_digest(select_rows(22, 4, store_rows=[22])) == selection_digest(regular)


@settings(max_examples=120, deadline=None)
@given(
    info=store_lists(),
    world=st.integers(1, 4),
    workers=st.integers(1, 3),
    epoch=st.integers(0, 3),
    shuffle=st.booleans(),
    buffer_chunks=st.integers(1, 4),
    drop_last=st.booleans(),
)
def test_every_kept_row_once_and_chunks_inside_one_store(
    info, world, workers, epoch, shuffle, buffer_chunks, drop_last
):
    sizes, chunk_i, keep = info
    n = sum(sizes)
    sel = select_rows(n, chunk_i, keep, store_rows=sizes)
    offsets = offsets_of(sizes)
    expected = np.arange(n) if keep is None else np.flatnonzero(keep)
    assert sel.total == expected.size
    # every chunk lies in one store and is at most its store's chunk_i rows, starting
    # at a multiple of it within the store
    step = np.broadcast_to(np.asarray(chunk_i), len(sizes))
    for k in range(sel.n_chunks):
        a, b = sel.chunk_bounds(k)
        s = np.searchsorted(offsets, a, side="right") - 1
        assert 0 < b - a <= step[s]
        assert b <= offsets[s + 1] and (a - offsets[s]) % step[s] == 0
    if sel.total == 0:
        return
    out = [
        [
            np.concatenate(
                [
                    np.empty(0, np.int64),
                    *(
                        b.rows
                        for b in plan_worker(
                            sel, epoch=epoch, rank=r, world=world, worker=w,
                            num_workers=workers, shuffle_chunks=shuffle, chunk_seed=3,
                            shuffle_within=True, buffer_seed=5, buffer_chunks=buffer_chunks,
                            drop_last=drop_last,
                        ).buffers()
                    ),
                ]
            )
            for w in range(workers)
        ]
        for r in range(world)
    ]  # fmt: skip
    per_rank = [sum(len(w) for w in r) for r in out]
    assert per_rank == [rank_share(sel.total, world, drop_last)] * world
    allrows = np.concatenate([w for r in out for w in r])
    if drop_last:
        assert np.unique(allrows).size == allrows.size
        assert np.isin(allrows, expected).all()
    else:
        assert set(allrows.tolist()) == set(expected.tolist())
        assert allrows.size - sel.total < world
    # a buffer's pieces each read from one store
    seq = np.concatenate([sel.chunk_rows(c) for c in chunk_order(sel, epoch, shuffle, 3)])
    assert np.array_equal(np.sort(seq), expected)


@settings(max_examples=40, deadline=None)
@given(
    info=store_lists(),
    old=st.tuples(st.integers(1, 4), st.integers(1, 3)),
    new=st.tuples(st.integers(1, 4), st.integers(1, 3)),
    frac=st.floats(0, 1),
)
def test_resume_and_elastic_resume_over_stores(info, old, new, frac):
    sizes, chunk_i, keep = info
    n = sum(sizes)
    sel = select_rows(n, chunk_i, keep, store_rows=sizes)
    if sel.total == 0:
        return
    (w_old, k_old), (w_new, k_new) = old, new
    full = [
        stream(sel, SAMPLING, 2, r, w_old, w, k_old) for r in range(w_old) for w in range(k_old)
    ]
    consumed = tuple(int(len(s) * frac) for s in full[:k_old])
    prefix = np.concatenate([s[: consumed[i % k_old]] for i, s in enumerate(full)])
    state = {"epoch": 2, "steps": [Step(w_old, k_old, consumed).as_dict()]}
    rest = []
    for r in range(w_new):
        for w in range(k_new):
            res = resolve(sel, SAMPLING, 2, state, w_new, k_new, w)
            rest.append(stream(sel, SAMPLING, 2, r, w_new, w, k_new, resume=res))
    per_rank = [sum(len(s) for s in rest[r * k_new : (r + 1) * k_new]) for r in range(w_new)]
    assert len(set(per_rank)) == 1
    if (w_new, k_new) == (w_old, k_old):
        assert all(
            np.array_equal(rest[i], full[i][consumed[i % k_old] :]) for i in range(len(full))
        )
    expected = set((np.arange(n) if keep is None else np.flatnonzero(keep)).tolist())
    assert set(np.concatenate([prefix, *rest]).tolist()) == expected


# --------------------------------------------------------------------------- opening


def test_open_stores_concatenates_rows(tmp_path):
    from zarr_instances._multi_store import open_stores, stored_chunk_rows
    from zarr_instances.testing import make_instance_store

    paths = [str(tmp_path / f"s{k}.zarr") for k in range(3)]
    for k, (p, n) in enumerate(zip(paths, [120, 40, 75], strict=True)):
        make_instance_store(p, n=n, chunk_i=40, seed=k)
    opened = open_stores(paths)
    assert opened.n_rows == 235
    assert opened.store_rows == [120, 40, 75]
    assert opened.shape == (235, 2, 1, 16, 16)
    assert opened.dtype == np.uint16
    assert stored_chunk_rows(opened) == 40
    ids = opened.instance_ids
    assert ids is not None and ids.shape == (235,)
    assert np.array_equal(ids[120:160], opened.stores[1].instance_ids)
    store, local = opened.local_rows(np.array([0, 119, 120, 159, 160, 234]))
    assert store.tolist() == [0, 0, 1, 1, 2, 2]
    assert local.tolist() == [0, 119, 0, 39, 0, 74]
    assert "3 stores" in opened.where and "s2.zarr" in opened.where
    sel = select_rows(opened.n_rows, 40, store_rows=opened.store_rows)
    assert sel.counts.tolist() == [40, 40, 40, 40, 40, 35]


def test_open_stores_mismatch_names_both_stores(tmp_path):
    from zarr_instances._multi_store import open_stores, stored_chunk_rows
    from zarr_instances.testing import make_instance_store

    a, b, c, d = (str(tmp_path / f"{x}.zarr") for x in "abcd")
    make_instance_store(a, n=50, chunk_i=25)
    make_instance_store(b, n=50, chunk_i=25, shape=(3, 1, 16, 16))
    make_instance_store(c, n=50, chunk_i=25, dtype="uint8")
    make_instance_store(d, n=50, chunk_i=10)
    with pytest.raises(ArgumentError, match=r"crop shapes.*a\.zarr.*\(2, 1, 16, 16\).*b\.zarr"):
        open_stores([a, b])
    with pytest.raises(ArgumentError, match=r"dtypes.*a\.zarr.*uint16.*store 2.*c\.zarr.*uint8"):
        open_stores([a, a, c])
    assert stored_chunk_rows(open_stores([a, d, a])) == (25, 10, 25)  # each store's own
    with pytest.raises(ArgumentError, match="non-empty list"):
        open_stores([])


# --------------------------------------------------------------------------- the dataset


def _stores_and_concat(tmp_path, sizes, chunk_i=40):
    import zarr

    from zarr_instances.testing import make_instance_store

    paths = [str(tmp_path / f"s{k}.zarr") for k in range(len(sizes))]
    groups = [
        make_instance_store(p, n=n, chunk_i=chunk_i, seed=k)
        for k, (p, n) in enumerate(zip(paths, sizes, strict=True))
    ]
    image = np.concatenate([np.asarray(g["image"][...]) for g in groups])
    ids = np.concatenate([np.asarray(g["instance_ids"][...]) for g in groups])
    labels = np.concatenate([np.asarray(g["labels"][...]) for g in groups])
    concat = zarr.open_group(str(tmp_path / "concat.zarr"), mode="w")
    arr = concat.create_array("image", shape=image.shape, dtype=image.dtype,
                              chunks=(chunk_i, *image.shape[1:]))  # fmt: skip
    arr[:] = image
    concat.create_array("instance_ids", shape=ids.shape, dtype="int64", chunks=ids.shape)[:] = ids
    return paths, str(tmp_path / "concat.zarr"), image, labels


def _collect(ds, workers, batched):
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=None if batched else 16, num_workers=workers)
    xs, ys, ids, rows = [], [], [], []
    for x, y, i, r in loader:
        xs.append(torch.as_tensor(x).numpy())
        ys.append(torch.as_tensor(y).numpy())
        ids.append(torch.as_tensor(i).numpy())
        rows.append(torch.as_tensor(r).numpy())
    return tuple(np.concatenate(v) for v in (xs, ys, ids, rows))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("batched", [False, True])
def test_three_stores_stream_like_their_concatenation(tmp_path, workers, batched):
    from zarr_instances import ZarrIterableInstances

    paths, concat, _, labels = _stores_and_concat(tmp_path, [120, 80, 75])
    kw = {
        "labels": labels,
        "shuffle_chunks": True,
        "chunk_seed": 4,
        "shuffle_within_chunk": True,
        "buffer_seed": 9,
        "buffer_chunks": 2,
        "batch_size": 16 if batched else None,
    }
    many = ZarrIterableInstances(paths, **kw)
    one = ZarrIterableInstances(concat, **kw)
    assert many.shape == one.shape and len(many) == len(one)
    assert many._stream.direct
    for epoch in (0, 1):
        many.set_epoch(epoch)
        one.set_epoch(epoch)
        a, b = _collect(many, workers, batched), _collect(one, workers, batched)
        for u, v in zip(a, b, strict=True):
            assert np.array_equal(u, v)


@pytest.mark.parametrize("route", ["direct", "zarr"])
def test_ragged_stores_yield_every_row_once_with_its_crop(tmp_path, route):
    from zarr_instances import ZarrIterableInstances

    paths, _, image, _ = _stores_and_concat(tmp_path, [110, 70, 75])
    ds = ZarrIterableInstances(
        paths,
        chunk_i=40 if route == "direct" else 30,  # 30: not the stored chunks
        shuffle_chunks=True,
        shuffle_within_chunk=True,
        buffer_chunks=3,
        normalize=None,
        batch_size=32,
    )
    assert ds.selection.bounds is not None
    x, _, rows = (np.concatenate([t.numpy() for t in part]) for part in zip(*ds, strict=True))
    assert np.array_equal(np.sort(rows), np.arange(255))
    assert np.array_equal(x, image[rows].astype(x.dtype))
    assert ds.fingerprint()["stores"] == [110, 70, 75]


@pytest.mark.parametrize("workers", [0, 2])
def test_stores_chunked_differently_read_each_by_its_own_chunks(tmp_path, workers):
    from torch.utils.data import DataLoader

    from zarr_instances import ZarrIterableInstances
    from zarr_instances.testing import make_instance_store

    sizes, chunks = [110, 70, 75], [40, 25, 30]
    paths = [str(tmp_path / f"c{k}.zarr") for k in range(3)]
    image = np.concatenate([
        np.asarray(make_instance_store(p, n=n, chunk_i=c, seed=k)["image"][...])
        for k, (p, n, c) in enumerate(zip(paths, sizes, chunks, strict=True))
    ])  # fmt: skip
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 4}
    ds = ZarrIterableInstances(paths, normalize=None, buffer_chunks=3, batch_size=16, **kw)
    assert ds.chunk_i == (40, 25, 30) and ds._stream.direct
    assert ds.selection.n_chunks == 3 + 3 + 3
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    x, _, rows = (np.concatenate([t.numpy() for t in part]) for part in zip(*loader, strict=True))
    assert np.array_equal(np.sort(rows), np.arange(255))
    assert np.array_equal(x, image[rows])
    # exact resume on the per-store grid
    it = iter(ds)
    first = [next(it)[2].numpy() for _ in range(4)]
    again = ZarrIterableInstances(paths, normalize=None, buffer_chunks=3, batch_size=16, **kw)
    again.load_state_dict(ds.state_dict())
    rest = np.concatenate([b[2].numpy() for b in again])
    assert np.array_equal(np.sort(np.concatenate([*first, rest])), np.arange(255))


def _two_studies(tmp_path):
    """Two study stores whose cell types differ (store b adds "DC", lacks "T")."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _table_study import make_study

    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    make_study(a, n_sources=2, seed=0)
    meta = make_study(b, n_sources=3, seed=1, chunk_i=8)
    assert meta is not None
    return a, b


def test_labels_column_and_where_mapping_across_stores(tmp_path):
    import warnings

    import pandas as pd
    import zarr

    from zarr_instances import ZarrIterableInstances, group_split, read_table
    from zarr_instances._table import concat_tables, write_table

    a, b = _two_studies(tmp_path)
    ta, tb = read_table(a), read_table(b)
    # store b's cell types in another category order, plus a class store a lacks
    tb["cell_type"] = tb["cell_type"].astype(str).replace({"T": "DC", "nan": None})
    tb["cell_type"] = pd.Categorical(tb["cell_type"], categories=["NK", "DC", "B"])
    write_table(zarr.open_group(b, mode="r+"), tb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata on Zarr format 3
        zarr.consolidate_metadata(b)
    table = read_table([a, b])
    assert len(table) == len(ta) + len(tb)
    assert table.index.tolist() == list(range(len(table)))
    # categories united in first-seen order: store a's, then b's new ones
    assert list(table["cell_type"].cat.categories) == [*ta["cell_type"].cat.categories, "DC"]
    assert table.equals(concat_tables([ta, tb]))

    ds = ZarrIterableInstances(
        [a, b], None, labels="cell_type", where={"patient": ["p0", "p1"]},
        shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=2, batch_size=5,
        return_row_index=True, drop_unlabeled=True,
    )  # fmt: skip
    assert ds.classes == list(table["cell_type"].cat.categories)
    ys, rows = [], []
    for _x, y, _ids, r in ds:
        ys.append(y.numpy())
        rows.append(r.numpy())
    y, row = np.concatenate(ys), np.concatenate(rows)
    codes = table["cell_type"].cat.codes.to_numpy()
    want = np.flatnonzero(table["patient"].isin(["p0", "p1"]).to_numpy() & (codes >= 0))
    assert np.array_equal(np.sort(row), want)  # every selected row once, none other
    assert np.array_equal(y, codes[row])
    names = np.asarray(ds.classes, dtype=object)[y]
    assert np.array_equal(names, table["cell_type"].astype(object).to_numpy()[row])
    # "DC" exists only in store b: still a valid where value across the list
    only_b = ZarrIterableInstances([a, b], None, where={"cell_type": "DC"}, return_row_index=True)
    got = np.array([int(r) for *_, r in only_b])
    assert np.array_equal(np.sort(got), np.flatnonzero(table["cell_type"] == "DC"))
    with pytest.raises(ArgumentError, match="no row has the value"):
        ZarrIterableInstances([a, b], None, where={"cell_type": "Mono"})
    with pytest.raises(ArgumentError, match=r"a\.zarr' has no column 'nope'"):
        ZarrIterableInstances([a, b], None, labels="nope")
    # a column one store lacks would read as missing there: refused, naming that store
    tb_less = tb.drop(columns=["cell_type"])
    write_table(zarr.open_group(b, mode="r+"), tb_less)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(b)
    with pytest.raises(ArgumentError, match=r"labels='cell_type'.*b\.zarr.*no column 'cell_type'"):
        ZarrIterableInstances([a, b], None, labels="cell_type")
    with pytest.raises(ArgumentError, match=r"where=\{'cell_type'.*b\.zarr.*every store"):
        ZarrIterableInstances([a, b], None, where={"cell_type": "B"})
    write_table(zarr.open_group(b, mode="r+"), tb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(b)
    # group_split over the list: the masks cover the concatenated rows, groups whole
    train, val = group_split([a, b], by="source", fractions=(0.6, 0.4), seed=1)
    assert train.shape == (len(table),) and not (train & val).any() and (train | val).all()
    for name in table["source"].unique():
        part = train[(table["source"] == name).to_numpy()]
        assert part.all() or not part.any()


def test_percentile_across_stores_uses_each_stores_sources(tmp_path):
    import warnings

    from zarr_instances import ZarrIterableInstances, extract_instances, read_table
    from zarr_instances.errors import ClippedInstancesWarning
    from zarr_instances.testing import make_image_and_mask

    paths, want = [], []
    for k, factor in enumerate((1, 5)):
        image, mask = make_image_and_mask((80, 80), 16, 12, seed=k)
        path = str(tmp_path / f"p{k}.zarr")
        with warnings.catch_warnings():  # some seeds clip a cell at its window's edge
            warnings.simplefilter("ignore", ClippedInstancesWarning)
            extract_instances(  # the same source name in both stores, other brightness
                {"slide": (image.astype(np.uint32) * factor).astype(np.uint16)},
                {"slide": mask}, 12, out=path, chunk_i=8, progress=False,
            )  # fmt: skip
        paths.append(path)
        import zarr

        group = zarr.open_group(path, mode="r")
        qs = group.attrs["zarr_instances"]["intensity"]["percentiles"]
        row = group.attrs["zarr_instances"]["intensity"]["sources"]["slide"]
        lo = np.array([c[qs.index(1.0)] for c in row], np.float32)[None, :, None, None, None]
        hi = np.array([c[qs.index(99.0)] for c in row], np.float32)[None, :, None, None, None]
        x = np.asarray(group["image"][...]).astype(np.float32)
        want.append(np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32))
        assert len(read_table(path)) == x.shape[0]
    ref = np.concatenate(want)
    for batched in (False, True):
        ds = ZarrIterableInstances(
            paths, None, normalize="percentile", shuffle_chunks=True, buffer_seed=1,
            batch_size=6 if batched else None,
        )  # fmt: skip
        xs, rows = [], []
        for x, _ids, r in ds:
            xs.append(x.numpy() if batched else x.numpy()[None])
            rows.append(np.atleast_1d(np.asarray(r)))
        x, row = np.concatenate(xs), np.concatenate(rows)
        assert np.array_equal(np.sort(row), np.arange(ref.shape[0]))
        np.testing.assert_allclose(x, ref[row], rtol=1e-5, atol=1e-6)


def test_resume_across_stores_and_fingerprint(tmp_path):
    from zarr_instances import ZarrIterableInstances

    paths, _, _, labels = _stores_and_concat(tmp_path, [110, 70, 75])
    kw = {"labels": labels, "shuffle_chunks": True, "shuffle_within_chunk": True}
    kw |= {"buffer_seed": 3, "batch_size": 8}
    ds = ZarrIterableInstances(paths, **kw)
    full = [b[3].numpy() for b in ds]
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = ds.state_dict()
    again = ZarrIterableInstances(paths, **kw)
    again.load_state_dict(state)
    rest = [b[3].numpy() for b in again]
    assert np.array_equal(np.concatenate(rest), np.concatenate(full[5:]))
    # other store lengths (another list) are refused
    other = ZarrIterableInstances(paths[::-1], labels=labels[::-1] * 0, **{
        k: v for k, v in kw.items() if k != "labels"
    })  # fmt: skip
    with pytest.raises(ArgumentError):
        other.load_state_dict(state)


def test_missing_chunk_of_one_store_names_that_store(tmp_path):
    import os

    from zarr_instances import ZarrIterableInstances
    from zarr_instances.errors import ChunkReadError

    paths, _, _, _ = _stores_and_concat(tmp_path, [80, 80, 80])
    os.remove(os.path.join(paths[1], "image", "c", "1", "0", "0", "0", "0"))
    ds = ZarrIterableInstances(paths, buffer_chunks=6, batch_size=16)
    assert ds._stream.direct
    with pytest.raises(ChunkReadError, match=r"s1\.zarr.*missing"):
        list(ds)
    quiet = ZarrIterableInstances(paths, buffer_chunks=6, batch_size=16, normalize=None,
                                  check_missing_chunks=False)  # fmt: skip
    x = np.concatenate([b[0].numpy() for b in quiet])
    assert x.shape[0] == 240
