"""Create, resume and finish the instance store written by ``extract_instances``.

Layout, a Zarr group holding:

* ``image`` ``(i, c, z, d, d)`` crops, chunked along ``i`` (optionally sharded);
* ``mask`` ``(i, 1, z, d, d)`` mask crops (only with ``extract_mask=True``);
* ``instance_ids`` ``(i,)`` int64, aligned with the rows;
* ``centroids`` ``(i, 3)`` int64 ``(z, y, x)`` centre of mass in source pixels;
* ``progress`` ``(n_units,)`` uint8, one flag per write unit (a chunk, or a shard
  when sharded), set to 1 only after that unit's rows are written;
* attributes ``zarr_instances``: version, sources, parameters, channel names and
  ``complete`` (``False`` until every unit is written).

An interrupted run leaves ``complete = False``; the same call then resumes and
writes only the units whose flag is 0. Rewriting a unit writes the same bytes, so
a unit cut short by a crash (data written, flag not yet) is simply written again.

A finished store gets consolidated metadata (``zarr.consolidate_metadata``, for
Zarr format 2 and 3): opening it reads the metadata of every array in one request,
which matters on object stores. Only a complete store is consolidated, so an
interrupted one is always read from the metadata of its arrays. Arrays added to
the group later (e.g. ``labels``) are invisible to readers that use the
consolidated metadata until ``zarr.consolidate_metadata`` is called again.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr

from . import _chunk_io
from ._store import is_url, open_zarr, read_array, url_options
from .errors import StoreExistsError


def default_compressors(dtype: np.dtype, zarr_format: int) -> Any:
    """Return the crop store's default codec: Blosc-lz4, level 5, byte shuffle.

    On crop-like data it decodes several times more rows per CPU-second than zarr's
    default zstd and stores them more compactly (BENCHMARKS.md, "Codec").
    """
    itemsize = int(np.dtype(dtype).itemsize)
    if zarr_format == 2:
        from numcodecs import Blosc

        return Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=itemsize)


__all__ = [
    "ATTRS_KEY",
    "CENTROIDS_KEY",
    "MASK_KEY",
    "PROGRESS_KEY",
    "StoreLayout",
    "flag_done",
    "prepare_store",
    "write_rows",
]

ATTRS_KEY = "zarr_instances"
CENTROIDS_KEY = "centroids"
MASK_KEY = "mask"
PROGRESS_KEY = "progress"


@dataclass(frozen=True)
class StoreLayout:
    """Everything that fixes the bytes of an instance store."""

    n: int
    crop_shape: tuple[int, int, int, int]
    dtype: np.dtype
    mask_dtype: np.dtype | None
    chunk_i: int
    shards: int | None
    zarr_format: int
    compressors: Any

    @property
    def unit(self) -> int:
        """Rows per write unit (a shard when sharded, else a chunk)."""
        return self.shards or self.chunk_i

    @property
    def n_units(self) -> int:
        """Number of write units."""
        return -(-self.n // self.unit)


def _exists(path: str, storage_options: dict[str, Any] | None) -> bool:
    if not is_url(path):
        return os.path.exists(path) and bool(os.listdir(path) if os.path.isdir(path) else True)
    try:
        open_zarr(path, storage_options, name="out")
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return True


def _create(
    path: str,
    layout: StoreLayout,
    ids: np.ndarray,
    cents: np.ndarray,
    attrs: dict[str, Any],
    storage_options: dict[str, Any] | None,
) -> zarr.Group:
    group = open_zarr(
        path, storage_options, name="out", mode="w", group=True, zarr_format=layout.zarr_format
    )
    assert isinstance(group, zarr.Group)
    shape = layout.crop_shape
    kw: dict[str, Any] = {"compressors": layout.compressors, "overwrite": True}
    if layout.shards is not None:
        kw["shards"] = (layout.shards, *shape)
    group.create_array(
        "image",
        shape=(layout.n, *shape),
        chunks=(layout.chunk_i, *shape),
        dtype=layout.dtype,
        fill_value=0,
        **kw,
    )
    if layout.mask_dtype is not None:
        mshape = (1, *shape[1:])
        if layout.shards is not None:
            kw["shards"] = (layout.shards, *mshape)
        group.create_array(
            MASK_KEY,
            shape=(layout.n, *mshape),
            chunks=(layout.chunk_i, *mshape),
            dtype=layout.mask_dtype,
            fill_value=0,
            **kw,
        )
    n = max(layout.n, 1)
    a = group.create_array("instance_ids", shape=(layout.n,), chunks=(n,), dtype="int64")
    a[:] = ids
    c = group.create_array(CENTROIDS_KEY, shape=(layout.n, 3), chunks=(n, 3), dtype="int64")
    c[:] = cents
    group.create_array(
        PROGRESS_KEY,
        shape=(layout.n_units,),
        chunks=(1,),
        dtype="uint8",
        fill_value=0,
        compressors=None,
    )
    group.attrs[ATTRS_KEY] = {**attrs, "complete": False}
    return group


def prepare_store(
    path: str,
    layout: StoreLayout,
    ids: np.ndarray,
    cents: np.ndarray,
    attrs: dict[str, Any],
    *,
    overwrite: bool,
    storage_options: dict[str, Any] | None = None,
) -> tuple[zarr.Group, np.ndarray]:
    """Create the store at ``path``, or reopen one written by the same call.

    Returns the group and the indexes of the write units still to write: all of them
    for a new store, the missing ones for an interrupted extraction, none for a
    complete one.

    Raises
    ------
    StoreExistsError
        If ``path`` is a file; or if something exists at ``path``, ``overwrite`` is
        false and it is not an extraction with identical parameters and instances (the
        message names the parameters that differ, with both values).
    """
    storage_options = url_options(path, storage_options)
    if not is_url(path) and os.path.isfile(path):
        msg = (
            f"out={path!r} is a file; an instance store is a directory: choose another path "
            "(overwrite=True does not replace files)"
        )
        raise StoreExistsError(msg)
    if overwrite or not _exists(path, storage_options):
        group = _create(path, layout, ids, cents, attrs, storage_options)
        return group, np.arange(layout.n_units)
    recorded: dict[str, Any]
    try:
        group = zarr.open_group(path, mode="r+", storage_options=storage_options)
        recorded = dict(cast("dict[str, Any]", group.attrs.get(ATTRS_KEY, {})))
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        recorded = {}
    if not recorded:
        msg = (
            f"out={path!r} exists and is not an instance store written by extract_instances; "
            "pass overwrite=True to replace it, or choose another path"
        )
        raise StoreExistsError(msg)
    complete = bool(recorded.get("complete", False))
    what = "complete store" if complete else "interrupted extraction"
    stored = recorded.get("parameters") or {}
    differ = _mismatch(group, stored, attrs["parameters"], ids, cents, what)
    if differ and complete:
        msg = (
            f"out={path!r} holds a complete instance store; {differ}. Pass overwrite=True "
            "to replace it, or choose another path"
        )
        raise StoreExistsError(msg)
    if differ:
        msg = (
            f"cannot resume out={path!r}: {differ}. Rerun with the stored values to "
            "resume it, or pass overwrite=True to start again"
        )
        raise StoreExistsError(msg)
    if complete:
        return group, np.arange(0)
    done = read_array(group, PROGRESS_KEY)
    return group, np.flatnonzero(done == 0)


# Recorded values that are not parameters of extract_instances but follow from the inputs.
_INPUT_NAMES = {"dtype": "image dtype", "image_shape": "image shape", "n_instances": "instances"}


def _mismatch(
    group: zarr.Group,
    stored: dict[str, Any],
    now: dict[str, Any],
    ids: np.ndarray,
    cents: np.ndarray,
    what: str,
) -> str:
    """Describe how this call differs from the ``what`` stored in ``group`` (``""``: not)."""

    def show(value: Any) -> str:
        return value if isinstance(value, str) else repr(value)

    missing = "(not recorded)"
    diffs = [
        f"{_INPUT_NAMES.get(k, k)}: stored {show(stored.get(k, missing))}, "
        f"now {show(now.get(k, missing))}"
        for k in [*now, *(k for k in stored if k not in now)]
        if stored.get(k, missing) != now.get(k, missing)
    ]
    if diffs:
        return f"parameters differ from the {what}: " + "; ".join(diffs)
    same = np.array_equal(read_array(group, "instance_ids"), ids) and np.array_equal(
        read_array(group, CENTROIDS_KEY), cents
    )
    if not same:
        return f"the instance ids or centroids differ from the {what} (another mask?)"
    return ""


def finish_store(group: zarr.Group) -> None:
    """Mark the store complete (after every unit is written) and consolidate its metadata.

    ``complete`` is set first, so the consolidated metadata records it. A crash
    between the two steps leaves a complete store without consolidated metadata,
    which zarr opens as well (one request per array), and which the next call
    consolidates. A complete, consolidated store is left as it is.
    """
    attrs = dict(cast(Mapping[str, Any], group.attrs[ATTRS_KEY]))
    if attrs.get("complete") and group.metadata.consolidated_metadata is not None:
        return
    attrs["complete"] = True
    group.attrs[ATTRS_KEY] = attrs
    with warnings.catch_warnings():
        # Zarr format 3: consolidated metadata is a zarr-python extension (other
        # readers ignore it); we write it knowingly.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(
            group.store, path=group.path, zarr_format=group.metadata.zarr_format
        )


def flag_done(progress: zarr.Array, units: range) -> None:
    """Set the ``progress`` flags of ``units`` to 1 (each flag is a chunk of its own).

    In a local store each flag is written as its one-byte chunk file, atomically
    (a temporary file renamed), which is the file zarr writes for it
    (:func:`._chunk_io.chunk_writer`); anywhere else through zarr, whose pipeline
    costs far more than the write for these one-byte chunks.
    """
    writer = _chunk_io.chunk_writer(progress) if tuple(progress.chunks) == (1,) else None
    if writer is None:
        progress[units.start : units.stop] = 1
        return
    writer.write_rows(units.start, np.ones(len(units), dtype=progress.dtype))


def write_rows(array: zarr.Array, r0: int, r1: int, data: np.ndarray) -> None:
    """Write rows ``[r0, r1)`` (whole chunks along ``i``) of a crop array.

    In a local store, with a layout :func:`._chunk_io.chunk_writer` knows (chunks of
    whole crops, no sharding, one of the codecs :mod:`._chunk_io` encodes), each chunk
    is encoded here with the codec's numcodecs equivalent and written as its file (to
    a temporary name, then renamed): the bytes zarr writes, without zarr's codec
    pipeline. Anything else goes through zarr.
    """
    writer = _chunk_io.chunk_writer(array)
    if writer is None:
        array[r0:r1] = data
        return
    writer.write_rows(r0, data[: r1 - r0])
