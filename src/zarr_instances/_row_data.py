"""Per-row arrays of a dataset (instance ids, labels, kept rows) in shared memory."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ._selection import RowSelection

__all__ = ["RowData"]


class RowData:
    """The instance id and label of every row, and the rows an epoch draws from.

    The arrays live in shared memory: DataLoader workers started with ``spawn`` or
    ``forkserver`` map them instead of each receiving a pickled copy of all rows.

    Parameters
    ----------
    instance_ids
        One integer per row.
    labels
        One integer per row, or ``None`` (inference).
    selection
        The kept rows, counted per logical chunk.
    """

    def __init__(
        self, instance_ids: np.ndarray, labels: np.ndarray | None, selection: RowSelection
    ) -> None:
        arrays = {"instance_ids": instance_ids, "labels": labels, "keep": selection.keep}
        self._shared = {
            k: torch.from_numpy(np.ascontiguousarray(v)).share_memory_()
            for k, v in arrays.items()
            if v is not None
        }
        self._selection = replace(selection, keep=None)
        self._attach()

    def _attach(self) -> None:
        views = {k: t.numpy() for k, t in self._shared.items()}
        self.instance_ids: np.ndarray = views["instance_ids"]
        self.labels: np.ndarray | None = views.get("labels")
        self.selection: RowSelection = replace(self._selection, keep=views.get("keep"))

    def __getstate__(self) -> dict[str, Any]:
        return {"_shared": self._shared, "_selection": self._selection}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach()
