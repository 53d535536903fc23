"""Mergeable per-channel intensity histograms of object pixels, and their percentiles.

Extraction records, per source image and channel, percentiles of the intensities of
the *object* pixels (mask label ``> 0``). The mask is processed in blocks, so each
block is summarised by :func:`block_histogram`, the summaries are merged with
:func:`combine` and :func:`percentiles` reads the result. Nothing here does I/O.

A summary holds, per channel, the distinct values seen and how often each occurred
(sorted, ``int64`` counts): a sparse histogram. Two regimes:

* **Exact** — images of at most 16 bits (``bool``, ``uint8``, ``int8``, ``uint16``,
  ``int16``, ``float16``) always, and any other dtype while the channel has at most
  :data:`EXACT_LIMIT` distinct values. The histogram is the multiset of object
  values itself, so :func:`percentiles` equals ``np.percentile`` (default
  ``"linear"`` method) on the object pixels bit for bit. Images of at most 16 bits
  are histogrammed with ``np.bincount`` (one counter per possible value; ``float16``
  through an order-preserving map of its bit patterns).
* **Binned** — wider dtypes (``float32``/``float64``, 32/64-bit integers) once a
  channel has more than :data:`EXACT_LIMIT` distinct values. Each value is converted
  to ``float64`` and its significand truncated (toward zero) to :data:`MANTISSA_BITS`
  bits; the histogram counts these truncated values. Truncation is monotone, so the ``k``-th
  smallest truncated value is the truncation of the ``k``-th smallest value, and a
  percentile (a convex combination of two order statistics) is off by less than
  ``2**-MANTISSA_BITS`` times the larger magnitude of those two order statistics
  (plus one rounding of the interpolation). Values with at most
  ``MANTISSA_BITS + 1`` significant bits (e.g. integers below ``2**13``) are kept
  exactly. The accuracy is in *value*, not in rank: ranks are exact, the values
  are rounded.

Both regimes are exactly associative and commutative: whatever the blocking and the
order of merging, the result is the exact histogram of all values when the channel
has at most :data:`EXACT_LIMIT` distinct values in total, and the binned histogram
of all values otherwise. Memory is bounded by ``EXACT_LIMIT`` entries per exact
channel (65,536 for 16-bit images) and by the number of occupied bins once binned:
at most ``2**MANTISSA_BITS`` per octave of magnitude and sign (a few tens of
thousands for real images, whose values span a few decades).

NaN pixels are ignored. Unlike ``np.percentile`` on ``int8``/``int16`` input, whose
interpolation computes ``b - a`` in the input dtype and wraps around when it
overflows, the interpolation here never wraps; both agree whenever NumPy's does not
wrap. For floats ``b - a`` is computed in the image dtype, exactly as NumPy does
(so ``float16`` rounds it, and overflows to ``inf`` beyond 65504, as NumPy does).
``np.percentile`` rejects ``bool`` arrays; here they count as ``0``/``1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EXACT_LIMIT",
    "MANTISSA_BITS",
    "IntensityCounts",
    "block_histogram",
    "combine",
    "percentiles",
]

# Distinct values per channel kept exactly (wide dtypes only); beyond it, values are binned.
EXACT_LIMIT = 2**16
# Significand bits kept by binning (relative error below 2**-MANTISSA_BITS).
MANTISSA_BITS = 12
# float64 has 52 stored significand bits; binning clears the lowest ones.
_DROP = np.uint64(~((1 << (52 - MANTISSA_BITS)) - 1) & (2**64 - 1))

# dtypes histogrammed with one bincount counter per possible value
_SMALL = frozenset("?bBhHe")
# float16 keys (see _small_keys) of -inf and +inf
_NEG_INF16 = 0x03FF
_POS_INF16 = 0xFC00
_ZERO16 = 0x8000  # the key of 0.0; -0.0 has the one below


@dataclass(frozen=True, eq=False)
class IntensityCounts:
    """Sparse per-channel histograms of object-pixel intensities.

    Attributes
    ----------
    dtype
        ``np.dtype(...).str`` of the image (``""`` for the empty summary of no part).
    values
        Per channel, the distinct values, ascending: in the image dtype when exact,
        ``float64`` truncated values when binned.
    counts
        Per channel, ``int64`` occurrences of each value (all positive).
    binned
        Per channel, whether ``values`` are binned (see the module docstring).
    """

    dtype: str
    values: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    binned: tuple[bool, ...]

    @staticmethod
    def empty() -> IntensityCounts:
        """Return the summary of nothing: no channel, neutral for :func:`combine`."""
        return IntensityCounts("", (), (), ())

    @property
    def channels(self) -> int:
        """Number of channels."""
        return len(self.values)

    @property
    def totals(self) -> np.ndarray:
        """Number of object pixels counted per channel (``int64``)."""
        return np.array([int(c.sum()) for c in self.counts], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (what shipping a summary costs, roughly)."""
        return sum(v.nbytes + c.nbytes for v, c in zip(self.values, self.counts, strict=True))


def _small_keys(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ≤16-bit values to order-preserving non-negative bincount keys and their range."""
    kind = x.dtype.char
    if kind == "e":
        # IEEE order: flip every bit of negatives, only the sign bit of the rest
        bits = x.view(np.uint16)
        flip = np.where(bits >> 15, np.uint16(0xFFFF), np.uint16(0x8000))
        return bits ^ flip, 65536
    if kind == "?":
        return x.view(np.uint8), 2
    if kind == "b":
        return x.view(np.uint8) ^ np.uint8(0x80), 256
    if kind == "h":
        return x.view(np.uint16) ^ np.uint16(0x8000), 65536
    return x, 256 if kind == "B" else 65536


def _small_values(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Invert :func:`_small_keys` on ``intp`` keys."""
    kind = dtype.char
    if kind == "e":
        k = keys.astype(np.uint16)
        return np.where(k >> 15, k ^ np.uint16(0x8000), ~k).view(np.float16)
    if kind == "b":
        return (keys - 128).astype(dtype)
    if kind == "h":
        return (keys - 32768).astype(dtype)
    return keys.astype(dtype)


def _bin(values: np.ndarray) -> np.ndarray:
    """Truncate the significands of ``values`` (as ``float64``) to :data:`MANTISSA_BITS` bits."""
    bits = values.astype(np.float64).view(np.uint64) & _DROP
    return bits.view(np.float64) + 0.0  # + 0.0 turns -0.0 into 0.0


def _runs(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge equal neighbours of the sorted ``values``, adding their ``counts``."""
    if values.size < 2:
        return values, counts
    first = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    if first.size == values.size:
        return values, counts
    return values[first], np.add.reduceat(counts, first)


def _finish(values: np.ndarray, counts: np.ndarray, binned: bool) -> tuple[np.ndarray, bool]:
    """Bin sorted distinct ``values`` once they exceed :data:`EXACT_LIMIT` (wide dtypes)."""
    if binned or values.size <= EXACT_LIMIT:
        return values, binned
    return _bin(values), True


def _channel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Histogram the object values ``x`` (1-D, one channel) of a wide or float dtype."""
    if x.dtype.kind in "fc":
        x = x[~np.isnan(x)]
    values, counts = np.unique(x, return_counts=True)
    counts = counts.astype(np.int64, copy=False)
    if values.dtype.kind == "f":
        values = values + values.dtype.type(0)  # -0.0 -> 0.0, so the value kept is canonical
    if values.size <= EXACT_LIMIT:
        return values, counts, False
    binned, _ = _finish(values, counts, False)
    v, c = _runs(binned, counts)
    return v, c, True


def block_histogram(image: np.ndarray, mask: np.ndarray) -> IntensityCounts:
    """Histogram the intensities of the object pixels of one block, per channel.

    Parameters
    ----------
    image
        ``(c, z, y, x)`` intensities (any real dtype; NaN pixels are ignored).
    mask
        ``(z, y, x)`` integer labels of the same spatial shape; pixels whose label
        is ``> 0`` are object pixels.

    Returns
    -------
    IntensityCounts
        Exact for images of at most 16 bits; see the module docstring otherwise.

    Raises
    ------
    ValueError
        If the shapes do not match or the image is complex.
    """
    img = np.asarray(image)
    msk = np.asarray(mask)
    if img.ndim != msk.ndim + 1 or img.shape[1:] != msk.shape:
        raise ValueError(f"image {img.shape} does not match mask {msk.shape} as (c, *mask)")
    if img.dtype.kind not in "biuf?":
        raise ValueError(f"intensity percentiles need a real image dtype, not {img.dtype}")
    objects = msk > 0
    values: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    binned: list[bool] = []
    for ch in range(img.shape[0]):
        x = img[ch][objects]
        if img.dtype.char in _SMALL:
            keys, size = _small_keys(x)
            hist = np.bincount(keys, minlength=size)
            if img.dtype.char == "e":  # NaNs lie beyond the keys of -inf and +inf
                hist[:_NEG_INF16] = 0
                hist[_POS_INF16 + 1 :] = 0
                hist[_ZERO16] += hist[_ZERO16 - 1]  # -0.0 counts as 0.0
                hist[_ZERO16 - 1] = 0
            nz = np.flatnonzero(hist)
            values.append(_small_values(nz, img.dtype))
            counts.append(hist[nz].astype(np.int64, copy=False))
            binned.append(False)
        else:
            v, c, b = _channel(x)
            values.append(v)
            counts.append(c)
            binned.append(b)
    return IntensityCounts(img.dtype.str, tuple(values), tuple(counts), tuple(binned))


def _combine_small(dtype: np.dtype, vals: list[np.ndarray], cnts: list[np.ndarray]) -> np.ndarray:
    """Add the histograms of one ≤16-bit channel densely; return the dense counts."""
    size = 2 if dtype.char == "?" else 256 if dtype.itemsize == 1 else 65536
    total = np.zeros(size, dtype=np.int64)
    for v, c in zip(vals, cnts, strict=True):
        if v.size:
            keys, _ = _small_keys(v)
            total[keys.astype(np.intp)] += c  # distinct keys within a part: no collisions
    return total


def combine(parts: Sequence[IntensityCounts]) -> IntensityCounts:
    """Merge block summaries into the summary of their union.

    Exactly associative and commutative; :meth:`IntensityCounts.empty` (also the
    result of no part) is neutral.

    Parameters
    ----------
    parts
        Summaries of disjoint sets of pixels of one image (same dtype, same channels).

    Returns
    -------
    IntensityCounts
        The summary :func:`block_histogram` would give for all pixels at once.

    Raises
    ------
    ValueError
        If the parts disagree on dtype or number of channels.
    """
    real = [p for p in parts if p.dtype]
    if not real:
        return IntensityCounts.empty()
    first = real[0]
    for p in real[1:]:
        if p.dtype != first.dtype or p.channels != first.channels:
            raise ValueError(
                f"cannot combine {p.dtype} x {p.channels} channels "
                f"with {first.dtype} x {first.channels} channels"
            )
    if len(real) == 1:
        return first
    dtype = np.dtype(first.dtype)
    values: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    binned: list[bool] = []
    for ch in range(first.channels):
        vals = [p.values[ch] for p in real]
        cnts = [p.counts[ch] for p in real]
        if dtype.char in _SMALL:
            hist = _combine_small(dtype, vals, cnts)
            nz = np.flatnonzero(hist)
            values.append(_small_values(nz, dtype))
            counts.append(hist[nz])
            binned.append(False)
            continue
        is_binned = any(p.binned[ch] for p in real)
        if is_binned:
            vals = [v if p.binned[ch] else _bin(v) for v, p in zip(vals, real, strict=True)]
        v = np.concatenate(vals)
        c = np.concatenate(cnts).astype(np.int64, copy=False)
        order = np.argsort(v, kind="stable")
        v, c = _runs(v[order], c[order])
        v, now_binned = _finish(v, c, is_binned)
        if now_binned and not is_binned:
            v, c = _runs(v, c)
        values.append(v)
        counts.append(c)
        binned.append(now_binned)
    return IntensityCounts(first.dtype, tuple(values), tuple(counts), tuple(binned))


def _lerp_inputs(
    values: np.ndarray, a_idx: np.ndarray, b_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``a``, ``b`` and ``b - a`` as ``float64`` the way NumPy's ``_lerp`` sees them."""
    a = values[a_idx]
    b = values[b_idx]
    if values.dtype.kind == "f":
        # NumPy subtracts in the input dtype (float16/32 round here), then promotes.
        return a.astype(np.float64), b.astype(np.float64), (b - a).astype(np.float64)
    # Integers: the exact difference (NumPy's agrees unless its fixed-width one wraps).
    diff = np.array([float(int(y) - int(x)) for x, y in zip(a, b, strict=True)], np.float64)
    return a.astype(np.float64), b.astype(np.float64), diff


def percentiles(counts: IntensityCounts, q: Sequence[float] = (0.1, 1, 99, 99.9)) -> np.ndarray:
    """Percentiles of the object-pixel intensities, per channel.

    Follows ``np.percentile(values, q)`` with the default ``"linear"`` method step by
    step (virtual index ``(n - 1) * q / 100``, NumPy's two-sided ``_lerp``), reading
    the order statistics from the cumulative counts.

    Parameters
    ----------
    counts
        A summary from :func:`block_histogram` or :func:`combine`.
    q
        Percentiles in ``[0, 100]``.

    Returns
    -------
    np.ndarray
        ``(channels, len(q))`` ``float64``; NaN for a channel without object pixels.
        Equal to ``np.percentile`` for exact channels; binned channels are within the
        relative error of the module docstring.

    Raises
    ------
    ValueError
        If a percentile lies outside ``[0, 100]``.
    """
    qs = np.true_divide(np.asarray(q, dtype=np.float64).reshape(-1), 100)
    if not np.all((qs >= 0) & (qs <= 1)):
        raise ValueError(f"percentiles must lie in [0, 100], got {list(q)}")
    out = np.full((counts.channels, qs.size), np.nan, dtype=np.float64)
    for ch, (values, cnt) in enumerate(zip(counts.values, counts.counts, strict=True)):
        cum = np.cumsum(cnt)
        n = int(cum[-1]) if cum.size else 0
        if n == 0:
            continue
        virtual = (n - 1) * qs
        prev = np.floor(virtual)
        nxt = prev + 1
        above = virtual >= n - 1
        prev[above] = -1
        nxt[above] = -1
        prev_i = prev.astype(np.intp)
        nxt_i = nxt.astype(np.intp)
        gamma = virtual - prev_i
        # order statistic k (-1: the largest) -> index of its distinct value
        a_idx = np.searchsorted(cum, np.where(prev_i < 0, n - 1, prev_i), side="right")
        b_idx = np.searchsorted(cum, np.where(nxt_i < 0, n - 1, nxt_i), side="right")
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, as in NumPy
            a, b, diff = _lerp_inputs(values, a_idx, b_idx)
            res = a + diff * gamma
            np.subtract(b, diff * (1 - gamma), out=res, where=gamma >= 0.5)
        out[ch] = res
    return out
