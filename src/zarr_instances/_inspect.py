"""Summaries and montages of instance stores (``zarr-instances inspect``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import zarr

from ._store import ZarrPath, open_instances, open_zarr
from ._table import TABLE_KEY, table_of
from ._write import ATTRS_KEY, PROGRESS_KEY
from .errors import ArgumentError

__all__ = ["format_summary", "montage", "summarize"]

_TOP_SOURCES = 10  # crops per source shown
_TOP_VALUES = 5  # values shown per metadata column
_TOP_INTENSITY = 5  # sources whose intensity percentiles are shown
_FEW = 10  # integer metadata columns with at most this many values read as labels


def _codecs(array: zarr.Array) -> str:
    parts = [*array.filters, *array.compressors]
    if not parts:
        return "none"
    return ", ".join(type(c).__name__ + _codec_args(c) for c in parts)


def _codec_args(codec: Any) -> str:
    for names in (("cname", "clevel", "shuffle"), ("level",), ("id",)):
        vals = []
        for name in names:
            if hasattr(codec, name):
                value = getattr(codec, name)
                vals.append(f"{name}={getattr(value, 'value', value)}")
        if vals:
            return "(" + ", ".join(vals) + ")"
    return ""


def summarize(path: ZarrPath, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe a crop array or an instance store: shape, dtype, chunks, codec, counts.

    Returns a JSON-friendly dictionary (see :func:`format_summary`).
    """
    opened = open_instances(path, storage_options)
    arr = opened.array
    info: dict[str, Any] = {
        "where": opened.where,
        "shape": [int(s) for s in arr.shape],
        "dtype": str(arr.dtype),
        "chunks": [int(c) for c in arr.chunks],
        "shards": None if arr.shards is None else [int(s) for s in arr.shards],
        "zarr_format": int(arr.metadata.zarr_format),
        "codecs": _codecs(arr),
        "n_instances": int(arr.shape[0]),
        "n_chunks": int(-(-arr.shape[0] // arr.chunks[0])) if arr.shape[0] else 0,
        "stored_bytes": int(arr.nbytes_stored()),
        "nbytes": int(arr.nbytes),
    }
    ids = opened.instance_ids
    if ids is not None:
        info["instance_ids"] = {
            "min": int(ids.min()) if ids.size else None,
            "max": int(ids.max()) if ids.size else None,
            "unique": int(np.unique(ids).size),
            "ascending": bool(np.all(np.diff(ids) > 0)),
        }
    if opened.labels is not None:
        vals, counts = np.unique(opened.labels, return_counts=True)
        info["labels"] = {int(v): int(c) for v, c in zip(vals, counts, strict=True)}
    node = (
        open_zarr(path, storage_options, name="store")
        if isinstance(path, (str, os.PathLike))
        else path
    )
    if isinstance(node, zarr.Group):
        stored = node.attrs.get(ATTRS_KEY, {})
        attrs: dict[str, Any] = dict(stored) if isinstance(stored, Mapping) else {}
        if attrs:
            info["complete"] = bool(attrs.get("complete", False))
            info["parameters"] = attrs.get("parameters")
            info["source"] = attrs.get("source")
            info["channel_names"] = attrs.get("channel_names")
            info["version"] = attrs.get("version")
        if PROGRESS_KEY in set(node.array_keys()):
            done = np.asarray(cast("zarr.Array[Any]", node[PROGRESS_KEY])[...])
            info["units_written"] = [int(done.sum()), int(done.size)]
        if TABLE_KEY in node:  # stores of older versions have no table
            info["table"] = _table_summary(table_of(node), attrs.get("intensity"))
    return info


def _table_summary(table: Any, intensity: Any) -> dict[str, Any]:
    """Describe the instance table: crops per source, metadata values, clipping, intensities.

    ``metadata`` holds the value counts (top :data:`_TOP_VALUES`) of the metadata
    columns that look like labels: non-numeric, bool, or integer with at most
    :data:`_FEW` distinct values (cell types, conditions, classes).
    """
    import pandas as pd

    from ._instance_table import TABLE_COLUMNS

    out: dict[str, Any] = {"n_rows": len(table), "columns": [str(c) for c in table.columns]}
    if "source" in table:
        counts = table["source"].value_counts(sort=True)
        out["n_sources"] = int((counts > 0).sum())
        out["crops_per_source"] = {str(k): int(v) for k, v in counts.items() if v > 0}
    meta: dict[str, Any] = {}
    for name in table.columns:
        column = table[name]
        if name in TABLE_COLUMNS:
            continue
        types = pd.api.types
        values = column.value_counts(dropna=False)
        if types.is_float_dtype(column.dtype) or (
            types.is_integer_dtype(column.dtype) and values.size > _FEW
        ):
            continue
        top = {"NA" if pd.isna(k) else str(k): int(v) for k, v in values.head(_TOP_VALUES).items()}
        meta[str(name)] = {"values": top, "n_values": int(values.size)}
    out["metadata"] = meta
    if "clipped" in table and len(table):
        clipped = np.asarray(table["clipped"], dtype=np.float64)
        out["clipped"] = {
            "over_1_percent": int(np.count_nonzero(clipped > 0.01)),
            "max": float(np.nanmax(clipped)),
        }
    if isinstance(intensity, Mapping):
        out["intensity"] = {
            "percentiles": intensity.get("percentiles"),
            "sources": intensity.get("sources"),
        }
    return out


def _table_lines(t: dict[str, Any]) -> list[str]:
    """Render :func:`_table_summary` as text lines."""
    lines = []
    per = t.get("crops_per_source") or {}
    if per:
        shown = ", ".join(f"{k}: {v}" for k, v in list(per.items())[:_TOP_SOURCES])
        more = f", ... {len(per) - _TOP_SOURCES} more" if len(per) > _TOP_SOURCES else ""
        lines.append(f"sources       {t['n_sources']}")
        lines.append(f"crops/source  {shown}{more}")
    for name, m in t.get("metadata", {}).items():
        total = max(t["n_rows"], 1)
        vals = ", ".join(f"{k}: {v} ({100 * v / total:.0f}%)" for k, v in m["values"].items())
        more = f", ... {m['n_values'] - _TOP_VALUES} more" if m["n_values"] > _TOP_VALUES else ""
        lines.append(f"{name:13} {vals}{more}")
    if "clipped" in t:
        c = t["clipped"]
        n, top = c["over_1_percent"], c["max"]
        lines.append(f"clipped       {n} objects > 1% outside their window (max {top:.1%})")
    inten = t.get("intensity") or {}
    sources = inten.get("sources") or {}
    if sources:
        pct = inten.get("percentiles") or []
        keys = ", ".join(f"p{p:g}" for p in pct)
        lines.append(f"intensity     object-pixel percentiles ({keys}) per channel:")
        for name, rows in list(sources.items())[:_TOP_INTENSITY]:
            chans = "; ".join(" ".join("-" if v is None else f"{v:g}" for v in row) for row in rows)
            lines.append(f"  {name}: {chans}")
        if len(sources) > _TOP_INTENSITY:
            lines.append(f"  ... {len(sources) - _TOP_INTENSITY} more sources")
    return lines


def format_summary(info: dict[str, Any]) -> str:
    """Render :func:`summarize`'s dictionary as aligned text lines."""
    mib = 2**20
    lines = [
        f"store         {info['where']}",
        f"shape         {tuple(info['shape'])}  (i, c, z, y, x)",
        f"dtype         {info['dtype']}",
        f"chunks        {tuple(info['chunks'])}  ({info['n_chunks']} chunks along i)",
    ]
    if info["shards"]:
        lines.append(f"shards        {tuple(info['shards'])}")
    ratio = info["nbytes"] / info["stored_bytes"] if info["stored_bytes"] else float("nan")
    lines += [
        f"zarr format   {info['zarr_format']}",
        f"codecs        {info['codecs']}",
        f"size          {info['nbytes'] / mib:.1f} MiB, stored {info['stored_bytes'] / mib:.1f} "
        f"MiB (ratio {ratio:.2f})",
        f"instances     {info['n_instances']}",
    ]
    if "instance_ids" in info:
        d = info["instance_ids"]
        order = "ascending" if d["ascending"] else "not sorted"
        lines.append(f"instance ids  {d['min']}..{d['max']}, {d['unique']} unique, {order}")
    if "labels" in info:
        total = sum(info["labels"].values())
        bal = ", ".join(f"{k}: {v} ({100 * v / total:.1f}%)" for k, v in info["labels"].items())
        lines.append(f"labels        {bal}")
    if "parameters" in info:
        p = info["parameters"] or {}
        state = "complete"
        if not info.get("complete"):
            state = "INCOMPLETE (rerun the same extract to resume)"
        lines.append(f"extraction    {state}; written units {info.get('units_written')}")
        keys = ("diameter", "remove_background", "extract_mask", "order", "seed")
        lines.append("parameters    " + ", ".join(f"{k}={p.get(k)!r}" for k in keys))
        if info.get("channel_names"):
            lines.append(f"channels      {info['channel_names']}")
        if info.get("source"):
            lines.append(f"source        {info['source']}")
    if "table" in info:
        lines += _table_lines(info["table"])
    return "\n".join(lines)


def montage(
    path: ZarrPath,
    out_png: str | os.PathLike[str],
    *,
    n: int = 64,
    channel: int = 0,
    tile: int = 64,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Save a grid of the first ``n`` crops (one channel, middle z plane) with their ids.

    Each crop is min-max scaled to 8 bits and resized (nearest) to ``tile`` pixels.
    Needs ``pillow``. Returns the number of crops drawn.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = "--montage needs pillow: pip install pillow (the [montage] extra)"
        raise ImportError(msg) from exc
    opened = open_instances(path, storage_options)
    arr = opened.array
    if not 0 <= channel < arr.shape[1]:
        msg = f"channel must be in [0, {arr.shape[1]}), got {channel!r}"
        raise ArgumentError(msg)
    k = int(min(n, arr.shape[0]))
    if k == 0:
        msg = f"the store {opened.where} has no crops to draw"
        raise ArgumentError(msg)
    crops = np.asarray(arr[:k, channel, arr.shape[2] // 2]).astype(np.float32)
    lo = crops.min(axis=(1, 2), keepdims=True)
    hi = crops.max(axis=(1, 2), keepdims=True)
    img8 = ((crops - lo) / np.maximum(hi - lo, 1e-8) * 255).astype(np.uint8)
    ids = opened.instance_ids if opened.instance_ids is not None else np.arange(k)
    cols = int(np.ceil(np.sqrt(k)))
    rows = -(-k // cols)
    pad, label_h = 2, 12
    cell_w, cell_h = tile + pad, tile + label_h + pad
    sheet = Image.new("L", (cols * cell_w + pad, rows * cell_h + pad), color=32)
    draw = ImageDraw.Draw(sheet)
    for j in range(k):
        r, c = divmod(j, cols)
        x0, y0 = pad + c * cell_w, pad + r * cell_h
        sheet.paste(
            Image.fromarray(img8[j]).resize((tile, tile), Image.Resampling.NEAREST), (x0, y0)
        )
        draw.text((x0 + 1, y0 + tile), str(int(ids[j])), fill=255)
    sheet.save(os.fspath(out_png))
    return k
