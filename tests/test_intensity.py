from __future__ import annotations

import pickle
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances import _intensity
from zarr_instances._intensity import (
    IntensityCounts,
    block_histogram,
    combine,
    percentiles,
)

SMALL_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "float16"]
QS = [0.0, 0.1, 1.0, 12.5, 33.3, 50.0, 66.7, 99.0, 99.9, 100.0]


def _reference(image: np.ndarray, mask: np.ndarray, q: list[float]) -> np.ndarray:
    """np.percentile of the object pixels per channel (NaN when a channel has none)."""
    out = np.full((image.shape[0], len(q)), np.nan)
    for ch in range(image.shape[0]):
        x = image[ch][mask > 0]
        if x.dtype.kind == "f":
            x = x[~np.isnan(x)]
        elif x.dtype.kind in "bi":
            # np.percentile rejects bool and wraps b - a in int8/int16; int64 does neither
            x = x.astype(np.int64)
        if x.size:
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf
                out[ch] = np.percentile(x, q)
    return out


def _random_image(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.3
    if dt.kind == "f":  # any bit pattern: NaNs, infinities, subnormals, -0.0
        img = rng.integers(0, 2**16, size=shape).astype(np.uint16).view(np.float16)
        if rng.random() < 0.5:
            img = rng.choice(np.float16([-0.0, 0.0, -np.inf, np.inf, np.nan, 1, -2.5]), shape)
        return img
    info = np.iinfo(dt)
    img = rng.integers(info.min, int(info.max) + 1, size=shape, dtype=np.int64)
    if rng.random() < 0.5:  # few distinct values: many ties
        img = img % 7 + info.min // 2
    return img.astype(dt)


def _cuts(draw: st.DrawFn, n: int) -> list[int]:
    inner = draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=3, unique=True))
    return sorted({0, n, *(c for c in inner if 0 < c < n)})


def _blocks(image: np.ndarray, mask: np.ndarray, cuts: list[list[int]]) -> list[IntensityCounts]:
    parts = []
    cz, cy, cx = cuts
    for z0, z1 in pairwise(cz):
        for y0, y1 in pairwise(cy):
            for x0, x1 in pairwise(cx):
                box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
                parts.append(block_histogram(image[(slice(None), *box)], mask[box]))
    return parts


def _tree(parts: list[IntensityCounts], rng: np.random.Generator) -> IntensityCounts:
    """Combine in a random order and grouping (pairs, singles, empties)."""
    parts = [parts[i] for i in rng.permutation(len(parts))]
    parts.insert(int(rng.integers(0, len(parts) + 1)), IntensityCounts.empty())
    while len(parts) > 1:
        k = int(rng.integers(1, len(parts) + 1))
        parts = [combine(parts[:k]), *parts[k:]]
    return parts[0]


def _same(a: IntensityCounts, b: IntensityCounts) -> None:
    assert a.dtype == b.dtype
    assert a.binned == b.binned
    for va, vb, ca, cb in zip(a.values, b.values, a.counts, b.counts, strict=True):
        assert va.dtype == vb.dtype
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(ca, cb)


@st.composite
def _case(draw: st.DrawFn, dtypes: list[str]) -> tuple:
    dtype = draw(st.sampled_from(dtypes))
    c = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype in SMALL_DTYPES:
        image = _random_image(rng, dtype, (c, *shape))
    else:  # the test draws its own values
        image = np.zeros((c, *shape), dtype=dtype)
    mask_dtype = draw(st.sampled_from(["uint8", "int32", "uint64", "int64"]))
    mask = rng.integers(-1 if mask_dtype[0] == "i" else 0, 4, size=shape).astype(mask_dtype)
    cuts = [_cuts(draw, n) for n in shape]
    return image, mask, cuts, rng


@settings(max_examples=150, deadline=None)
@given(_case(SMALL_DTYPES))
def test_16_bit_blocks_equal_numpy(case: tuple) -> None:
    image, mask, cuts, rng = case
    merged = _tree(_blocks(image, mask, cuts), rng)
    _same(merged, block_histogram(image, mask))
    got = percentiles(merged, QS)
    assert got.dtype == np.float64
    assert got.shape == (image.shape[0], len(QS))
    np.testing.assert_array_equal(got, _reference(image, mask, QS))
    finite = ~np.isnan(image) if image.dtype.kind == "f" else np.ones(image.shape, bool)
    assert merged.totals.tolist() == [int((ok & (mask > 0)).sum()) for ok in finite]


@settings(max_examples=80, deadline=None)
@given(_case(["float32", "float64", "int32", "uint32", "int64", "uint64"]))
def test_wide_dtypes_below_the_limit_are_exact(case: tuple) -> None:
    image, mask, cuts, rng = case
    if image.dtype.kind == "f":
        image = rng.normal(0, 100, image.shape).astype(image.dtype)
        image[rng.random(image.shape) < 0.1] = np.nan
    else:
        # keep b - a within int64 so that the np.percentile reference does not wrap
        info = np.iinfo(image.dtype)
        lo, hi = max(int(info.min), -(2**62)), min(int(info.max), 2**62)
        image = rng.integers(lo, hi, size=image.shape, dtype=image.dtype)
    merged = _tree(_blocks(image, mask, cuts), rng)
    assert not any(merged.binned)
    _same(merged, block_histogram(image, mask))
    np.testing.assert_array_equal(percentiles(merged, QS), _reference(image, mask, QS))


def _bound(image: np.ndarray, mask: np.ndarray, q: list[float]) -> np.ndarray:
    """Largest magnitude of the two order statistics each percentile interpolates."""
    out = []
    for ch in range(image.shape[0]):
        x = np.sort(image[ch][mask > 0].astype(np.float64))
        x = x[~np.isnan(x)]
        pos = (x.size - 1) * np.asarray(q) / 100
        lo = np.abs(x[np.floor(pos).astype(int)])
        hi = np.abs(x[np.ceil(pos).astype(int)])
        out.append(np.maximum(lo, hi))
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(_case(["float32", "float64", "int32", "int64"]), st.integers(2, 40))
def test_binned_is_associative_and_within_relative_error(case: tuple, limit: int) -> None:
    image, mask, cuts, rng = case
    if image.dtype.kind == "f":
        image = (rng.lognormal(0, 3, image.shape) * rng.choice([-1, 1], image.shape)).astype(
            image.dtype
        )
        image[rng.random(image.shape) < 0.05] = np.nan
    else:
        image = rng.integers(-(2**30), 2**30, size=image.shape).astype(image.dtype)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_intensity, "EXACT_LIMIT", limit)
        merged = _tree(_blocks(image, mask, cuts), rng)
        whole = block_histogram(image, mask)
    _same(merged, whole)
    want = _reference(image, mask, QS)
    got = percentiles(merged, QS)
    if not any(merged.binned):
        np.testing.assert_array_equal(got, want)
        return
    err = np.abs(got - want)
    tol = 2.0**-_intensity.MANTISSA_BITS * _bound(image, mask, QS) * (1 + 1e-12)
    assert np.all((err <= tol) | (np.isnan(want) & np.isnan(got)))


def test_binned_large_float_image() -> None:
    rng = np.random.default_rng(3)
    image = rng.lognormal(5, 1, (2, 1, 400, 400)).astype(np.float32)
    mask = (rng.random((1, 400, 400)) < 0.6).astype(np.uint16)
    parts = [
        block_histogram(image[:, :, i : i + 100], mask[:, i : i + 100]) for i in range(0, 400, 100)
    ]
    merged = combine(parts)
    assert merged.binned == (True, True)
    _same(merged, block_histogram(image, mask))
    assert merged.values[0].size < 2**15  # binned: far fewer entries than values
    q = [0.1, 1, 99, 99.9]
    want = _reference(image, mask, q)
    got = percentiles(merged, q)
    np.testing.assert_allclose(got, want, rtol=2.0**-_intensity.MANTISSA_BITS, atol=0)
    # the rank of the estimate is within 0.5 percentage points of q
    for ch in range(2):
        x = np.sort(image[ch][mask > 0])
        ranks = np.searchsorted(x, got[ch]) / x.size * 100
        assert np.all(np.abs(ranks - np.array(q)) < 0.5)


def test_binned_keeps_small_integers_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_intensity, "EXACT_LIMIT", 4)
    image = np.arange(-4000, 4000, dtype=np.int64).reshape(1, 1, 80, 100)
    mask = np.ones((1, 80, 100), dtype=np.uint8)
    counts = block_histogram(image, mask)
    assert counts.binned == (True,)
    np.testing.assert_array_equal(percentiles(counts, QS), _reference(image, mask, QS))


def test_empty_channels_are_nan() -> None:
    image = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    mask = np.zeros((3, 4, 5), dtype=np.int32)
    mask[0, 0, 0] = -1  # negative labels are not objects
    counts = block_histogram(image, mask)
    assert counts.totals.tolist() == [0, 0]
    got = percentiles(counts)
    assert got.shape == (2, 4)
    assert np.isnan(got).all()
    # a float channel whose object pixels are all NaN
    fimage = np.full((2, 3, 4, 5), np.nan, dtype=np.float32)
    fimage[0] = 1.5
    mask[1] = 1
    got = percentiles(block_histogram(fimage, mask), [50])
    assert got[0, 0] == 1.5
    assert np.isnan(got[1, 0])


def test_combine_of_nothing() -> None:
    empty = combine([])
    assert empty.channels == 0
    assert percentiles(empty).shape == (0, 4)
    image = np.ones((1, 2, 2, 2), dtype=np.uint8)
    mask = np.ones((2, 2, 2), dtype=np.uint8)
    one = block_histogram(image, mask)
    _same(combine([empty, one, empty]), one)
    with pytest.raises(ValueError, match="cannot combine"):
        combine([one, block_histogram(image.astype(np.uint16), mask)])


def test_3d_mask_and_default_percentiles() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4096, (2, 5, 64, 64)).astype(np.uint16)
    mask = rng.integers(0, 3, (5, 64, 64)).astype(np.uint32)
    parts = [block_histogram(image[:, z : z + 1], mask[z : z + 1]) for z in range(5)]
    got = percentiles(combine(parts))
    np.testing.assert_array_equal(got, _reference(image, mask, [0.1, 1, 99, 99.9]))


def test_pickle_roundtrip_and_validation() -> None:
    image = np.arange(24, dtype=np.int16).reshape(1, 2, 3, 4) - 12
    mask = np.ones((2, 3, 4), dtype=np.uint8)
    counts = block_histogram(image, mask)
    _same(pickle.loads(pickle.dumps(counts)), counts)
    assert counts.nbytes > 0
    with pytest.raises(ValueError, match="does not match"):
        block_histogram(image, mask[:, :2])
    with pytest.raises(ValueError, match="real image dtype"):
        block_histogram(image.astype(np.complex64), mask)
    with pytest.raises(ValueError, match="must lie in"):
        percentiles(counts, [101])


def test_int16_does_not_wrap_like_numpy() -> None:
    image = np.array([-30000, 30000], dtype=np.int16).reshape(1, 1, 1, 2)
    mask = np.ones((1, 1, 2), dtype=np.uint8)
    got = percentiles(block_histogram(image, mask), [50])
    assert got[0, 0] == 0.0  # np.percentile(image.ravel(), 50) gives 32768.0 (b - a wraps)
