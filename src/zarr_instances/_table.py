"""Read and write the instance table: one row per crop, stored at group key ``obs``.

The table is stored in AnnData's on-disk dataframe encoding, so that
``anndata.io.read_elem(zarr.open_group(store)["obs"])`` reads it, without depending
on anndata. The encoding (anndata's ``dataframe`` 0.2.0, as written by
``anndata/_io/specs/methods.py``):

* the group has attributes ``encoding-type: dataframe``, ``encoding-version: 0.2.0``,
  ``_index`` (the key of the index array) and ``column-order``;
* the index is a ``string-array`` (variable-length UTF-8) named ``_index``, or the
  index's name;
* a numeric or bool column is an ``array``;
* a string, object or categorical column is a ``categorical`` group holding ``codes``
  (``-1`` for missing) and ``categories``, with attribute ``ordered``;
* a nullable integer or boolean column is a ``nullable-integer`` or
  ``nullable-boolean`` group holding ``values`` and ``mask``; a nullable float column
  is stored as a float ``array`` with NaN for missing values.

Every element carries ``encoding-type`` and ``encoding-version`` attributes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import zarr

from ._store import check_complete, describe, open_zarr
from .errors import ArgumentError, ArgumentTypeError

__all__ = ["TABLE_KEY", "concat_tables", "read_table", "table_of", "write_table"]

TABLE_KEY = "obs"
_INDEX = "_index"
_TYPE = "encoding-type"
_VERSION = "encoding-version"


@dataclass(frozen=True)
class _Node:
    """One encoded element: an array (``data``) or a group of ``children``."""

    encoding: str
    version: str = "0.2.0"
    data: np.ndarray | None = None
    children: tuple[tuple[str, _Node], ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)


def _array(values: np.ndarray) -> _Node:
    kind = "string-array" if values.dtype.kind in "OUT" else "array"
    return _Node(kind, data=values)


def _strings(values: Any) -> np.ndarray:
    """Return ``values`` (all ``str``) as an object array for a ``string-array``."""
    return np.asarray(values, dtype=object)


def _categorical(name: str, cat: pd.Categorical) -> _Node:
    categories = cat.categories
    if categories.dtype.kind in "OUT" or isinstance(categories.dtype, pd.StringDtype):
        if len(categories) and categories.inferred_type != "string":
            msg = (
                f"Column {name!r} of the table mixes strings with other values "
                f"({categories.inferred_type}); only str, numeric and bool columns "
                "can be stored"
            )
            raise ArgumentTypeError(msg)
        cats = _array(_strings(categories))
    else:
        cats = _array(categories.to_numpy())
    codes = _array(np.asarray(cat.codes))
    children = (("codes", codes), ("categories", cats))
    return _Node("categorical", children=children, attrs={"ordered": bool(cat.ordered)})


def _masked(kind: str, values: np.ndarray, mask: np.ndarray) -> _Node:
    return _Node(kind, "0.1.0", children=(("values", _array(values)), ("mask", _array(mask))))


def encode_column(name: str, column: pd.Series) -> _Node:
    """Return the anndata encoding of one column of the table.

    Raises
    ------
    ArgumentTypeError
        If the column's dtype has no encoding here (datetimes, intervals, mixed
        objects, ...).
    """
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _categorical(name, pd.Categorical(column))
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc":
        return _array(np.asarray(column.to_numpy()))
    types = pd.api.types
    if types.is_extension_array_dtype(dtype) and not isinstance(dtype, pd.StringDtype):
        # pandas' nullable (masked or Arrow-backed) bool, integer and float columns
        numpy_dtype = np.dtype(getattr(dtype, "numpy_dtype", object))
        if types.is_bool_dtype(dtype) or types.is_integer_dtype(dtype):
            kind = "nullable-boolean" if types.is_bool_dtype(dtype) else "nullable-integer"
            values = column.to_numpy(dtype=numpy_dtype, na_value=0)
            return _masked(kind, values, column.isna().to_numpy())
        if types.is_float_dtype(dtype):
            return _array(column.to_numpy(dtype=numpy_dtype, na_value=np.nan))
    if isinstance(dtype, pd.StringDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "O"):
        return _categorical(name, pd.Categorical(column))
    msg = (
        f"Column {name!r} of the table has dtype {dtype}, which cannot be stored; "
        "convert it to str, numeric or bool"
    )
    raise ArgumentTypeError(msg)


def _check_names(df: pd.DataFrame) -> tuple[list[str], str]:
    names = list(df.columns)
    bad = [n for n in names if not isinstance(n, str) or not n or "/" in n]
    if bad:
        msg = f"Table column names must be non-empty str without '/', got {bad[:5]!r}"
        raise ArgumentError(msg)
    if not df.columns.is_unique:
        dup = sorted(set(df.columns[df.columns.duplicated()]))
        msg = f"Table column names must be unique; repeated: {dup[:5]!r}"
        raise ArgumentError(msg)
    if _INDEX in names:
        msg = f"{_INDEX!r} is reserved for the index and cannot name a table column"
        raise ArgumentError(msg)
    index_key = df.index.name if df.index.name is not None else _INDEX
    if not isinstance(index_key, str) or not index_key or "/" in index_key:
        msg = f"The table's index name must be None or a str without '/', got {index_key!r}"
        raise ArgumentError(msg)
    if index_key in names:
        msg = f"The table's index name {index_key!r} is also a column name"
        raise ArgumentError(msg)
    return names, index_key


def _create(group: zarr.Group, name: str, node: _Node) -> None:
    attrs: dict[str, Any] = {**node.attrs, _TYPE: node.encoding, _VERSION: node.version}
    if node.data is None:
        sub = group.create_group(name, attributes=attrs)
        for child, child_node in node.children:
            _create(sub, child, child_node)
        return
    values = node.data
    if node.encoding == "string-array":
        # As anndata writes strings: zarr's variable-length UTF-8 data type; Zarr
        # format 2 also names the vlen-utf8 object codec and an empty fill value.
        from numcodecs import VLenUTF8
        from zarr.core.dtype import VariableLengthUTF8

        v2 = group.metadata.zarr_format == 2
        array = group.create_array(
            name,
            shape=values.shape,
            dtype=VariableLengthUTF8(),  # type: ignore[arg-type]
            filters=[VLenUTF8()] if v2 else None,
            fill_value="" if v2 else None,
            attributes=attrs,
        )
    else:
        array = group.create_array(name, shape=values.shape, dtype=values.dtype, attributes=attrs)
    if values.size:
        array[...] = values


def write_table(group: zarr.Group, df: pd.DataFrame, key: str = TABLE_KEY) -> None:
    """Write ``df`` at ``group[key]`` in AnnData's on-disk dataframe encoding.

    An existing ``group[key]`` is replaced (the table is rewritten whole). The index
    is stored as strings. On a store with consolidated metadata, call
    :func:`zarr.consolidate_metadata` afterwards so that readers see the new table.

    Parameters
    ----------
    group
        Writable Zarr group (format 2 or 3).
    df
        The table: str column names; numeric, bool, str, categorical or pandas
        nullable (Int, boolean, Float) columns.
    key
        Name of the table in ``group``.

    Raises
    ------
    ArgumentError
        If a column name is not a non-empty str, is repeated, is ``"_index"`` or
        equals the index's name.
    ArgumentTypeError
        If a column's dtype cannot be stored (see :func:`encode_column`).
    """
    names, index_key = _check_names(df)
    # Encode everything before touching the store: a refused column leaves the old table.
    columns = [(name, encode_column(name, df.iloc[:, j])) for j, name in enumerate(names)]
    index = _Node("string-array", data=_strings(df.index.astype(str)))
    if key in group:
        del group[key]
    attrs: dict[str, Any] = {
        _INDEX: index_key,
        "column-order": names,
        _TYPE: "dataframe",
        _VERSION: "0.2.0",
    }
    table = group.create_group(key, attributes=attrs)
    _create(table, index_key, index)
    for name, node in columns:
        _create(table, name, node)


def _where(node: zarr.Array | zarr.Group) -> str:
    return f"{node.store_path}"


def _read_node(node: zarr.Array | zarr.Group) -> Any:
    encoding = node.attrs.get(_TYPE)
    if isinstance(node, zarr.Array):
        if encoding in ("array", "string-array"):
            return node[...]
    elif encoding == "categorical":
        return pd.Categorical.from_codes(
            codes=np.asarray(_read_node(node["codes"])),
            categories=_read_node(node["categories"]),
            ordered=bool(node.attrs.get("ordered", False)),
        )
    elif encoding in ("nullable-integer", "nullable-boolean"):
        cls = pd.arrays.IntegerArray if encoding == "nullable-integer" else pd.arrays.BooleanArray
        return cls(np.asarray(_read_node(node["values"])), np.asarray(_read_node(node["mask"])))
    elif encoding == "nullable-string-array":
        values = pd.array(np.asarray(_read_node(node["values"]), dtype=object), dtype="string")
        values[np.asarray(_read_node(node["mask"]), dtype=bool)] = pd.NA
        return values
    msg = f"{_where(node)} has encoding-type {encoding!r}, which read_table cannot read"
    raise ArgumentError(msg)


def _open_group(
    store: str | os.PathLike[str] | zarr.Group, storage_options: dict[str, Any] | None
) -> zarr.Group:
    if isinstance(store, zarr.Group):
        return store
    if not isinstance(store, str | os.PathLike):
        msg = f"store must be a path, a URL or a zarr.Group, got {type(store).__name__}"
        raise ArgumentTypeError(msg)
    node = open_zarr(store, storage_options, name="store", group=True)
    assert isinstance(node, zarr.Group)
    return node


def read_table(
    store: str | os.PathLike[str] | zarr.Group | Sequence[str | os.PathLike[str] | zarr.Group],
    *,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Return the instance table of an instance store: one row per crop, in row order.

    The table is the AnnData-encoded dataframe at the store's ``obs`` key (also
    readable with ``anndata.io.read_elem``). String columns come back as categoricals,
    the index as the stored strings.

    Parameters
    ----------
    store
        The instance store: a local path, a URL (``s3://``, ``gs://``, ...) or an
        open :class:`zarr.Group`; or a list of them, read as
        :class:`~zarr_instances.ZarrIterableInstances` reads a list: the tables
        concatenated in list order (see :func:`concat_tables`), so that row ``k`` of the
        result is the dataset's row ``k``.
    storage_options
        Passed to the fsspec filesystem of a URL; ignored for a local path.

    Returns
    -------
    pandas.DataFrame
        The instance table.

    Raises
    ------
    StoreNotFoundError
        If nothing is stored at ``store``.
    StoreIncompleteError
        If the store's extraction was interrupted.
    ArgumentError
        If the store has no instance table (written by an older version of
        zarr-instances: extract it again) or the table holds an element encoding that
        is not read here.
    """
    if isinstance(store, list | tuple):
        if not store:
            msg = "store must be a store or a non-empty list of stores, got []"
            raise ArgumentError(msg)
        tables = [read_table(s, storage_options=storage_options) for s in store]
        return concat_tables(tables)
    group = _open_group(store, storage_options)  # type: ignore[arg-type]
    where = describe(store)  # type: ignore[arg-type]
    check_complete(group, where)
    return table_of(group, where)


def concat_tables(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the instance tables of several stores, in order, as one table.

    The index becomes the row number (``0 .. n - 1``); a column missing from a table
    is missing (NA) in its rows. A column that is categorical in every table stays
    categorical, its categories the union in first-seen order (the first table's
    categories, then each later table's new ones), so the codes of a label column do
    not depend on which store holds which category.
    """
    out = pd.concat(list(tables), ignore_index=True, sort=False)
    columns: list[str] = []
    for table in tables:
        columns += [c for c in table.columns if c not in columns]
    for name in columns:
        parts = [t[name] for t in tables if name in t.columns]
        if len(parts) == len(tables) and all(
            isinstance(p.dtype, pd.CategoricalDtype) for p in parts
        ):
            cats = pd.api.types.union_categoricals(
                [pd.Categorical(p) for p in parts], ignore_order=True
            )
            out[name] = pd.Categorical(cats, categories=cats.categories)
    return out[columns]


def table_of(group: zarr.Group, where: str = "") -> pd.DataFrame:
    """Return the instance table of ``group``, finished or not (see :func:`read_table`)."""
    where = where or str(group.store_path)
    if TABLE_KEY not in group:
        msg = (
            f"store={where} has no instance table ({TABLE_KEY!r}): it was written by an "
            "older version of zarr-instances, or is not an instance store. Extract it "
            "again (extract_instances with overwrite=True) to get the table"
        )
        raise ArgumentError(msg)
    table = group[TABLE_KEY]
    if not isinstance(table, zarr.Group) or table.attrs.get(_TYPE) != "dataframe":
        msg = (
            f"store={where} holds {TABLE_KEY!r}, but not as an AnnData-encoded dataframe "
            f"(encoding-type {table.attrs.get(_TYPE)!r})"
        )
        raise ArgumentError(msg)
    columns = [str(name) for name in table.attrs.get("column-order", [])]  # type: ignore[union-attr]
    index_key = str(table.attrs.get(_INDEX, _INDEX))
    data = {name: _read_node(table[name]) for name in columns}
    index = pd.Index(_read_node(table[index_key]))
    df = pd.DataFrame(data, index=index, columns=columns if columns else None)
    if index_key != _INDEX:
        df.index.name = index_key
    return df
