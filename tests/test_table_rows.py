"""Labels, row selection (``where``) and leak-free splits from the instance table.

Expectations are computed independently with pandas from the metadata given to
``extract_instances`` and the table's (source, instance_id) keys.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from _table_study import make_study
from zarr_instances import (
    ArgumentError,
    ArgumentTypeError,
    ZarrDataLoader,
    ZarrIterableInstances,
    group_split,
    read_table,
)
from zarr_instances._table import write_table
from zarr_instances._table_rows import assign_groups


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "s.zarr"
    meta = make_study(path, n_sources=4)
    return str(path), meta, read_table(path)


def _keyed(table: pd.DataFrame, meta: pd.DataFrame, column: str) -> pd.Series:
    """``meta[column]`` for every table row, joined on (source, instance_id)."""
    keys = pd.MultiIndex.from_arrays([table["source"].astype(str), table["instance_id"]])
    values = meta.set_index(["source", "instance_id"])[column].reindex(keys)
    return pd.Series(values.to_numpy(), index=table.index)


def _rows_and_labels(ds) -> tuple[list[int], list[int]]:
    rows, ys = [], []
    for _x, y, _iid, row in ds:
        rows.extend(row.tolist())
        ys.extend(y.tolist())
    return rows, ys


def _ds(path, **kw):
    base = {"normalize": "none", "batch_size": 7}
    return ZarrIterableInstances(path, None, **{**base, **kw})


def _copy_with_table(src: str, dst, change) -> str:
    """Copy the store and rewrite its table with ``change(table)``."""
    shutil.copytree(src, dst)
    group = zarr.open_group(dst, mode="r+")
    write_table(group, change(read_table(dst)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(str(dst))
    return str(dst)


# --------------------------------------------------------------------------- labels


def test_label_column_gives_sorted_codes_and_classes(study):
    path, meta, table = study
    given_types = _keyed(table, meta, "cell_type")
    classes = sorted(given_types.dropna().unique())
    want = np.array([classes.index(v) if isinstance(v, str) else -1 for v in given_types])
    assert (want == -1).any() and len(classes) == 3
    ds = _ds(path, labels="cell_type")
    assert ds.classes == classes and ds.label_column == "cell_type"
    np.testing.assert_array_equal(ds.labels, want)
    rows, ys = _rows_and_labels(ds)
    assert rows == np.flatnonzero(want >= 0).tolist()  # unlabelled rows dropped
    assert ys == want[rows].tolist()
    # unlabelled rows stay (y = -1) without drop_unlabeled
    rows, ys = _rows_and_labels(_ds(path, labels="cell_type", drop_unlabeled=False))
    assert rows == list(range(len(table))) and ys == want.tolist()


def test_integer_column_labels_as_they_are(study):
    path, meta, table = study
    grade = _keyed(table, meta, "grade")
    want = grade.fillna(-1).to_numpy(dtype=np.int64)
    ds = _ds(path, labels="grade")
    assert ds.classes is None
    np.testing.assert_array_equal(ds.labels, want)
    assert _rows_and_labels(ds)[0] == np.flatnonzero(want >= 0).tolist()


def test_bool_and_float_columns(study, tmp_path):
    path, _, table = study
    flags = (np.arange(len(table)) % 3 == 0).astype(object)
    flags[1] = None

    def change(df):
        df["flag"] = pd.array(flags, dtype="boolean")
        df["score"] = np.where(np.arange(len(df)) % 4 == 0, np.nan, np.arange(len(df)) % 5)
        df["ratio"] = 0.5
        return df

    copy = _copy_with_table(path, tmp_path / "c.zarr", change)
    ds = _ds(copy, labels="flag")
    assert ds.classes == [False, True]
    want = [-1 if f is None else int(f) for f in flags]
    assert ds.labels.tolist() == want
    ds = _ds(copy, labels="score")
    assert ds.classes is None
    n = len(table)
    assert ds.labels.tolist() == [-1 if i % 4 == 0 else i % 5 for i in range(n)]
    with pytest.raises(ArgumentError, match=r"labels='ratio' holds non-integral values \(\[0.5"):
        _ds(copy, labels="ratio")


def test_label_column_errors(study, store, array_path):
    path, _, _ = study
    with pytest.raises(ArgumentError, match=r"labels='kind'.*not a column.*'cell_type'"):
        _ds(path, labels="kind")
    # a store without a table (written by hand), and a bare array
    bare = str(store.store_path.store.root)
    with pytest.raises(ArgumentError, match=r"labels='cell_type' reads the instance table.*obs"):
        _ds(bare, labels="cell_type")
    with pytest.raises(ArgumentError, match=r"labels='cell_type'.*bare array"):
        ZarrIterableInstances(array_path, np.arange(530), labels="cell_type")


# --------------------------------------------------------------------------- where


def test_where_mapping_selects_rows(study):
    path, meta, table = study
    types = _keyed(table, meta, "cell_type")
    sources = table["source"].astype(str)
    want = np.flatnonzero((sources.isin(["s0", "s2"]) & (types == "T")).to_numpy())
    assert 0 < want.size < len(table)
    ds = _ds(path, where={"source": ["s0", "s2"], "cell_type": "T"})
    assert ds.labels is None and len(ds) == want.size
    rows = [int(r) for _x, _iid, rr in ds for r in rr]
    assert rows == want.tolist()
    # with labels: AND with labelled rows; tuples and arrays of values work too
    ds = _ds(path, labels="cell_type", where={"source": ("s1",)})
    labelled = types.notna().to_numpy() & (sources == "s1").to_numpy()
    assert _rows_and_labels(ds)[0] == np.flatnonzero(labelled).tolist()


def test_where_mask_and_allowed_chunks(study):
    path, _, table = study
    n = len(table)
    mask = np.arange(n) % 3 != 0
    ds = _ds(path, labels="grade", where=mask, allowed_chunk_indexes=[0, 2])
    chunk = ds.chunk_i
    in_chunks = np.isin(np.arange(n) // chunk, [0, 2])
    want = np.flatnonzero(mask & in_chunks & (ds.labels >= 0))
    assert _rows_and_labels(ds)[0] == want.tolist()
    # a mask needs no table: works on a bare array
    rows = [int(r) for _x, _iid, rr in _ds(path, where=pd.Series(mask)) for r in rr]
    assert rows == np.flatnonzero(mask).tolist()


def test_where_errors(study, array_path):
    path, _, table = study
    n = len(table)
    with pytest.raises(ArgumentError, match=r"where must have one value per row \(shape \("):
        _ds(path, where=np.ones(n - 1, bool))
    with pytest.raises(ArgumentTypeError, match=r"where must be a .* boolean array"):
        _ds(path, where=np.ones(n, int))
    with pytest.raises(ArgumentError, match=r"where=\{'kind': \.\.\.\}.*not a column"):
        _ds(path, where={"kind": "x"})
    with pytest.raises(ArgumentError, match=r"no row has the value\(s\) \['Tcell'\]"):
        _ds(path, where={"cell_type": ["T", "Tcell"]})
    with pytest.raises(ArgumentError, match="empty mapping"):
        _ds(path, where={})
    with pytest.raises(ArgumentError, match=r"No rows to iterate.*selected by where"):
        _ds(path, where=np.zeros(n, bool))
    with pytest.raises(ArgumentError, match=r"where=.*bare array"):
        ZarrIterableInstances(array_path, np.arange(530), where={"source": "s0"})
    mask = np.zeros(530, bool)
    mask[:10] = True
    assert len(ZarrIterableInstances(array_path, np.arange(530), where=mask)) == 10


# --------------------------------------------------------------------------- group_split


def test_group_split_is_leak_free(study):
    path, _, table = study
    for by in ("source", "patient"):
        masks = group_split(path, by=by, fractions=(0.5, 0.5), seed=3)
        assert len(masks) == 2
        np.testing.assert_array_equal(masks[0] ^ masks[1], np.ones(len(table), bool))
        groups = [set(table[by][m].astype(str)) for m in masks]
        assert groups[0] and groups[1] and not groups[0] & groups[1]
        # the same from the table, deterministic for a seed
        again = group_split(table, by=by, fractions=[0.5, 0.5], seed=3)
        assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))
    # three parts of four sources; every part usable as where=
    masks = group_split(table, fractions=(0.5, 0.25, 0.25), seed=0)
    for m in masks:
        rows = [int(r) for _x, _iid, rr in _ds(path, where=m) for r in rr]
        assert rows == np.flatnonzero(m).tolist()


def test_group_split_errors(study):
    _, _, table = study
    with pytest.raises(ArgumentError, match="fractions must sum to 1"):
        group_split(table, fractions=(0.5, 0.4))
    with pytest.raises(ArgumentError, match="fractions must be positive"):
        group_split(table, fractions=(1.2, -0.2))
    with pytest.raises(ArgumentTypeError, match="fractions must be a sequence"):
        group_split(table, fractions=0.5)
    with pytest.raises(ArgumentError, match=r"group_split\(by='kind'\).*not a column"):
        group_split(table, by="kind")
    with pytest.raises(ArgumentError, match=r"part\(s\) \[2\].*get no group.*2 groups"):
        group_split(table, by="patient", fractions=(0.4, 0.3, 0.3))


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=40),
    weights=st.lists(st.integers(1, 10), min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
)
def test_assign_groups_fills_parts_toward_their_fractions(sizes, weights, seed):
    fractions = [w / sum(weights) for w in weights]
    part = assign_groups(np.array(sizes), fractions, seed)
    assert part.shape == (len(sizes),) and part.min() >= 0 and part.max() < len(fractions)
    np.testing.assert_array_equal(part, assign_groups(np.array(sizes), fractions, seed))
    filled = np.bincount(part, weights=sizes, minlength=len(fractions))
    targets = np.array(fractions) * sum(sizes)
    largest = max(sizes)
    assert (filled - targets < largest).all()  # no part exceeds its target by a group
    assert (targets - filled <= largest + 1e-9).all()  # nor falls short by more


# --------------------------------------------------------------------------- resume


def test_classes_round_trip_through_state_dict(study, tmp_path):
    path, _, _ = study

    def make():
        ds = _ds(path, labels="cell_type", where={"source": ["s0", "s1", "s3"]},
                 shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=2)  # fmt: skip
        return ZarrDataLoader(ds, batch_size=None)

    ref = [b[3].tolist() for b in make()]
    loader = make()
    it = iter(loader)
    head = [next(it)[3].tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state["fingerprint"]["classes"] == loader.dataset.classes == ["B", "NK", "T"]
    assert state["fingerprint"]["label_column"] == "cell_type"
    resumed = make()
    resumed.load_state_dict(state)
    assert head + [b[3].tolist() for b in resumed] == ref
    # a stream state of the dataset carries them too
    ds = resumed.dataset
    assert ds.state_dict()["fingerprint"]["classes"] == ds.classes

    # the store's categories changed (a new cell type): refused, naming them
    def add_type(df):
        df["cell_type"] = df["cell_type"].cat.add_categories(["DC"])
        return df

    changed = _copy_with_table(path, tmp_path / "changed.zarr", add_type)
    other = _ds(changed, labels="cell_type", where={"source": ["s0", "s1", "s3"]},
                shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=2)  # fmt: skip
    assert other.classes == ["B", "NK", "T", "DC"]
    msg = r"categories of 'cell_type' changed since the state was saved: saved \['B', 'NK', 'T'\]"
    with pytest.raises(ArgumentError, match=msg):
        other.load_state_dict(state)
    # another where: other rows, refused
    moved = _ds(path, labels="cell_type", where={"source": ["s0", "s1", "s2"]},
                shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=2)  # fmt: skip
    with pytest.raises(ArgumentError, match="other rows are selected"):
        moved.load_state_dict(state)
    # labels from another column
    with pytest.raises(ArgumentError, match="label_column: saved 'cell_type', now 'grade'"):
        _ds(path, labels="grade", where={"source": ["s0", "s1", "s3"]},
            shuffle_chunks=True, shuffle_within_chunk=True).load_state_dict(state)  # fmt: skip


def test_states_of_earlier_versions_still_load(study):
    path, _, _ = study
    ds = _ds(path, labels="cell_type")
    state = ds.state_dict()
    for key in ("rows", "classes", "label_column"):
        del state["fingerprint"][key]
    _ds(path, labels="cell_type").load_state_dict(state)
