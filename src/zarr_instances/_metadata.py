"""Join per-instance metadata onto the instance table (pure: no store, no warnings).

The table has one row per crop, in row order, with columns ``source`` (categorical)
and ``instance_id`` (int64). Metadata rows are matched on ``(source, instance_id)``,
or on ``instance_id`` alone for a single-image store; every other metadata column is
added to the table, which keeps its rows and their order (a left join).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from .errors import ArgumentError, ArgumentTypeError

__all__ = ["INSTANCE_ID", "SOURCE", "join_metadata"]

SOURCE = "source"
INSTANCE_ID = "instance_id"
_SHOW = 5


def _from_anndata(metadata: Any) -> pd.DataFrame:
    attrs = metadata.uns.get("spatialdata_attrs") if hasattr(metadata, "uns") else None
    if not isinstance(attrs, dict) or not {"region_key", "instance_key"} <= attrs.keys():
        msg = (
            "metadata is an AnnData table without uns['spatialdata_attrs'] naming its "
            "'region_key' and 'instance_key'; pass a DataFrame (e.g. metadata.obs) with "
            f"columns {SOURCE!r} and {INSTANCE_ID!r} instead"
        )
        raise ArgumentError(msg)
    obs = metadata.obs
    keys = {attrs["region_key"]: SOURCE, attrs["instance_key"]: INSTANCE_ID}
    missing = [k for k in keys if k not in obs.columns]
    if missing:
        msg = (
            f"metadata.obs lacks the column(s) {missing!r} named by "
            f"uns['spatialdata_attrs'] (columns: {list(obs.columns)!r})"
        )
        raise ArgumentError(msg)
    clash = [new for old, new in keys.items() if new in obs.columns and new != old]
    if clash:
        msg = (
            f"metadata.obs has column(s) {clash!r} besides its region/instance keys "
            f"{list(keys)!r}, which are renamed to {SOURCE!r} and {INSTANCE_ID!r}; "
            "rename or drop them"
        )
        raise ArgumentError(msg)
    return obs.rename(columns=keys).reset_index(drop=True)


def _as_frame(metadata: Any) -> pd.DataFrame:
    if isinstance(metadata, pd.DataFrame):
        keyed = [n for n in metadata.index.names if n in (SOURCE, INSTANCE_ID)]
        return metadata.reset_index(level=keyed) if keyed else metadata
    if isinstance(metadata, str | os.PathLike):
        try:
            return pd.read_csv(metadata, dtype={SOURCE: str})
        except FileNotFoundError as exc:
            msg = f"metadata={os.fspath(metadata)!r}: no such CSV file ({exc})"
            raise ArgumentError(msg) from exc
    if hasattr(metadata, "obs") and isinstance(metadata.obs, pd.DataFrame):
        return _from_anndata(metadata)
    msg = (
        "metadata must be a pandas DataFrame, the path of a CSV file or an AnnData "
        f"table of spatialdata, got {type(metadata).__name__}"
    )
    raise ArgumentTypeError(msg)


def _integral_ids(column: pd.Series) -> np.ndarray:
    """Return ``column`` as int64 ids, converting integral floats and numeric strings."""
    if column.isna().any():
        rows = np.flatnonzero(column.isna().to_numpy())[:_SHOW].tolist()
        msg = f"metadata has missing {INSTANCE_ID!r} values (rows {rows!r}, 0-based)"
        raise ArgumentError(msg)
    types = pd.api.types
    if types.is_bool_dtype(column.dtype):
        msg = f"metadata column {INSTANCE_ID!r} is bool; it must hold integer instance ids"
        raise ArgumentError(msg)
    if types.is_integer_dtype(column.dtype):
        values = column.to_numpy()
        if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
            msg = f"metadata column {INSTANCE_ID!r} has ids beyond the int64 range"
            raise ArgumentError(msg)
        return values.astype(np.int64)
    numbers = pd.to_numeric(column, errors="coerce")
    floats = np.asarray(numbers, dtype=np.float64)
    bad = ~np.isfinite(floats) | (floats != np.round(floats)) | (np.abs(floats) >= 2.0**63)
    if bad.any():
        shown = column[bad].head(_SHOW).tolist()
        msg = (
            f"metadata column {INSTANCE_ID!r} must hold integer instance ids; "
            f"{int(bad.sum())} value(s) are not integral, e.g. {shown!r}"
        )
        raise ArgumentError(msg)
    if types.is_integer_dtype(numbers.dtype):  # exact for large ids given as strings
        return np.asarray(numbers, dtype=np.int64)
    return floats.astype(np.int64)


def _sources(column: pd.Series) -> pd.Series:
    if column.isna().any():
        rows = np.flatnonzero(column.isna().to_numpy())[:_SHOW].tolist()
        msg = f"metadata has missing {SOURCE!r} values (rows {rows!r}, 0-based)"
        raise ArgumentError(msg)
    return column.astype(str)


def _check_columns(meta: pd.DataFrame, table: pd.DataFrame, sources_given: bool) -> list[str]:
    needed = [SOURCE, INSTANCE_ID] if sources_given else [INSTANCE_ID]
    missing = [k for k in needed if k not in meta.columns]
    if missing:
        what = " and ".join(repr(k) for k in needed)
        msg = (
            f"metadata needs column(s) {what} to match rows with crops"
            f"{'' if sources_given else ' (one image: instance_id alone)'}; missing "
            f"{missing!r}, found columns {list(meta.columns)!r}"
        )
        raise ArgumentError(msg)
    if not meta.columns.is_unique:
        dup = sorted({str(c) for c in meta.columns[meta.columns.duplicated()]})
        msg = f"metadata has repeated column names {dup[:_SHOW]!r}"
        raise ArgumentError(msg)
    extra = [c for c in meta.columns if c not in (SOURCE, INSTANCE_ID)]
    bad = [c for c in extra if not isinstance(c, str) or not c or "/" in c or c == "_index"]
    if bad:
        msg = f"metadata column names must be str without '/' (and not '_index'), got {bad!r}"
        raise ArgumentError(msg)
    clash = [c for c in extra if c in table.columns]
    if clash:
        msg = (
            f"metadata column(s) {clash!r} clash with columns of the instance table "
            f"{list(table.columns)!r}; rename or drop them"
        )
        raise ArgumentError(msg)
    return extra


def _check_unique(
    key: np.ndarray, ids: np.ndarray, sources: pd.Series | None, meta: pd.DataFrame
) -> None:
    """Raise if an int64 ``key`` of the metadata rows repeats; show up to 5 keys."""
    dup = pd.Series(key).duplicated().to_numpy()
    if not dup.any():
        return
    rows = np.flatnonzero(dup)
    shown: list[Any] = ids[rows].tolist()
    if sources is not None:
        shown = list(zip(sources.to_numpy()[rows].tolist(), shown, strict=True))
    shown = list(dict.fromkeys(shown))[:_SHOW]
    what = f"({SOURCE}, {INSTANCE_ID})" if sources is not None else INSTANCE_ID
    hint = ""
    if sources is None and SOURCE in meta.columns and meta[SOURCE].nunique() > 1:
        hint = (
            f"; metadata has {meta[SOURCE].nunique()} distinct {SOURCE!r} values, but the "
            f"store holds one image: select its rows first"
        )
    msg = (
        f"metadata has {rows.size} row(s) whose {what} key repeats an earlier "
        f"row's, e.g. {shown!r}; each instance needs at most one metadata row{hint}"
    )
    raise ArgumentError(msg)


def _column(values: pd.Series, fill: bool) -> Any:
    """Return ``values`` as the array to take rows from (``fill``: some rows are NA).

    Strings become categoricals; with ``fill``, integer and bool columns become
    pandas' nullable dtypes so that missing rows are NA rather than turning them into
    floats or objects.
    """
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "O"):
        return pd.Categorical(values)
    if fill and isinstance(dtype, np.dtype) and dtype.kind in "iub":
        name = "boolean" if dtype.kind == "b" else f"{'UInt' if dtype.kind == 'u' else 'Int'}"
        if dtype.kind != "b":
            name += str(dtype.itemsize * 8)
        return pd.array(values.to_numpy(), dtype=name)
    return values.array


def join_metadata(
    table: pd.DataFrame, metadata: Any, *, sources_given: bool
) -> tuple[pd.DataFrame, int, int]:
    """Join per-instance metadata onto the instance table, keeping its rows and order.

    Parameters
    ----------
    table
        The instance table: columns ``source`` (categorical) and ``instance_id``
        (int64), one row per crop.
    metadata
        A :class:`pandas.DataFrame` with columns ``source`` and ``instance_id`` (or
        those as index levels), the path of a CSV file with these columns, or an
        AnnData table of spatialdata (its ``obs``; ``uns["spatialdata_attrs"]``
        names the ``region_key`` column, read as ``source``, and the ``instance_key``
        column, read as ``instance_id``). Without ``sources_given``, ``instance_id``
        alone matches rows and a ``source`` column is not needed (and not used).
        Integral float or string ids (``12.0``, ``"12"``) are read as integers.
    sources_given
        Whether the store's crops come from several named sources; then rows match
        on ``(source, instance_id)``.

    Returns
    -------
    tuple of (pandas.DataFrame, int, int)
        The table with every other metadata column added (string columns as
        categoricals; integer and bool columns as nullable dtypes when some crop has
        no metadata row; missing values are NA), the number of metadata rows that
        match no crop, and the number of crops without a metadata row.

    Raises
    ------
    ArgumentError
        If a key column is missing, a key is repeated in ``metadata``, an id is not an
        integer, or a metadata column's name clashes with a table column.
    ArgumentTypeError
        If ``metadata`` has none of the accepted types.
    """
    meta = _as_frame(metadata)
    extra = _check_columns(meta, table, sources_given)
    ids = _integral_ids(meta[INSTANCE_ID])
    table_ids = np.asarray(table[INSTANCE_ID], dtype=np.int64)
    # Dense codes of the ids (metadata and table together), so that a (source, id)
    # pair is one int64: source code * n_ids + id code.
    id_codes, unique_ids = pd.factorize(np.concatenate([ids, table_ids]))
    n_ids = max(len(unique_ids), 1)
    meta_ids, crop_ids = id_codes[: len(ids)], id_codes[len(ids) :]
    rows = np.arange(len(meta))
    if sources_given:
        sources = _sources(meta[SOURCE])
        _check_unique(pd.factorize(sources)[0] * n_ids + meta_ids, ids, sources, meta)
        table_sources = pd.Categorical(table[SOURCE])
        categories = table_sources.categories.astype(str)
        table_codes = np.asarray(table_sources.codes, dtype=np.int64)
        if not categories.is_unique:  # e.g. categories 1 and "1": compare as str
            categories = categories.unique()
            table_codes = np.asarray(
                pd.Categorical(table[SOURCE].astype(str), categories=categories).codes,
                dtype=np.int64,
            )
        meta_codes = np.asarray(pd.Categorical(sources, categories=categories).codes, np.int64)
        known = meta_codes >= 0  # rows of a source absent from the table match no crop
        rows = rows[known]
        keys = meta_codes[known] * n_ids + meta_ids[known]
        wanted = table_codes * n_ids + crop_ids
    else:
        keys, wanted = meta_ids, crop_ids
        _check_unique(keys, ids, None, meta)
    where = pd.Index(keys).get_indexer(wanted)
    positions = np.where(where >= 0, rows[np.maximum(where, 0)] if rows.size else -1, -1)
    found = positions >= 0
    hit = np.zeros(len(meta), dtype=bool)
    hit[positions[found]] = True
    n_unmatched_rows = len(meta) - int(np.count_nonzero(hit))
    n_crops_without = int(np.count_nonzero(~found))
    joined = {}
    for name in extra:
        array = _column(meta[name], fill=n_crops_without > 0)
        joined[name] = array.take(positions, allow_fill=True)
    out = table.copy()
    if joined:
        added = pd.DataFrame(joined, index=table.index)
        out = pd.concat([out, added], axis=1)
    return out, n_unmatched_rows, n_crops_without
