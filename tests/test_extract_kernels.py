"""The compiled kernels of extract_instances (numba) against the NumPy code, exactly."""

from __future__ import annotations

import sys

import dask
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zarr_instances
from zarr_instances import _extract_kernels, _runtime, extract_instances
from zarr_instances._geometry import (
    crop_windows,
    crop_windows_numpy,
    label_sums,
    label_sums_numpy,
)
from zarr_instances.testing import make_image_and_mask

pytest.importorskip("numba")

MASK_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]
IMAGE_DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.uint64, np.float32, np.float64, bool]
FIELDS = ("labels", "count", "sum_z", "sum_y", "sum_x", "lo", "hi")


@pytest.fixture(autouse=True)
def _numba_on(monkeypatch):
    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    assert _extract_kernels.enabled()


def _labels(rng, dtype, n):
    """``n`` distinct non-zero labels of ``dtype``, extremes of its range included."""
    info = np.iinfo(dtype)
    pool = [info.min, info.max, 1, info.max - 1]
    if info.min < 0:
        pool += [-1, info.min + 1]
    lo = max(info.min, -(2**62))
    hi = min(info.max, 2**62)
    pool += rng.integers(lo, hi, n, endpoint=True).tolist()
    out = np.unique(np.array(pool, dtype=dtype))
    out = out[out != 0]
    return rng.permutation(out)[:n]


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(MASK_DTYPES),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 25), st.integers(1, 40)),
    n_labels=st.integers(1, 12),
    runs=st.booleans(),
    offset=st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_label_sums_kernel_equals_numpy(seed, dtype, shape, n_labels, runs, offset):
    rng = np.random.default_rng(seed)
    ids = np.concatenate((np.zeros(1, dtype), _labels(rng, dtype, n_labels)))
    pick = rng.integers(0, ids.size, shape)
    if runs:  # long runs along x, as in segmentation masks
        pick = np.repeat(pick[..., :: max(1, shape[2] // 4)], 4, axis=-1)[..., : shape[2]]
        pick = np.pad(pick, [(0, 0), (0, 0), (0, shape[2] - pick.shape[2])])
    mask = ids[pick]
    got, ref = label_sums(mask, offset), label_sums_numpy(mask, offset)
    for f in FIELDS:
        a, b = getattr(got, f), getattr(ref, f)
        assert a.dtype == b.dtype == np.int64
        np.testing.assert_array_equal(a, b, err_msg=f)


def test_label_sums_kernel_many_labels():
    # more labels than the kernel's first hash table holds: it grows, several times
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 2**40, (2, 300, 200)).astype(np.int64)
    mask[:, ::7] = 0
    got, ref = label_sums(mask, (1, 2, 3)), label_sums_numpy(mask, (1, 2, 3))
    assert got.labels.size > 10_000
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f))
    _, mask = make_image_and_mask((300, 300), 400, 16, seed=2)
    got, ref = label_sums(mask, (0, 5, 7)), label_sums_numpy(mask, (0, 5, 7))
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f))


def _image(rng, dtype, shape):
    if dtype is bool:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.floating):
        img = rng.normal(0, 1e3, shape).astype(dtype)
        flat = img.reshape(-1)
        special = rng.integers(0, flat.size, max(1, flat.size // 10))
        flat[special] = rng.choice([np.nan, np.inf, -np.inf, -0.0], special.size)
        return img
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _same(a, b):
    """Equal dtype, shape and bytes (NaN, -0.0 and inf compared exactly)."""
    if a is None or b is None:
        return a is None and b is None
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.array_equal(
            np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)
        )
    )


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(IMAGE_DTYPES),
    mask_dtype=st.sampled_from(MASK_DTYPES),
    channels=st.integers(1, 3),
    nz=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    diameter=st.integers(1, 12),
    n=st.integers(0, 10),
    remove_background=st.booleans(),
    with_mask=st.booleans(),
    use_mask=st.booleans(),
)
def test_cut_windows_kernel_equals_numpy(
    seed, dtype, mask_dtype, channels, nz, hw, diameter, n, remove_background, with_mask, use_mask
):
    rng = np.random.default_rng(seed)
    h, w = hw[0] + diameter, hw[1] + diameter
    image = _image(rng, dtype, (channels, nz, h, w))
    ids = _labels(rng, mask_dtype, 4)
    mask = np.concatenate((np.zeros(1, mask_dtype), ids))[rng.integers(0, 5, (nz, h, w))]
    origin = (int(rng.integers(-50, 50)), int(rng.integers(-50, 50)))
    starts = np.column_stack(
        [rng.integers(0, hw[0] + 1, n) + origin[0], rng.integers(0, hw[1] + 1, n) + origin[1]]
    ).reshape(n, 2)
    labels = rng.choice(ids, n).astype(np.int64)  # as the plan holds them (int64)
    depth = int(rng.integers(1, nz + 1))
    starts_z = rng.integers(0, nz - depth + 1, n)
    if not use_mask:
        mask, remove_background, with_mask = None, False, False
    kw = {"remove_background": remove_background, "with_mask": with_mask}
    args = (image, mask, origin, starts, labels, diameter)
    got = crop_windows(*args, starts_z=starts_z, depth=depth, **kw)
    ref = crop_windows_numpy(*args, starts_z, depth, **kw)
    assert got[0].shape == (n, channels, depth, diameter, diameter)
    if depth == nz:  # every window holds the whole stack: the default
        assert _same(crop_windows(*args, **kw)[0], ref[0]) or starts_z.any()
    assert _same(got[0], ref[0])
    assert _same(got[1], ref[1])


def test_kernels_switch_off_and_missing_numba(monkeypatch):
    image, mask = make_image_and_mask((96, 80), 25, 12, seed=4)
    image = image.astype(np.float32)
    image[0, 10:20, 10:20] = np.nan
    with dask.config.set(scheduler="synchronous"):
        ids0, fast = extract_instances(image, mask, 12, tile_size=32, chunk_i=5)
        fast = fast.compute()
        monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "0")
        assert not _extract_kernels.enabled()
        ids1, slow = extract_instances(image, mask, 12, tile_size=32, chunk_i=5)
        slow = slow.compute()
        # numba not installed: the kernels module cannot be imported
        monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
        monkeypatch.setitem(sys.modules, "numba", None)
        monkeypatch.delitem(sys.modules, "zarr_instances._extract_numba", raising=False)
        monkeypatch.delattr(zarr_instances, "_extract_numba", raising=False)
        monkeypatch.setattr(_runtime.EXTRACT_KERNELS, "tried", False)
        monkeypatch.setattr(_runtime.EXTRACT_KERNELS, "table", None)
        assert not _extract_kernels.enabled()
        assert _extract_kernels.label_sums(mask[None], (0, 0, 0)) is None
        ids2, none = extract_instances(image, mask, 12, tile_size=32, chunk_i=5)
        none = none.compute()
    monkeypatch.setattr(_runtime.EXTRACT_KERNELS, "tried", False)
    np.testing.assert_array_equal(ids0, ids1)
    np.testing.assert_array_equal(ids0, ids2)
    assert _same(fast, slow)
    assert _same(fast, none)


def test_kernels_default_only_where_numba_is_imported(monkeypatch):
    monkeypatch.delenv("ZARR_INSTANCES_NUMBA")
    assert "numba" in sys.modules  # imported by this test module
    assert _extract_kernels.enabled()
    monkeypatch.delitem(sys.modules, "numba")
    assert not _extract_kernels.enabled()
    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    assert _extract_kernels.enabled()
