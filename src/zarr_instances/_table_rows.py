"""Labels, row filters and leak-free splits from an instance store's table (``obs``).

* :func:`table_rows` resolves the ``labels`` and ``where`` of
  :class:`~zarr_instances.ZarrIterableInstances`: integer labels (``-1`` = unlabelled),
  the class names of a label column, and the boolean mask of the selected rows.
* :func:`group_split` gives one ``where`` mask per part, every group wholly in one part;
  :func:`assign_groups` is the pure assignment of groups to parts behind it.
* :func:`selection_digest` names the rows an epoch draws from, for the resume
  fingerprint.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import zarr

from ._selection import RowSelection
from ._store import ZarrPath, describe, open_zarr
from ._table import concat_tables, read_table, table_of
from ._validate import as_int_vector, check_int
from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "TableRows",
    "assign_groups",
    "column_labels",
    "group_split",
    "selection_digest",
    "table_rows",
    "where_mask",
]

_LISTS = (list, tuple, set, frozenset, np.ndarray, pd.Index, pd.Series)


@dataclass(frozen=True)
class TableRows:
    """Labels and selected rows of a dataset, resolved from its arguments.

    Attributes
    ----------
    labels
        ``int64`` label per row (``< 0`` = unlabelled), or ``None`` (inference).
    classes
        Class names of a label column (code ``k`` is ``classes[k]``), else ``None``.
    column
        The label column, or ``None`` for a labels array.
    where
        Boolean mask of the rows selected by ``where``, or ``None`` (all rows).
    """

    labels: np.ndarray | None
    classes: list[Any] | None
    column: str | None
    where: np.ndarray | None

    def keep(self, drop_unlabeled: bool) -> np.ndarray | None:
        """Return the kept rows: ``where`` AND (labelled, with ``drop_unlabeled``)."""
        keep = self.labels >= 0 if self.labels is not None and drop_unlabeled else None
        if self.where is None:
            return keep
        return self.where if keep is None else keep & self.where


def table_rows(
    zarr_path: ZarrPath | Sequence[ZarrPath],
    storage_options: dict[str, Any] | None,
    labels: Any,
    where: Any,
    n_rows: int,
    store_rows: Sequence[int] | None = None,
) -> TableRows:
    """Resolve ``labels`` (an array or a column name) and ``where`` over ``n_rows`` rows.

    The instance table is read only when ``labels`` is a column name or ``where`` a
    mapping. For a list of stores (``store_rows`` their rows), their tables are
    concatenated in order (:func:`._table.concat_tables`: categories united in
    first-seen order), so a label column's codes and a ``where`` value mean the same
    in every store; a ``where`` value needs to match a row in one store, not in each.

    Raises
    ------
    ArgumentError
        If a column is missing, the store has no table, its rows do not match the
        array, a ``where`` value matches no row, or a ``where`` mask has the wrong length.
    ArgumentTypeError
        If labels are not integers (or a column that codes to integers), or a
        ``where`` mask is not boolean.
    """
    table = None
    if isinstance(labels, str) or isinstance(where, Mapping):
        name, value = ("labels", labels) if isinstance(labels, str) else ("where", where)
        arg = f"{name}={value!r}"
        if store_rows is None:
            table = _table(zarr_path, storage_options, arg, n_rows)  # type: ignore[arg-type]
        else:
            paths = list(zarr_path)  # type: ignore[arg-type]
            pairs = zip(paths, store_rows, strict=True)
            parts = [_table(p, storage_options, arg, n) for p, n in pairs]
            _check_columns(parts, paths, labels, where)
            table = concat_tables(parts)
    classes = column = ys = None
    if isinstance(labels, str):
        assert table is not None
        ys, classes = column_labels(table, labels)
        column = labels
    elif labels is not None:
        ys = as_int_vector(labels, "labels", n_rows)
    mask = None if where is None else where_mask(where, table, n_rows)
    return TableRows(ys, classes, column, mask)


def _check_columns(
    tables: list[pd.DataFrame], paths: list[ZarrPath], labels: Any, where: Any
) -> None:
    """Raise if a column that ``labels`` or ``where`` names is missing from one store.

    Concatenated, its rows would read as missing values: unlabelled, or never
    selected, without a word.
    """
    names = [labels] if isinstance(labels, str) else []
    names += list(where) if isinstance(where, Mapping) else []
    for table, path in zip(tables, paths, strict=True):
        missing = [n for n in names if n not in table.columns]
        if missing:
            in_labels = isinstance(labels, str) and labels == missing[0]
            arg = f"labels={labels!r}" if in_labels else f"where={{{missing[0]!r}: ...}}"
            msg = (
                f"{arg}: the instance table of {describe(path)} has no column "
                f"{missing[0]!r} (its columns: {', '.join(map(repr, table.columns))}); "
                "every store of the list needs it"
            )
            raise ArgumentError(msg)


def _table(zarr_path: ZarrPath, storage_options: Any, arg: str, n_rows: int) -> pd.DataFrame:
    where = describe(zarr_path)
    node = zarr_path
    if isinstance(zarr_path, str | os.PathLike):
        node = open_zarr(zarr_path, storage_options)
    if not isinstance(node, zarr.Group):
        msg = (
            f"{arg} reads the instance table, but zarr_path={where} is a bare array; "
            "pass the instance store (the group written by extract_instances)"
        )
        raise ArgumentError(msg)
    try:
        table = table_of(node, where)
    except ArgumentError as exc:
        raise ArgumentError(f"{arg} reads the instance table: {exc}") from exc
    if len(table) != n_rows:
        msg = f"{arg}: the instance table of {where} has {len(table)} rows, the crops {n_rows}"
        raise ArgumentError(msg)
    return table


def _column(table: pd.DataFrame, name: Any, arg: str) -> pd.Series:
    if not isinstance(name, str) or name not in table.columns:
        msg = f"{arg}: {name!r} is not a column of the instance table; its columns are " + (
            ", ".join(repr(str(c)) for c in table.columns)
        )
        raise ArgumentError(msg)
    return table[name]


def _plain(values: Any) -> list[Any]:
    """Return ``values`` as a list of plain Python scalars (JSON- and pickle-friendly)."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def column_labels(table: pd.DataFrame, name: str) -> tuple[np.ndarray, list[Any] | None]:
    """Return the integer label of every row from column ``name``, and its classes.

    * categorical: the category codes, ``classes`` the categories (in their order);
    * str, object or bool: codes of the sorted distinct values, ``classes`` those values;
    * integer: the values as they are (``< 0`` = unlabelled), ``classes`` ``None``;
    * float: the values when all are integral (NaN = unlabelled), ``classes`` ``None``.

    Missing values become ``-1`` (unlabelled).

    Raises
    ------
    ArgumentError
        If the column is missing or holds non-integral floats.
    ArgumentTypeError
        If the column has another dtype.
    """
    col = _column(table, name, f"labels={name!r}")
    dtype = col.dtype
    types = pd.api.types
    if isinstance(dtype, pd.CategoricalDtype) or not (
        types.is_numeric_dtype(dtype) and not types.is_bool_dtype(dtype)
    ):
        try:
            cat = pd.Categorical(col)
        except TypeError as exc:
            msg = f"labels={name!r}: the column's values cannot be sorted into classes ({exc})"
            raise ArgumentTypeError(msg) from exc
        return np.asarray(cat.codes, dtype=np.int64), _plain(cat.categories)
    if types.is_integer_dtype(dtype):
        return col.to_numpy(dtype=np.int64, na_value=-1), None
    if types.is_float_dtype(dtype):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        known = ~np.isnan(values)
        bad = values[known][~np.isfinite(values[known]) | (values[known] % 1 != 0)]
        if bad.size:
            msg = (
                f"labels={name!r} holds non-integral values ({_plain(bad[:5])}); give a "
                "column of integers, categories or strings"
            )
            raise ArgumentError(msg)
        out = np.full(values.size, -1, dtype=np.int64)
        out[known] = values[known].astype(np.int64)
        return out, None
    msg = f"labels={name!r}: a column of dtype {dtype} cannot be labels"
    raise ArgumentTypeError(msg)


def where_mask(where: Any, table: pd.DataFrame | None, n_rows: int) -> np.ndarray:
    """Return the rows selected by ``where``: a ``{column: values}`` mapping or a mask.

    A mapping selects the rows whose value in every named column (AND) is one of the
    given values (a single value or a list); categorical columns compare by category
    value. A value that no row has is an error (a typo would select nothing).

    Raises
    ------
    ArgumentError
        If a column is missing, a value matches no row, the mapping is empty, or the
        mask does not have one value per row.
    ArgumentTypeError
        If the mask is not boolean.
    """
    if isinstance(where, Mapping):
        assert table is not None
        if not where:
            msg = "where must name at least one column, got an empty mapping"
            raise ArgumentError(msg)
        mask = np.ones(n_rows, dtype=bool)
        for name, wanted in where.items():
            col = _column(table, name, f"where={{{name!r}: ...}}")
            values = list(wanted) if isinstance(wanted, _LISTS) else [wanted]
            if not values:
                msg = f"where={{{name!r}: {wanted!r}}} gives no value to select"
                raise ArgumentError(msg)
            absent = [v for v in values if not col.isin([v]).any()]
            if absent:
                known = _plain(pd.unique(col.dropna()))[:20]
                msg = (
                    f"where={{{name!r}: {wanted!r}}}: no row has the value(s) {absent!r}; "
                    f"the column's values include {known!r}"
                )
                raise ArgumentError(msg)
            mask &= col.isin(values).to_numpy(dtype=bool)
        return mask
    arr = np.asarray(where)
    if arr.dtype != np.bool_:
        msg = (
            "where must be a {column: values} mapping or a boolean array over rows, got "
            f"{type(where).__name__} of dtype {arr.dtype}"
        )
        raise ArgumentTypeError(msg)
    if arr.shape != (n_rows,):
        msg = f"where must have one value per row (shape ({n_rows},)), got shape {arr.shape}"
        raise ArgumentError(msg)
    return arr.copy()


def selection_digest(selection: RowSelection) -> str:
    """Return a short hash of the rows an epoch draws from (chunk size included).

    An irregular chunk grid (several stores) hashes its chunk starts too; a regular
    grid hashes what it always did, so saved states of one store stay valid.
    """
    bounds = selection.bounds
    if bounds is None:
        bounds = np.arange(selection.n_chunks + 1, dtype=np.int64) * selection.chunk_i
    sizes = np.diff(np.minimum(bounds, selection.n_rows))
    mask = np.repeat(selection.counts > 0, sizes)
    if selection.keep is not None:
        mask &= selection.keep
    h = hashlib.blake2b(digest_size=12)
    h.update(np.array([selection.n_rows, selection.chunk_i], dtype=np.int64).tobytes())
    if selection.bounds is not None:
        h.update(b"bounds")
        h.update(np.ascontiguousarray(selection.bounds, dtype=np.int64).tobytes())
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- group split


def assign_groups(sizes: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Assign groups of ``sizes`` rows to parts of ``fractions`` of the rows (pure).

    The groups are visited in a permutation drawn from ``seed``; each goes to the part
    furthest below its target (``fraction x total rows``; ties to the first part).
    Every part ends within the largest group's size of its target: a part over its
    target gets no more groups, so it exceeds it by less than one group; and a part
    more than the largest group short would have been furthest below its target at
    every step, so every other part would have stayed short too (the shortfalls sum to 0).

    Returns
    -------
    numpy.ndarray
        The part (``int64``) of every group.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    targets = np.asarray(fractions, dtype=np.float64) * float(sizes.sum())
    filled = np.zeros(targets.size, dtype=np.float64)
    part = np.zeros(sizes.size, dtype=np.int64)
    for g in np.random.default_rng(seed).permutation(sizes.size):
        k = int(np.argmax(targets - filled))
        part[g] = k
        filled[k] += sizes[g]
    return part


def _check_fractions(fractions: Any) -> list[float]:
    try:
        values = [float(f) for f in fractions]
    except (TypeError, ValueError) as exc:
        msg = f"fractions must be a sequence of numbers, got {fractions!r}"
        raise ArgumentTypeError(msg) from exc
    if not values or any(not math.isfinite(f) or f <= 0 for f in values):
        msg = f"fractions must be positive numbers (one per part), got {fractions!r}"
        raise ArgumentError(msg)
    if abs(sum(values) - 1.0) > 1e-9:
        msg = f"fractions must sum to 1, got {fractions!r} (sum {sum(values)!r})"
        raise ArgumentError(msg)
    return values


def group_split(
    table_or_store: pd.DataFrame
    | str
    | os.PathLike[str]
    | zarr.Group
    | Sequence[str | os.PathLike[str] | zarr.Group],
    by: str | Sequence[str] = "source",
    fractions: Sequence[float] = (0.8, 0.2),
    seed: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """Split the rows of an instance table by group, without leakage between parts.

    Every group (the rows sharing a value of ``by``, e.g. one source image or one
    patient) lands wholly in one part. The distinct groups are shuffled with ``seed``
    and each is given to the part furthest below its share of the *rows*, so parts hold
    about ``fractions`` of the rows: each part is within the largest group's size of
    its share. The split depends on the distinct groups and their sizes, not on the
    row order.

    Parameters
    ----------
    table_or_store
        The instance table (:func:`read_table`) or the store holding it (path, URL or
        :class:`zarr.Group`), or a list of stores (their tables concatenated, as
        :class:`~zarr_instances.ZarrIterableInstances` streams the list; rows with the
        same ``by`` value in two stores form one group).
    by
        Column (or columns) whose values form the groups; missing values form one group.
    fractions
        Share of the rows of each part: positive, summing to 1.
    seed
        Seed of the shuffle of the groups.
    storage_options
        Passed to the filesystem of a URL.

    Returns
    -------
    list of numpy.ndarray
        One boolean mask over the rows per part, in the order of ``fractions``; each
        row is in exactly one. Pass one as ``where=`` to
        :class:`~zarr_instances.ZarrIterableInstances`.

    Raises
    ------
    ArgumentError
        If a column is missing, the fractions are not positive or do not sum to 1, or a
        part gets no group (fewer groups than parts, or a too small fraction).
    """
    if isinstance(table_or_store, pd.DataFrame):
        table = table_or_store
    else:
        table = read_table(table_or_store, storage_options=storage_options)
    columns = [by] if isinstance(by, str) else list(by)
    for name in columns:
        _column(table, name, f"group_split(by={by!r})")
    shares = _check_fractions(fractions)
    seed = check_int(seed, "seed")
    groups = table.groupby(columns, observed=True, dropna=False, sort=True).ngroup()
    codes = groups.to_numpy(dtype=np.int64)
    sizes = np.bincount(codes, minlength=int(codes.max()) + 1 if codes.size else 0)
    parts = assign_groups(sizes, shares, seed)[codes]
    masks = [parts == k for k in range(len(shares))]
    empty = [k for k, m in enumerate(masks) if not m.any()]
    if empty:
        msg = (
            f"group_split: part(s) {empty} of fractions={fractions!r} get no group of "
            f"by={by!r} ({sizes.size} groups); use fewer parts, larger fractions or "
            "another seed"
        )
        raise ArgumentError(msg)
    return masks
