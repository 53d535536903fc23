"""The instance table of an extraction: one row per crop, in row order (pure).

Columns: ``source`` (categorical, the source names in study order), ``instance_id``,
``centroid_z``, ``centroid_y``, ``centroid_x`` (the rounded centre of mass, the
window's centre), ``area`` (the object's pixels) and ``clipped`` (the fraction of
them outside the window). The index holds the row numbers as strings (AnnData's
``obs`` needs string names). Nothing here reads or writes a store.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._study_plan import StudyPlan
from ._windows import Clipping

__all__ = ["TABLE_COLUMNS", "instance_table"]

TABLE_COLUMNS = (
    "source",
    "instance_id",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "area",
    "clipped",
)


def instance_table(
    names: Sequence[str],
    plan: StudyPlan,
    cents: np.ndarray,
    clip: Clipping,
    first_row: int = 0,
) -> pd.DataFrame:
    """Return the table of the rows of ``plan``.

    Parameters
    ----------
    names
        Source names, in the order of the plan's sources.
    plan
        The plan of the rows.
    cents
        Rounded centroids ``(n, 3)`` ``(z, y, x)`` of the instances, in instance
        order (source by source, ids ascending).
    clip
        Area and pixels inside the window of every instance, in instance order.
    first_row
        Row number of the plan's first row in the store (rows appended after others).
    """
    perm = plan.perm
    row_cents = cents[perm]
    area = clip.area[perm]
    table = pd.DataFrame(
        {
            "source": pd.Categorical.from_codes(plan.source[perm], categories=list(names)),
            "instance_id": plan.ids[perm],
            "centroid_z": row_cents[:, 0],
            "centroid_y": row_cents[:, 1],
            "centroid_x": row_cents[:, 2],
            "area": area,
            "clipped": (area - clip.inside[perm]) / area,
        },
        index=pd.Index(np.arange(first_row, first_row + perm.size).astype(str)),
    )
    return table
