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
