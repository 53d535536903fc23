"""zarr-instances: per-instance crops from large images in Zarr, streamed into PyTorch."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .dataset import ZarrDataLoader, ZarrIterableInstances, merge_worker_states
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ChunkReadError,
    StoreAccessError,
    StoreConnectionError,
    StoreExistsError,
    StoreNotFoundError,
    ZarrInstancesError,
)
from .extract import extract_instances
from .quality import ShuffleQuality, shuffle_quality

try:
    __version__ = version("zarr-instances")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ChunkReadError",
    "StoreAccessError",
    "StoreConnectionError",
    "StoreExistsError",
    "ShuffleQuality",
    "StoreNotFoundError",
    "ZarrDataLoader",
    "ZarrInstancesError",
    "ZarrIterableInstances",
    "__version__",
    "extract_instances",
    "merge_worker_states",
    "shuffle_quality",
]
