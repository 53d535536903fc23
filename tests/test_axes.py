"""Pure axis logic (``_axes``): plans reorder any layout exactly; hints fit; messages."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances._axes import (
    IMAGE,
    MASK,
    check_axes,
    describe,
    letters,
    plan_axes,
    resolve_axes,
    suggest,
)
from zarr_instances.errors import ArgumentError


@st.composite
def _layout(draw, kind):
    """Axes of an input in a random order, sizes, and its (c, z, y, x) / (z, y, x) reference."""
    optional = ["t", "c", "z"]
    present = [a for a in optional if draw(st.booleans())] + ["y", "x"]
    axes = "".join(draw(st.permutations(present)))
    sizes = {a: draw(st.integers(1, 4)) for a in "czyx"}
    sizes["t"] = 1
    if kind == "mask":
        sizes["c"] = 1
    target = IMAGE if kind == "image" else MASK
    full = [a for a in target if a in present]
    ref = np.arange(int(np.prod([sizes[a] for a in full]))).reshape([sizes[a] for a in full])
    # the input: ref with the axes of ``axes`` (t and a mask's c added) in that order
    src = ref
    src_axes = list(full)
    for a in axes:
        if a not in src_axes:
            src = src[None]
            src_axes.insert(0, a)
    data = np.transpose(src, [src_axes.index(a) for a in axes])
    expected = ref[tuple(None if a not in present else slice(None) for a in target)]
    return axes, data, expected


@settings(max_examples=200, deadline=None)
@given(case=_layout("image"))
def test_image_plans_reorder_every_layout(case):
    axes, data, expected = case
    plan = plan_axes("image", axes, data.shape, "test")
    np.testing.assert_array_equal(plan.apply(data), expected)
    assert plan.shape(data.shape) == expected.shape
    lazy = plan.apply(da.from_array(data, chunks=1))
    np.testing.assert_array_equal(lazy.compute(), expected)


@settings(max_examples=200, deadline=None)
@given(case=_layout("mask"))
def test_mask_plans_reorder_every_layout(case):
    axes, data, expected = case
    plan = plan_axes("mask", axes, data.shape, "test")
    np.testing.assert_array_equal(plan.apply(data), expected)
    assert plan.shape(data.shape) == expected.shape == plan.apply(data).shape


@settings(max_examples=200, deadline=None)
@given(case=_layout("image"), zmask=st.booleans())
def test_suggestions_fit(case, zmask):
    """A suggested pair makes image and mask cover the same pixels (soundness)."""
    _, data, expected = case
    mask_shape = expected.shape[1:] if zmask else expected.shape[2:]
    if not zmask and expected.shape[1] != 1:
        return
    got = suggest(data.shape, None, mask_shape, None)
    if got is None:
        return
    ia = got[0] or {2: None, 3: "cyx", 4: "czyx", 5: "tczyx"}[data.ndim]
    ma = got[1] or {2: "yx", 3: "zyx"}[len(mask_shape)]
    assert ia is not None
    ishape = plan_axes("image", ia, data.shape, "").shape(data.shape)
    assert ishape[1:] == plan_axes("mask", ma, mask_shape, "").shape(mask_shape)


@pytest.mark.parametrize(
    ("image", "mask", "expected", "text"),
    [
        ((1024, 1200, 3), (1024, 1200), ("yxc", None), "looks channels-last: pass axes='yxc'"),
        ((31, 64, 64), (31, 64, 64), ("zyx", None), "without a channel axis: pass axes='zyx'"),
        ((5, 64, 64, 2), (5, 64, 64), ("zyxc", None), "channels-last: pass axes='zyxc'"),
        ((64, 64), (64, 64), ("yx", None), "one plane without a channel axis: pass axes='yx'"),
        ((2, 64, 64), (64, 64, 1), (None, "yxc"), "pass mask_axes='yxc'"),
        ((2, 64, 64), (3, 64, 64), None, ""),
    ],
)
def test_suggest_common_layouts(image, mask, expected, text):
    got = suggest(image, None, mask, None)
    assert got == expected
    if got is not None:
        assert text in describe(image, *got)


def test_suggest_keeps_known_axes():
    # a known image (c, y, x) is not reinterpreted; the mask is
    assert suggest((3, 64, 64), "cyx", (64, 64, 1), None) == (None, "yxc")
    assert suggest((1024, 1200, 3), "cyx", (1024, 1200), None) is None


def test_letters():
    assert letters(["t", "c", "z", "y", "x"]) == "tczyx"
    assert letters("CZYX") == "czyx"
    assert letters(["dim_0", "y", "x"]) is None
    assert letters(["y", "y"]) is None
    assert letters([]) is None
    assert letters(None) is None


@pytest.mark.parametrize(
    ("axes", "ndim", "match"),
    [
        ("yxq", 3, "letters t, c, z, y, x"),
        ("yyx", 3, "each axis once"),
        ("czy", 3, r"y and x required"),
        ("yxc", 4, r"names 3 axes, but the input has shape \(1, 2, 3, 4\) \(4-D\)"),
        (3, 3, "must be a string"),
    ],
)
def test_check_axes_errors(axes, ndim, match):
    with pytest.raises(ArgumentError, match=match):
        check_axes(axes, ndim, "axes", (1, 2, 3, 4)[:ndim])


def test_check_axes_is_case_insensitive():
    assert check_axes("YXC", 3, "axes", (4, 4, 3)) == "yxc"


def test_resolve_axes():
    assert resolve_axes("image", (3, 4, 5), None, None, "numpy array") == ("cyx", False)
    assert resolve_axes("image", (4, 5, 3), None, "yxc", "numpy array") == ("yxc", True)
    assert resolve_axes("mask", (4, 5), "yx", None, "m.zarr") == ("yx", True)
    assert resolve_axes("mask", (4, 5), "yx", "yx", "m.zarr") == ("yx", True)
    with pytest.raises(ArgumentError, match=r"axes='zyx' disagrees with the axes 'cyx' that"):
        resolve_axes("image", (3, 4, 5), "cyx", "zyx", "img.zarr")
    with pytest.raises(ArgumentError, match=r"image must be .*\(4, 5\).*pass axes='yx'"):
        resolve_axes("image", (4, 5), None, None, "numpy array")
    with pytest.raises(ArgumentError, match=r"mask must be .*name its axes with mask_axes=\.\.\."):
        resolve_axes("mask", (1, 1, 1, 1, 4, 5), None, None, "numpy array")
    with pytest.raises(ArgumentError, match=r"records axes 'zyx' for a 2-D mask"):
        resolve_axes("mask", (4, 5), "zyx", None, "m.zarr")


def test_plan_refuses_time_points_and_mask_channels():
    with pytest.raises(ArgumentError, match=r"image must be .*3 time points .*one time point"):
        plan_axes("image", "tcyx", (3, 2, 4, 4), "the axes 'tcyx' recorded in x")
    with pytest.raises(ArgumentError, match=r"mask must be \(y, x\).*2 channels .*one channel"):
        plan_axes("mask", "cyx", (2, 4, 4), "the given mask_axes='cyx'")
    plan = plan_axes("mask", "yxc", (4, 5, 1), "")
    assert plan.apply(np.zeros((4, 5, 1))).shape == (1, 4, 5)
