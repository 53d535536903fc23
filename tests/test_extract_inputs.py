"""Direct chunk reads of Zarr inputs (``CheckedZarr``) against zarr's own reads."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec
from zarr.storage import MemoryStore

from zarr_instances import ChunkReadError
from zarr_instances._inputs import CheckedZarr, _from_zarr

V3 = [
    ("zstd", [ZstdCodec(level=3)]),
    ("zstd-checksum", [ZstdCodec(level=1, checksum=True)]),
    ("blosc", [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]),
    ("raw", []),
    ("gzip", [GzipCodec()]),  # not decoded directly: zarr's pipeline
]
V2 = [
    ("blosc", numcodecs.Blosc()),
    ("zstd", numcodecs.Zstd()),
    ("lz4", numcodecs.LZ4()),
    ("zlib", numcodecs.Zlib()),
    ("gzip", numcodecs.GZip()),
    ("raw", None),
]


def _make(store, fmt, codecs, dtype):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, (3, 50, 45)).astype(dtype)
    data[:, :20, :20] = 0  # a chunk of fill value (not stored by zarr)
    kw = {"chunks": (2, 16, 20), "fill_value": 0, "zarr_format": fmt}
    if fmt == 3:
        kw["compressors"] = codecs or None
        kw["serializer"] = BytesCodec()
    else:
        kw["compressors"] = codecs
    arr = zarr.create_array(store, shape=data.shape, dtype=dtype, **kw)
    arr[...] = data
    return arr, data


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32", "uint8"])
@pytest.mark.parametrize(("fmt", "name"), [(3, n) for n, _ in V3] + [(2, n) for n, _ in V2])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_direct_reads_equal_zarr(tmp_path, dtype, fmt, name, where):
    codecs = dict(V3 if fmt == 3 else V2)[name]
    store = str(tmp_path / "a.zarr") if where == "local" else MemoryStore()
    arr, data = _make(store, fmt, codecs, dtype)
    checked = CheckedZarr(arr, "image")
    assert (checked._decode is not None) == (name != "gzip" or fmt == 2)
    assert (checked._file is not None) == (where == "local" and checked._decode is not None)
    got = _from_zarr("image", arr).compute(scheduler="synchronous")  # one block per chunk
    np.testing.assert_array_equal(got, data)
    assert got.dtype == data.dtype
    # regions that are not one whole chunk go through zarr
    np.testing.assert_array_equal(checked[1:3, 5:40, 3:7], data[1:3, 5:40, 3:7])
    np.testing.assert_array_equal(
        checked[(slice(2, 3), slice(48, 50), slice(40, 45))], data[2:, 48:, 40:]
    )


def test_direct_read_of_a_chunk_with_the_wrong_size_fails(tmp_path):
    arr, _ = _make(str(tmp_path / "a.zarr"), 3, [ZstdCodec()], "uint16")
    other = numcodecs.Zstd().encode(np.zeros(10, dtype=np.uint16))
    (tmp_path / "a.zarr" / arr.metadata.encode_chunk_key((0, 1, 1))).write_bytes(other)
    checked = CheckedZarr(arr, "image")
    with pytest.raises(ChunkReadError, match=r"chunk 'c/0/1/1' \(chunk index \(0, 1, 1\)\)"):
        checked[0:2, 16:32, 20:40]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_v2_input_without_fill_value_reads_missing_chunks_as_zero(tmp_path, where):
    from zarr_instances import ZarrIterableInstances, extract_instances
    from zarr_instances.testing import make_image_and_mask

    image, _ = make_image_and_mask((120, 100), 45, 12, seed=11)
    store = str(tmp_path / "img.zarr") if where == "local" else MemoryStore()
    arr = zarr.create_array(
        store,
        shape=image.shape,
        chunks=(2, 40, 40),
        dtype=image.dtype,
        zarr_format=2,
        fill_value=None,
    )
    arr[:, :40, :] = image[:, :40, :]  # the chunks below row 40 are not stored
    assert arr.fill_value is None
    expected = np.asarray(arr[...])
    np.testing.assert_array_equal(expected[:, 40:], 0)  # what zarr reads
    got = _from_zarr("image", arr).compute(scheduler="synchronous")
    np.testing.assert_array_equal(got, expected)
    mask = np.zeros(image.shape[-2:], dtype=np.int32)
    mask[5:25, 5:25] = 1  # in the stored chunks
    mask[60:80, 60:80] = 2  # in chunks that are not stored
    out = tmp_path / "out.zarr"
    extract_instances(arr, mask, 12, out=out, progress=False)
    ds = ZarrIterableInstances(str(out), normalize=None, batch_size=2)
    ((x, ids, _rows),) = list(ds)
    assert ids.tolist() == [1, 2]
    assert int(x[0].abs().sum()) > 0
    assert int(x[1].abs().sum()) == 0


# --------------------------------------------------------------- files and axes


MINISBLACK = "minisblack"


def _ref(image, mask, d=10, **kw):
    from zarr_instances import extract_instances

    ids, inst = extract_instances(image, mask, d, **kw)
    return ids, inst.compute()


def _same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].dtype == b[1].dtype


@pytest.fixture
def data3d():
    from zarr_instances.testing import make_image_and_mask

    return make_image_and_mask((3, 48, 40), 12, 10, seed=1)  # (2, 3, 48, 40), (3, 48, 40)


def test_tiff_inputs_equal_numpy(tmp_path, data3d):
    tifffile = pytest.importorskip("tifffile")
    image, mask = data3d
    ref = _ref(image, mask)
    tifffile.imwrite(
        tmp_path / "img.ome.tif", image, ome=True, metadata={"axes": "CZYX"}, photometric=MINISBLACK
    )
    tifffile.imwrite(tmp_path / "mask.tif", mask, metadata={"axes": "ZYX"}, photometric=MINISBLACK)
    _same(_ref(tmp_path / "img.ome.tif", str(tmp_path / "mask.tif")), ref)
    # compressed and tiled: read through tifffile's Zarr store, blocks of whole tiles
    tifffile.imwrite(
        tmp_path / "tiled.tif", image, compression="zlib", tile=(16, 16), photometric=MINISBLACK
    )
    tifffile.imwrite(tmp_path / "mask.TIFF", mask, compression="zlib", photometric=MINISBLACK)
    # the mask's axes are unknown (default zyx); the image's are given
    _same(_ref(tmp_path / "tiled.tif", tmp_path / "mask.TIFF", axes="czyx", tile_size=16), ref)
    # channels-last RGB page: axes YXS recorded; vs NumPy with axes="yxc"
    rgb = np.moveaxis(image[:, 0], 0, -1)[..., [0, 1, 0]].astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tiff", rgb, photometric="rgb")
    ref2 = _ref(rgb, mask[0], axes="yxc")
    _same(_ref(tmp_path / "rgb.tiff", mask[0]), ref2)
    _same(_ref(np.moveaxis(rgb, -1, 0), mask[0]), ref2)


def test_ome_tiff_channel_names_and_time(tmp_path, data3d):
    tifffile = pytest.importorskip("tifffile")
    from zarr_instances import extract_instances

    image, mask = data3d
    meta = {"axes": "TCZYX", "Channel": {"Name": ["DAPI", "CD3"]}}
    tifffile.imwrite(
        tmp_path / "t1.ome.tif", image[None], ome=True, metadata=meta, photometric=MINISBLACK
    )
    out = tmp_path / "out.zarr"
    extract_instances(tmp_path / "t1.ome.tif", mask, 10, out=out)
    attrs = zarr.open_group(out, mode="r").attrs["zarr_instances"]
    assert attrs["channel_names"] == ["DAPI", "CD3"]
    tifffile.imwrite(
        tmp_path / "t2.ome.tif",
        np.stack([image] * 2),
        ome=True,
        metadata=meta,
        photometric=MINISBLACK,
    )
    with pytest.raises(ValueError, match=r"2 time points \(axis 't'\) in the axes 'tczyx'"):
        extract_instances(tmp_path / "t2.ome.tif", mask, 10)
    with pytest.raises(ValueError, match=r"axes='zcyx' disagrees with the axes 'czyx'"):
        extract_instances(tmp_path / "t1.ome.tif", mask, 10, axes="zcyx")


def test_npy_inputs_equal_numpy(tmp_path, data3d):
    image, mask = data3d
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "mask.npy", mask.astype(">i4"))  # big-endian: read as native
    np.save(tmp_path / "imgf.npy", np.asfortranarray(image))
    ref = _ref(image, mask)
    _same(_ref(tmp_path / "img.npy", str(tmp_path / "mask.npy")), ref)
    _same(_ref(str(tmp_path / "imgf.npy"), mask, tile_size=16), ref)
    np.save(tmp_path / "zyx.npy", image[0])  # one channel, no channel axis
    _same(_ref(tmp_path / "zyx.npy", mask, axes="zyx"), _ref(image[:1], mask))


def test_file_sources_pickle_and_read_lazily(tmp_path, data3d):
    import pickle

    tifffile = pytest.importorskip("tifffile")
    from zarr_instances._formats import open_file

    image, _ = data3d
    np.save(tmp_path / "a.npy", image)
    tifffile.imwrite(
        tmp_path / "b.tif", image, compression="zlib", tile=(16, 16), photometric=MINISBLACK
    )
    for path, kind in ((tmp_path / "a.npy", "npy"), (tmp_path / "b.tif", "tiff")):
        src = open_file("image", str(path), kind).data
        assert src._opened is None  # nothing read yet
        np.testing.assert_array_equal(src[1, :, 5:30, 3:9], image[1, :, 5:30, 3:9])
        again = pickle.loads(pickle.dumps(src))
        assert again._opened is None
        np.testing.assert_array_equal(again[:, 2], image[:, 2])


def test_ome_zarr_axes_in_any_order(tmp_path, data3d):
    image, mask = data3d
    ref = _ref(image, mask)

    def ome(path, data, axes):
        g = zarr.open_group(tmp_path / path, mode="w")
        g.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"axes": [{"name": a} for a in axes], "datasets": [{"path": "0"}]}],
        }
        g.create_array("0", data=data, chunks=tuple(min(n, 16) for n in data.shape))
        return tmp_path / path

    zcyx = ome("img.zarr", np.transpose(image, (1, 0, 2, 3)), "zcyx")
    zyx = ome("mask.zarr", mask, "zyx")
    _same(_ref(zcyx, zyx), ref)
    tczyx = ome("img_t.zarr", image[None], "tczyx")
    tczyx_mask = ome("mask_t.zarr", mask[None, None], "tczyx")
    _same(_ref(tczyx, tczyx_mask), ref)
    yxz = ome("mask_yxz.zarr", np.transpose(mask, (1, 2, 0)), "yxz")
    _same(_ref(zcyx, yxz), ref)


def test_axes_hints(data3d):
    from zarr_instances import extract_instances

    image, mask = data3d
    last = np.moveaxis(image[:, 0], 0, -1)  # (48, 40, 2)
    with pytest.raises(ValueError, match=r"\(48, 40, 2\) looks channels-last: pass axes='yxc'"):
        extract_instances(last, mask[0], 10)
    with pytest.raises(ValueError, match=r"without a channel axis: pass axes='zyx'"):
        extract_instances(image[0], mask, 10)
    with pytest.raises(ValueError, match=r"pass mask_axes='yxc'"):
        extract_instances(image[:, :1], mask[0][..., None], 10)
    with pytest.raises(ValueError, match=r"image must be .*\(48, 40\).*pass axes='yx'"):
        extract_instances(image[0, 0], mask[0], 10)
    with pytest.raises(ValueError, match=r"axes='yxc' names 3 axes, but the input has shape"):
        extract_instances(image, mask, 10, axes="yxc")
    _same(_ref(last, mask[0], axes="yxc"), _ref(image[:, :1], mask[:1]))
    _same(_ref(image[0], mask, axes="zyx"), _ref(image[:1], mask))


@pytest.mark.parametrize("name", ["img.png", "img.czi", "notes.txt", "noext"])
@pytest.mark.parametrize("param", ["image", "mask"])
def test_unsupported_files(tmp_path, data3d, name, param):
    from zarr_instances import ArgumentError, extract_instances

    image, mask = data3d
    path = tmp_path / name
    path.write_bytes(b"not an image")
    args = (path, mask) if param == "image" else (image, path)
    with pytest.raises(ArgumentError, match=rf"{param}='.*{name}' is a file of a kind") as info:
        extract_instances(*args, 10)
    for kind in ("Zarr", "OME-Zarr", "TIFF", "OME-TIFF", ".npy", "Dask", "extract_from_spatial"):
        assert kind in str(info.value)
    missing = tmp_path / "missing.tif"
    args = (missing, mask) if param == "image" else (image, missing)
    with pytest.raises(FileNotFoundError, match=rf"{param}='.*missing.tif': no such file"):
        extract_instances(*args, 10)


def test_cli_axes(tmp_path, data3d):
    from zarr_instances.cli import main

    image, mask = data3d
    np.save(tmp_path / "img.npy", image[0])
    np.save(tmp_path / "mask.npy", mask)
    argv = ["extract", str(tmp_path / "img.npy"), str(tmp_path / "mask.npy")]
    assert main([*argv, str(tmp_path / "a.zarr"), "--diameter", "10", "--no-progress"]) == 2
    out = str(tmp_path / "b.zarr")
    assert main([*argv, out, "--diameter", "10", "--axes", "zyx", "--no-progress"]) == 0
    np.testing.assert_array_equal(zarr.open_group(out)["image"][...], _ref(image[:1], mask)[1])


_BIG_TIFF = """
import sys, tracemalloc, numpy as np
from zarr_instances import extract_instances
img, msk = sys.argv[1], sys.argv[2]
extract_instances(img, msk, 32, tile_size=512)[1].compute()  # first: imports, kernels compiled
tracemalloc.start()
ids, inst = extract_instances(img, msk, 32, tile_size=512)
crops = inst.compute(scheduler="threads", num_workers=2)
peak = tracemalloc.get_traced_memory()[1]
print(ids.size, int(crops.sum()), peak)
"""


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_larger_than_a_tile_is_read_in_blocks(tmp_path, compression):
    import subprocess
    import sys

    tifffile = pytest.importorskip("tifffile")
    size = 4096
    image = np.zeros((2, size, size), dtype=np.uint16)
    mask = np.zeros((size, size), dtype=np.int32)
    for k, (y, x) in enumerate([(100, 100), (2000, 3000), (4000, 50), (1500, 1500)], start=1):
        image[:, y - 5 : y + 5, x - 5 : x + 5] = k
        mask[y - 5 : y + 5, x - 5 : x + 5] = k
    kw = {"compression": compression, "tile": (256, 256)} if compression else {}
    tifffile.imwrite(tmp_path / "img.tif", image, **kw, photometric=MINISBLACK)
    np.save(tmp_path / "mask.npy", mask)
    del image, mask
    res = subprocess.run(
        [sys.executable, "-c", _BIG_TIFF, str(tmp_path / "img.tif"), str(tmp_path / "mask.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    n, total, peak = map(int, res.stdout.split())
    assert n == 4
    assert total == 2 * 100 * (1 + 2 + 3 + 4)
    assert peak < 64 * 2**20 // 4, peak  # the image is 64 MiB, the mask 64 MiB
