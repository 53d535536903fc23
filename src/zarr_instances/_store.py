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


_ZARRS = "zarrs.ZarrsCodecPipeline"
_zarrs_pid: list[int] = []  # processes that built a zarrs pipeline (inherited by fork)


def codec_pipeline_config(codec_pipeline: str | None, record: bool = True) -> dict[str, Any]:
    """Return the zarr config that selects ``codec_pipeline`` (``{}`` for the default).

    ``"zarrs"`` selects the Rust codec pipeline of the ``zarrs`` package; any other
    string is taken as the dotted path of a codec pipeline class. With ``record``, this
    process is remembered as a user of zarrs (its forked children must not use it).

    Raises
    ------
    ArgumentError
        If ``"zarrs"`` is asked for and not installed, or if a forked process would
        reuse the parent's zarrs thread pool (which deadlocks).
    """
    if codec_pipeline is None:
        return {}
    if not isinstance(codec_pipeline, str):
        msg = f"codec_pipeline must be None, 'zarrs' or a dotted class path, got {codec_pipeline!r}"
        raise ArgumentTypeError(msg)
    path = _ZARRS if codec_pipeline == "zarrs" else codec_pipeline
    if path == _ZARRS:
        try:
            import zarrs  # noqa: F401
        except ImportError as exc:
            msg = (
                "codec_pipeline='zarrs' needs the zarrs package: "
                "pip install 'zarr-instances[zarrs]'"
            )
            raise ArgumentError(msg) from exc
        if record and _zarrs_pid and _zarrs_pid[-1] != os.getpid():
            msg = (
                "codec_pipeline='zarrs' was used in a parent process before this process "
                "was forked; its thread pool does not survive fork. Start DataLoader "
                "workers with multiprocessing_context='spawn' or 'forkserver', or do not "
                "iterate the dataset in the parent first"
            )
            raise ArgumentError(msg)
        if record:
            _zarrs_pid.append(os.getpid())
    return {"codec_pipeline.path": path}


def _open(
    path: ZarrPath, storage_options: dict[str, Any] | None, codec_pipeline: str | None = None
) -> zarr.Array | zarr.Group:
    if isinstance(path, (zarr.Array, zarr.Group)):
        if codec_pipeline is None:
            return path
        with zarr.config.set(codec_pipeline_config(codec_pipeline)):
            return zarr.open(store=path.store_path, mode="r")
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
        with zarr.config.set(codec_pipeline_config(codec_pipeline)):
            return zarr.open(spath, mode="r", storage_options=storage_options)
    except FileNotFoundError as exc:
        msg = f"No Zarr array or group at zarr_path={spath!r}: {exc}"
        raise StoreNotFoundError(msg) from exc


def open_instances(
    path: ZarrPath,
    storage_options: dict[str, Any] | None = None,
    codec_pipeline: str | None = None,
) -> OpenedInstances:
    """Open a crop array ``(i, c, z, y, x)`` or an instance-store group.

    A group must hold an ``image`` array; its ``instance_ids`` (and ``labels``, if
    present) are read too. ``codec_pipeline`` (see :func:`codec_pipeline_config`)
    is bound to the opened array.

    Raises
    ------
    StoreNotFoundError
        If nothing is stored at ``path``.
    ArgumentError
        If the group holds no ``image`` array or the array is not 5-D.
    """
    node = _open(path, storage_options, codec_pipeline)
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
