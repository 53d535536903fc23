"""Append new sources to a finished instance store, or finish an interrupted append.

The new rows go after the store's rows. Every chunk (or shard) holding old rows only
is left as it is; the unit the append starts in, when the old rows end inside it, is
written again with its old rows read back unchanged. Before anything is written the
store is marked unfinished, with the appended sources and the first new row recorded
(``append`` in its attributes), so that an interrupted append is detected when the
store is opened and finished by the same call; its first rows stay as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr

from ._extract_settings import Settings
from ._sources import Source
from ._store import open_zarr, read_array, url_options
from ._write import ATTRS_KEY, CENTROIDS_KEY, MASK_KEY, PROGRESS_KEY, StoreLayout
from .errors import ArgumentError, StoreExistsError

__all__ = [
    "AppendTarget",
    "append_target",
    "appended_attrs",
    "begin_append",
    "check_append",
    "crop_parameters",
    "open_append_target",
]

# parameters an append must share with the store (the rest follow from it or the inputs)
_SHARED = ("remove_background", "extract_mask", "dtype", "z_window")


@dataclass(frozen=True, eq=False)
class AppendTarget:
    """An instance store to append to: its group, attributes, rows and source names.

    ``resuming`` holds the sources of an interrupted append (``None`` otherwise).
    """

    group: zarr.Group
    attrs: dict[str, Any]
    first_row: int
    sources: list[str]
    resuming: list[str] | None

    @property
    def parameters(self) -> dict[str, Any]:
        """The parameters recorded by the extraction that made the store."""
        return cast("dict[str, Any]", self.attrs.get("parameters") or {})


def open_append_target(out: str, storage_options: dict[str, Any] | None) -> AppendTarget:
    """Open the store at ``out`` for ``append=True``; raise if it cannot take new rows."""
    from ._table import table_of

    options = url_options(out, storage_options)
    try:
        group = open_zarr(out, options, name="out", mode="r+", group=True, use_consolidated=False)
    except Exception as exc:
        msg = (
            f"append=True adds sources to an existing instance store, but out={out!r} holds "
            f"none ({exc}); leave append out to create it"
        )
        raise ArgumentError(msg) from None
    assert isinstance(group, zarr.Group)
    attrs = dict(cast("Mapping[str, Any]", group.attrs.get(ATTRS_KEY) or {}))
    if not attrs:
        msg = f"out={out!r} is not an instance store written by extract_instances: cannot append"
        raise ArgumentError(msg)
    pending = cast("dict[str, Any] | None", attrs.get("append"))
    if not attrs.get("complete") and pending is None:
        msg = (
            f"out={out!r} holds an unfinished extraction: finish it by rerunning the call "
            "that made it, then append"
        )
        raise StoreExistsError(msg)
    if "obs" not in group:
        msg = (
            f"out={out!r} has no instance table (written by an older version): extract it "
            "again to append to it"
        )
        raise ArgumentError(msg)
    table = table_of(group)
    first_row = int(pending["first_row"]) if pending else len(table)
    names = [str(c) for c in table["source"].cat.categories]
    resuming = None if pending is None else [str(s) for s in pending["sources"]]
    return AppendTarget(group, attrs, first_row, names, resuming)


def check_append(target: AppendTarget, names: Sequence[str], now: dict[str, Any]) -> None:
    """Raise if the sources ``names`` or the parameters ``now`` cannot be appended."""
    if target.resuming is not None and list(names) != target.resuming:
        msg = (
            f"out holds an unfinished append of the sources {target.resuming!r}: rerun "
            f"append=True with exactly those sources to finish it (got {list(names)!r})"
        )
        raise StoreExistsError(msg)
    there = sorted(set(names) & set(target.sources))
    if there and target.resuming is None:
        msg = (
            f"source {there[0]!r} is in the store already ({len(there)} of the given sources "
            "are): append only new sources, or extract the study again with overwrite=True"
        )
        raise ArgumentError(msg)
    image = cast("zarr.Array", target.group["image"])
    stored = {**target.parameters, "crop_shape": [int(n) for n in image.shape[1:]]}
    missing = "(not recorded)"
    diffs = [
        f"{k}: stored {stored.get(k, missing)!r}, now {now.get(k, missing)!r}"
        for k in (*_SHARED, "diameter", "crop_shape")
        if stored.get(k, missing) != now.get(k, missing)
    ]
    if diffs:
        msg = "cannot append: the new crops must match the store's; " + "; ".join(diffs)
        raise ArgumentError(msg)


def begin_append(
    target: AppendTarget,
    layout: StoreLayout,
    ids: np.ndarray,
    cents: np.ndarray,
    names: Sequence[str],
) -> np.ndarray:
    """Grow the store for the new rows (or reopen an interrupted append); return units to write.

    ``layout`` describes the whole store after the append; ``ids`` and ``cents`` are
    the new rows'. An interrupted append whose recorded rows differ is refused.
    """
    group, first = target.group, target.first_row
    if target.resuming is not None:
        same = np.array_equal(read_array(group, "instance_ids")[first:], ids) and np.array_equal(
            read_array(group, CENTROIDS_KEY)[first:], cents
        )
        if not same:
            msg = (
                "cannot finish the interrupted append: the instance ids or centroids of the "
                "given sources differ from the ones it recorded (other masks?)"
            )
            raise StoreExistsError(msg)
        return np.flatnonzero(read_array(group, PROGRESS_KEY) == 0)
    unit = layout.unit
    start_unit = first // unit
    attrs = dict(target.attrs)
    attrs["complete"] = False
    attrs["append"] = {"first_row": first, "sources": list(names)}
    group.attrs[ATTRS_KEY] = attrs  # from here on the store reads as unfinished
    progress = cast("zarr.Array", group[PROGRESS_KEY])
    progress.resize((layout.n_units,))
    progress[start_unit:] = 0
    for key in ("image", MASK_KEY):
        arr = group.get(key)
        if isinstance(arr, zarr.Array):
            arr.resize((layout.n, *arr.shape[1:]))
    id_arr = cast("zarr.Array", group["instance_ids"])
    id_arr.resize((layout.n,))
    id_arr[first:] = ids
    c_arr = cast("zarr.Array", group[CENTROIDS_KEY])
    c_arr.resize((layout.n, 3))
    c_arr[first:] = cents
    return np.arange(start_unit, layout.n_units)


def appended_attrs(target: AppendTarget, new: dict[str, Any], n: int) -> dict[str, Any]:
    """Return the store's attributes once the append is written (``complete`` as before)."""
    attrs = {k: v for k, v in target.attrs.items() if k not in ("append", "source")}
    sources = dict(cast("dict[str, Any]", target.attrs.get("sources") or {}))
    if "source" in target.attrs and target.sources:
        sources.setdefault(target.sources[0], target.attrs["source"])
    sources.update(new.get("sources") or {})
    attrs["sources"] = sources
    if "intensity" in new:  # the new sources' percentiles join the old ones'
        intensity = dict(cast("dict[str, Any]", target.attrs.get("intensity") or new["intensity"]))
        old = cast("dict[str, Any]", intensity.get("sources") or {})
        intensity["sources"] = {**old, **new["intensity"]["sources"]}
        attrs["intensity"] = intensity
    windows = cast("dict[str, Any] | None", target.attrs.get("windows"))
    if windows is not None and "windows" in new:  # clipping over old and new rows
        windows = dict(windows)
        for key, join in (("n_clipped", sum), ("max_clipped", max)):
            if key in windows and key in new["windows"]:
                windows[key] = join((windows[key], new["windows"][key]))
        attrs["windows"] = windows
    params = dict(target.parameters)
    shapes = params.get("image_shape")
    if not isinstance(shapes, dict):
        shapes = {target.sources[0]: shapes} if target.sources else {}
    shapes.update(new["parameters"]["image_shape"])
    params["image_shape"] = shapes
    params["n_instances"] = n
    attrs["parameters"] = params
    return attrs


def append_target(s: Settings, append: bool) -> tuple[Settings, AppendTarget | None]:
    """Open the store to append to; take the settings that fix its layout from it."""
    if not append:
        return s, None
    if s.out is None or s.overwrite:
        msg = (
            "append=True adds sources to the store at out: pass out=..., and not "
            f"overwrite=True (got out={s.out!r}, overwrite={s.overwrite!r})"
        )
        raise ArgumentError(msg)
    target = open_append_target(s.out, s.storage_options)
    p = target.parameters
    diameter = int(p["diameter"]) if s.diameter is None else s.diameter
    s = dataclasses.replace(
        s,
        diameter=diameter,
        chunk_i=int(p["chunk_i"]),
        shards=p.get("shards"),
        zarr_format=int(p["zarr_format"]),
    )
    return s, target


def crop_parameters(s: Settings, sources: Sequence[Source]) -> dict[str, Any]:
    """Return the parameters an append must share with the store, as this call gives them."""
    image = sources[0].image.array
    depth = int(image.shape[1]) if s.z_window is None else s.z_window
    out: dict[str, Any] = {
        "remove_background": bool(s.remove_background),
        "extract_mask": bool(s.extract_mask),
        "dtype": str(image.dtype),
        "diameter": s.diameter,
        "crop_shape": [int(image.shape[0]), depth, s.diameter, s.diameter],
    }
    if s.z_window is not None:
        out["z_window"] = s.z_window
    return out
