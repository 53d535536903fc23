"""Open local or remote instance arrays and instance-store groups."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from .errors import ArgumentError, ArgumentTypeError, StoreNotFoundError

__all__ = ["IMAGE_KEY", "INSTANCE_IDS_KEY", "LABELS_KEY", "OpenedInstances", "open_instances"]

IMAGE_KEY = "image"
INSTANCE_IDS_KEY = "instance_ids"
LABELS_KEY = "labels"

ZarrPath = str | os.PathLike[str] | zarr.Array | zarr.Group


@dataclass(frozen=True)
class OpenedInstances:
    """An opened crop array and what its group holds beside it."""

    array: zarr.Array
    instance_ids: np.ndarray | None
    labels: np.ndarray | None
    where: str


def _is_url(path: str) -> bool:
    return "://" in path


def describe(path: ZarrPath) -> str:
    """Return a short human-readable name of a path or Zarr object."""
    if isinstance(path, (zarr.Array, zarr.Group)):
        return repr(str(path.store_path))
    return repr(os.fspath(path))


def _open(path: ZarrPath, storage_options: dict[str, Any] | None) -> zarr.Array | zarr.Group:
    if isinstance(path, (zarr.Array, zarr.Group)):
        return path
    if not isinstance(path, (str, os.PathLike)):
        msg = (
            "zarr_path must be a path, a URL, a zarr.Array or a zarr.Group, "
            f"got {type(path).__name__}: {path!r}"
        )
        raise ArgumentTypeError(msg)
    spath = os.fspath(path)
    if not _is_url(spath) and not os.path.exists(spath):
        msg = f"No Zarr array or group at zarr_path={spath!r}: the path does not exist"
        raise StoreNotFoundError(msg)
    try:
        return zarr.open(spath, mode="r", storage_options=storage_options)
    except FileNotFoundError as exc:
        msg = f"No Zarr array or group at zarr_path={spath!r}: {exc}"
        raise StoreNotFoundError(msg) from exc


def open_instances(
    path: ZarrPath, storage_options: dict[str, Any] | None = None
) -> OpenedInstances:
    """Open a crop array ``(i, c, z, y, x)`` or an instance-store group.

    A group must hold an ``image`` array; its ``instance_ids`` (and ``labels``, if
    present) are read too.

    Raises
    ------
    StoreNotFoundError
        If nothing is stored at ``path``.
    ArgumentError
        If the group holds no ``image`` array or the array is not 5-D.
    """
    node = _open(path, storage_options)
    where = describe(path)
    ids = labels = None
    if isinstance(node, zarr.Group):
        keys = set(node.array_keys())
        if IMAGE_KEY not in keys:
            msg = (
                f"zarr_path={where} is a Zarr group without an {IMAGE_KEY!r} array "
                f"(it holds arrays {sorted(keys)!r}); pass the crop array itself or an "
                "instance store written by extract_instances"
            )
            raise ArgumentError(msg)
        array = node[IMAGE_KEY]
        if INSTANCE_IDS_KEY in keys:
            ids = np.asarray(node[INSTANCE_IDS_KEY][...])
        if LABELS_KEY in keys:
            labels = np.asarray(node[LABELS_KEY][...])
        where = f"{where} (array {IMAGE_KEY!r})"
    else:
        array = node
    assert isinstance(array, zarr.Array)
    if array.ndim != 5:
        msg = (
            f"zarr_path={where} must be a 5-D array (i, c, z, y, x), "
            f"got shape {array.shape} ({array.ndim}-D)"
        )
        raise ArgumentError(msg)
    return OpenedInstances(array=array, instance_ids=ids, labels=labels, where=where)
