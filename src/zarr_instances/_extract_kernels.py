"""Optional compiled kernels (numba) of ``extract_instances``: label sums and window cuts.

With the ``fast`` extra (numba: ``pip install -e ".[fast]"`` in a clone) two steps of the
extraction can run through these kernels:

* :func:`label_sums` scans a mask block once, run by run, and adds each run's pixel
  count and coordinate sums to its label's slot in a small open-addressing hash
  table (instead of NumPy's break mask, run arrays and a sort of the runs);
* :func:`cut_windows` copies the windows out of a tile's box and zeroes the pixels of
  other labels in the same pass (instead of a fancy-indexed copy of the image and
  mask windows, a comparison array and a multiply).

Both give exactly the results of the NumPy code in :mod:`._geometry` (integer sums;
the same element copies), which runs without numba, for dtypes the kernels do not
handle, or when the kernels are not used.

When they are used (``ZARR_INSTANCES_NUMBA``, :func:`._runtime.numba_setting`):

* ``0``: never. ``1``: wherever numba is installed, compiled on first use (once per
  dtype and array layout; loaded from numba's disk cache in later processes).
* unset (``"auto"``), chosen by measurement (BENCHMARKS.md, "numba kernels per
  step"): compiled kernels are faster than NumPy at the label sums and at cuts that
  remove the background (with or without the mask crops); plain cuts
  (``remove_background=False``) gain nothing measurable and stay in NumPy
  (:data:`AUTO_KERNELS`). Getting the kernels (importing numba, loading or compiling
  them) costs more than they save on most images, so a kernel runs only where its
  exact signature is already compiled in this process (:func:`_ready`: a call is never
  the one that compiles), and extraction compiles them only for masks of at least
  :data:`WARM_PIXELS` pixels (:func:`warm_up`, called by ``extract_instances``), in
  a background thread while the NumPy code runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _runtime

__all__ = ["AUTO_KERNELS", "WARM_PIXELS", "cut_windows", "enabled", "label_sums", "warm_up"]

# dtypes the kernels handle (numba has no float16 arithmetic; complex is left to NumPy)
_IMAGE_KINDS = "biuf"
#: the kernels faster than NumPy once compiled: the ones used unless switched on or off
AUTO_KERNELS = frozenset({"label_sums", "cut_multiply", "cut_select", "cut_mask"})
#: mask pixels from which a background compile pays for itself (BENCHMARKS.md)
WARM_PIXELS = 2**32


def _compile() -> dict[str, Callable[..., Any]] | None:
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        with _runtime.numba_cache_for(os.path.dirname(os.path.abspath(__file__))):
            from . import _extract_numba as nb
    except ImportError:
        return None
    names = ("label_sums", "cut_plain", "cut_multiply", "cut_select", "cut_mask")
    return {name: getattr(nb, name) for name in names}


def _kernels() -> dict[str, Callable[..., Any]] | None:
    table: dict[str, Callable[..., Any]] | None = _runtime.EXTRACT_KERNELS.load(_compile)
    return table


def _switched_off() -> bool:
    return _runtime.numba_setting() == "off" or _runtime.EXTRACT_KERNELS.off_after_fork


def enabled() -> bool:
    """Whether the compiled kernels may run in this process.

    ``ZARR_INSTANCES_NUMBA`` decides (:func:`._runtime.numba_setting`): ``0`` never,
    ``1`` whenever numba is installed, unset only where numba is already loaded in
    this process. Even then, unset, a step uses its kernel only when that kernel is
    faster and already compiled (see the module's notes).
    """
    if _switched_off():
        return False
    if _runtime.numba_setting() == "auto" and "numba" not in sys.modules:
        return False
    return _kernels() is not None


def _ready(kernel: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``kernel`` is compiled for exactly these arguments (types, layouts, flags)."""
    key = tuple(kernel.typeof_pyval(a) for a in args)
    return key in kernel.overloads


def _pick(names: tuple[str, ...], calls: tuple[tuple[Any, ...], ...]) -> bool:
    """Whether to run kernels ``names`` on arguments ``calls`` (one tuple per kernel).

    Switched on: whenever numba is installed (compiling if needed). Unset: only kernels
    of :data:`AUTO_KERNELS`, each already compiled for its arguments. Never loads or
    compiles anything when unset.
    """
    if _switched_off():
        return False
    if _runtime.numba_setting() == "on":
        return _kernels() is not None
    table = _runtime.EXTRACT_KERNELS.table
    if table is None or not set(names) <= AUTO_KERNELS:
        return False
    return all(_ready(table[n], a) for n, a in zip(names, calls, strict=True))


def _warm(image_dtype: np.dtype, mask_dtype: np.dtype) -> None:
    """Compile (or load from cache) :data:`AUTO_KERNELS` for these dtypes.

    Called on arrays of the types, dimensions and layouts that extraction passes.
    """
    with _runtime.EXTRACT_KERNELS.loading():
        table = _kernels()
        if table is None:
            return
        m = np.zeros((1, 1, 1), mask_dtype)
        labs = np.zeros(1, mask_dtype)
        starts, zs = np.zeros((1, 2), np.int64), np.zeros(1, np.int64)
        table["label_sums"](m, 0, 0, 0)
        table["cut_mask"](m, 0, 0, starts, zs, labs, 1, np.empty((1, 1, 1, 1, 1), np.uint8))
        if image_dtype.kind in _IMAGE_KINDS and image_dtype != np.float16:
            image = np.zeros((1, 1, 1, 1), image_dtype)
            crops = np.empty((1, 1, 1, 1, 1), image_dtype)
            cut = "cut_select" if image_dtype.kind == "f" else "cut_multiply"
            table[cut](image, m, 0, 0, starts, zs, labs, 1, crops)


def warm_up(image_dtype: Any, mask_dtype: Any, mask_pixels: int) -> threading.Thread | None:
    """Start compiling the kernels in a background thread if the image repays it.

    Only when unset (``"auto"``), numba is installed, the mask is an integer one of at
    least :data:`WARM_PIXELS` pixels, and no warm-up is running. Returns the thread
    (``None`` if none was started); the interpreter's exit waits for it
    (:mod:`._runtime`). Until it is done, every step runs in NumPy.
    """
    image_dtype, mask_dtype = np.dtype(image_dtype), np.dtype(mask_dtype)
    state = _runtime.EXTRACT_KERNELS
    if (
        _runtime.numba_setting() != "auto"
        or state.off_after_fork
        or mask_pixels < WARM_PIXELS
        or mask_dtype.kind not in "iu"
        or (state.tried and state.table is None)
        or importlib.util.find_spec("numba") is None
    ):
        return None
    with state.lock:
        if state.warming is not None and state.warming.is_alive():
            return None
        state.warming = threading.Thread(
            target=_warm, args=(image_dtype, mask_dtype), name="zarr_instances_jit", daemon=True
        )
        state.warming.start()
        return state.warming


def label_sums(m: np.ndarray, offset: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-label ``(labels, sums (n, 10))`` of a mask ``(z, y, x)``; ``None``: use NumPy.

    ``sums`` holds the pixel count, the sums of ``z``, ``y`` and ``x`` (global, with
    ``offset``), the smallest and the largest ``z``, ``y``, ``x`` per label, labels
    ascending as ``int64`` (as ``astype(np.int64)``).
    """
    if m.dtype.kind not in "iu" or m.ndim != 3:
        return None
    args = (m, *(int(o) for o in offset))
    if not _pick(("label_sums",), (args,)):
        return None
    kernels = _runtime.EXTRACT_KERNELS.table
    assert kernels is not None
    return kernels["label_sums"](*args)


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
        or _switched_off()
    ):
        return None
    n = int(starts_yx.shape[0])
    c = image.shape[0]
    starts = np.ascontiguousarray(starts_yx, dtype=np.int64)
    zs = np.ascontiguousarray(starts_z, dtype=np.int64)
    crops = np.empty((n, c, depth, diameter, diameter), dtype=image.dtype)
    oy, ox = int(origin_yx[0]), int(origin_yx[1])
    at = (oy, ox, starts, zs)
    names: tuple[str, ...]
    calls: tuple[tuple[Any, ...], ...]
    mcrops = None
    if mask is None or not (remove_background or with_mask):
        names, calls = ("cut_plain",), ((image, *at, diameter, crops),)
    else:
        labs = np.asarray(labels).astype(mask.dtype)
        if remove_background:
            cut = "cut_select" if image.dtype.kind == "f" else "cut_multiply"
            names, calls = (cut,), ((image, mask, *at, labs, diameter, crops),)
        else:
            names, calls = ("cut_plain",), ((image, *at, diameter, crops),)
        if with_mask:
            mcrops = np.empty((n, 1, depth, diameter, diameter), dtype=np.uint8)
            names, calls = (*names, "cut_mask"), (*calls, (mask, *at, labs, diameter, mcrops))
    if not _pick(names, calls):
        return None
    kernels = _runtime.EXTRACT_KERNELS.table
    assert kernels is not None
    for name, args in zip(names, calls, strict=True):
        kernels[name](*args)
    return crops, mcrops
