from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances._geometry import (
    combine_sums,
    crop_windows,
    default_chunk_rows,
    label_sums,
    pad_box,
    round_half_even_div,
    tile_edges,
)


def _brute_sums(mask: np.ndarray) -> dict[int, tuple[int, ...]]:
    out = {}
    for lab in np.unique(mask):
        if lab == 0:
            continue
        z, y, x = np.nonzero(mask == lab)
        sums = (z.size, int(z.sum()), int(y.sum()), int(x.sum()))
        extents = (
            int(z.min()),
            int(y.min()),
            int(x.min()),
            int(z.max()),
            int(y.max()),
            int(x.max()),
        )
        out[int(lab)] = sums + extents
    return out


def _as_dict(s) -> dict[int, tuple[int, ...]]:
    cols = zip(s.labels, s.count, s.sum_z, s.sum_y, s.sum_x, s.lo, s.hi, strict=True)
    return {
        int(k): (int(c), int(a), int(b), int(d), *map(int, lo), *map(int, hi))
        for k, c, a, b, d, lo, hi in cols
    }


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 20), st.integers(1, 20)),
    n_labels=st.integers(1, 6),
    cut_y=st.integers(0, 20),
    cut_x=st.integers(0, 20),
)
def test_label_sums_exact_and_tiling_independent(seed, shape, n_labels, cut_y, cut_x):
    rng = np.random.default_rng(seed)
    ids = np.concatenate(([0], rng.choice(10**6, n_labels, replace=False) - 5000))
    mask = ids[rng.integers(0, ids.size, shape)]
    whole = label_sums(mask)
    assert _as_dict(whole) == _brute_sums(mask)
    cy, cx = min(cut_y, shape[1]), min(cut_x, shape[2])
    parts = [
        label_sums(mask[:, ys, xs], (0, ys.start, xs.start))
        for ys in (slice(0, cy), slice(cy, shape[1]))
        for xs in (slice(0, cx), slice(cx, shape[2]))
    ]
    assert _as_dict(combine_sums(parts)) == _as_dict(whole)


def test_label_sums_2d_and_empty():
    m = np.array([[0, 2, 2], [0, 0, 7]], dtype=np.uint8)
    s = label_sums(m, (0, 10, 20))
    assert s.labels.tolist() == [2, 7]
    assert s.count.tolist() == [2, 1]
    assert s.sum_y.tolist() == [20, 11]
    assert s.sum_x.tolist() == [21 + 22, 22]
    assert s.lo.tolist() == [[0, 10, 21], [0, 11, 22]]
    assert s.hi.tolist() == [[0, 10, 22], [0, 11, 22]]
    assert label_sums(np.zeros((0, 3), dtype=int)).labels.size == 0
    assert label_sums(np.zeros((2, 3), dtype=int)).labels.size == 0
    assert combine_sums([]).labels.size == 0


@given(num=st.integers(-(10**12), 10**12), den=st.integers(1, 10**6))
def test_round_half_even_div_matches_exact_rounding(num, den):
    got = int(round_half_even_div(np.array([num]), np.array([den]))[0])
    assert got == round(Fraction(num, den))  # Python rounds half to even


def test_round_half_even_ties():
    num = np.array([1, 3, 5, 7, -1, -3])
    den = np.full(6, 2)
    np.testing.assert_array_equal(round_half_even_div(num, den), np.rint(num / den))


@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=12), tile=st.integers(1, 120))
def test_tile_edges_are_block_edges_and_cover(sizes, tile):
    edges = tile_edges(sizes, tile)
    block_edges = set(np.concatenate(([0], np.cumsum(sizes))).tolist())
    assert edges[0] == 0
    assert edges[-1] == sum(sizes)
    assert np.all(np.diff(edges) > 0)
    assert set(edges.tolist()) <= block_edges


def test_default_chunk_rows():
    assert default_chunk_rows(16384, 10**6) == 128
    assert default_chunk_rows(16384, 5) == 5
    assert default_chunk_rows(10 * 2**20, 100) == 1


def test_pad_box_clips():
    src, dst = pad_box((10, 10), -3, 5, 8, 12)
    assert src == (slice(0, 5), slice(8, 10))
    assert dst == (slice(3, 8), slice(0, 2))


def test_crop_windows_remove_background():
    image = np.arange(2 * 1 * 6 * 6, dtype=np.uint16).reshape(2, 1, 6, 6)
    mask = np.zeros((1, 6, 6), dtype=np.int32)
    mask[0, 1:3, 1:3] = 5
    mask[0, 2, 3] = 9
    starts = np.array([[1, 1], [2, 2]])
    crops, mcrops = crop_windows(
        image,
        mask,
        (0, 0),
        starts,
        np.array([5, 9]),
        3,
        remove_background=True,
        with_mask=True,
    )
    assert crops.shape == (2, 2, 1, 3, 3)
    assert mcrops.shape == (2, 1, 1, 3, 3)
    keep0 = mask[0, 1:4, 1:4] == 5
    np.testing.assert_array_equal(crops[0, :, 0], image[:, 0, 1:4, 1:4] * keep0)
    keep1 = mask[0, 2:5, 2:5] == 9
    np.testing.assert_array_equal(crops[1, :, 0], image[:, 0, 2:5, 2:5] * keep1)
    assert mcrops.dtype == np.uint8
    np.testing.assert_array_equal(mcrops[0, 0], (mask[:, 1:4, 1:4] == 5).astype(np.uint8))
    np.testing.assert_array_equal(mcrops[1, 0], (mask[:, 2:5, 2:5] == 9).astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_crop_windows_keeps_dtype(dtype):
    image = np.ones((1, 1, 4, 4), dtype=dtype)
    mask = np.ones((1, 4, 4), dtype=np.uint64)
    crops, m = crop_windows(
        image,
        mask,
        (0, 0),
        np.array([[0, 0]]),
        np.array([1], dtype=np.uint64),
        2,
        remove_background=True,
        with_mask=False,
    )
    assert crops.dtype == dtype
    assert m is None
    assert crops.sum() == 4
