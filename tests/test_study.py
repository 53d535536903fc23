"""Studies: several sources (images and masks) extracted into one store.

Every expectation here is computed independently: crops from single-image
extractions, table columns and percentiles with NumPy from the masks and images.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

import zarr_instances
from zarr_instances import (
    ArgumentError,
    StoreIncompleteError,
    UnmatchedMetadataWarning,
    ZarrIterableInstances,
    extract_instances,
    read_table,
)
from zarr_instances.testing import make_image_and_mask

D = 12
PERCENTILES = [0.1, 1, 5, 50, 95, 99, 99.9]


def _study(specs: dict[str, tuple[tuple[int, ...], int, int]], channels: int = 2):
    """Images and masks ``{name: array}``: ``specs`` maps a name to (shape, n_cells, seed)."""
    images, masks = {}, {}
    for name, (shape, n, seed) in specs.items():
        images[name], masks[name] = make_image_and_mask(shape, n, D, channels=channels, seed=seed)
        assert masks[name].max() > 0
    return images, masks


# 2-D sources of different sizes, given out of name order; every mask starts at 1
SPECS = {
    "b": ((60, 70), 14, 1),
    "a": ((50, 50), 9, 2),
    "c": ((64, 48), 12, 3),
}


def _read(path) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    g = zarr.open_group(path, mode="r")
    arrays = {k: g[k][...] for k in g.array_keys()}
    return arrays, read_table(path)


def _keys(table: pd.DataFrame) -> list[tuple[str, int]]:
    return list(zip(table["source"].astype(str), table["instance_id"].astype(int), strict=True))


def _instances(masks: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """Every instance, source by source (by name), ids ascending."""
    return [(name, int(i)) for name in sorted(masks) for i in np.unique(masks[name]) if i]


# --------------------------------------------------------------------------- crops and order


def test_study_crops_equal_single_extractions_and_rows_are_ordered(tmp_path):
    images, masks = _study(SPECS)
    want = _instances(masks)
    single = {}
    for name in masks:
        ids, crops = extract_instances(images[name], masks[name], D)
        single[name] = {int(i): c for i, c in zip(ids, crops.compute(), strict=True)}
        assert 1 in single[name]  # overlapping ids: every mask starts at 1

    for order, seed in (("id", 0), ("random", 3)):
        out = tmp_path / f"{order}.zarr"
        ids, crops = extract_instances(images, masks, D, out=out, order=order, seed=seed, chunk_i=7)
        arrays, table = _read(out)
        keys = _keys(table)
        if order == "id":
            assert keys == want
            assert keys == sorted(keys)
        else:
            perm = np.random.default_rng(seed).permutation(len(want))
            assert keys == [want[k] for k in perm]
        assert table["source"].cat.categories.tolist() == ["a", "b", "c"]
        np.testing.assert_array_equal(ids, [k[1] for k in keys])
        np.testing.assert_array_equal(arrays["instance_ids"], [k[1] for k in keys])
        np.testing.assert_array_equal(crops.compute(), arrays["image"])
        for row, (name, i) in enumerate(keys):
            np.testing.assert_array_equal(
                arrays["image"][row], single[name][i], err_msg=f"{name} {i}"
            )


def test_many_sources_as_zarr_paths_equal_arrays(tmp_path):
    # from 8 sources on, local Zarr paths are opened all at once: same store as arrays
    specs = {f"fov{k:02d}": ((40, 44), 5, k) for k in range(10)}
    images, masks = _study(specs)
    paths_i, paths_m = {}, {}
    for name in specs:
        paths_i[name] = str(tmp_path / f"{name}_image.zarr")
        paths_m[name] = str(tmp_path / f"{name}_mask.zarr")
        zarr.create_array(paths_i[name], data=images[name], chunks=(2, 20, 22))
        zarr.create_array(paths_m[name], data=masks[name], chunks=(20, 22))
    extract_instances(paths_i, paths_m, D, out=tmp_path / "paths.zarr", order="random")
    extract_instances(images, masks, D, out=tmp_path / "arrays.zarr", order="random")
    (a, ta), (b, tb) = _read(tmp_path / "paths.zarr"), _read(tmp_path / "arrays.zarr")
    for key in ("image", "instance_ids", "centroids"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    pd.testing.assert_frame_equal(ta, tb)
    recorded = zarr.open_group(tmp_path / "paths.zarr").attrs["zarr_instances"]["sources"]
    assert recorded["fov03"] == {"image": paths_i["fov03"], "mask": paths_m["fov03"]}
    # a missing path among many still names the input
    paths_m["fov05"] = str(tmp_path / "missing.zarr")
    with pytest.raises(FileNotFoundError, match=r"mask='.*missing.zarr'"):
        extract_instances(paths_i, paths_m, D)


def test_study_3d_sources_of_different_depths_with_z_window_and_masks(tmp_path):
    specs = {"deep": ((5, 40, 40), 8, 4), "flat": ((3, 36, 44), 7, 5)}
    images, masks = _study(specs)
    with pytest.raises(ArgumentError, match=r"source 'flat' has 3 planes vs 5.*z_window"):
        extract_instances(images, masks, D, out=tmp_path / "no.zarr")
    assert not (tmp_path / "no.zarr").exists()

    kwargs = {"z_window": 3, "extract_mask": True, "chunk_i": 4}
    out = tmp_path / "study.zarr"
    extract_instances(images, masks, D, out=out, order="random", seed=5, **kwargs)
    arrays, table = _read(out)
    assert arrays["image"].shape == (len(table), 2, 3, D, D)
    assert arrays["mask"].shape == (len(table), 1, 3, D, D)
    assert sorted(_keys(table)) == _instances(masks)
    for name in specs:
        path = tmp_path / f"{name}.zarr"
        extract_instances(images[name], masks[name], D, out=path, **kwargs)
        one, one_table = _read(path)
        rows = {int(i): r for r, i in enumerate(one_table["instance_id"])}
        mine = np.flatnonzero(table["source"].astype(str).to_numpy() == name)
        assert len(mine) == len(rows)
        for r in mine:
            i = int(table["instance_id"].iloc[r])
            for key in ("image", "mask"):
                np.testing.assert_array_equal(arrays[key][r], one[key][rows[i]], err_msg=key)


def test_sources_with_different_channels_or_dtypes_are_refused(tmp_path):
    images, masks = _study(SPECS)
    bad_channels = {**images, "c": images["c"][:1]}
    with pytest.raises(ArgumentError, match=r"source 'c' has 1 channels vs 2"):
        extract_instances(bad_channels, masks, D, out=tmp_path / "x.zarr")
    bad_dtype = {**images, "b": images["b"].astype(np.float32)}
    with pytest.raises(ArgumentError, match=r"source 'b' has image dtype float32 vs uint16"):
        extract_instances(bad_dtype, masks, D)
    assert not (tmp_path / "x.zarr").exists()


# --------------------------------------------------------------------------- the table


def _expected_table(masks: dict[str, np.ndarray], d: int) -> pd.DataFrame:
    """Area, rounded centroid and clipped fraction of every label, with NumPy alone."""
    rows = []
    for name in sorted(masks):
        m = masks[name] if masks[name].ndim == 3 else masks[name][None]
        for i in np.unique(m):
            if i == 0:
                continue
            z, y, x = np.nonzero(m == i)
            cz, cy, cx = (int(np.rint(v.mean())) for v in (z, y, x))
            y0, x0 = cy - d // 2, cx - d // 2
            inside = (y >= y0) & (y < y0 + d) & (x >= x0) & (x < x0 + d)
            rows.append((name, int(i), cz, cy, cx, z.size, 1 - inside.sum() / z.size))
    return pd.DataFrame(
        rows,
        columns=["source", "instance_id", "centroid_z", "centroid_y", "centroid_x", "area",
                 "clipped"],
    )  # fmt: skip


def test_table_columns_equal_numpy(tmp_path):
    # hand-made: means at .5 (round half to even both ways), a long object clipped
    hand = np.zeros((2, 30, 30), dtype=np.uint16)
    hand[0, 2:4, 5] = 1  # y mean 2.5 -> 2
    hand[1, 3:5, 7:9] = 2  # z 1, y mean 3.5 -> 4, x mean 7.5 -> 8
    hand[:, 10:12, 0:28] = 3  # 28 wide in a 12 window: clipped
    hand[0, 20, 20] = 7
    hand[1, 20, 21] = 7  # z mean 0.5 -> 0, x mean 20.5 -> 20
    _, balls = make_image_and_mask((2, 30, 30), 6, D, seed=8)
    masks = {"hand": hand, "balls": balls}
    images = {k: np.ones((1, *m.shape), dtype=np.uint16) for k, m in masks.items()}
    out = tmp_path / "t.zarr"
    extract_instances(images, masks, D, out=out)
    table = read_table(out)
    expected = _expected_table(masks, D)
    assert list(table.columns) == list(expected.columns)
    got = table.reset_index(drop=True)
    assert got["source"].dtype == "category"
    assert got["source"].astype(str).tolist() == expected["source"].tolist()
    for col in expected.columns[1:-1]:
        np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy(), err_msg=col)
    np.testing.assert_allclose(got["clipped"], expected["clipped"], rtol=1e-12, atol=0)
    hand_rows = got[got["source"] == "hand"].set_index("instance_id")
    assert hand_rows.loc[1, ["centroid_y", "centroid_x"]].tolist() == [2, 5]
    assert hand_rows.loc[2, ["centroid_z", "centroid_y", "centroid_x"]].tolist() == [1, 4, 8]
    assert hand_rows.loc[7, ["centroid_z", "centroid_x"]].tolist() == [0, 20]
    assert hand_rows.loc[3, "clipped"] == pytest.approx(16 / 28)

    # 2-D sources, random order: the same values, row by row
    images2, masks2 = _study(SPECS)
    out2 = tmp_path / "t2.zarr"
    extract_instances(images2, masks2, D, out=out2, order="random", seed=1)
    table2 = read_table(out2)
    expected2 = _expected_table(masks2, D).set_index(["source", "instance_id"])
    keyed = expected2.loc[_keys(table2)]
    for col in ("centroid_z", "centroid_y", "centroid_x", "area"):
        np.testing.assert_array_equal(table2[col].to_numpy(), keyed[col].to_numpy(), err_msg=col)
    np.testing.assert_allclose(table2["clipped"], keyed["clipped"], rtol=1e-12, atol=0)
    assert (table2["clipped"] > 0).any()  # cells at the image edge are clipped


# --------------------------------------------------------------------------- percentiles


def test_percentiles_per_source_and_channel(tmp_path):
    images, masks = _study(SPECS)
    images["empty"] = images["a"].copy()
    masks["empty"] = np.zeros_like(masks["a"])
    out = tmp_path / "p.zarr"
    extract_instances(images, masks, D, out=out)
    attrs = zarr.open_group(out, mode="r").attrs["zarr_instances"]["intensity"]
    assert attrs["percentiles"] == PERCENTILES
    assert sorted(attrs["sources"]) == ["a", "b", "c", "empty"]
    for name in SPECS:
        assert images[name].dtype == np.uint16
        for ch in range(2):
            want = np.percentile(images[name][ch][masks[name] > 0], PERCENTILES)
            np.testing.assert_array_equal(attrs["sources"][name][ch], want, err_msg=name)
    assert attrs["sources"]["empty"] == [[None] * len(PERCENTILES)] * 2
    table = read_table(out)
    assert "empty" not in set(table["source"].astype(str))
    assert len(table) == len(_instances({k: masks[k] for k in SPECS}))

    with pytest.raises(ArgumentError, match="every mask of the study has no labels"):
        extract_instances(
            images, {k: np.zeros_like(m) for k, m in masks.items()}, D, out=tmp_path / "e.zarr"
        )
    assert not (tmp_path / "e.zarr").exists()


def test_percentiles_of_3d_sources(tmp_path):
    images, masks = _study({"u": ((3, 40, 40), 8, 9), "v": ((3, 30, 50), 6, 10)}, channels=3)
    out = tmp_path / "p3.zarr"
    extract_instances(images, masks, D, out=out)
    got = zarr.open_group(out, mode="r").attrs["zarr_instances"]["intensity"]["sources"]
    for name in images:
        for ch in range(3):
            want = np.percentile(images[name][ch][masks[name] > 0], PERCENTILES)
            np.testing.assert_array_equal(got[name][ch], want, err_msg=f"{name} {ch}")


# --------------------------------------------------------------------------- anndata


def test_anndata_reads_obs_as_read_table(tmp_path):
    anndata_io = pytest.importorskip("anndata.io")
    images, masks = _study(SPECS)
    meta = pd.DataFrame(
        {"source": ["a", "b", "c"], "instance_id": [1, 1, 2], "kind": ["x", "y", "x"],
         "n": [3, 4, 5]}
    )  # fmt: skip
    out = tmp_path / "s.zarr"
    with pytest.warns(UnmatchedMetadataWarning):
        extract_instances(images, masks, D, out=out, metadata=meta, order="random")
    obs = anndata_io.read_elem(zarr.open_group(out, mode="r")["obs"])
    table = read_table(out)
    pd.testing.assert_frame_equal(obs, table)
    assert table["n"].dtype == "Int64"
    assert table["kind"].dtype == "category"


# --------------------------------------------------------------------------- metadata


def _meta_frame() -> pd.DataFrame:
    # matched: (a, 1), (a, 2), (b, 1), (c, 3); unmatched: (a, 999), (zz, 1)
    return pd.DataFrame(
        {
            "source": ["a", "a", "b", "c", "a", "zz"],
            "instance_id": [1, 2, 1, 3, 999, 1],
            "score": [0.5, 1.5, 2.5, 3.5, 9.0, 9.0],
            "kind": ["x", "y", "x", "z", "w", "w"],
            "count": [10, 20, 30, 40, 50, 60],
        }
    )


@pytest.mark.parametrize("as_csv", [False, True])
def test_metadata_joined_on_source_and_id(tmp_path, as_csv):
    images, masks = _study(SPECS)
    meta = _meta_frame()
    n = len(_instances(masks))
    given: object = meta
    if as_csv:
        given = tmp_path / "meta.csv"
        meta.to_csv(given, index=False)
    out = tmp_path / "m.zarr"
    with pytest.warns(UnmatchedMetadataWarning) as record:
        extract_instances(images, masks, D, out=out, metadata=given, order="random", seed=4)
    unmatched = [w for w in record if w.category is UnmatchedMetadataWarning]
    assert len(unmatched) == 1
    message = str(unmatched[0].message)
    assert f"2 metadata rows match no crop and {n - 4} of {n} crops have no metadata row" in (
        message
    )
    table = read_table(out)
    assert list(table.columns)[-3:] == ["score", "kind", "count"]
    by_key = meta.set_index(["source", "instance_id"])
    for key, (_, row) in zip(_keys(table), table.iterrows(), strict=True):
        if key in by_key.index and key[0] != "zz":
            want = by_key.loc[key]
            assert row["score"] == want["score"]
            assert row["kind"] == want["kind"]
            assert row["count"] == want["count"]
        else:
            assert pd.isna(row["score"]) and pd.isna(row["kind"]) and pd.isna(row["count"])
    assert table["count"].dtype == "Int64"
    assert int(table["score"].notna().sum()) == 4


def test_duplicate_metadata_keys_are_refused_before_writing(tmp_path):
    images, masks = _study(SPECS)
    meta = pd.concat([_meta_frame(), _meta_frame().iloc[[2]]])
    out = tmp_path / "dup.zarr"
    with pytest.raises(ArgumentError, match=r"repeats.*\('b', 1\)"):
        extract_instances(images, masks, D, out=out, metadata=meta)
    assert not out.exists()
    csv = tmp_path / "dup.csv"
    meta.to_csv(csv, index=False)
    with pytest.raises(ArgumentError, match=r"repeats.*\('b', 1\)"):
        extract_instances(images, masks, D, out=out, metadata=csv)
    assert not out.exists()


def test_single_image_metadata_by_instance_id(tmp_path):
    image, mask = make_image_and_mask((60, 60), 10, D, seed=6)
    ids = np.unique(mask[mask > 0])
    meta = pd.DataFrame({"instance_id": [int(ids[0]), int(ids[-1]), 12345], "cls": [7, 8, 9]})
    out = tmp_path / "one.zarr"
    with pytest.warns(UnmatchedMetadataWarning, match=rf"1 metadata rows.*{ids.size - 2} of "):
        extract_instances(image, mask, D, out=out, metadata=meta)
    table = read_table(out)
    np.testing.assert_array_equal(table["instance_id"], ids)
    cls = table.set_index("instance_id")["cls"]
    assert cls.loc[int(ids[0])] == 7 and cls.loc[int(ids[-1])] == 8
    assert int(cls.isna().sum()) == ids.size - 2


# --------------------------------------------------------------------------- append

OLD = {"m": ((60, 70), 14, 11), "n": ((50, 50), 9, 12)}
NEW = {"a": ((64, 48), 12, 13), "b": ((56, 60), 11, 14)}
APPEND_KW = {"chunk_i": 4, "extract_mask": True, "order": "id"}


def _chunk_files(out: Path, key: str) -> dict[int, tuple[bytes, int]]:
    """Row-chunk index -> (bytes, mtime) of every chunk file of ``out/key``."""
    files = {}
    for p in (out / key / "c").iterdir():
        f = p / "0" / "0" / "0" / "0"
        files[int(p.name)] = (f.read_bytes(), f.stat().st_mtime_ns)
    return files


def test_append_keeps_old_chunks_and_equals_a_clean_run(tmp_path):
    images, masks = _study({**OLD, **NEW})
    old = {k: images[k] for k in OLD}, {k: masks[k] for k in OLD}
    new = {k: images[k] for k in NEW}, {k: masks[k] for k in NEW}
    out = tmp_path / "app.zarr"
    extract_instances(*old, D, out=out, **APPEND_KW)
    old_table = read_table(out)
    n_old = len(old_table)
    assert n_old % 4  # the last old chunk is partial
    before = {k: _chunk_files(out, k) for k in ("image", "mask")}
    full = n_old // 4  # chunks holding old rows only
    time.sleep(0.01)

    ids, crops = extract_instances(*new, D, out=out, append=True, **APPEND_KW)
    arrays, table = _read(out)
    n_new = len(_instances(new[1]))
    assert len(table) == n_old + n_new
    np.testing.assert_array_equal(ids, arrays["instance_ids"][n_old:])
    np.testing.assert_array_equal(crops.compute(), arrays["image"][n_old:])
    for key in ("image", "mask"):
        after = _chunk_files(out, key)
        for i in range(full):
            assert after[i] == before[key][i], f"{key} chunk {i} changed"
        assert after[full][0] != before[key][full][0]  # partial chunk rewritten, rows added
    # the table: old rows as they were, then the new sources
    pd.testing.assert_frame_equal(table.iloc[:n_old], old_table, check_categorical=False)
    assert table["source"].cat.categories.tolist() == ["m", "n", "a", "b"]
    assert _keys(table) == _instances(old[1]) + _instances(new[1])
    assert table.index.tolist() == [str(r) for r in range(n_old + n_new)]

    # equals a clean extraction of all sources, row by row by (source, id)
    clean = tmp_path / "clean.zarr"
    extract_instances(images, masks, D, out=clean, **APPEND_KW)
    c_arrays, c_table = _read(clean)
    where = {k: r for r, k in enumerate(_keys(c_table))}
    rows = np.array([where[k] for k in _keys(table)])
    for key in ("image", "mask", "instance_ids", "centroids"):
        if key in c_arrays:
            np.testing.assert_array_equal(arrays[key], c_arrays[key][rows], err_msg=key)
    cols = list(c_table.columns)
    pd.testing.assert_frame_equal(
        table.reset_index(drop=True)[cols],
        c_table.iloc[rows].reset_index(drop=True)[cols],
        check_categorical=False,
    )
    g_attrs = zarr.open_group(out, mode="r").attrs["zarr_instances"]
    c_attrs = zarr.open_group(clean, mode="r").attrs["zarr_instances"]
    assert g_attrs["complete"] is True
    assert g_attrs["intensity"] == c_attrs["intensity"]
    differ = {k for k in c_attrs if g_attrs.get(k) != c_attrs[k]}
    assert differ == set(), {k: (g_attrs.get(k), c_attrs[k]) for k in differ}
    assert g_attrs["parameters"]["n_instances"] == n_old + n_new
    assert sorted(ZarrIterableInstances(str(out), None).instance_ids.tolist()) == sorted(
        arrays["instance_ids"].tolist()
    )


def test_append_refusals(tmp_path):
    images, masks = _study({**OLD, **NEW})
    out = tmp_path / "app.zarr"
    with pytest.raises(ArgumentError, match="append=True"):
        extract_instances(images, masks, D, out=out, append=True)
    assert not out.exists()
    extract_instances({"m": images["m"]}, {"m": masks["m"]}, D, out=out, chunk_i=4)
    arrays, table = _read(out)
    with pytest.raises(ArgumentError, match=r"source 'm' is in the store already"):
        extract_instances(
            {"m": images["m"], "a": images["a"]},
            {"m": masks["m"], "a": masks["a"]},
            D,
            out=out,
            append=True,
            chunk_i=4,
        )
    got, got_table = _read(out)  # unchanged, still complete
    pd.testing.assert_frame_equal(got_table, table)
    for key in arrays:
        np.testing.assert_array_equal(got[key], arrays[key], err_msg=key)


_KILLED = """
import sys, time
import dask
import numpy as np
import zarr_instances._extract_write as xw
from zarr_instances import extract_instances
from zarr_instances.testing import make_image_and_mask

real = xw.write_units

def slow(*args, **kwargs):
    time.sleep(0.2)
    return real(*args, **kwargs)

xw.write_units = slow  # the write passes look it up in its module at each call
xw._TASK_BYTES = 1  # one unit per write task, so the kill lands between units
dask.config.set(scheduler="synchronous")
specs = {specs!r}
images, masks = {{}}, {{}}
for name, (shape, n, seed) in specs.items():
    images[name], masks[name] = make_image_and_mask(shape, n, {d}, seed=seed)
extract_instances(images, masks, {d}, out={out!r}, append=True, **{kw!r})
"""


def test_append_killed_and_rerun_equals_a_clean_run(tmp_path):
    kw = {**APPEND_KW, "chunk_i": 2, "order": "random", "seed": 7}
    images, masks = _study({**OLD, **NEW})
    old = {k: images[k] for k in OLD}, {k: masks[k] for k in OLD}
    new = {k: images[k] for k in NEW}, {k: masks[k] for k in NEW}
    out, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    for path in (out, clean):
        extract_instances(*old, D, out=path, **kw)
    n_old = len(read_table(out))
    assert n_old % 2
    extract_instances(*new, D, out=clean, append=True, **kw)
    expected, expected_table = _read(clean)
    n_units = expected["progress"].size
    start_unit = n_old // 2
    assert n_units - start_unit >= 10

    code = textwrap.dedent(_KILLED).format(specs=NEW, d=D, out=str(out), kw=kw)
    env = {**os.environ, "PYTHONPATH": str(Path(zarr_instances.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            flags = zarr.open_array(out / "progress", mode="r")[...]
        except Exception:  # not there yet, or caught mid-write: poll again
            flags = None
        if flags is not None and flags.size == n_units and flags[start_unit:].sum() >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()  # killed, not finished
    done = zarr.open_array(out / "progress", mode="r")[...]
    assert done.size == n_units
    assert 0 < done[start_unit:].sum() < n_units - start_unit
    assert done[:start_unit].all()

    unfinished = r"holds an unfinished append of the sources \[.*append=True.*the first \d+ rows"
    with pytest.raises(StoreIncompleteError, match=unfinished):
        ZarrIterableInstances(str(out), None)
    with pytest.raises(StoreIncompleteError, match=unfinished):
        read_table(out)

    ids, _ = extract_instances(*new, D, out=out, append=True, **kw)
    got, got_table = _read(out)
    np.testing.assert_array_equal(ids, expected["instance_ids"][n_old:])
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    pd.testing.assert_frame_equal(got_table, expected_table)
    a = dict(zarr.open_group(out, mode="r").attrs)["zarr_instances"]
    b = dict(zarr.open_group(clean, mode="r").attrs)["zarr_instances"]
    assert a == b
    assert a["complete"] is True and "append" not in a


# --------------------------------------------------------------------------- distributed


def test_study_on_local_cluster_equals_local_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    images, masks = _study(SPECS)
    kwargs = {"order": "random", "seed": 2, "chunk_i": 5, "extract_mask": True, "tile_size": 32}
    local = tmp_path / "local.zarr"
    extract_instances(images, masks, D, out=local, **kwargs)
    want, want_table = _read(local)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        out = tmp_path / "cluster.zarr"
        extract_instances(images, masks, D, out=out, **kwargs)
        _, lazy = extract_instances(images, masks, D, **{**kwargs, "extract_mask": False})
        lazy_crops = lazy.compute()
    got, got_table = _read(out)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    pd.testing.assert_frame_equal(got_table, want_table)
    np.testing.assert_array_equal(lazy_crops, want["image"])
    # clipping counts and percentiles came back from the cluster's write pass
    got_attrs = dict(zarr.open_group(out, mode="r").attrs)["zarr_instances"]
    want_attrs = dict(zarr.open_group(local, mode="r").attrs)["zarr_instances"]
    assert got_attrs["windows"] == want_attrs["windows"]
    assert got_attrs["intensity"] == want_attrs["intensity"]
