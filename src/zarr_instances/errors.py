"""Exception classes of zarr-instances.

Every error class subclasses both :class:`ZarrInstancesError` and the builtin a
caller would expect (``ValueError``, ``TypeError``, ``FileNotFoundError``,
``OSError``), so ``except ValueError`` keeps working; warnings subclass
``UserWarning``.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ChunkReadError",
    "ClippedInstancesWarning",
    "StoreAccessError",
    "StoreConnectionError",
    "StoreExistsError",
    "StoreIncompleteError",
    "StoreNotFoundError",
    "UnmatchedMetadataWarning",
    "ZarrInstancesError",
]


class ZarrInstancesError(Exception):
    """Base class of every error raised by zarr-instances."""


class ArgumentError(ZarrInstancesError, ValueError):
    """An argument has the right type but a value that is not allowed."""


class ArgumentTypeError(ZarrInstancesError, TypeError):
    """An argument has a type that is not allowed."""


class StoreNotFoundError(ZarrInstancesError, FileNotFoundError):
    """A path or URL holds no Zarr array or group."""


class StoreExistsError(ZarrInstancesError, FileExistsError):
    """An output store exists already and ``overwrite`` was not given."""


class StoreIncompleteError(ZarrInstancesError, ValueError):
    """An instance store whose extraction was interrupted is opened for reading.

    Rerunning the same ``extract_instances`` call finishes it.
    """


class ChunkReadError(ZarrInstancesError, OSError):
    """A chunk of a Zarr array could not be read or decoded."""


class StoreAccessError(ZarrInstancesError, PermissionError):
    """A remote store refused access (missing or wrong credentials)."""


class StoreConnectionError(ZarrInstancesError, ConnectionError):
    """The endpoint of a remote store could not be reached."""


class ClippedInstancesWarning(UserWarning):
    """Windows of ``extract_instances`` leave more than 1 % of some objects' pixels out."""


class UnmatchedMetadataWarning(UserWarning):
    """``metadata`` rows match no crop, or crops have no ``metadata`` row."""
