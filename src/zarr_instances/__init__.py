"""zarr-instances: per-instance crops from large images in Zarr, streamed into PyTorch."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ChunkReadError,
    ClippedInstancesWarning,
    StoreAccessError,
    StoreConnectionError,
    StoreExistsError,
    StoreIncompleteError,
    StoreNotFoundError,
    UnmatchedMetadataWarning,
    ZarrInstancesError,
)
from .extract import extract_instances
from .spatialdata import extract_from_spatialdata  # imports spatialdata on first call only

if TYPE_CHECKING:
    from ._consumer_normalize import BatchNormalizer
    from ._table import read_table
    from ._table_rows import group_split
    from .dataset import ZarrIterableInstances
    from .loader import ZarrDataLoader, merge_worker_states
    from .quality import ShuffleQuality, shuffle_quality

# The streaming side imports torch (~250 MB, seconds); extraction and the CLI's
# `extract`/`inspect` do not need it, so it is imported on first use.
_LAZY = {
    "BatchNormalizer": "._consumer_normalize",
    "ZarrIterableInstances": ".dataset",
    "ZarrDataLoader": ".loader",
    "merge_worker_states": ".loader",
    "ShuffleQuality": ".quality",
    "shuffle_quality": ".quality",
    # pandas (~0.3 s to import) only when the table is read
    "read_table": "._table",
    "group_split": "._table_rows",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)


try:
    __version__ = version("zarr-instances")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BatchNormalizer",
    "ChunkReadError",
    "ClippedInstancesWarning",
    "ShuffleQuality",
    "StoreAccessError",
    "StoreConnectionError",
    "StoreExistsError",
    "StoreIncompleteError",
    "StoreNotFoundError",
    "UnmatchedMetadataWarning",
    "ZarrDataLoader",
    "ZarrInstancesError",
    "ZarrIterableInstances",
    "__version__",
    "extract_from_spatialdata",
    "extract_instances",
    "group_split",
    "merge_worker_states",
    "read_table",
    "shuffle_quality",
]
