"""Open the image and mask of an extraction as Dask arrays ``(c, z, y, x)`` / ``(z, y, x)``.

Accepted: NumPy arrays, Dask arrays, ``zarr.Array``, paths or URLs of a Zarr
array, of a Zarr group holding one array, or of an OME-Zarr multiscale image
(level 0 is used; axes from the NGFF ``multiscales`` metadata), paths of TIFF /
OME-TIFF and ``.npy`` files (read lazily, :mod:`._formats`), and SpatialData elements
(xarray ``DataArray`` or a ``DataTree`` of scales, level 0 used; axes from ``dims``,
channel names from the ``c`` coordinate). Inputs without recorded axes take
``axes=`` / ``mask_axes=`` or the defaults of :mod:`._axes`; the input is reordered
to the target axes there.

Chunks of a Zarr input follow zarr's semantics: a chunk that is not stored reads as
the array's fill value (zarr 3 does not store chunks that are all fill value, e.g.
background-only chunks of a mask), while a stored chunk that cannot be read or
decoded raises :class:`~zarr_instances.errors.ChunkReadError` naming the input, the
array and the chunk.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from . import _axes
from ._formats import SUPPORTED, open_file, path_kind
from ._store import open_zarr, url_options
from ._zarr_input import CheckedZarr, _from_zarr
from .errors import ArgumentError, ArgumentTypeError

__all__ = ["CheckedZarr", "OpenedInput", "check_same_pixels", "open_image", "open_mask"]


@dataclass(frozen=True)
class OpenedInput:
    """A Dask view of an input, where it came from and its channel names (if known).

    ``shape`` and ``axes`` are the input's own (before reordering); ``axes`` is
    ``None`` where it was assumed rather than recorded or given.
    """

    array: da.Array
    source: str
    channel_names: list[str] | None
    shape: tuple[int, ...] = ()
    axes: str | None = None


@dataclass(frozen=True)
class _Raw:
    """An input as found: Dask array or array-like to wrap, source, recorded axes, names."""

    data: Any
    source: str
    axes: str | None
    names: list[str] | None


def _in_target(kind: str, raw: _Raw, axes: str, chunk: int, plan: _axes.AxesPlan) -> da.Array:
    """Return ``raw`` as a Dask array in the target axes of ``plan``.

    Where the plan only adds length-1 axes (a ``(c, y, x)`` image, a ``(y, x)`` mask),
    a Zarr or NumPy input gets them without a Dask slicing layer: opening many small
    sources (a study) stays cheap, and each block stays one task.
    """
    only_add = bool(plan.add) and not plan.drop and plan.perm == tuple(range(len(plan.perm)))
    data = raw.data
    if isinstance(data, CheckedZarr):
        return _from_zarr(kind, data, plan.add) if only_add else plan.apply(_from_zarr(kind, data))
    if only_add and isinstance(data, np.ndarray):
        expanded = dataclasses.replace(raw, data=data.reshape(plan.shape(data.shape)))
        return _as_dask(kind, expanded, plan.target, chunk)
    return plan.apply(_as_dask(kind, raw, axes, chunk))


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return attrs.get("multiscales")


def _channel_names(attrs: dict[str, Any]) -> list[str] | None:
    ome = attrs.get("ome")
    omero = ome.get("omero") if isinstance(ome, dict) else None
    omero = omero or attrs.get("omero")
    if not isinstance(omero, dict) or "channels" not in omero:
        return None
    names = [str(ch.get("label", i)) for i, ch in enumerate(omero["channels"])]
    return names


def _open_path(
    name: str,
    path: str | os.PathLike[str],
    storage_options: dict[str, Any] | None,
    opened: Mapping[str, zarr.Array | zarr.Group] | None = None,
) -> _Raw:
    spath = os.fspath(path)
    kind = path_kind(spath)
    if kind != "zarr":
        found = open_file(name, spath, kind)
        return _Raw(found.data, spath, found.axes, found.channel_names)
    node = (opened or {}).get(spath)
    if node is None:
        node = open_zarr(spath, url_options(spath, storage_options), name=name)
    arr, axes, names = _resolve_node(name, spath, node)
    return _Raw(CheckedZarr(arr, name), spath, axes, names)


def _resolve_node(
    name: str, where: str, node: zarr.Array | zarr.Group
) -> tuple[zarr.Array, str | None, list[str] | None]:
    if isinstance(node, zarr.Array):
        return node, None, None
    attrs = dict(node.attrs)
    ms = _multiscales(attrs)
    if ms:
        level0 = ms[0]["datasets"][0]["path"]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms[0].get("axes", [])]
        arr = node[level0]
        assert isinstance(arr, zarr.Array)
        return arr, _axes.letters(axes or None), _channel_names(attrs)
    keys = sorted(node.array_keys())
    if len(keys) == 1:
        arr = node[keys[0]]
        assert isinstance(arr, zarr.Array)
        return arr, None, None
    msg = (
        f"{name}={where!r} is a Zarr group that is neither an OME-Zarr multiscale image nor "
        f"holds exactly one array (it holds arrays {keys!r}); pass the array's path"
    )
    raise ArgumentError(msg)


def _is_xarray(value: Any, kind: str) -> bool:
    cls = type(value)
    return cls.__name__ == kind and cls.__module__.split(".")[0] == "xarray"


def _from_xarray(name: str, value: Any) -> _Raw:
    """Open a SpatialData element (xarray ``DataArray``, or ``DataTree``: level 0)."""
    if _is_xarray(value, "DataTree"):
        scales = sorted(value.children)
        if not scales:
            msg = f"{name} is an xarray DataTree without scales (children), got {value!r:.200}"
            raise ArgumentError(msg)
        level0 = value[scales[0]].ds
        variables = list(level0.data_vars)
        if len(variables) != 1:
            msg = (
                f"{name}: scale {scales[0]!r} of the DataTree must hold one variable, "
                f"got {variables!r}"
            )
            raise ArgumentError(msg)
        value = level0[variables[0]]
    data = value.data if isinstance(value.data, da.Array) else np.asarray(value.data)
    axes = [str(d) for d in value.dims]
    names = None
    if "c" in value.coords and "c" in axes:
        names = [str(c) for c in value.coords["c"].values]
    label = f"xarray {value.name!r}" if value.name is not None else "xarray element"
    return _Raw(data, label, _axes.letters(axes), names)


def _to_raw(
    name: str,
    value: Any,
    storage_options: dict[str, Any] | None,
    opened: Mapping[str, zarr.Array | zarr.Group] | None = None,
) -> _Raw:
    """Return the input as found (Dask array or an array-like still to wrap).

    ``opened``: Zarr nodes opened already, by path.
    """
    if _is_xarray(value, "DataArray") or _is_xarray(value, "DataTree"):
        return _from_xarray(name, value)
    if type(value).__name__ == "SpatialData":
        msg = (
            f"{name} is a SpatialData object: pass its elements, e.g. "
            f"image=sdata.images[name] and mask=sdata.labels[name], or use "
            f"zarr_instances.spatialdata.extract_from_spatialdata(sdata, image_name, labels_name, "
            f"diameter, ...)"
        )
        raise ArgumentTypeError(msg)
    if isinstance(value, da.Array):
        return _Raw(value, f"dask array {value.name}", None, None)
    if isinstance(value, (zarr.Array, zarr.Group)):
        where = str(value.store_path)
        arr, axes, names = _resolve_node(name, where, value)
        return _Raw(CheckedZarr(arr, name), where, axes, names)
    if isinstance(value, (str, os.PathLike)):
        return _open_path(name, value, storage_options, opened)
    if isinstance(value, np.ndarray):
        return _Raw(value, "numpy array", None, None)
    msg = f"{name} must be a NumPy, Dask or Zarr array or a path/URL; supported: {SUPPORTED}"
    msg += f"; got {type(value).__name__}: {value!r:.200}"
    raise ArgumentTypeError(msg)


def _as_dask(name: str, raw: _Raw, axes: str, chunk: int) -> da.Array:
    """Wrap a NumPy array or file as Dask: blocks of ``chunk`` in y and x, whole elsewhere.

    A TIFF read through its Zarr store gets blocks of whole tiles or strips where these
    are not larger than ``chunk``.
    """
    data = raw.data
    if isinstance(data, da.Array):
        return data
    file_chunks = getattr(data, "chunks", None) or data.shape
    chunks = []
    for a, n, c in zip(axes, data.shape, file_chunks, strict=True):
        c = max(int(c), 1)
        if a not in "yx":
            chunks.append(n)
        else:
            chunks.append(min(n, chunk if c >= chunk else max(c, chunk // c * c)))
    if isinstance(data, np.ndarray):
        return da.from_array(data, chunks=tuple(chunks))
    token = f"zi-{name}-{tokenize(raw.source, os.stat(raw.source).st_mtime_ns, data.shape)}"
    meta = np.empty((0,) * data.ndim, dtype=data.dtype)
    return da.from_array(data, chunks=tuple(chunks), name=token, asarray=False, meta=meta)


def _open(
    kind: str,
    value: Any,
    storage_options: dict[str, Any] | None,
    chunk: int,
    axes: str | None,
    opened: Mapping[str, zarr.Array | zarr.Group] | None = None,
) -> OpenedInput:
    """Open ``value`` as ``kind`` (``"image"`` / ``"mask"``) in its target axes."""
    raw = _to_raw(kind, value, storage_options, opened)
    shape = tuple(int(n) for n in raw.data.shape)
    found, known = _axes.resolve_axes(kind, shape, raw.axes, axes, raw.source)
    if axes is not None:
        origin = f"the given {'axes' if kind == 'image' else 'mask_axes'}={found!r}"
    elif known:
        origin = f"the axes {found!r} recorded in {raw.source}"
    else:
        param = "axes" if kind == "image" else "mask_axes"
        origin = f"the axes {found!r} assumed for {raw.source} (name them with {param}=...)"
    plan = _axes.plan_axes(kind, found, shape, origin)
    arr = _in_target(kind, raw, found, chunk, plan)
    return OpenedInput(arr, raw.source, raw.names, shape, found if known else None)


def open_image(
    image: Any,
    storage_options: dict[str, Any] | None = None,
    chunk: int = 2048,
    axes: str | None = None,
    opened: Mapping[str, zarr.Array | zarr.Group] | None = None,
) -> OpenedInput:
    """Open ``image`` as a Dask array ``(c, z, y, x)``.

    ``axes`` names the axes of an input without recorded axes (e.g. ``"yxc"``);
    without it a 3-D image is ``(c, y, x)`` (``z = 1``), a 4-D one ``(c, z, y, x)``
    and a 5-D one ``(t, c, z, y, x)``. A ``t`` axis of length 1 is dropped; missing
    ``c`` and ``z`` axes get length 1.
    """
    img = _open("image", image, storage_options, chunk, axes, opened)
    if not (np.issubdtype(img.array.dtype, np.number) or img.array.dtype == np.bool_):
        msg = f"image must hold numbers, got dtype {img.array.dtype} from {img.source}"
        raise ArgumentTypeError(msg)
    return img


def open_mask(
    mask: Any,
    storage_options: dict[str, Any] | None = None,
    chunk: int = 2048,
    axes: str | None = None,
    opened: Mapping[str, zarr.Array | zarr.Group] | None = None,
) -> OpenedInput:
    """Open ``mask`` as an integer Dask array ``(z, y, x)`` (a 2-D mask gets ``z = 1``).

    ``axes`` (``mask_axes`` of the caller) names the axes of a mask without recorded
    axes; ``t`` and ``c`` axes of length 1 are dropped.
    """
    msk = _open("mask", mask, storage_options, chunk, axes, opened)
    if not np.issubdtype(msk.array.dtype, np.integer):
        msg = (
            f"mask must hold integer labels (0 = background), got dtype {msk.array.dtype} "
            f"from {msk.source}; convert it, e.g. mask.astype('int32')"
        )
        raise ArgumentTypeError(msg)
    return msk


def check_same_pixels(img: OpenedInput, msk: OpenedInput) -> None:
    """Raise unless image ``(c, z, y, x)`` and mask ``(z, y, x)`` cover the same pixels.

    When another layout of an input whose axes were assumed would fit, the message
    says which ``axes=`` / ``mask_axes=`` to pass.
    """
    im, mk = tuple(img.array.shape), tuple(msk.array.shape)
    if im[1:] == mk:
        return
    msg = (
        f"image and mask must cover the same pixels: image (c, z, y, x) = {im} "
        f"needs a mask (z, y, x) = {im[1:]}, got mask shape {mk}"
    )
    hint = _axes.suggest(img.shape, img.axes, msk.shape, msk.axes)
    if hint is not None:
        msg += f"; {_axes.describe(img.shape, *hint)}"
    elif img.axes is None or msk.axes is None:
        msg += (
            f" (image shape {img.shape}, mask shape {msk.shape}); name their axes with "
            "axes=... (image) and mask_axes=... (mask), e.g. axes='yxc'"
        )
    raise ArgumentError(msg)
