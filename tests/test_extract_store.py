from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

import zarr_instances
import zarr_instances._extract_write as xw
from zarr_instances import (
    ArgumentError,
    ArgumentTypeError,
    ChunkReadError,
    StoreExistsError,
    StoreIncompleteError,
    StoreNotFoundError,
    ZarrIterableInstances,
    extract_instances,
    read_table,
)
from zarr_instances._store import open_instances
from zarr_instances.testing import make_image_and_mask

D = 12


@pytest.fixture
def inputs(tmp_path) -> tuple[str, str, np.ndarray, np.ndarray]:
    image, mask = make_image_and_mask((120, 100), 45, D, seed=11)
    img = tmp_path / "img.zarr"
    msk = tmp_path / "mask.zarr"
    zarr.create_array(img, data=image, chunks=(2, 40, 40))
    zarr.create_array(msk, data=mask, chunks=(50, 50))
    return str(img), str(msk), image, mask


def _read_all(path) -> dict[str, np.ndarray]:
    g = zarr.open_group(path, mode="r")
    return {k: g[k][...] for k in g.array_keys()}


def test_store_layout_and_dataset_reads_it(inputs, tmp_path):
    img, msk, image, mask = inputs
    out = tmp_path / "out.zarr"
    ids, inst = extract_instances(img, msk, D, out=out, extract_mask=True, chunk_i=8)
    _, lazy = extract_instances(image, mask, D)
    np.testing.assert_array_equal(inst.compute(), lazy.compute())
    g = zarr.open_group(out, mode="r")
    assert set(g.array_keys()) == {"image", "mask", "instance_ids", "centroids", "progress"}
    n = ids.size
    assert g["image"].shape == (n, 2, 1, D, D)
    assert g["image"].chunks == (8, 2, 1, D, D)
    assert g["mask"].shape == (n, 1, 1, D, D)
    assert g["mask"].dtype == np.uint8
    np.testing.assert_array_equal(g["instance_ids"][...], ids)
    cents = g["centroids"][...]
    own = g["mask"][...]
    for k in range(n):  # independent reference: the label window, then window == id
        _, yy, xx = np.nonzero(mask[None] == ids[k])
        assert cents[k].tolist() == [0, int(np.rint(yy.mean())), int(np.rint(xx.mean()))]
        y0, x0 = cents[k, 1] - D // 2, cents[k, 2] - D // 2
        window = np.zeros((D, D), dtype=mask.dtype)
        ys, xs = slice(max(y0, 0), y0 + D), slice(max(x0, 0), x0 + D)
        piece = mask[ys, xs]
        window[
            ys.start - y0 : ys.start - y0 + piece.shape[0],
            xs.start - x0 : xs.start - x0 + piece.shape[1],
        ] = piece
        np.testing.assert_array_equal(own[k, 0, 0], (window == ids[k]).astype(np.uint8))
    assert own.max() == 1
    attrs = g.attrs["zarr_instances"]
    assert attrs["complete"] is True
    assert attrs["parameters"]["diameter"] == D
    assert attrs["parameters"]["n_instances"] == n
    assert attrs["source"] == {"image": img, "mask": msk}
    assert attrs["version"] == zarr_instances.__version__
    assert g["progress"][...].all()
    ds = ZarrIterableInstances(out, None, None, normalize=None)
    rows = list(ds)
    assert len(rows) == n
    x, iid, row = rows[5]
    assert iid == ids[5]
    assert row == 5
    np.testing.assert_array_equal(x.numpy(), g["image"][5].astype(np.float32))


class _Recording(WrapperStore):
    """A store that records the keys it is asked for."""

    def __init__(self, store):
        super().__init__(store)
        self.keys = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)


_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_finished_store_has_consolidated_metadata(inputs, tmp_path, zarr_format):
    img, msk, _, _ = inputs
    out = tmp_path / "o.zarr"
    ids, _ = extract_instances(
        img, msk, D, out=out, zarr_format=zarr_format, extract_mask=True, chunk_i=8
    )
    g = zarr.open_group(out, mode="r", use_consolidated=True)  # raises if not consolidated
    nodes = {"image", "mask", "instance_ids", "centroids", "progress", "obs"}
    assert {k.split("/")[0] for k in g.metadata.consolidated_metadata.metadata} == nodes
    assert g.attrs["zarr_instances"]["complete"] is True
    # Opening the store reads no per-array metadata: one request serves every array.
    store = _Recording(LocalStore(out, read_only=True))
    opened = open_instances(zarr.open_group(store=store, mode="r"))
    np.testing.assert_array_equal(opened.instance_ids, ids)
    assert opened.array.shape == (ids.size, 2, 1, D, D)
    assert any(k.startswith("instance_ids/") for k in store.keys)  # it saw the ids read
    assert [k for k in store.keys if "/" in k and k.endswith(_METADATA)] == []
    # the dataset streams it from the path
    rows = [int(r) for _, _, r in ZarrIterableInstances(str(out), None, None, normalize=None)]
    assert rows == list(range(ids.size))


def test_default_chunking_is_about_2_mib(tmp_path):
    image, mask = make_image_and_mask((300, 300), 300, 64, seed=2)
    extract_instances(image, mask, 64, out=tmp_path / "big.zarr")
    arr = zarr.open_array(tmp_path / "big.zarr/image", mode="r")
    assert arr.chunks[0] == 128  # 128 crops of 2 x 64 x 64 uint16 = 2 MiB


@pytest.mark.parametrize(
    "kwargs",
    [
        {"zarr_format": 2, "compressors": None},
        {"chunk_i": 4, "shards": 12},
        {"order": "random", "seed": 3, "chunk_i": 5},
    ],
)
def test_formats_shards_order(inputs, tmp_path, kwargs):
    img, msk, image, mask = inputs
    ids_ref, ref = extract_instances(image, mask, D)
    ref = ref.compute()
    ids, inst = extract_instances(img, msk, D, out=tmp_path / "o.zarr", **kwargs)
    got = inst.compute()
    g = zarr.open_group(tmp_path / "o.zarr", mode="r")
    assert g.metadata.zarr_format == kwargs.get("zarr_format", 3)
    if "shards" in kwargs:
        assert g["image"].shards == (12, 2, 1, D, D)
        assert g["image"].chunks == (4, 2, 1, D, D)
    if kwargs.get("order") == "random":
        perm = np.random.default_rng(3).permutation(ids_ref.size)
        np.testing.assert_array_equal(ids, ids_ref[perm])
        np.testing.assert_array_equal(got, ref[perm])
    else:
        np.testing.assert_array_equal(got, ref)


def test_overwrite_and_existing(inputs, tmp_path):
    img, msk, _, _ = inputs
    out = tmp_path / "out.zarr"
    ids, inst = extract_instances(img, msk, D, out=out, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # The same call on the finished store returns it and writes nothing.
    ids2, inst2 = extract_instances(img, msk, D, out=out, progress=False)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(inst2.compute(), inst.compute())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    differ = (
        r"out='.*out.zarr' holds a complete instance store; parameters differ from the "
        r"complete store: diameter: stored 12, now 14; chunk_i: stored \d+, now 5\. Pass "
        r"overwrite=True to replace it, or choose another path"
    )
    with pytest.raises(StoreExistsError, match=differ):
        extract_instances(img, msk, D + 2, out=out, chunk_i=5)
    other_mask = zarr.open_array(msk)[...]
    other_mask[other_mask == other_mask.max()] = 0  # one instance fewer
    with pytest.raises(StoreExistsError, match="instances: stored 45, now 44"):
        extract_instances(img, other_mask, D, out=out)
    moved = zarr.open_array(msk)[...]
    moved[moved == 1] = 0
    moved[:2, :2] = 1  # instance 1 moved: same parameters, other centroids
    with pytest.raises(StoreExistsError, match="centroids differ from the complete store"):
        extract_instances(img, moved, D, out=out)
    _, inst = extract_instances(img, msk, D + 2, out=out, overwrite=True)
    assert inst.shape[-1] == D + 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(StoreExistsError, match="not an instance store"):
        extract_instances(img, msk, D, out=other)
    assert (other / "notes.txt").exists()
    a_file = tmp_path / "image.tif"
    a_file.write_bytes(b"not a store")
    for overwrite in (False, True):
        with pytest.raises(StoreExistsError, match=r"image.tif' is a file; .*another path"):
            extract_instances(img, msk, D, out=a_file, overwrite=overwrite)
    assert a_file.read_bytes() == b"not a store"


def test_memory_limit_splits_into_passes(inputs, tmp_path, monkeypatch):
    img, msk, image, mask = inputs
    calls = []
    real = xw.run_with_progress
    monkeypatch.setattr(
        xw, "run_with_progress", lambda tasks, *a: (calls.append(len(tasks)), real(tasks, *a))[1]
    )
    _, inst = extract_instances(
        img, msk, D, out=tmp_path / "o.zarr", chunk_i=4, memory_limit=4 * 2 * D * D * 2 * 3
    )
    n_units = zarr.open_array(tmp_path / "o.zarr/progress", mode="r").shape[0]
    assert len(calls) == -(-n_units // 3) > 1  # 3 units of 4 crops per pass
    np.testing.assert_array_equal(inst.compute(), extract_instances(image, mask, D)[1].compute())


@pytest.mark.parametrize("order", ["id", "random"])
def test_tiles_split_by_write_task_give_the_same_store(inputs, tmp_path, monkeypatch, order):
    import zarr_instances._tile_tasks as tiles
    from zarr_instances._graph import Handoff
    from zarr_instances._packed import Packed

    img, msk, image, mask = inputs
    kwargs = {"chunk_i": 3, "order": order, "seed": 2, "extract_mask": True}
    extract_instances(img, msk, D, out=tmp_path / "one.zarr", tile_size=10_000, **kwargs)
    segments, packed = [], []
    real = tiles.cut_tile

    def cut_tile(*a):
        out = real(*a)
        # writing on a local scheduler: the write tasks take their parts
        items = [out.peek(i) for i in range(len(out))] if isinstance(out, Handoff) else out
        segments.append(len(items))
        packed.extend(isinstance(part[1], Packed) for part in items)
        return out

    monkeypatch.setattr(tiles, "cut_tile", cut_tile)
    monkeypatch.setattr(xw, "_TASK_BYTES", 1)  # one output chunk per write task
    extract_instances(img, msk, D, out=tmp_path / "split.zarr", tile_size=40, **kwargs)
    assert max(segments) > 1  # tiles handed write tasks parts of their own
    assert not any(packed)  # a small pass holds its crops as they are
    monkeypatch.setattr(xw, "_PACK_ABOVE", 0)  # ... a large one compresses waiting parts
    extract_instances(img, msk, D, out=tmp_path / "packed.zarr", tile_size=40, **kwargs)
    if order == "id":  # ids in raster order: parts of a group wait for later tiles
        assert any(packed)
    expected = _read_all(tmp_path / "one.zarr")
    for name in ("split.zarr", "packed.zarr"):
        got = _read_all(tmp_path / name)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}: {key}")
    _, ref = extract_instances(image, mask, D, order=order, seed=2)
    np.testing.assert_array_equal(got["image"], ref.compute())


_KILLED = """
import sys, time
import dask
import zarr_instances._extract_write as xw
from zarr_instances import extract_instances

real = xw.write_units
mode = sys.argv[4]
calls = []

def slow(image, mask, progress, units, r0, r1, *parts, **kwargs):
    calls.append(units)
    if mode == "torn" and len(calls) == 4:  # the 4th unit written, whichever it is
        image[r0:r1] = 7  # the process dies half way: garbage data, no progress flag
        import os
        os._exit(3)
    time.sleep(0.15)
    return real(image, mask, progress, units, r0, r1, *parts, **kwargs)

xw.write_units = slow  # the write passes look it up in its module at each call
xw._TASK_BYTES = 1  # one unit per write task, so the kill lands between units
dask.config.set(scheduler="synchronous")
extract_instances(sys.argv[1], sys.argv[2], 12, out=sys.argv[3], chunk_i=5,
                     extract_mask=True, order="random", seed=1)
"""


@pytest.mark.parametrize("mode", ["sigkill", "torn"])
def test_resume_after_kill_equals_clean_run(inputs, tmp_path, monkeypatch, mode):
    img, msk, _, _ = inputs
    kwargs = {"chunk_i": 5, "extract_mask": True, "order": "random", "seed": 1}
    clean = tmp_path / "clean.zarr"
    extract_instances(img, msk, D, out=clean, **kwargs)
    expected = _read_all(clean)
    n_units = expected["progress"].size

    out = tmp_path / "out.zarr"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(_KILLED))
    env = {**os.environ, "PYTHONPATH": str(Path(zarr_instances.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(script), img, msk, str(out), mode],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if mode == "sigkill":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if zarr.open_array(out / "progress", mode="r")[...].sum() >= 3:
                    break
            except (FileNotFoundError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        proc.kill()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err.decode()
    done = zarr.open_array(out / "progress", mode="r")[...]
    assert 0 < done.sum() < n_units
    g = zarr.open_group(out, mode="r")
    assert g.attrs["zarr_instances"]["complete"] is False
    assert g.metadata.consolidated_metadata is None  # only a complete store is consolidated

    # Opening it for reading says what is missing and how to finish it.
    unfinished = (
        rf"zarr_path='.*out.zarr' holds an unfinished extraction: {int(done.sum())} of "
        rf"{n_units} write units are written. Rerun the same extract_instances call \(or "
        r"zarr-instances extract command\) to finish it"
    )
    for open_it in (
        lambda: ZarrIterableInstances(str(out), batch_size=4),
        lambda: open_instances(zarr.open_group(out, mode="r")),
    ):
        with pytest.raises(StoreIncompleteError, match=unfinished) as info:
            open_it()
        assert isinstance(info.value, ValueError)
    # The crop array alone is a bare array: opened as it is.
    assert open_instances(str(out / "image")).instance_ids is None

    # A different call does not resume it.
    differ = (
        r"cannot resume out='.*out.zarr': parameters differ from the interrupted extraction: "
        r"diameter: stored 12, now 14; seed: stored 1, now 2\. Rerun with the stored values"
    )
    with pytest.raises(StoreExistsError, match=differ):
        extract_instances(img, msk, D + 2, out=out, **{**kwargs, "seed": 2})

    written = []
    real = xw.write_units
    monkeypatch.setattr(xw, "write_units", lambda *a, **k: (written.extend(a[3]), real(*a, **k))[1])
    extract_instances(img, msk, D, out=out, **kwargs)
    assert sorted(written) == np.flatnonzero(done == 0).tolist()
    got = _read_all(out)
    resumed = zarr.open_group(out, mode="r", use_consolidated=True)
    consolidated = resumed.metadata.consolidated_metadata.metadata
    assert {k.split("/")[0] for k in consolidated} == {*expected, "obs"}
    assert got.keys() == expected.keys()
    pd.testing.assert_frame_equal(read_table(out), read_table(clean))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    a = dict(zarr.open_group(out, mode="r").attrs)
    b = dict(zarr.open_group(clean, mode="r").attrs)
    a["zarr_instances"]["source"] = b["zarr_instances"]["source"] = None
    assert a == b
    # ... and then it streams.
    batches = list(ZarrIterableInstances(str(out), normalize=None, batch_size=16))
    rows = np.concatenate([r.numpy() for _, _, r in batches])
    streamed = np.concatenate([x.numpy() for x, _, _ in batches])
    assert sorted(rows.tolist()) == list(range(expected["image"].shape[0]))
    np.testing.assert_array_equal(streamed, expected["image"][rows].astype(np.float32))


# --------------------------------------------------------------------------- errors


def test_errors(inputs, tmp_path):
    _, _, image, mask = inputs
    cases = [
        (
            (image, mask[:-1], D),
            {},
            ArgumentError,
            r"same pixels.*\(1, 120, 100\).*got mask shape \(1, 119, 100\)",
        ),
        ((image, mask.astype(np.float32), D), {}, ArgumentTypeError, "integer labels.*float32"),
        ((image, mask > 0, D), {}, ArgumentTypeError, "integer labels.*bool"),
        ((image, mask, 0), {}, ArgumentError, "diameter must be >= 1, got 0"),
        ((image, mask, -3), {}, ArgumentError, "diameter must be >= 1, got -3"),
        ((image, mask, 2.5), {}, ArgumentTypeError, "diameter must be an integer.*2.5"),
        ((image, np.zeros_like(mask), D), {}, ArgumentError, "mask has no labels"),
        ((image, mask, D), {"order": "shuffled"}, ArgumentError, "order must be one of.*shuffled"),
        ((image, mask, D), {"chunk_i": 0}, ArgumentError, "chunk_i must be >= 1, got 0"),
        ((image, mask, D), {"depth": 2}, ArgumentError, "depth must be >= diameter // 2"),
        ((image, mask, D), {"zarr_format": 4}, ArgumentError, "zarr_format must be 2 or 3"),
        ((image, mask, D), {"shards": 10, "zarr_format": 2}, ArgumentError, "shards needs"),
        (
            (image, mask, D),
            {"shards": 10, "chunk_i": 3, "out": tmp_path / "s"},
            ArgumentError,
            "shards must be a multiple of chunk_i=3",
        ),
        ((image, mask, D), {"extract_mask": True}, ArgumentError, "extract_mask=True.*out"),
        ((image[0], mask, D), {}, ArgumentError, r"image must be .*got shape \(120, 100\)"),
        ((image[0, 0], mask, D), {}, ArgumentError, r"image must be \(c, y, x\) or"),
        ((image, np.stack([mask[None]] * 2), D), {}, ArgumentError, r"mask must be \(y, x\)"),
        ((image, mask, D), {"channel_names": ["a"]}, ArgumentError, "channel_names must name 2"),
        ((str(tmp_path / "nope.zarr"), mask, D), {}, StoreNotFoundError, "image=.*nope.zarr"),
        (([1, 2], mask, D), {}, ArgumentTypeError, "image must be a NumPy, Dask or Zarr"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            extract_instances(*args, **kwargs)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("which", "zarr_format", "shards"),
    [
        ("image", 3, None),
        ("mask", 3, None),
        ("image", 2, None),
        ("mask", 2, None),
        ("image", 3, (2, 40, 40)),
    ],
)
def test_corrupt_input_chunk_names_input_array_and_chunk(tmp_path, which, zarr_format, shards):
    image, mask = make_image_and_mask((120, 100), 45, D, seed=11)
    paths = {"image": tmp_path / "img.zarr", "mask": tmp_path / "mask.zarr"}
    img = zarr.create_array(
        paths["image"], data=image, chunks=(2, 20, 20), shards=shards, zarr_format=zarr_format
    )
    msk = zarr.create_array(paths["mask"], data=mask, chunks=(20, 20), zarr_format=zarr_format)
    bad = img if which == "image" else msk
    index = (0, 1, 2) if which == "image" else (1, 2)  # a chunk in the middle, under cells
    key = bad.metadata.encode_chunk_key(index)
    chunk_file = paths[which] / key
    assert chunk_file.is_file()
    chunk_file.write_bytes(b"not a compressed chunk" * 3)
    match = (
        rf"Could not read chunk {re.escape(repr(key))} \(chunk index "
        rf"{re.escape(str(index))}\) of the {which} array {re.escape(repr(str(bad.store_path)))}"
    )
    out = tmp_path / "out.zarr"
    with pytest.raises(ChunkReadError, match=match) as info:
        extract_instances(str(paths["image"]), str(paths["mask"]), D, out=out, progress=False)
    assert isinstance(info.value, OSError)  # `except OSError` catches it, too
    if which == "mask":  # the pass over the masks reads them before the store is made
        assert not out.exists()
    else:  # the image is first read by the write pass: the store is left unfinished
        assert zarr.open_group(out, mode="r").attrs["zarr_instances"]["complete"] is False
    # zarr.Array input and the lazy result (no out) fail the same way
    with pytest.raises(ChunkReadError, match=match):
        extract_instances(img, msk, D)[1].compute()


def test_missing_input_chunk_reads_as_fill_value(tmp_path):
    image, mask = make_image_and_mask((120, 100), 45, D, seed=11)
    img = zarr.create_array(tmp_path / "img.zarr", data=image, chunks=(2, 20, 20), fill_value=0)
    msk = zarr.create_array(tmp_path / "mask.zarr", data=mask, chunks=(20, 20), fill_value=0)
    assert mask[60:80, 20:40].any()  # the mask chunk removed below holds labels
    (tmp_path / "img.zarr" / img.metadata.encode_chunk_key((0, 1, 2))).unlink()
    (tmp_path / "mask.zarr" / msk.metadata.encode_chunk_key((3, 1))).unlink()
    image[:, 20:40, 40:60] = 0  # zarr semantics: a chunk not stored is all fill value
    mask[60:80, 20:40] = 0
    ref_ids, ref = extract_instances(image, mask, D)
    ids, got = extract_instances(str(tmp_path / "img.zarr"), str(tmp_path / "mask.zarr"), D)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(got.compute(), ref.compute())


def test_storage_options_apply_to_urls_only(inputs, tmp_path):
    img, msk, image, mask = inputs
    opts = {"anon": True}  # for an s3:// path; zarr refuses options with a local path
    ids, inst = extract_instances(img, msk, D, out=tmp_path / "o.zarr", storage_options=opts)
    ref_ids, ref = extract_instances(image, mask, D)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(inst.compute(), ref.compute())


def test_progress_bar_and_group_input(inputs, tmp_path, capsys):
    img, msk, image, mask = inputs
    extract_instances(img, msk, D, out=tmp_path / "o.zarr", progress=True, chunk_i=10)
    assert "extract_instances" in capsys.readouterr().err
    g = zarr.open_group(tmp_path / "two.zarr", mode="w")
    g.create_array("a", data=image)
    g.create_array("b", data=image)
    with pytest.raises(ArgumentError, match="neither an OME-Zarr multiscale"):
        extract_instances(tmp_path / "two.zarr", mask, D)
    with dask.config.set(scheduler="threads"):
        _, inst = extract_instances(zarr.open_array(img, mode="r"), msk, D)
        assert inst.shape[0] > 0


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_default_codec_is_blosc_lz4_byte_shuffle(inputs, tmp_path, zarr_format):
    img, msk, _, _ = inputs
    out = tmp_path / f"v{zarr_format}.zarr"
    extract_instances(img, msk, D, out=str(out), zarr_format=zarr_format, progress=False)
    arr = zarr.open_group(str(out), mode="r")["image"]
    text = repr(arr.compressors[0])
    assert "lz4" in text and "clevel=5" in text
    # byte shuffle: SHUFFLE / BloscShuffle.shuffle, never bit shuffle
    assert "SHUFFLE" in text.upper() and "BIT" not in text.upper()


def test_three_positional_arguments(inputs):
    img, msk, _, _ = inputs
    with pytest.raises(TypeError, match="3 positional arguments but 4 were given"):
        extract_instances(img, msk, D, 5)


def test_all_zero_crops_are_written_and_stream(tmp_path):
    # zarr leaves all-fill chunks out by default; a reader could not tell such a chunk
    # from a lost write, so every chunk of the crops is stored
    from zarr_instances import ZarrIterableInstances, extract_instances

    image = np.zeros((1, 40, 40), dtype=np.uint16)
    mask = np.zeros((40, 40), dtype=np.int32)
    mask[5:9, 5:9], mask[20:25, 30:35] = 1, 2
    out = tmp_path / "zeros.zarr"
    extract_instances(image, mask, 8, out=out, chunk_i=1, progress=False)
    assert sorted(p.name for p in (out / "image" / "c").iterdir()) == ["0", "1"]
    ds = ZarrIterableInstances(str(out), normalize=None, batch_size=2)
    ((x, ids, _rows),) = list(ds)
    assert ids.tolist() == [1, 2] and int(x.abs().sum()) == 0


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_flag_done_writes_what_zarr_writes(tmp_path, zarr_format, where):
    from zarr.storage import MemoryStore

    from zarr_instances._chunk_io import chunk_writer
    from zarr_instances._write import flag_done

    def make(name):
        store = str(tmp_path / name) if where == "local" else MemoryStore()
        kw = {"shape": (9,), "chunks": (1,), "dtype": "uint8", "fill_value": 0}
        return zarr.create_array(store, compressors=None, zarr_format=zarr_format, **kw)

    ref, got = make("ref.zarr"), make("got.zarr")
    assert (chunk_writer(got) is not None) == (where == "local")
    ref[2:5] = 1
    ref[7:8] = 1
    flag_done(got, range(2, 5))
    flag_done(got, range(7, 8))
    np.testing.assert_array_equal(got[...], ref[...])
    if where == "local":
        files = {
            p.relative_to(tmp_path / "ref.zarr"): p.read_bytes()
            for p in (tmp_path / "ref.zarr").rglob("*")
            if p.is_file()
        }
        for rel, data in files.items():
            assert (tmp_path / "got.zarr" / rel).read_bytes() == data, rel
        assert not list((tmp_path / "got.zarr").rglob("*.partial"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the default layout: Blosc-lz4, Zarr format 3
        {"compressors": zarr.codecs.ZstdCodec(level=3, checksum=True), "extract_mask": True},
        {"compressors": zarr.codecs.BloscCodec(cname="zstd", shuffle="bitshuffle")},
        {"compressors": None},
        {"zarr_format": 2, "extract_mask": True},
        {"shards": 8, "chunk_i": 4},  # through zarr
    ],
)
def test_direct_chunk_writes_are_the_bytes_zarr_writes(inputs, tmp_path, monkeypatch, kwargs):
    from zarr_instances import _chunk_io

    img, msk, _, _ = inputs
    kwargs = {"chunk_i": 7, **kwargs}  # 7 rows per chunk: the last chunk is partial
    direct = _chunk_io.chunk_writer
    used = []

    def recording(array):
        used.append((array.basename, direct(array)))
        return used[-1][1]

    monkeypatch.setattr(_chunk_io, "chunk_writer", recording)
    extract_instances(img, msk, D, out=tmp_path / "direct.zarr", **kwargs)
    crops = [w for name, w in used if name in ("image", "mask")]
    assert crops and all((w is not None) == ("shards" not in kwargs) for w in crops)
    monkeypatch.setattr(_chunk_io, "chunk_writer", lambda a: None)
    extract_instances(img, msk, D, out=tmp_path / "zarr.zarr", **kwargs)

    def files(root):
        return {
            p.relative_to(root): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and p.name not in ("zarr.json", ".zattrs", ".zmetadata")
        }

    got, expected = files(tmp_path / "direct.zarr"), files(tmp_path / "zarr.zarr")
    assert got.keys() == expected.keys()
    assert len(got) > 10
    for key, data in expected.items():
        assert got[key] == data, key


@pytest.mark.parametrize("numba", ["0", "1"])
def test_uint64_ids_above_int64_are_refused(monkeypatch, numba):
    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", numba)
    image = np.ones((1, 20, 20), dtype=np.uint8)
    mask = np.zeros((20, 20), dtype=np.uint64)
    mask[2:5, 2:5] = 7
    mask[10:14, 10:14] = 2**63 + 5
    mask[15:18, 3:6] = 2**64 - 1
    with pytest.raises(
        ArgumentError, match=r"mask holds ids above the int64 range.*18446744073709551615"
    ):
        extract_instances(image, mask, 6)
    mask[mask > 7] = 2**63 - 1  # the largest int64 is kept exactly
    ids, _ = extract_instances(image, mask, 6)
    assert ids.tolist() == [7, 2**63 - 1]
