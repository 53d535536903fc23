from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances import ArgumentError, ClippedInstancesWarning, extract_instances
from zarr_instances._clip_tasks import clipping
from zarr_instances._geometry import centroids, label_sums, tile_edges
from zarr_instances._study_plan import StudyPlan
from zarr_instances._tile_plan import TilePlan
from zarr_instances._tile_tasks import Blocks
from zarr_instances._windows import auto_diameter, estimate_output_bytes, needed_diameter
from zarr_instances.testing import make_image_and_mask


def _random_mask(seed, shape, n_labels):
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 300), n_labels, replace=False)
    mask = np.zeros(shape, dtype=np.int32)
    for lab in ids:  # rectangles, often past the edge, plus stray pixels far away
        z0 = rng.integers(0, shape[0])
        y0, x0 = rng.integers(-3, shape[1]), rng.integers(-3, shape[2])
        d, h, w = rng.integers(1, 4), rng.integers(1, 12), rng.integers(1, 12)
        mask[z0 : z0 + d, max(0, y0) : y0 + h, max(0, x0) : x0 + w] = lab
    stray = rng.random(shape) < 0.01
    mask[stray] = rng.choice(ids, stray.sum())
    if not mask.any():
        mask[0, 0, 0] = 5
    return mask


def _reference(mask, diameter, z_window=None):
    """Per instance (ids ascending): pixel count and pixels inside its window, one by one."""
    nz = mask.shape[0]
    ids = np.unique(mask)
    ids = ids[ids != 0]
    area, inside = [], []
    for lab in ids:
        zz, yy, xx = np.nonzero(mask == lab)
        z0 = 0 if z_window is None else int(np.rint(zz.mean())) - z_window // 2
        depth = nz if z_window is None else z_window
        y0 = int(np.rint(yy.mean())) - diameter // 2
        x0 = int(np.rint(xx.mean())) - diameter // 2
        keep = (zz >= z0) & (zz < z0 + depth) & (yy >= y0) & (yy < y0 + diameter)
        keep &= (xx >= x0) & (xx < x0 + diameter)
        area.append(zz.size)
        inside.append(int(keep.sum()))
    return ids, np.array(area), np.array(inside)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 4), st.integers(4, 40), st.integers(4, 40)),
    n_labels=st.integers(1, 10),
    diameter=st.integers(1, 14),
    z_window=st.sampled_from([None, 1, 2, 3]),
    chunk=st.integers(3, 17),
    tile=st.integers(1, 30),
)
def test_clipping_counts_exactly(seed, shape, n_labels, diameter, z_window, chunk, tile):
    mask = _random_mask(seed, shape, n_labels)
    ids, area, inside = _reference(mask, diameter, z_window)
    dmask = da.from_array(mask, chunks=(1, chunk, chunk + 1))
    sums = label_sums(mask)
    edges = (tile_edges(dmask.chunks[1], tile), tile_edges(dmask.chunks[2], tile))
    plan = TilePlan(
        sums.labels, centroids(sums), "id", 0, diameter, *edges, shape[1:], shape[0], z_window
    )
    got = clipping(StudyPlan.single(plan), [sums], [Blocks(dmask)], "t")
    np.testing.assert_array_equal(sums.labels, ids)
    np.testing.assert_array_equal(got.area, area)
    np.testing.assert_array_equal(got.inside, inside)
    np.testing.assert_array_equal(got.clipped, (area - inside) * 100 > area)


def test_extraction_warns_once_with_counts():
    image, mask = make_image_and_mask((128, 128), 40, 16, seed=3)
    ids, area, inside = _reference(mask[None], 9)
    clipped = (area - inside) * 100 > area
    worst = ((area - inside) / area).max()
    assert 0 < clipped.sum() < ids.size
    with pytest.warns(ClippedInstancesWarning) as record:
        extract_instances(image, mask, 9, tile_size=40)
    assert len(record) == 1
    msg = str(record[0].message)
    assert msg.startswith(f"{clipped.sum()} of {ids.size} instances have more than 1%")
    assert f"loses {worst:.1%}" in msg
    assert 'diameter="auto"' in msg
    assert record[0].filename == __file__


def test_no_warning_when_nothing_clips(tmp_path):
    image, mask = make_image_and_mask((128, 128), 40, 16, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClippedInstancesWarning)
        extract_instances(image, mask, 40)
        extract_instances(image, mask, 40, out=tmp_path / "s.zarr")
    attrs = zarr.open_group(tmp_path / "s.zarr").attrs["zarr_instances"]
    assert attrs["windows"]["n_clipped"] == 0


@pytest.mark.parametrize(("shape", "diameter"), [((30, 50), 31), ((50, 30), 31), ((20, 20), 21)])
def test_diameter_larger_than_image_is_an_error_before_any_work(shape, diameter):
    image = np.zeros((1, *shape), dtype=np.uint8)
    mask = np.zeros(shape, dtype=np.uint8)  # no labels: that error would come later
    msg = rf"diameter={diameter} is larger than the image \(y={shape[0]}, x={shape[1]}\)"
    with pytest.raises(ArgumentError, match=msg):
        extract_instances(image, mask, diameter)


def _brute_needed(mask):
    """Per instance: the smallest d whose window (start c - d // 2) holds all its pixels."""
    out = []
    for lab in np.unique(mask[mask != 0]):
        _, yy, xx = np.nonzero(mask == lab)
        cy, cx = int(np.rint(yy.mean())), int(np.rint(xx.mean()))
        d = 1
        while not all(
            c - d // 2 <= v.min() and v.max() <= c - d // 2 + d - 1 for c, v in ((cy, yy), (cx, xx))
        ):
            d += 1
        out.append(d)
    return np.array(out)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_labels=st.integers(1, 10),
    quantile=st.sampled_from([0.01, 0.5, 0.9, 0.99, 1.0]),
)
def test_needed_and_auto_diameter_match_brute_force(seed, n_labels, quantile):
    mask = _random_mask(seed, (2, 30, 30), n_labels)
    sums = label_sums(mask)
    need = needed_diameter(centroids(sums), sums.lo, sums.hi)
    brute = _brute_needed(mask)
    np.testing.assert_array_equal(need, brute)
    d = auto_diameter(need, quantile)
    fit = (brute <= d).mean()
    assert fit >= quantile - 1e-12
    assert (brute <= d - 1).mean() < quantile - 1e-12  # the smallest such d


def test_auto_diameter_extracts_and_records(tmp_path, caplog):
    image, mask = make_image_and_mask((128, 128), 40, 16, seed=3)
    need = _brute_needed(mask[None])
    expected = int(np.sort(need)[int(np.ceil(0.9 * need.size)) - 1])
    with caplog.at_level("INFO", logger="zarr_instances"):
        _, inst = extract_instances(image, mask, "auto", auto_quantile=0.9, out=tmp_path / "a.zarr")
    assert inst.shape[-2:] == (expected, expected)
    assert f'diameter="auto" chose {expected}' in caplog.text
    attrs = zarr.open_group(tmp_path / "a.zarr").attrs["zarr_instances"]
    assert attrs["parameters"]["diameter"] == expected
    assert attrs["parameters"]["auto_quantile"] == 0.9
    assert attrs["windows"]["chosen"] == expected
    _, same = extract_instances(image, mask, expected)
    np.testing.assert_array_equal(inst.compute(), same.compute())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"diameter": "big"}, 'diameter must be a positive integer or "auto"'),
        ({"diameter": "auto", "auto_quantile": 0}, r"auto_quantile must be in \(0, 1\]"),
        ({"diameter": "auto", "auto_quantile": 1.5}, r"auto_quantile must be in \(0, 1\]"),
    ],
)
def test_auto_errors(kwargs, match):
    image, mask = make_image_and_mask((64, 64), 5, 16, seed=3)
    with pytest.raises(ArgumentError, match=match):
        extract_instances(image, mask, **kwargs)


def test_estimate_output_bytes():
    assert estimate_output_bytes(10, (2, 3, 16, 16), 2) == 10 * 2 * 3 * 16 * 16 * 2
    assert estimate_output_bytes(10, (2, 3, 16, 16), 2, extract_mask=True) == (
        10 * 2 * 3 * 16 * 16 * 2 + 10 * 3 * 16 * 16
    )
