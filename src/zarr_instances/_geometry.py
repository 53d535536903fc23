"""Pure geometry of extraction: label sums, centroids, windows, tiles, crops.

Nothing here reads or writes a store; every function maps NumPy arrays to NumPy
arrays, so the whole extraction is checkable against a plain reference.

Centroids are computed from *integer* sums (pixel counts and sums of pixel
coordinates per label). Integer sums are exact and associative, so the sum over
a tiling equals the sum over the whole image and the rounded centre never
depends on where tiles or Dask chunks start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _extract_kernels as _kernels

__all__ = [
    "LabelSums",
    "centroids",
    "combine_sums",
    "crop_windows",
    "crop_windows_numpy",
    "default_chunk_rows",
    "label_sums",
    "label_sums_numpy",
    "pad_box",
    "round_half_even_div",
    "tile_edges",
    "window_starts",
]

# bincount's float64 weights add exactly while partial sums stay below 2**53.
_EXACT = 2**53


@dataclass(frozen=True)
class LabelSums:
    """Per-label pixel counts, coordinate sums and extents (all ``int64``, labels sorted).

    ``lo`` and ``hi`` ``(n, 3)`` are the smallest and largest ``(z, y, x)`` of each
    label's pixels (its bounding box, both ends inclusive).
    """

    labels: np.ndarray
    count: np.ndarray
    sum_z: np.ndarray
    sum_y: np.ndarray
    sum_x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @staticmethod
    def empty() -> LabelSums:
        """Return sums of no label."""
        e = np.zeros(0, dtype=np.int64)
        box = np.zeros((0, 3), dtype=np.int64)
        return LabelSums(e, e, e, e, e, box, box)

    @staticmethod
    def from_columns(labels: np.ndarray, cols: Sequence[np.ndarray]) -> LabelSums:
        """Build from the columns ``count, sum_z, sum_y, sum_x, lo z/y/x, hi z/y/x``."""
        if not labels.size:
            return LabelSums.empty()
        lo = np.stack(cols[4:7], axis=1).astype(np.int64)
        hi = np.stack(cols[7:10], axis=1).astype(np.int64)
        count, sum_z, sum_y, sum_x = cols[:4]
        return LabelSums(labels, count, sum_z, sum_y, sum_x, lo, hi)

    def columns(self) -> list[np.ndarray]:
        """Return the columns of :meth:`from_columns`."""
        return [self.count, self.sum_z, self.sum_y, self.sum_x, *self.lo.T, *self.hi.T]


# how the columns of LabelSums.columns() combine over blocks
_REDUCE = (np.add,) * 4 + (np.minimum,) * 3 + (np.maximum,) * 3


def _group_reduce(
    keys: np.ndarray, values: Sequence[np.ndarray], ufuncs: Sequence[np.ufunc]
) -> tuple[np.ndarray, list]:
    """Reduce ``values`` per distinct ``keys`` (int64, exact); return sorted keys and results."""
    if keys.size == 0:
        return keys.astype(np.int64), [np.zeros(0, dtype=np.int64) for _ in values]
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    first = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    out = [f.reduceat(v[order], first) for f, v in zip(ufuncs, values, strict=True)]
    return k[first].astype(np.int64), out


def label_sums(block: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> LabelSums:
    """Count pixels, sum their ``(z, y, x)`` coordinates and find their extents, per label.

    Runs the compiled kernel of :mod:`._extract_kernels` when numba is installed (one
    pass over the pixels into a hash table of labels), else :func:`label_sums_numpy`;
    both return the same exact sums.

    Parameters
    ----------
    block
        Integer mask ``(z, y, x)`` (or ``(y, x)``); ``0`` is background.
    offset
        Global ``(z, y, x)`` coordinate of ``block[0, 0, 0]``.

    Returns
    -------
    LabelSums
        Exact ``int64`` sums, labels ascending.
    """
    m = np.asarray(block)
    if m.ndim == 2:
        m = m[None]
    if m.size == 0:
        return LabelSums.empty()
    got = _kernels.label_sums(m, (int(offset[0]), int(offset[1]), int(offset[2])))
    if got is None:
        return label_sums_numpy(m, offset)
    labels, sums = got
    return LabelSums.from_columns(labels, list(sums.T))


def label_sums_numpy(block: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> LabelSums:
    """:func:`label_sums` in NumPy (the reference of the compiled kernel).

    The mask is scanned once, as runs of equal labels along ``x``: each run adds
    its length, ``length * z``, ``length * y`` and the arithmetic series of its ``x``
    coordinates. This touches every pixel once (one comparison) and then works on
    runs, far fewer than pixels for segmentation masks. A run's extent is its
    ``z``, its ``y`` and its first and last ``x``.

    Parameters
    ----------
    block
        Integer mask ``(z, y, x)`` (or ``(y, x)``); ``0`` is background.
    offset
        Global ``(z, y, x)`` coordinate of ``block[0, 0, 0]``.

    Returns
    -------
    LabelSums
        Exact ``int64`` sums, labels ascending.
    """
    m = np.asarray(block)
    if m.ndim == 2:
        m = m[None]
    nz, ny, nx = m.shape
    if m.size == 0:
        return LabelSums.empty()
    rows = m.reshape(nz * ny, nx)
    brk = np.empty(rows.shape, dtype=bool)
    brk[:, 0] = True
    np.not_equal(rows[:, 1:], rows[:, :-1], out=brk[:, 1:])
    starts = np.flatnonzero(brk)
    labs = rows.reshape(-1)[starts]
    lens = np.empty_like(starts)
    lens[:-1] = starts[1:] - starts[:-1]
    lens[-1] = rows.size - starts[-1]
    fg = labs != 0
    starts, labs, lens = starts[fg], labs[fg], lens[fg].astype(np.int64)
    row, x0 = np.divmod(starts.astype(np.int64), nx)
    z, y = np.divmod(row, ny)
    oz, oy, ox = (int(o) for o in offset)
    z, y, x0 = z + oz, y + oy, x0 + ox
    values = [lens, lens * z, lens * y, lens * x0 + lens * (lens - 1) // 2]
    values += [z, y, x0, z, y, x0 + lens - 1]
    keys, cols = _group_reduce(labs.astype(np.int64), values, _REDUCE)
    return LabelSums.from_columns(keys, cols)


def combine_sums(parts: Sequence[LabelSums]) -> LabelSums:
    """Add the sums (and join the extents) of several blocks label by label (exact)."""
    parts = [p for p in parts if p.labels.size]
    if not parts:
        return LabelSums.empty()
    if len(parts) == 1:
        return parts[0]
    keys = np.concatenate([p.labels for p in parts])
    columns = [p.columns() for p in parts]
    values = [np.concatenate(col) for col in zip(*columns, strict=True)]
    k, cols = _group_reduce(keys, values, _REDUCE)
    return LabelSums.from_columns(k, cols)


def round_half_even_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Return ``numpy.rint(num / den)`` computed exactly on integers (``den > 0``)."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    q, r = np.divmod(num, den)
    twice = 2 * r
    up = (twice > den) | ((twice == den) & (q % 2 == 1))
    return q + up.astype(np.int64)


def centroids(sums: LabelSums) -> np.ndarray:
    """Return the rounded centre of mass ``(n, 3)`` ``(z, y, x)`` of every label."""
    cols = [round_half_even_div(s, sums.count) for s in (sums.sum_z, sums.sum_y, sums.sum_x)]
    if not cols[0].size:
        return np.zeros((0, 3), dtype=np.int64)
    return np.stack(cols, axis=1)


def window_starts(centres_yx: np.ndarray, diameter: int) -> np.ndarray:
    """Return the ``(y, x)`` start of each ``diameter``-wide window: centre - diameter // 2."""
    return np.asarray(centres_yx, dtype=np.int64) - diameter // 2


def tile_edges(block_sizes: Sequence[int], tile_size: int) -> np.ndarray:
    """Group consecutive blocks into tiles of at least ``tile_size`` pixels.

    Returns the tile edges (``n_tiles + 1`` coordinates); every edge is a block
    edge, so a tile never splits a stored chunk.
    """
    edges = [0]
    pos = acc = 0
    for size in block_sizes:
        pos += int(size)
        acc += int(size)
        if acc >= tile_size:
            edges.append(pos)
            acc = 0
    if edges[-1] != pos:
        if len(edges) > 1 and acc < tile_size // 2:
            edges[-1] = pos
        else:
            edges.append(pos)
    if len(edges) == 1:
        edges.append(pos)
    return np.asarray(edges, dtype=np.int64)


def default_chunk_rows(crop_bytes: int, n: int, target: int = 2 * 2**20) -> int:
    """Rows per output chunk: about ``target`` bytes (default 2 MiB), at least 1, at most ``n``."""
    rows = max(1, target // max(1, crop_bytes))
    return int(max(1, min(rows, n)))


def crop_windows(
    image: np.ndarray,
    mask: np.ndarray | None,
    origin_yx: tuple[int, int],
    starts_yx: np.ndarray,
    labels: np.ndarray,
    diameter: int,
    *,
    remove_background: bool,
    with_mask: bool,
    starts_z: np.ndarray | None = None,
    depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cut ``diameter x diameter`` windows (``depth`` planes each) out of a region of the image.

    Runs the compiled kernel of :mod:`._extract_kernels` when numba is installed (one
    pass per window, background removed while copying), else
    :func:`crop_windows_numpy`; both return the same arrays.

    Parameters
    ----------
    image
        Region ``(c, z, h, w)``; it must cover every window, already zero-padded
        where the windows reach past the image edge.
    mask
        The same region of the mask, ``(z, h, w)``.
    origin_yx
        Global ``(y, x)`` of ``image[..., 0, 0]``.
    starts_yx
        Global window starts ``(n, 2)``.
    labels
        Label of each window ``(n,)``.
    diameter
        Window size in y and x.
    remove_background
        Zero every pixel whose mask value is not the window's label.
    with_mask
        Also return the instance's own mask in each window, ``(n, 1, z, d, d)``
        ``uint8``: 1 where the mask holds the window's label, 0 elsewhere.
    starts_z
        First plane of each window in the region (it must hold ``depth`` planes from
        there, zero-padded past the stack); ``None``: every window starts at plane 0.
    depth
        Planes per window; ``None``: all planes of the region.

    Returns
    -------
    tuple
        Crops ``(n, c, depth, d, d)`` and the mask crops (or ``None``).
    """
    starts_yx = np.asarray(starts_yx, dtype=np.int64).reshape(-1, 2)
    depth = int(image.shape[-3]) if depth is None else depth
    zs = np.zeros(len(starts_yx), np.int64) if starts_z is None else np.asarray(starts_z)
    zs = zs.astype(np.int64, copy=False)
    if starts_yx.size:
        lo = starts_yx.min(axis=0) - np.asarray(origin_yx)
        hi = starts_yx.max(axis=0) - np.asarray(origin_yx) + diameter
        if lo.min() < 0 or hi[0] > image.shape[-2] or hi[1] > image.shape[-1]:
            msg = f"windows reach past the region: starts {lo} .. {hi} of {image.shape}"
            raise IndexError(msg)
        if zs.min() < 0 or zs.max() + depth > image.shape[-3]:
            msg = f"windows reach past the region's planes: {zs.min()} .. {zs.max() + depth}"
            raise IndexError(msg)
    args = (image, mask, origin_yx, starts_yx, labels, diameter, zs, depth)
    rb, wm = remove_background, with_mask
    got = _kernels.cut_windows(*args, remove_background=rb, with_mask=wm)
    if got is not None:
        return got
    return crop_windows_numpy(*args, remove_background=rb, with_mask=wm)


def crop_windows_numpy(
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
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`crop_windows` in NumPy (the reference of the compiled kernel).

    ``starts_z`` and ``depth`` are given (see :func:`crop_windows`).
    """
    ys = starts_yx[:, 0] - origin_yx[0]
    xs = starts_yx[:, 1] - origin_yx[1]
    zs = np.asarray(starts_z, dtype=np.int64)
    shape = (depth, diameter, diameter)
    win = sliding_window_view(image, shape, axis=(-3, -2, -1))
    crops = np.moveaxis(win, (1, 2, 3), (0, 1, 2))[zs, ys, xs]
    mcrops = None
    if mask is not None and (remove_background or with_mask):
        mwin = sliding_window_view(mask, shape, axis=(-3, -2, -1))
        own = mwin[zs, ys, xs]
        keep = own == np.asarray(labels).astype(own.dtype)[:, None, None, None]
        if remove_background:
            if np.issubdtype(crops.dtype, np.integer) or crops.dtype == np.bool_:
                crops *= keep[:, None]  # much faster than copyto(where=)
            else:  # keep NaN / inf of other labels out, too
                np.copyto(crops, 0, where=~keep[:, None])
        mcrops = keep[:, None].astype(np.uint8) if with_mask else None
    return crops, mcrops


def pad_box(
    shape_yx: tuple[int, int], y0: int, y1: int, x0: int, x1: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Clip the box ``[y0, y1) x [x0, x1)`` to an image of ``shape_yx``.

    Returns the slices of the image to read and where they go inside a box-sized
    array (the rest of the box is zero padding).
    """
    h, w = shape_yx
    cy0, cy1 = max(y0, 0), min(y1, h)
    cx0, cx1 = max(x0, 0), min(x1, w)
    src = (slice(cy0, cy1), slice(cx0, cx1))
    dst = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    return src, dst
