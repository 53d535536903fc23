"""Open local or remote instance arrays and instance-store groups.

Remote stores
-------------
URLs (``s3://``, ``gs://``, ``https://``, ...) are opened by zarr through fsspec
(``s3fs``, ``gcsfs``, ``aiohttp``) with ``storage_options``; not through obstore
(faster, see docs/benchmarks-remote.md), whose client hangs in a DataLoader worker
forked after the parent used it (forked workers are PyTorch's default on Linux),
whereas fsspec resets its event loop and instance cache after ``fork``. Transient
errors (throttling, 5xx, dropped connections) are retried by the store library
(botocore's retry policy for S3; ``config_kwargs={"retries": ...}`` tunes it).
A missing object or bucket, refused credentials and an unreachable endpoint become
:class:`StoreNotFoundError`, :class:`StoreAccessError` and
:class:`StoreConnectionError` naming the URL.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.array import AsyncArray
from zarr.core.group import AsyncGroup

from . import _runtime
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    StoreAccessError,
    StoreConnectionError,
    StoreIncompleteError,
    StoreNotFoundError,
)

__all__ = [
    "IMAGE_KEY",
    "INSTANCE_IDS_KEY",
    "LABELS_KEY",
    "OpenedInstances",
    "check_complete",
    "is_url",
    "open_instances",
    "open_many",
    "open_zarr",
    "read_array",
    "remote_error",
    "url_options",
]

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
    group: zarr.Group | None = None  # the instance-store group, if a group was opened


def is_url(path: str) -> bool:
    """Return whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return "://" in path and not path.startswith("file://")


def url_options(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Return ``storage_options`` for a URL and ``None`` for a local path.

    One call may mix local paths and URLs (a local image, an ``s3://`` output) under
    one ``storage_options``; zarr refuses options with a local path.
    """
    return storage_options if is_url(os.fspath(path)) else None


def _endpoint(storage_options: dict[str, Any] | None) -> str:
    opts = storage_options or {}
    endpoint = opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url")
    return f" (endpoint {endpoint})" if endpoint else ""


def _is_connection_error(exc: BaseException) -> bool:
    # botocore's EndpointConnectionError / ConnectTimeoutError are not OSErrors;
    # aiohttp's connector errors and timeouts are.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ConnectionError",
            "ClientConnectorError",
            "ServerTimeoutError",
            "ReadTimeoutError",
        }
    ) or isinstance(exc, (TimeoutError, ConnectionError))


def remote_error(
    name: str, url: str, exc: BaseException, storage_options: dict[str, Any] | None = None
) -> Exception | None:
    """Translate an error of a remote store into one naming the parameter and URL.

    Returns ``None`` when ``exc`` is not a missing-object, access or connection error.
    """
    where = f"{name}={url!r}{_endpoint(storage_options)}"
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, FileNotFoundError):
        return StoreNotFoundError(
            f"No Zarr array or group at {where}: the object or bucket does not exist ({detail})"
        )
    if isinstance(exc, PermissionError) or type(exc).__name__ in (
        "NoCredentialsError",
        "PartialCredentialsError",
        "PermissionDeniedError",
        "UnauthenticatedError",
    ):
        return StoreAccessError(
            f"Access denied to {where}: check the credentials in storage_options (e.g. "
            f"'key'/'secret' for s3://) or the environment (AWS_ACCESS_KEY_ID, ...) ({detail})"
        )
    if _is_connection_error(exc):
        return StoreConnectionError(
            f"Could not reach the store of {where}: check the URL, the endpoint and the "
            f"network; storage_options config_kwargs set timeouts and retries ({detail})"
        )
    return None


def open_zarr(
    path: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    *,
    name: str = "zarr_path",
    mode: Literal["r", "r+", "a", "w", "w-"] = "r",
    group: bool = False,
    **kwargs: Any,
) -> zarr.Array | zarr.Group:
    """Open a local path or URL with zarr, turning store errors into ours.

    Parameters
    ----------
    path
        Local path or URL (``s3://``, ``gs://``, ``https://``, ...).
    storage_options
        Passed to the fsspec filesystem of a URL; ignored for a local path.
    name
        Name of the parameter that received ``path`` (for messages).
    mode
        zarr open mode.
    group
        Open with :func:`zarr.open_group` rather than :func:`zarr.open`.
    **kwargs
        Passed to zarr.

    Raises
    ------
    StoreNotFoundError
        If nothing is stored at ``path`` (read modes), or the local path does not exist.
    StoreAccessError
        If a remote store refuses the credentials.
    StoreConnectionError
        If a remote store's endpoint cannot be reached.
    """
    spath = os.fspath(path)
    url = is_url(spath)
    if not url and mode in ("r", "r+") and not os.path.exists(spath):
        msg = f"No Zarr array or group at {name}={spath!r}: the path does not exist"
        raise StoreNotFoundError(msg)
    opener = zarr.open_group if group else zarr.open
    try:
        options = url_options(spath, storage_options)
        return opener(spath, mode=mode, storage_options=options, **kwargs)
    except Exception as exc:
        if not url:
            if isinstance(exc, FileNotFoundError):
                msg = f"No Zarr array or group at {name}={spath!r}: {exc}"
                raise StoreNotFoundError(msg) from exc
            raise
        err = remote_error(name, spath, exc, storage_options)
        if err is None:
            raise
        raise err from exc


def open_many(paths: Sequence[str]) -> dict[str, zarr.Array | zarr.Group]:
    """Open the local Zarr directories among ``paths`` read-only, all at once.

    Opening mostly waits for small metadata reads; run concurrently on zarr's event
    loop, many sources open in a fraction of the time. A path that fails to open is
    left out (opening it again on its own raises the error that names it).
    """
    from zarr.api import asynchronous as zasync
    from zarr.core.sync import sync

    local = [p for p in dict.fromkeys(paths) if not is_url(p) and os.path.isdir(p)]

    async def one(path: str) -> Any:
        try:
            return await zasync.open(store=path, mode="r")
        except Exception:
            return None

    async def every() -> list[Any]:
        return list(await asyncio.gather(*(one(p) for p in local)))

    out: dict[str, zarr.Array | zarr.Group] = {}
    for path, node in zip(local, sync(every()), strict=True):
        if isinstance(node, AsyncArray):
            out[path] = zarr.Array(node)
        elif isinstance(node, AsyncGroup):
            out[path] = zarr.Group(node)
    return out


def describe(path: ZarrPath) -> str:
    """Return a short human-readable name of a path or Zarr object."""
    if isinstance(path, (zarr.Array, zarr.Group)):
        return repr(str(path.store_path))
    return repr(os.fspath(path))


_ZARRS = "zarrs.ZarrsCodecPipeline"


def zarrs_allowed() -> bool:
    """Whether this process may read through the zarrs pipeline by default.

    True when ``zarrs`` is installed (and ``ZARR_INSTANCES_ZARRS`` is not ``0``), unless
    a process this one was forked from used zarrs: its thread pool does not survive
    ``fork`` and would deadlock here, so such a worker reads through zarr-python.
    """
    if not _runtime.zarrs_setting() or _runtime.zarrs_used_by_parent():
        return False
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return False
    return True


def open_with_zarrs(
    path: ZarrPath, storage_options: dict[str, Any] | None
) -> OpenedInstances | None:
    """Open ``path`` through the zarrs pipeline; ``None`` if zarrs cannot decode it all.

    zarrs warns and falls back to zarr-python for codecs it lacks; such an array is
    left to zarr-python (``None``), without the warning.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opened = open_instances(path, storage_options, "zarrs")
        except Exception:  # a store zarrs cannot open: zarr-python reads it
            return None
    return None if caught else opened


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
                "pip install zarrs (the [zarrs] extra)"
            )
            raise ArgumentError(msg) from exc
        if record and _runtime.zarrs_used_by_parent():
            msg = (
                "codec_pipeline='zarrs' was used in a parent process before this process "
                "was forked; its thread pool does not survive fork. Start DataLoader "
                "workers with multiprocessing_context='spawn' or 'forkserver', or do not "
                "iterate the dataset in the parent first"
            )
            raise ArgumentError(msg)
        if record:
            _runtime.record_zarrs_use()
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
    with zarr.config.set(codec_pipeline_config(codec_pipeline)):
        return open_zarr(path, storage_options)


def check_complete(group: zarr.Group, where: str) -> None:
    """Raise :class:`StoreIncompleteError` if ``group`` holds an interrupted extraction.

    Only the attributes written by ``extract_instances`` mark a store unfinished
    (``complete`` false); a group without them passes. The ``progress`` flags are
    read only to count the written units for the message.
    """
    from ._write import ATTRS_KEY, PROGRESS_KEY  # _write imports this module

    recorded = group.attrs.get(ATTRS_KEY)
    if not isinstance(recorded, dict) or recorded.get("complete", True) is not False:
        return
    written = ""
    progress = group.get(PROGRESS_KEY)
    if isinstance(progress, zarr.Array):
        done = np.asarray(progress[...])
        written = f": {int(np.count_nonzero(done))} of {done.size} write units are written"
    pending = recorded.get("append")
    if isinstance(pending, dict):
        msg = (
            f"zarr_path={where} holds an unfinished append of the sources "
            f"{pending.get('sources')!r}{written}. Rerun the same extract_instances call "
            "with append=True (or zarr-instances extract command with --append) to finish "
            f"it; the first {pending.get('first_row')} rows are as they were"
        )
        raise StoreIncompleteError(msg)
    msg = (
        f"zarr_path={where} holds an unfinished extraction{written}. Rerun the same "
        "extract_instances call (or zarr-instances extract command) to finish it; "
        "it writes only the missing units"
    )
    raise StoreIncompleteError(msg)


def read_array(group: zarr.Group, key: str) -> np.ndarray:
    """Return the whole array ``group[key]`` as NumPy."""
    node = group[key]
    if not isinstance(node, zarr.Array):
        msg = f"{key!r} in {group.store_path} is a group, not an array"
        raise ArgumentError(msg)
    return np.asarray(node[...])


def open_instances(
    path: ZarrPath,
    storage_options: dict[str, Any] | None = None,
    codec_pipeline: str | None = None,
) -> OpenedInstances:
    """Open a crop array ``(i, c, z, y, x)`` or an instance-store group.

    A group must hold an ``image`` array; its ``instance_ids`` (and ``labels``, if
    present) are read too. ``codec_pipeline`` (see :func:`codec_pipeline_config`)
    is bound to the opened array. A bare array, or a group without the attributes of
    ``extract_instances``, is opened as it is.

    Raises
    ------
    StoreNotFoundError
        If nothing is stored at ``path``.
    StoreIncompleteError
        If the group is an instance store whose extraction was interrupted.
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
        check_complete(node, where)
        array = node[IMAGE_KEY]
        if INSTANCE_IDS_KEY in keys:
            ids = read_array(node, INSTANCE_IDS_KEY)
        if LABELS_KEY in keys:
            labels = read_array(node, LABELS_KEY)
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
    group = node if isinstance(node, zarr.Group) else None
    return OpenedInstances(array=array, instance_ids=ids, labels=labels, where=where, group=group)
