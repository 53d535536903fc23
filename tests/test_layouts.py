"""Every Zarr layout streams the stored values: v2, v3, sharded v3 x codecs x dtypes."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import torch
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

from zarr_instances import ZarrDataLoader, ZarrIterableInstances
from zarr_instances.testing import make_instance_array, make_instance_store

N, CHUNK, SHARD = 40, 5, 10
SHAPE = (2, 1, 6, 6)

CODECS = {
    "zstd": (ZstdCodec(level=3), numcodecs.Zstd(level=3)),
    "blosc-lz4": (
        BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    ),
    "gzip": (GzipCodec(level=1), numcodecs.GZip(level=1)),
    "none": (None, None),
}
LAYOUTS = {"v2": (2, None), "v3": (3, None), "v3-sharded": (3, SHARD)}
DTYPES = ["uint8", "uint16", "float32"]


def _stream(path, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    ds = ZarrIterableInstances(
        path,
        np.arange(N),
        normalize=None,
        x_dtype=torch.float64,
        return_instance_id=False,
        **kwargs,
    )
    xs, rows = [], []
    for x, row in ds:
        xs.append(np.asarray(x))
        rows.append(np.atleast_1d(np.asarray(row)))
    x = np.concatenate([a.reshape(-1, *SHAPE) for a in xs])
    return x, np.concatenate(rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_streams_the_stored_values(tmp_path, layout, codec, dtype):
    zarr_format, shards = LAYOUTS[layout]
    v3, v2 = CODECS[codec]
    path = tmp_path / "a.zarr"
    make_instance_array(
        path,
        N,
        SHAPE,
        chunk_i=CHUNK,
        dtype=dtype,
        zarr_format=zarr_format,
        shards=shards,
        compressors=v3 if zarr_format == 3 else v2,
        seed=3,
    )
    src = zarr.open_array(path, mode="r")
    assert src.metadata.zarr_format == zarr_format
    assert (src.shards is not None) == (shards is not None)
    expected = np.asarray(src[...])
    assert expected.dtype == np.dtype(dtype)
    assert np.ptp(expected) > 0
    # per sample, shuffled: every row once, each equal to its stored crop
    x, rows = _stream(str(path), shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=1)
    assert sorted(rows.tolist()) == list(range(N))
    np.testing.assert_array_equal(x, expected[rows].astype(np.float64))
    # batched, buffers spanning several chunks (and shards)
    x, rows = _stream(str(path), batch_size=7, buffer_chunks=3)
    np.testing.assert_array_equal(rows, np.arange(N))
    np.testing.assert_array_equal(x, expected.astype(np.float64))


@pytest.mark.filterwarnings("ignore:Consolidated metadata:zarr.errors.ZarrUserWarning")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_consolidated_instance_store_opens_and_streams(tmp_path, zarr_format):
    path = tmp_path / "s.zarr"
    make_instance_store(path, N, SHAPE, chunk_i=CHUNK, zarr_format=zarr_format)
    zarr.consolidate_metadata(str(path))
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.consolidated_metadata is not None
    labels = np.asarray(group["labels"][...])
    ds = ZarrIterableInstances(str(path), None, labels, normalize=None, x_dtype=torch.float64)
    out = list(ZarrDataLoader(ds, batch_size=None))
    assert sorted(int(row) for *_, row in out) == np.flatnonzero(labels >= 0).tolist()
    assert all(int(iid) == 1000 + int(row) for _, _, iid, row in out)


def test_other_codec_chain_v3_big_endian_with_checksum(tmp_path):
    path = tmp_path / "be.zarr"
    arr = zarr.create_array(
        str(path),
        shape=(N, *SHAPE),
        chunks=(CHUNK, *SHAPE),
        dtype="uint16",
        serializer=BytesCodec(endian="big"),
        compressors=[Crc32cCodec()],
    )
    data = np.random.default_rng(0).integers(0, 60000, size=arr.shape).astype("uint16")
    arr[...] = data
    x, rows = _stream(str(path), batch_size=16, buffer_chunks=2)
    np.testing.assert_array_equal(x, data[rows].astype(np.float64))


def test_v2_filters_delta_and_fortran_order(tmp_path):
    path = tmp_path / "f.zarr"
    arr = zarr.create_array(
        str(path),
        shape=(N, *SHAPE),
        chunks=(CHUNK, *SHAPE),
        dtype="uint8",
        zarr_format=2,
        filters=[numcodecs.Delta(dtype="uint8")],
        compressors=numcodecs.Zlib(level=1),
        order="F",
    )
    data = np.random.default_rng(1).integers(0, 255, size=arr.shape).astype("uint8")
    arr[...] = data
    x, rows = _stream(str(path))
    np.testing.assert_array_equal(x, data[rows].astype(np.float64))
