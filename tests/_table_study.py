"""A small study store with an instance table (for labels, where and group_split tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from zarr_instances import extract_instances
from zarr_instances.testing import make_image_and_mask

D = 12
CELL_TYPES = ["T", "B", "NK"]  # given out of sorted order


def make_study(path, n_sources: int = 2, cells: int = 14, chunk_i: int = 8, seed: int = 0):
    """Write a study of ``n_sources`` 2-D sources to ``path``; return the metadata given.

    Metadata rows: ``cell_type`` (about one crop in five missing), ``patient`` (two
    sources per patient) and ``grade`` (integers, some missing).
    """
    rng = np.random.default_rng(seed)
    images, masks, meta = {}, {}, []
    for s in range(n_sources):
        name = f"s{s}"
        images[name], masks[name] = make_image_and_mask(
            (60, 60), cells, D, channels=1, seed=seed * 100 + s
        )
        for iid in np.unique(masks[name])[1:]:
            kind = CELL_TYPES[int(rng.integers(3))] if rng.random() > 0.2 else None
            grade = int(rng.integers(0, 4)) if rng.random() > 0.2 else None
            meta.append((name, int(iid), kind, f"p{s // 2}", grade))
    metadata = pd.DataFrame(
        meta, columns=["source", "instance_id", "cell_type", "patient", "grade"]
    )
    metadata["grade"] = metadata["grade"].astype("Int64")
    extract_instances(
        images, masks, D, out=path, metadata=metadata, chunk_i=chunk_i, order="random", seed=seed
    )
    return metadata
