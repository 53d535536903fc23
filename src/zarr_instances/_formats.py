"""Inputs that are files but not Zarr: TIFF / OME-TIFF (tifffile) and NumPy ``.npy``.

Both are read lazily, a block at a time, and never whole:

- an uncompressed TIFF stored contiguously, and every ``.npy`` file, through a
  read-only memory map (:class:`MappedFile`);
- any other TIFF (compressed, tiled, strips) through tifffile's Zarr store of its first
  series, level 0 (:class:`TiffChunks`); a block decodes the tiles or strips it covers.

Both objects open their file on the first read in each process and pickle as the path,
so Dask's process and distributed schedulers can ship them. A TIFF's axes come from its
OME, ImageJ or tifffile metadata (``series.axes``: ``S``, samples, is a channel axis);
a plain single page is ``yx`` (or ``yxs``); for other TIFFs the axes are unknown.
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._axes import letters
from ._store import is_url
from .errors import ArgumentError, ArgumentTypeError, StoreNotFoundError

__all__ = ["FileInput", "MappedFile", "TiffChunks", "open_file", "path_kind"]

_TIFF = (".tif", ".tiff")  # also .ome.tif, .ome.tiff
SUPPORTED = (
    "a Zarr array or group or an OME-Zarr image (a directory or URL), a TIFF or OME-TIFF "
    "file (.tif, .tiff, .ome.tif, .ome.tiff), a NumPy .npy file, a NumPy, Dask or zarr "
    "array, or a SpatialData element (for a SpatialData object use "
    "zarr_instances.extract_from_spatialdata)"
)


@dataclass(frozen=True)
class FileInput:
    """A lazily read file: the array-like, its recorded axes and channel names."""

    data: MappedFile | TiffChunks
    axes: str | None
    channel_names: list[str] | None


class _LazyOpen:
    """Open a file on the first read in each process; pickle as the arguments only."""

    shape: tuple[int, ...]
    dtype: np.dtype
    ndim: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: Any = None

    def _open(self) -> Any:
        raise NotImplementedError

    def _get(self) -> Any:
        if self._opened is None:
            with self._lock:
                if self._opened is None:
                    self._opened = self._open()
        return self._opened

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_opened")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._opened = None


class MappedFile(_LazyOpen):
    """Raw array data at ``offset`` of a file, read through a read-only memory map."""

    def __init__(
        self,
        path: str,
        offset: int,
        shape: tuple[int, ...],
        dtype: Any,
        order: Literal["C", "F"] = "C",
    ) -> None:
        super().__init__()
        self.path, self.offset, self.order = path, offset, order
        self.shape, self.ndim = tuple(shape), len(shape)
        self.file_dtype = np.dtype(dtype)
        self.dtype = self.file_dtype.newbyteorder("=")

    def _open(self) -> np.memmap:
        return np.memmap(self.path, self.file_dtype, "r", self.offset, self.shape, order=self.order)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array(self._get()[key], dtype=self.dtype)  # a copy: the map stays unpinned


class TiffChunks(_LazyOpen):
    """The first series (level 0) of a TIFF through tifffile's Zarr store."""

    def __init__(
        self, path: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.path, self.chunks = path, tuple(chunks)
        self.shape, self.ndim, self.dtype = tuple(shape), len(shape), np.dtype(dtype)

    def _open(self) -> Any:
        import zarr

        tif = _tifffile().TiffFile(self.path)
        return tif, zarr.open_array(tif.aszarr(series=0, level=0), mode="r")

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._get()[1][key], dtype=self.dtype)

    def __del__(self) -> None:
        opened = self.__dict__.get("_opened")
        if opened is not None:
            opened[0].close()


def path_kind(path: str) -> str:
    """Return ``"tiff"``, ``"npy"``, ``"zarr"`` or ``"unsupported"`` (a file of another kind)."""
    low = path.lower().rstrip("/")
    if low.endswith(_TIFF):
        return "tiff"
    if low.endswith(".npy"):
        return "npy"
    if is_url(path) or not os.path.isfile(path):
        return "zarr"
    return "unsupported" if not low.endswith(".zip") else "zarr"


def open_file(name: str, path: str, kind: str) -> FileInput:
    """Open the TIFF or ``.npy`` file ``path`` given as ``name`` (``image`` / ``mask``)."""
    if kind == "unsupported":
        suffix = os.path.splitext(path)[1] or "no suffix"
        msg = f"{name}={path!r} is a file of a kind zarr-instances cannot read ({suffix}); "
        msg += f"pass {SUPPORTED}"
        raise ArgumentError(msg)
    if is_url(path):
        msg = (
            f"{name}={path!r}: TIFF and .npy inputs are read from local files; copy it to "
            "a local path, or convert it to Zarr"
        )
        raise ArgumentError(msg)
    if not os.path.isfile(path):
        msg = f"{name}={path!r}: no such file"
        raise StoreNotFoundError(msg)
    return _open_tiff(name, path) if kind == "tiff" else _open_npy(name, path)


def _open_npy(name: str, path: str) -> FileInput:
    try:
        mm = np.load(path, mmap_mode="r")
    except ValueError as exc:  # object arrays cannot be mapped; not an .npy file
        msg = f"{name}={path!r} is not an .npy file of numbers that can be memory-mapped: {exc}"
        raise ArgumentTypeError(msg) from exc
    order: Literal["C", "F"] = "F" if mm.flags.f_contiguous and not mm.flags.c_contiguous else "C"
    data = MappedFile(path, int(mm.offset), mm.shape, mm.dtype, order)
    del mm
    return FileInput(data, None, None)


def _tifffile() -> Any:
    try:
        import tifffile
        import tifffile.zarr  # Zarr 3 stores: tifffile >= 2025.5.21
    except ImportError as exc:
        msg = "TIFF input needs tifffile >= 2025.6.11: pip install -U tifffile"
        raise ImportError(msg) from exc
    return tifffile


def _open_tiff(name: str, path: str) -> FileInput:
    tifffile = _tifffile()
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError) as exc:
        msg = f"{name}={path!r} is not a readable TIFF file: {exc}"
        raise ArgumentError(msg) from exc
    with tif:
        series = tif.series[0]
        shape = tuple(int(n) for n in series.shape)
        axes = _tiff_axes(tif, series)
        names = _ome_channels(tif) if axes is not None and "c" in axes else None
        if names is not None and len(names) != shape[axes.index("c")]:  # type: ignore[union-attr]
            names = None
        if series.dataoffset is not None and series.dtype.itemsize in (1, 2, 4, 8):
            dtype = series.dtype.newbyteorder(tif.byteorder)
            data: MappedFile | TiffChunks = MappedFile(path, series.dataoffset, shape, dtype)
        else:
            import zarr

            chunks = zarr.open_array(tif.aszarr(series=0, level=0), mode="r").chunks
            data = TiffChunks(path, shape, series.dtype, chunks)
    return FileInput(data, axes, names)


def _tiff_axes(tif: Any, series: Any) -> str | None:
    """Axes recorded in the TIFF (OME, ImageJ, tifffile ``axes``), or a plain page's ``yx``."""
    raw = str(series.axes).upper()
    shaped = tif.is_shaped and "axes" in ((tif.shaped_metadata or [{}])[0] or {})
    if not (tif.is_ome or tif.is_imagej or shaped or raw in ("YX", "YXS")):
        return None
    if "S" in raw:
        if "C" in raw:
            return None  # channels and samples: name the axes with axes=
        raw = raw.replace("S", "C")
    return letters(raw)


def _ome_channels(tif: Any) -> list[str] | None:
    """Channel names of the first OME image, if every channel has one."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    channels = [e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Channel"]
    names = [c.get("Name") for c in channels]
    return [str(n) for n in names] if names and all(names) else None
