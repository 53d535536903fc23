"""zarr-instances: per-instance crops from large images in Zarr, streamed into PyTorch."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .dataset import ZarrDataLoader, ZarrIterableInstances
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ChunkReadError,
    StoreExistsError,
    StoreNotFoundError,
    ZarrInstancesError,
)
from .extract import extract_instances

try:
    __version__ = version("zarr-instances")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ChunkReadError",
    "StoreExistsError",
    "StoreNotFoundError",
    "ZarrDataLoader",
    "ZarrInstancesError",
    "ZarrIterableInstances",
    "__version__",
    "extract_instances",
]
