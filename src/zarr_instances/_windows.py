"""Windows that fit (pure): the diameter objects need, which windows may clip, sizes.

Everything here works on the per-label extents of :class:`._geometry.LabelSums`
(gathered in the same pass over the mask as the centroid sums) and on plain
numbers; nothing reads an input.

A window of ``d`` pixels starts at ``c - d // 2`` (``c`` the rounded centre), so it
holds ``d // 2`` pixels before the centre and ``d - d // 2 - 1`` after it. An object
reaching ``a`` pixels before its centre and ``b`` after it fits when
``d // 2 >= a`` and ``d - d // 2 >= b + 1``; the smallest such ``d`` is ``2a`` when
``a > b``, else ``2b + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError

__all__ = [
    "Clipping",
    "auto_diameter",
    "check_fits",
    "estimate_output_bytes",
    "may_clip",
    "needed_diameter",
    "window_counts",
]

# a window "clips" an object when more than this fraction of its pixels lie outside
CLIP_TOLERANCE = 0.01


def check_fits(diameter: int, image_yx: tuple[int, int]) -> None:
    """Raise if a ``diameter`` window is larger than the image in ``y`` or ``x``."""
    h, w = image_yx
    if diameter > h or diameter > w:
        msg = (
            f"diameter={diameter} is larger than the image (y={h}, x={w}): choose a "
            f'diameter <= {min(h, w)}, or diameter="auto" to fit it to the objects'
        )
        raise ArgumentError(msg)


def needed_diameter(centres: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Smallest window (per object, over ``y`` and ``x``) holding its whole bounding box.

    Parameters
    ----------
    centres, lo, hi
        Rounded centres and the smallest and largest pixel coordinates, ``(n, k)``
        with the ``y`` and ``x`` columns last.

    Returns
    -------
    numpy.ndarray
        ``int64`` ``(n,)``: the smallest ``d`` whose window (start ``c - d // 2``)
        holds the object in both ``y`` and ``x``.
    """
    c, lo, hi = (np.asarray(v, dtype=np.int64)[:, -2:] for v in (centres, lo, hi))
    before, after = c - lo, hi - c
    need = np.where(before > after, 2 * before, 2 * after + 1)
    return need.max(axis=1) if need.size else np.zeros(0, dtype=np.int64)


def auto_diameter(needed: np.ndarray, quantile: float) -> int:
    """Return the smallest ``d`` whose windows hold whole objects for ``quantile`` of them."""
    n = int(needed.size)
    k = max(1, math.ceil(round(quantile * n, 9)))  # at least k objects must fit
    return int(np.partition(needed, k - 1)[k - 1])


def may_clip(
    starts: np.ndarray, sizes: tuple[int, int, int], lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Whether each object's bounding box reaches out of its window (``(z, y, x)`` each).

    A box inside its window proves that no pixel is clipped; a box reaching out only
    says that some pixels may be (they are counted, see :class:`Clipping`).
    """
    end = np.asarray(starts) + np.asarray(sizes) - 1
    out = (np.asarray(lo) < starts) | (np.asarray(hi) > end)
    return np.asarray(out.any(axis=1))


def window_counts(
    labels_box: np.ndarray,
    origin: tuple[int, int, int],
    starts_z: np.ndarray,
    starts: np.ndarray,
    labels: np.ndarray,
    depth: int,
    diameter: int,
) -> np.ndarray:
    """Pixels of each window that hold the window's label, counted in ``labels_box``.

    ``labels_box`` ``(z, y, x)`` holds the labels from global ``origin`` on (zero past
    the image); the windows start at ``starts_z`` (planes ``depth``) and ``starts``
    (``diameter`` pixels in y and x) and lie inside the box in y and x.
    """
    z0, y0, x0 = origin
    nz, d = labels_box.shape[0], diameter
    wanted = labels.astype(labels_box.dtype)
    out = np.zeros(wanted.size, dtype=np.int64)
    for k in range(out.size):
        za = max(0, int(starts_z[k]) - z0)
        zb = min(nz, int(starts_z[k]) - z0 + depth)
        ya, xa = int(starts[k, 0]) - y0, int(starts[k, 1]) - x0
        out[k] = np.count_nonzero(labels_box[za:zb, ya : ya + d, xa : xa + d] == wanted[k])
    return out


@dataclass(frozen=True)
class Clipping:
    """How much of each object its window clips.

    ``area`` is each object's pixel count, ``inside`` how many of them lie inside
    its window (in instance order, ids ascending).
    """

    area: np.ndarray
    inside: np.ndarray

    @property
    def fraction(self) -> np.ndarray:
        """Fraction of each object's pixels outside its window, ``0 <= f < 1``."""
        return (self.area - self.inside) / self.area

    @property
    def clipped(self) -> np.ndarray:
        """Whether more than 1 % of each object's pixels lie outside its window (exact)."""
        return (self.area - self.inside) * 100 > self.area

    def message(self, diameter: int, z_window: int | None) -> str | None:
        """One line on the clipped objects, or ``None`` when none is clipped."""
        clipped = self.clipped
        k = int(clipped.sum())
        if not k:
            return None
        worst = float(self.fraction.max())
        size = f"diameter={diameter}" + ("" if z_window is None else f", z_window={z_window}")
        return (
            f"{k} of {self.area.size} instances have more than 1% of their pixels outside "
            f"their window ({size}; the most clipped loses {worst:.1%}): pass a larger "
            'diameter (or z_window), or diameter="auto" to fit the windows to the objects'
        )


def estimate_output_bytes(
    n: int,
    crop_shape: tuple[int, int, int, int],
    itemsize: int,
    extract_mask: bool = False,
) -> int:
    """Uncompressed bytes of an instance store's crops: ``n x c x z x d x d x itemsize``.

    Parameters
    ----------
    n
        Number of instances.
    crop_shape
        ``(c, z, d, d)`` of one crop.
    itemsize
        Bytes per pixel of the image dtype.
    extract_mask
        Add the ``uint8`` mask crops ``(n, 1, z, d, d)``.
    """
    c, z, h, w = crop_shape
    total = n * c * z * h * w * itemsize
    return total + (n * z * h * w if extract_mask else 0)
