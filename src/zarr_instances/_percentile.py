"""``normalize="percentile"``: every crop scaled with its own source's intensity percentiles.

An instance store written by ``extract_instances`` records, per source and channel,
percentiles of the intensities of the object pixels (attribute
``zarr_instances.intensity``), and the source of every row (the ``source`` column of
its instance table ``obs``). :func:`source_scales` reads both once, when the dataset
is built: the row's source as a small integer per row, and per source and channel the
low percentile and the reciprocal of ``high - low``. The batcher gathers those of a
buffer's rows with fancy indexing (:meth:`SourceScales.of_rows`) and normalises the
whole buffer in one vectorised pass (:func:`._normalize.normalize_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import zarr

from ._normalize import percentile_range
from ._store import OpenedInstances
from .errors import ArgumentError

__all__ = ["SourceScales", "source_scales"]

_ATTRS_KEY = "zarr_instances"  # as ._write.ATTRS_KEY (which imports more than needed here)
_INTENSITY = "intensity"
_TABLE = "obs"
_SOURCE = "source"


class SourceScales:
    """The row sources and per-source low/high of ``normalize="percentile"``.

    The per-row source codes live in shared memory, as :class:`._row_data.RowData`'s
    arrays: DataLoader workers map them instead of receiving a pickled copy.

    Parameters
    ----------
    codes
        The source index (into ``low``/``high``) of every row.
    low, high
        Float32 ``(n_sources, c)``: the low and high percentile of each source and
        channel (NaN where a channel has no object pixels).
    percentiles
        The ``(low, high)`` percentiles the values are.
    """

    def __init__(
        self,
        codes: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        percentiles: tuple[float, float],
    ) -> None:
        self.percentiles = percentiles
        low = np.asarray(low, np.float32)
        span = np.asarray(high, np.float32) - low
        ok = span > 0  # False for NaN (no object pixels) and high == low: output 0
        self.low = np.where(ok, low, np.float32(0)).astype(np.float32)
        inv = np.float32(1) / np.where(ok, span, np.float32(1))
        self.inv = np.where(ok, inv, np.float32(0)).astype(np.float32)
        dtype = np.int16 if low.shape[0] <= np.iinfo(np.int16).max else np.int32
        self._codes = torch.from_numpy(np.ascontiguousarray(codes, dtype=dtype)).share_memory_()
        self.codes: np.ndarray = self._codes.numpy()

    def of_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(low, inv)``, float32 ``(len(rows), c)``, of the global ``rows``."""
        source = self.codes[rows]
        return self.low[source], self.inv[source]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["codes"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.codes = self._codes.numpy()


def _lacking(where: str, why: str) -> ArgumentError:
    return ArgumentError(
        f"normalize='percentile' scales each crop with its source's intensity "
        f"percentiles, but zarr_path={where} {why}, so it lacks per-source percentiles. "
        "Pass an instance store written by extract_instances (out=...) of this version "
        "of zarr-instances (re-extract older stores with overwrite=True), or choose "
        "another normalize mode"
    )


def _stored_index(stored: Sequence[float], q: float) -> int | None:
    for k, v in enumerate(stored):
        if math.isclose(v, q, rel_tol=1e-9, abs_tol=1e-12):
            return k
    return None


def _source_column(group: zarr.Group, where: str) -> tuple[np.ndarray, list[str]]:
    """Return the ``source`` codes of every row and the category names of the table."""
    table = group[_TABLE]
    column = table.get(_SOURCE) if isinstance(table, zarr.Group) else None
    if (
        not isinstance(column, zarr.Group)
        or column.attrs.get("encoding-type") != "categorical"
        or "codes" not in column
        or "categories" not in column
    ):
        raise _lacking(where, f"has no categorical {_SOURCE!r} column in its table {_TABLE!r}")
    codes = np.asarray(column["codes"][...])  # type: ignore[index]
    names = [str(v) for v in np.asarray(column["categories"][...])]  # type: ignore[index]
    return codes, names


def _per_source(
    values: Mapping[str, Any], names: list[str], k: int, channels: int, where: str
) -> np.ndarray:
    """Return float32 ``(len(names), channels)``: entry ``k`` of each source and channel."""
    missing = [name for name in names if name not in values]
    if missing:
        raise _lacking(where, f"records no percentiles for the sources {missing!r}")
    out = np.full((len(names), channels), np.nan, np.float32)
    for s, name in enumerate(names):
        rows = values[name]
        if not isinstance(rows, Sequence) or len(rows) != channels:
            msg = (
                f"normalize='percentile': zarr_path={where} records percentiles of "
                f"{len(rows) if isinstance(rows, Sequence) else rows!r} channels for "
                f"source {name!r}, but the crops have {channels}"
            )
            raise ArgumentError(msg)
        for c, row in enumerate(rows):
            value = row[k] if isinstance(row, Sequence) and len(row) > k else None
            if value is not None:
                out[s, c] = value
    return out


def source_scales(
    normalize: object, stores: Sequence[OpenedInstances], store_rows: Sequence[int]
) -> SourceScales | None:
    """Read what ``normalize="percentile"`` needs from the stores; ``None`` for other modes.

    ``stores`` is the dataset's store, or its list of stores (``store_rows`` rows each,
    concatenated in order): the sources of each store are its own, so a source name
    found in two stores is two sources, each scaled with the percentiles its store
    recorded.

    Raises
    ------
    ArgumentError
        If the mode is malformed, if a store is a bare array or a group without
        the intensity percentiles or the instance table's ``source`` column, or if
        the requested percentiles are not among the stored ones (the error lists
        those and names the store).
    """
    q = percentile_range(normalize)
    if q is None:
        return None
    codes, lows, highs = [], [], []
    n_sources = 0
    for opened, n_rows in zip(stores, store_rows, strict=True):
        code, low, high = _store_scales(q, opened, int(n_rows))
        codes.append(code.astype(np.int64) + n_sources)
        lows.append(low)
        highs.append(high)
        n_sources += low.shape[0]
    return SourceScales(np.concatenate(codes), np.concatenate(lows), np.concatenate(highs), q)


def _store_scales(
    q: tuple[float, float], opened: OpenedInstances, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the source code of each row of one store and its sources' low and high."""
    where = opened.where
    group = opened.group
    if group is None:
        raise _lacking(where, "is a bare crop array, not an instance store")
    recorded: Any = group.attrs.get(_ATTRS_KEY)
    intensity: Any = recorded.get(_INTENSITY) if isinstance(recorded, Mapping) else None
    if not isinstance(intensity, Mapping) or not isinstance(intensity.get("sources"), Mapping):
        raise _lacking(where, f"has no {_INTENSITY!r} attributes")
    if _TABLE not in group:
        raise _lacking(where, f"has no instance table {_TABLE!r}")
    stored = [float(v) for v in intensity.get("percentiles") or []]
    index = [_stored_index(stored, v) for v in q]
    if None in index:
        msg = (
            f"normalize=('percentile', {q[0]:g}, {q[1]:g}): zarr_path={where} stores the "
            f"percentiles {[f'{v:g}' for v in stored]} only; choose low and high among them"
        )
        raise ArgumentError(msg)
    codes, names = _source_column(group, where)
    if codes.shape != (n_rows,) or (codes.size and (codes.min() < 0 or codes.max() >= len(names))):
        msg = (
            f"normalize='percentile': the {_SOURCE!r} column of zarr_path={where} does not "
            f"give a source for each of its {n_rows} rows"
        )
        raise ArgumentError(msg)
    channels = int(opened.array.shape[1])
    sources = intensity["sources"]
    k_low, k_high = (int(k) for k in index if k is not None)
    low = _per_source(sources, names, k_low, channels, where)
    high = _per_source(sources, names, k_high, channels, where)
    return codes, low, high
