"""Plain Zarr chunk layouts: which stored chunks can be decoded and encoded directly.

A layout is *known* (:func:`known_layout`) when the array has no sharding, a dtype in
native byte order without objects, and

* Zarr format 3: a ``bytes`` codec in native byte order, then no codec or one
  ``blosc`` or ``zstd`` codec;
* Zarr format 2: C order, no filters, and no compressor or one ``blosc``, ``zstd``,
  ``lz4``, ``gzip`` or ``zlib`` compressor.

Layouts are recognised from zarr's public metadata (``array.metadata.codecs`` as
``to_dict()``, or a Zarr format 2 compressor's numcodecs ``get_config()``), not from
one release's codec classes; the numcodecs codec of the same configuration decodes
and encodes. :mod:`._chunk_io` does the bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

__all__ = [
    "Decoder",
    "Layout",
    "decoded_size",
    "fill_value",
    "known_layout",
]

Decoder = Callable[[Any, np.ndarray], None]
"""``decode(raw, out)``: decode the stored bytes ``raw`` of one chunk into ``out``."""

# Zarr format 2 compressors (numcodecs ids) and Zarr format 3 codecs (names) that
# are decoded and encoded here with the numcodecs codec of the same configuration.
_V2_COMPRESSORS = frozenset({"blosc", "zstd", "lz4", "gzip", "zlib"})
_V3_CODECS = frozenset({"blosc", "zstd"})
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """A chunk layout this module reads and writes: its numcodecs codec, or raw bytes.

    Attributes
    ----------
    codec
        The numcodecs codec of the stored chunks; ``None``: the chunk is its raw
        bytes (C order).
    typed
        Whether zarr hands the codec the chunk as an array of its dtype (Zarr format
        2) rather than as bytes (Zarr format 3, after the ``bytes`` codec). Blosc
        without an explicit ``typesize`` shuffles by the item size of what it gets.
    """

    codec: Any | None
    typed: bool

    @property
    def decoder(self) -> Decoder:
        """``decode(raw, out)`` for one stored chunk, checking its decoded size (picklable)."""
        return _decode_raw if self.codec is None else _CheckedDecoder(self.codec)

    def encode(self, chunk: np.ndarray) -> Any:
        """Return the stored bytes of ``chunk`` (one whole chunk, C-contiguous)."""
        if self.codec is None:
            return chunk.reshape(-1).view(np.uint8)
        return self.codec.encode(chunk if self.typed else chunk.reshape(-1).view(np.uint8))


def known_layout(array: zarr.Array) -> Layout | None:
    """Return the :class:`Layout` of ``array``'s stored chunks, or ``None`` (use zarr).

    Only the codec chain, dtype and sharding are looked at (see the module
    docstring), not the store or the chunk shape.
    """
    dtype = np.dtype(array.dtype)
    if array.shards is not None or dtype.hasobject or not dtype.isnative:
        return None
    meta = array.metadata
    if meta.zarr_format == 2:
        return _v2_layout(meta)
    return _v3_layout([c.to_dict() for c in meta.codecs], dtype)


def _v2_layout(meta: Any) -> Layout | None:
    if meta.filters or meta.order != "C":
        return None
    comp = meta.compressor
    if comp is None:
        return Layout(None, typed=True)
    get_config = getattr(comp, "get_config", None)
    config = dict(get_config()) if callable(get_config) else {}
    if config.get("id") not in _V2_COMPRESSORS:
        return None
    import numcodecs

    return Layout(numcodecs.get_codec(config), typed=True)


def _v3_layout(codecs: list[dict[str, Any]], dtype: np.dtype) -> Layout | None:
    if not codecs or codecs[0].get("name") != "bytes" or len(codecs) > 2:
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian")
    if endian is not None and dtype.itemsize > 1 and endian != sys.byteorder:
        return None
    if len(codecs) == 1:
        return Layout(None, typed=False)
    name, config = codecs[1].get("name"), dict(codecs[1].get("configuration") or {})
    if name not in _V3_CODECS:
        return None
    if name == "zstd":
        import numcodecs

        zstd = {"level": config.get("level", 0), "checksum": config.get("checksum", False)}
        return Layout(numcodecs.Zstd(**zstd), typed=False)
    return Layout(_blosc(config), typed=False)


def _blosc(config: dict[str, Any]) -> Any:
    """Return the numcodecs ``Blosc`` of a Zarr format 3 ``blosc`` configuration, as zarr builds it.

    numcodecs takes ``typesize`` from 0.16 on; an older numcodecs (whose Blosc does
    not accept it) is given the rest, which is what zarr gives it there.
    """
    import numcodecs

    kw: dict[str, Any] = {
        "cname": config["cname"],
        "clevel": config["clevel"],
        "shuffle": _BLOSC_SHUFFLE[config["shuffle"]],
        "blocksize": config.get("blocksize", 0),
    }
    try:
        return numcodecs.Blosc(**kw, typesize=config["typesize"])
    except TypeError:
        return numcodecs.Blosc(**kw)


def fill_value(array: zarr.Array) -> Any:
    """Return the value zarr reads for a chunk that is not stored.

    The array's fill value; for a Zarr format 2 array without one (``null``), zero of
    its dtype, as zarr returns.
    """
    fill = array.fill_value
    if fill is None:
        return np.zeros((), dtype=array.dtype)[()]
    return fill


# --------------------------------------------------------------------------- decoding


def _decode_raw(raw: Any, out: np.ndarray) -> None:
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size != out.nbytes:
        msg = f"uncompressed chunk has {data.size} bytes, expected {out.nbytes}"
        raise ValueError(msg)
    out.reshape(-1).view(np.uint8)[...] = data


class _CheckedDecoder:
    """``codec.decode(raw, out=out)`` after checking the decoded size, when it is known.

    numcodecs accepts an ``out`` larger than the data and leaves the rest untouched, so
    the size the chunk decodes to is read from its header first (Blosc; a Zstd frame
    with its content size); where it cannot be known, the chunk is decoded on its own
    and copied. A class (not a closure), so that Dask can pickle it.
    """

    def __init__(self, codec: Any) -> None:
        self.codec = codec

    def __call__(self, raw: Any, out: np.ndarray) -> None:
        size = decoded_size(self.codec.codec_id, raw)
        if size is None:
            _decode_raw(np.frombuffer(self.codec.decode(raw), dtype=np.uint8), out)
            return
        if size != out.nbytes:
            msg = f"chunk decodes to {size} bytes, expected {out.nbytes}"
            raise ValueError(msg)
        self.codec.decode(raw, out=out)


def decoded_size(codec_id: str, raw: Any) -> int | None:
    """Bytes a Blosc buffer or a single Zstd frame decodes to, from its header; else ``None``."""
    buf = memoryview(raw).cast("B")
    if codec_id == "blosc":
        if len(buf) < 16:
            return None
        return int.from_bytes(buf[4:8], "little")
    if codec_id != "zstd" or len(buf) < 6 or bytes(buf[:4]) != b"\x28\xb5\x2f\xfd":
        return None
    fhd = buf[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(buf) < pos + width:
        return None
    size = int.from_bytes(buf[pos : pos + width], "little")
    return size + 256 if width == 2 else size
