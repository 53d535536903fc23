"""Direct chunk I/O against zarr's own API: guards a zarr or numcodecs upgrade.

For every layout :mod:`zarr_instances._chunk_io` reads and writes directly, the chunk
files it writes are the bytes zarr writes for the same data, and the values it reads
are the values zarr reads. Layouts it does not know must be left to zarr.
"""

from __future__ import annotations

import sys

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec
from zarr.storage import MemoryStore

from zarr_instances import _chunk_io
from zarr_instances._chunk_io import chunk_writer, decoded_size, direct_layout, known_layout
from zarr_instances._reader import read_chunks, read_rows

N, CHUNK, INNER = 23, 5, (2, 3, 7)  # the last chunk holds 3 rows

KNOWN = {
    "v3-raw": (3, None),
    "v3-blosc-lz4-shuffle": (3, BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")),
    "v3-blosc-zstd-bitshuffle": (3, BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")),
    "v3-blosc-lz4-noshuffle": (3, BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")),
    "v3-zstd": (3, ZstdCodec(level=3)),
    "v3-zstd-checksum": (3, ZstdCodec(level=1, checksum=True)),
    "v2-raw": (2, None),
    "v2-blosc-lz4-shuffle": (2, numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1)),
    "v2-blosc-zstd-bitshuffle": (2, numcodecs.Blosc(cname="zstd", clevel=3, shuffle=2)),
    "v2-zstd": (2, numcodecs.Zstd(level=3)),
    "v2-lz4": (2, numcodecs.LZ4()),
    "v2-gzip": (2, numcodecs.GZip(level=1)),
    "v2-zlib": (2, numcodecs.Zlib(level=1)),
}
UNKNOWN = {
    "v3-sharded": {"compressors": ZstdCodec(), "shards": (10, *INNER)},
    "v3-gzip": {"compressors": GzipCodec()},
    "v3-crc32c": {"compressors": [Crc32cCodec()]},
    "v3-big-endian": {"serializer": BytesCodec(endian="big"), "compressors": None},
    "v2-filter": {"zarr_format": 2, "filters": [numcodecs.Delta(dtype="uint16")]},
}
OTHER = "big" if sys.byteorder == "little" else "little"


def _data(dtype: str) -> np.ndarray:
    data = np.random.default_rng(4).integers(0, 200, (N, *INNER)).astype(dtype)
    data[CHUNK : 2 * CHUNK] = 0  # a chunk of fill value
    data[3 * CHUNK, 0] = 0
    return data


def _create(store, name: str, dtype: str, **config) -> zarr.Array:
    fmt, codec = KNOWN[name]
    arr = zarr.create_array(
        store,
        shape=(N, *INNER),
        chunks=(CHUNK, *INNER),
        dtype=dtype,
        fill_value=0,
        zarr_format=fmt,
        compressors=codec,
    )
    return arr.with_config(config) if config else arr


def _files(root) -> dict:
    skip = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
    files = (p for p in root.rglob("*") if p.is_file() and p.name not in skip)
    return {p.relative_to(root): p.read_bytes() for p in files}


@pytest.mark.parametrize("write_empty", [True, False])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("name", list(KNOWN))
def test_direct_writes_are_the_bytes_zarr_writes(tmp_path, name, dtype, write_empty):
    data = _data(dtype)
    config = {"write_empty_chunks": write_empty}
    ref = _create(str(tmp_path / "zarr.zarr"), name, dtype, **config)
    got = _create(str(tmp_path / "direct.zarr"), name, dtype, **config)
    ref[...] = data
    writer = chunk_writer(got)
    assert writer is not None
    writer.write_rows(0, data[: 2 * CHUNK])  # chunk by chunk, as extraction writes
    writer.write_rows(2 * CHUNK, data[2 * CHUNK :])
    expected, written = _files(tmp_path / "zarr.zarr"), _files(tmp_path / "direct.zarr")
    assert written.keys() == expected.keys()
    assert len(written) == (-(-N // CHUNK) if write_empty else -(-N // CHUNK) - 1)
    for key, raw in expected.items():
        assert written[key] == raw, key
    assert not list((tmp_path / "direct.zarr").rglob("*.partial"))
    # rewriting a chunk as all fill value removes it when zarr would not store it
    writer.write_rows(0, np.zeros_like(data[:CHUNK]))
    ref[:CHUNK] = 0
    assert _files(tmp_path / "direct.zarr").keys() == _files(tmp_path / "zarr.zarr").keys()


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("name", list(KNOWN))
def test_direct_reads_are_the_values_zarr_reads(tmp_path, name, dtype, where):
    data = _data(dtype)
    arr = _create(str(tmp_path / "a.zarr") if where == "local" else MemoryStore(), name, dtype)
    arr[...] = data
    layout = direct_layout(arr)
    assert layout is not None
    root = _chunk_io.local_dir(arr)
    assert (root is not None) == (where == "local")
    n_chunks = -(-N // CHUNK)
    for c in range(n_chunks):
        raw = _chunk_io.fetch(arr, _chunk_io.chunk_key(arr, (c, 0, 0, 0)), root)
        if raw is None:  # all fill value: zarr did not store it
            np.testing.assert_array_equal(data[c * CHUNK : (c + 1) * CHUNK], 0)
            continue
        out = np.empty((CHUNK, *INNER), dtype=dtype)
        layout.decoder(raw, out)
        rows = min(CHUNK, N - c * CHUNK)
        np.testing.assert_array_equal(out[:rows], arr[c * CHUNK : c * CHUNK + rows])
    # all chunks at once, the missing one read as the fill value
    out = np.full((n_chunks * CHUNK, *INNER), 7, dtype=dtype)
    read_chunks(arr, range(n_chunks), out, layout.decoder, check_missing=False)
    np.testing.assert_array_equal(out[:N], arr[...])


@pytest.mark.parametrize("name", list(UNKNOWN))
def test_unknown_layouts_are_left_to_zarr(tmp_path, name):
    kw = {"dtype": "uint16", "fill_value": 0, **UNKNOWN[name]}
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=(N, *INNER), chunks=(CHUNK, *INNER), **kw
    )
    arr = arr.with_config({"write_empty_chunks": True})
    assert known_layout(arr) is None
    assert direct_layout(arr) is None
    assert chunk_writer(arr) is None


def test_v3_byte_order_of_the_bytes_codec_is_checked(tmp_path):
    kw = {"shape": (N, *INNER), "chunks": (CHUNK, *INNER), "dtype": "uint16"}
    native = zarr.create_array(
        str(tmp_path / "n.zarr"), serializer=BytesCodec(endian=sys.byteorder), **kw
    )
    other = zarr.create_array(str(tmp_path / "o.zarr"), serializer=BytesCodec(endian=OTHER), **kw)
    assert known_layout(native) is not None
    assert known_layout(other) is None


def test_without_zarr_internals_local_reads_stay_direct_and_the_rest_uses_zarr(
    tmp_path, monkeypatch
):
    data = _data("uint16")
    local = _create(str(tmp_path / "a.zarr"), "v3-zstd", "uint16")
    memory = _create(MemoryStore(), "v3-zstd", "uint16")
    local[...] = data
    memory[...] = data
    monkeypatch.setitem(sys.modules, "zarr.core.sync", None)  # as if zarr had moved it
    _chunk_io._store_io.cache_clear()
    try:
        assert _chunk_io._store_io() is None
        assert direct_layout(local) is not None
        assert direct_layout(memory) is None  # no way to fetch: zarr's API
        rows = [np.arange(0, 7), np.arange(12, 20)]
        for arr in (local, memory):
            got = read_rows(arr, rows)  # coroutines on an event loop of our own
            np.testing.assert_array_equal(got, data[np.concatenate(rows)])
    finally:
        monkeypatch.undo()
        _chunk_io._store_io.cache_clear()
    assert _chunk_io._store_io() is not None


def test_fill_value_of_v2_without_one_is_zero():
    arr = zarr.create_array(
        MemoryStore(), shape=(4,), chunks=(2,), dtype="float32", zarr_format=2, fill_value=None
    )
    assert arr.fill_value is None
    value = _chunk_io.fill_value(arr)
    assert value == 0 and np.asarray(value).dtype == np.float32
    np.testing.assert_array_equal(arr[...], value)  # what zarr reads


@pytest.mark.parametrize("size", [0, 1, 255, 256, 300, 65791, 65792, 2**20, 2**33])
def test_zstd_frame_content_size(size):
    # frames written by the zstd library (numcodecs) for the sizes zarr chunks have
    if size <= 2**20:
        frame = numcodecs.Zstd(level=1).encode(np.zeros(size, dtype=np.uint8))
        assert decoded_size("zstd", frame) == size
    # hand-made headers: every field size combination of the frame header descriptor
    for fcs_flag, width in ((1, 2), (2, 4), (3, 8)):
        if width == 2 and not 256 <= size < 65536 + 256:
            continue
        if width == 4 and size >= 2**32:
            continue
        for single in (0, 1):
            for dict_flag, dict_bytes in ((0, 0), (1, 1), (2, 2), (3, 4)):
                fhd = (fcs_flag << 6) | (single << 5) | dict_flag
                value = size - 256 if width == 2 else size
                header = (
                    b"\x28\xb5\x2f\xfd"
                    + bytes([fhd])
                    + (b"" if single else b"\x50")
                    + b"\x07" * dict_bytes
                    + value.to_bytes(width, "little")
                    + b"\x00" * 8
                )
                assert decoded_size("zstd", header) == size
    no_size = b"\x28\xb5\x2f\xfd" + bytes([0]) + b"\x50" + b"\x00" * 8
    assert decoded_size("zstd", no_size) is None
    assert decoded_size("zstd", b"garbage-garbage") is None
    assert decoded_size("lz4", b"\x00" * 20) is None


@pytest.mark.parametrize("fmt", [2, 3])
def test_direct_writes_skip_chunks_of_nan_fill_value_as_zarr_does(tmp_path, fmt):
    data = np.arange(N * np.prod(INNER), dtype="float32").reshape(N, *INNER)
    data[:CHUNK] = np.nan  # all fill value: not stored
    data[-1] = 3.5  # the last chunk, padded with NaN

    def make(name):
        arr = zarr.create_array(
            str(tmp_path / name),
            shape=(N, *INNER),
            chunks=(CHUNK, *INNER),
            dtype="float32",
            fill_value=np.nan,
            zarr_format=fmt,
        )
        return arr.with_config({"write_empty_chunks": False})

    ref, got = make("zarr.zarr"), make("direct.zarr")
    ref[...] = data
    writer = chunk_writer(got)
    assert writer is not None
    writer.write_rows(0, data)
    expected, written = _files(tmp_path / "zarr.zarr"), _files(tmp_path / "direct.zarr")
    assert written == expected
    assert len(written) == -(-N // CHUNK) - 1
