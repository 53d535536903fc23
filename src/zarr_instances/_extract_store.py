"""The store side of ``extract_instances``: create, resume or append; write; table; finish.

A new store is created (or an interrupted one reopened, :func:`._write.prepare_store`),
or, with ``append=True``, an existing one grown for the new sources
(:mod:`._append`). Then the missing write units are written, the instance table
``obs`` is written whole (the old rows of an append kept, ``metadata`` joined on the
new rows), and the store is marked complete and consolidated. A rerun of a complete
extraction writes nothing.

What depends on reading the inputs, the clipping counts (``windows``: ``n_clipped``,
``max_clipped``; the table's ``clipped`` column) and the intensity percentiles
(``intensity``), comes from the write passes (:class:`._extract_write.Found`), so
the attributes are completed at the end, before the store is marked complete.
Windows not cut by this call (units written by an interrupted call, or a complete
store) are counted by :func:`._clip_tasks.clipping`; the intensities, when nothing
is left to write, by :func:`._mask_pass.histograms`.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr

from ._append import AppendTarget, appended_attrs, begin_append
from ._clip_tasks import clipping
from ._extract_settings import Settings
from ._extract_write import Found, WriteJob, write_passes
from ._geometry import LabelSums
from ._mask_pass import histograms, intensity_attrs
from ._study_plan import StudyPlan
from ._windows import Clipping, estimate_output_bytes
from ._write import ATTRS_KEY, finish_store, prepare_store
from .errors import UnmatchedMetadataWarning

__all__ = ["Rows", "check_metadata", "size_text", "write_store"]

logger = logging.getLogger("zarr_instances")


@dataclass(frozen=True, eq=False)
class Rows:
    """The rows an extraction writes: plan, source names, ids and centroids, label sums.

    ``row_ids``/``row_cents`` are in row order, ``cents`` and ``sums`` in instance
    order (source by source, ids ascending).
    """

    plan: StudyPlan
    names: Sequence[str]
    row_ids: np.ndarray
    row_cents: np.ndarray
    cents: np.ndarray
    sums: Sequence[LabelSums]


def check_metadata(metadata: Any, sources_given: bool) -> None:
    """Raise now, before any extraction work, if ``metadata`` cannot be joined."""
    import pandas as pd

    from ._metadata import join_metadata

    empty = pd.DataFrame(
        {
            "source": pd.Categorical([]),
            "instance_id": np.zeros(0, dtype=np.int64),
        }
    )
    join_metadata(empty, metadata, sources_given=sources_given)


def write_store(
    job: WriteJob,
    s: Settings,
    rows: Rows,
    attrs: dict[str, Any],
    target: AppendTarget | None,
    metadata: Any,
    sources_given: bool,
) -> tuple[zarr.Group, Clipping]:
    """Write the rows of ``job`` into ``s.out`` (a new, resumed or appended store).

    ``attrs``: the store's attributes but the clipping counts and the intensities,
    added here at the end. Returns the store and how much each window clips.
    """
    assert s.out is not None
    if target is None:
        group, todo = prepare_store(
            s.out,
            job.layout,
            rows.row_ids,
            rows.row_cents,
            attrs,
            overwrite=s.overwrite,
            storage_options=s.storage_options,
        )
    else:
        group = target.group
        todo = begin_append(target, job.layout, rows.row_ids, rows.row_cents, rows.names)
        job = dataclasses.replace(job, first_row=target.first_row)
    layout = job.layout
    size = estimate_output_bytes(layout.n, layout.crop_shape, layout.dtype.itemsize, s.extract_mask)
    logger.info("extract_instances: %d instances, about %s of crops uncompressed", layout.n,
                size_text(size))  # fmt: skip
    recorded = cast("dict[str, Any]", group.attrs[ATTRS_KEY])
    complete = bool(recorded.get("complete"))
    job = dataclasses.replace(job, intensity=not complete)
    found = None
    if todo.size:  # none when the store holds this call's extraction complete already
        found = write_passes(job, group, todo, s.progress)
    known = None if found is None else (found.counted, found.inside)
    clip = clipping(rows.plan, rows.sums, job.masks, job.token, known)
    if not complete:
        attrs = _finished_attrs(attrs, clip, _intensities(job, found), rows.names)
        _write_table(group, rows, clip, target, metadata, sources_given)
        if target is not None:
            attrs = appended_attrs(target, attrs, job.layout.n)
        group.attrs[ATTRS_KEY] = {**attrs, "complete": False}
    finish_store(group)
    return group, clip


def _intensities(job: WriteJob, found: Found | None) -> list[Any]:
    """Return the object intensities per source: from the write passes, else read them."""
    if found is not None and found.histograms is not None:
        return found.histograms
    return list(histograms(job.images, job.masks, job.token))


def _finished_attrs(
    attrs: dict[str, Any], clip: Clipping, counts: list[Any], names: Sequence[str]
) -> dict[str, Any]:
    """``attrs`` with the clipping counts in ``windows`` and the intensity percentiles."""
    windows = {
        **attrs["windows"],
        "n_clipped": int(clip.clipped.sum()),
        "max_clipped": float(clip.fraction.max()),
    }
    return {**attrs, "windows": windows, "intensity": intensity_attrs(names, counts)}


def _write_table(
    group: zarr.Group,
    rows: Rows,
    clip: Clipping,
    target: AppendTarget | None,
    metadata: Any,
    sources_given: bool,
) -> None:
    """Write the instance table: the rows' own columns, ``metadata`` joined on them."""
    import pandas as pd

    from ._instance_table import instance_table
    from ._metadata import join_metadata
    from ._table import table_of, write_table

    first = 0 if target is None else target.first_row
    table = instance_table(rows.names, rows.plan, rows.cents, clip, first)
    if metadata is not None:
        table, extra, missing = join_metadata(table, metadata, sources_given=sources_given)
        if extra or missing:
            warnings.warn(
                f"metadata: {extra} metadata rows match no crop and {missing} of {len(table)} "
                "crops have no metadata row (their metadata columns are missing values); "
                "rows are matched on (source, instance_id)",
                UnmatchedMetadataWarning,
                stacklevel=4,
            )
    if target is not None:
        old = table_of(group).iloc[:first]
        names = [*old["source"].cat.categories, *rows.names]
        table["source"] = table["source"].cat.set_categories(names)
        old["source"] = old["source"].cat.set_categories(names)
        table = pd.concat([old, table])
    write_table(group, table)


def size_text(nbytes: int) -> str:
    """Return a byte count for a reader (``"3.2 GiB"``)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"
