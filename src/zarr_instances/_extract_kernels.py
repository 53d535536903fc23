"""Optional compiled kernels (numba) of ``extract_instances``: label sums and window cuts.

With the ``fast`` extra (numba: ``pip install -e ".[fast]"`` in a clone) two steps of the
extraction run through these kernels:

* :func:`label_sums` scans a mask block once, run by run, and adds each run's pixel
  count and coordinate sums to its label's slot in a small open-addressing hash
  table (instead of NumPy's break mask, run arrays and a sort of the runs);
* :func:`cut_windows` copies the windows out of a tile's box and zeroes the pixels of
  other labels in the same pass (instead of a fancy-indexed copy of the image and
  mask windows, a comparison array and a multiply).

Both give exactly the results of the NumPy code in :mod:`._geometry` (integer sums;
the same element copies), which runs without numba, for dtypes the kernels do not
handle, or when switched off (:func:`enabled`). numba is imported lazily on first use; the
kernels are compiled then (once per dtype) and cached on disk by numba where it can
write its cache.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _runtime

__all__ = ["cut_windows", "enabled", "label_sums"]

# dtypes the kernels handle (numba has no float16 arithmetic; complex is left to NumPy)
_IMAGE_KINDS = "biuf"


def _compile() -> dict[str, Callable[..., Any]] | None:
    try:
        from . import _extract_numba as nb
    except ImportError:
        return None
    names = ("label_sums", "cut_plain", "cut_multiply", "cut_select", "cut_mask")
    return {name: getattr(nb, name) for name in names}


def _kernels() -> dict[str, Callable[..., Any]] | None:
    table: dict[str, Callable[..., Any]] | None = _runtime.EXTRACT_KERNELS.load(_compile)
    return table


def enabled() -> bool:
    """Whether the compiled kernels are used.

    ``ZARR_INSTANCES_NUMBA`` decides (:func:`._runtime.numba_setting`): ``0`` never,
    ``1`` whenever numba is installed, unset only where numba is already loaded in
    this process (extraction does not import numba by itself).
    """
    setting = _runtime.numba_setting()
    if setting == "off" or _runtime.EXTRACT_KERNELS.off_after_fork:
        return False
    if setting == "auto" and "numba" not in sys.modules:
        return False
    return _kernels() is not None


def label_sums(m: np.ndarray, offset: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-label ``(labels, sums (n, 10))`` of a mask ``(z, y, x)``; ``None``: use NumPy.

    ``sums`` holds the pixel count, the sums of ``z``, ``y`` and ``x`` (global, with
    ``offset``), the smallest and the largest ``z``, ``y``, ``x`` per label, labels
    ascending as ``int64`` (as ``astype(np.int64)``).
    """
    if m.dtype.kind not in "iu" or m.ndim != 3 or not enabled():
        return None
    kernels = _kernels()
    assert kernels is not None
    oz, oy, ox = (int(o) for o in offset)
    return kernels["label_sums"](m, oz, oy, ox)


def cut_windows(
    image: np.ndarray,
    mask: np.ndarray | None,
    origin_yx: tuple[int, int],
    starts_yx: np.ndarray,
    labels: np.ndarray,
    diameter: int,
    starts_z: np.ndarray,
    depth: int,
    *,
    remove_background: bool,
    with_mask: bool,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Compiled :func:`._geometry.crop_windows` (same arguments); ``None``: use NumPy.

    ``starts_z`` (first plane of each window in the region) and ``depth`` are given.
    """
    if (
        image.dtype.kind not in _IMAGE_KINDS
        or image.dtype == np.float16
        or image.ndim != 4
        or (mask is not None and (mask.ndim != 3 or mask.dtype.kind not in "iu"))
        or not enabled()
    ):
        return None
    kernels = _kernels()
    assert kernels is not None
    n = int(starts_yx.shape[0])
    c = image.shape[0]
    starts = np.ascontiguousarray(starts_yx, dtype=np.int64)
    zs = np.ascontiguousarray(starts_z, dtype=np.int64)
    crops = np.empty((n, c, depth, diameter, diameter), dtype=image.dtype)
    oy, ox = int(origin_yx[0]), int(origin_yx[1])
    starts_args = (oy, ox, starts, zs)
    if mask is None or not (remove_background or with_mask):
        kernels["cut_plain"](image, *starts_args, diameter, crops)
        return crops, None
    labs = np.asarray(labels).astype(mask.dtype)
    if remove_background:
        kernel = "cut_select" if image.dtype.kind == "f" else "cut_multiply"
        kernels[kernel](image, mask, *starts_args, labs, diameter, crops)
    else:
        kernels["cut_plain"](image, *starts_args, diameter, crops)
    mcrops = None
    if with_mask:
        mcrops = np.empty((n, 1, depth, diameter, diameter), dtype=np.uint8)
        kernels["cut_mask"](mask, *starts_args, labs, diameter, mcrops)
    return crops, mcrops
