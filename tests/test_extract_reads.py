"""The extraction reads its inputs once per pass: intensities and clipping counts ride along.

The mask pass reads every mask chunk; the write pass reads every image chunk and the
mask chunks it cuts, and computes the intensity percentiles and the clipping counts
from those same decoded blocks. Results equal a reference computed in NumPy, and a
resumed or rerun store equals a clean run.
"""

from __future__ import annotations

import warnings
from collections import Counter

import dask
import numpy as np
import pandas as pd
import pytest
import zarr
from dask.callbacks import Callback

import zarr_instances._extract_store as xs
import zarr_instances._extract_write as xw
from zarr_instances import ClippedInstancesWarning, extract_instances, read_table
from zarr_instances.testing import make_image_and_mask

D = 8  # small enough that windows clip objects
PERCENTILES = (0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9)


class _Reads(Callback):
    """Count the Dask tasks reading a chunk of the image or of the mask input."""

    def __init__(self) -> None:
        super().__init__()
        self.image: Counter = Counter()
        self.mask: Counter = Counter()

    def _pretask(self, key, dsk, state):
        if isinstance(key, tuple) and isinstance(key[0], str):
            if key[0].startswith("zi-image-"):
                self.image[key] += 1
            elif key[0].startswith("zi-mask-"):
                self.mask[key] += 1


@pytest.fixture
def inputs(tmp_path):
    image, mask = make_image_and_mask((120, 100), 45, 12, seed=11)
    img, msk = tmp_path / "img.zarr", tmp_path / "mask.zarr"
    zarr.create_array(img, data=image, chunks=(2, 20, 20))
    zarr.create_array(msk, data=mask, chunks=(20, 20))
    return str(img), str(msk), image, mask


def _extract(img, msk, out, **kwargs):
    with warnings.catch_warnings(record=True) as caught, _Reads() as reads:
        warnings.simplefilter("always")
        extract_instances(img, msk, D, out=out, progress=False, **kwargs)
    clipped = [str(w.message) for w in caught if w.category is ClippedInstancesWarning]
    return reads, clipped


def _attrs(path):
    return dict(zarr.open_group(path, mode="r").attrs)["zarr_instances"]


def _store(path):
    g = zarr.open_group(path, mode="r")
    return {k: g[k][...] for k in g.array_keys()}, read_table(path), _attrs(path)


def _expected(image, mask, table, centroids):
    """Fractions clipped, which clip more than 1 %, and the percentiles, in NumPy."""
    clipped, fraction = [], []
    for (_, y, x), label in zip(centroids, table["instance_id"], strict=True):
        y0, x0 = int(y) - D // 2, int(x) - D // 2
        window = mask[max(0, y0) : y0 + D, max(0, x0) : x0 + D]
        area = int((mask == label).sum())
        outside = area - int((window == label).sum())
        clipped.append(outside * 100 > area)
        fraction.append(outside / area)
    pcts = [np.percentile(image[c][mask > 0], PERCENTILES).tolist() for c in range(len(image))]
    return np.array(fraction), np.array(clipped), pcts


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"remove_background": False}, {"extract_mask": True, "order": "random", "tile_size": 40}],
)
def test_each_input_chunk_is_decoded_once_per_pass(inputs, tmp_path, kwargs):
    img, msk, image, mask = inputs
    out = tmp_path / "out.zarr"
    reads, clipped = _extract(img, msk, out, **kwargs)
    n_chunks = 6 * 5
    # the write pass decodes every image chunk once (crops and intensities) ...
    assert len(reads.image) == n_chunks and set(reads.image.values()) == {1}
    # ... and the mask chunks once more after the mask pass (no pass of its own for clipping)
    assert len(reads.mask) == n_chunks and set(reads.mask.values()) == {2}

    _, table, attrs = _store(out)
    cents = zarr.open_array(out / "centroids", mode="r")[...]
    fraction, want_clipped, pcts = _expected(image, mask, table, cents)
    assert want_clipped.sum() > 0  # some windows do clip their object
    np.testing.assert_array_equal(table["clipped"].to_numpy(), fraction)
    assert attrs["windows"] == {
        "diameter": D,
        "n_clipped": int(want_clipped.sum()),
        "max_clipped": float(fraction.max()),
    }
    assert attrs["intensity"]["percentiles"] == list(PERCENTILES)
    np.testing.assert_allclose(attrs["intensity"]["sources"]["img"], pcts, rtol=1e-12)
    # the lazy result counts by a pass of its own, and reports the same clipping
    with pytest.warns(ClippedInstancesWarning) as lazy:
        extract_instances(img, msk, D, **{k: v for k, v in kwargs.items() if k != "extract_mask"})
    assert clipped == [str(w.message) for w in lazy]


def test_several_passes_give_the_single_pass_store(inputs, tmp_path):
    img, msk, _, _ = inputs
    kwargs = {"chunk_i": 4, "order": "random", "seed": 3, "tile_size": 40}
    _extract(img, msk, tmp_path / "one.zarr", **kwargs)
    calls = []
    real = xw.run_with_progress

    def counting(tasks, *a):
        calls.append(len(tasks))
        return real(tasks, *a)

    mp = pytest.MonkeyPatch()
    mp.setattr(xw, "run_with_progress", counting)
    try:
        _extract(img, msk, tmp_path / "many.zarr", memory_limit=4 * 2 * D * D * 2 * 3, **kwargs)
    finally:
        mp.undo()
    assert len(calls) > 1
    one, many = _store(tmp_path / "one.zarr"), _store(tmp_path / "many.zarr")
    for key in one[0]:
        np.testing.assert_array_equal(many[0][key], one[0][key], err_msg=key)
    pd.testing.assert_frame_equal(many[1], one[1])
    assert many[2] == one[2]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["write", "table"])
def test_interrupted_then_rerun_equals_a_clean_run(inputs, tmp_path, monkeypatch, where):
    img, msk, _, _ = inputs
    kwargs = {"chunk_i": 3, "order": "random", "seed": 1, "tile_size": 40, "extract_mask": True}
    clean = tmp_path / "clean.zarr"
    _, clean_warning = _extract(img, msk, clean, **kwargs)
    want = _store(clean)
    assert want[2]["windows"]["n_clipped"] > 0

    out = tmp_path / "out.zarr"
    written = []
    real_write, real_table = xw.write_units, xs._write_table

    def write_units(*a, **k):
        if where == "write" and len(written) >= 5:
            raise _Stop
        written.extend(a[3])
        return real_write(*a, **k)

    def write_table(*a, **k):
        raise _Stop

    monkeypatch.setattr(xw, "write_units", write_units)
    monkeypatch.setattr(xw, "_TASK_BYTES", 1)  # one unit per write task
    if where == "table":  # every unit written, the store not finished
        monkeypatch.setattr(xs, "_write_table", write_table)
    with dask.config.set(scheduler="synchronous"), pytest.raises(_Stop):
        _extract(img, msk, out, **kwargs)
    done = zarr.open_array(out / "progress", mode="r")[...]
    assert done.all() if where == "table" else 0 < done.sum() < done.size
    assert _attrs(out)["complete"] is False
    monkeypatch.setattr(xw, "write_units", real_write)
    monkeypatch.setattr(xs, "_write_table", real_table)

    reads, warning = _extract(img, msk, out, **kwargs)
    assert warning == clean_warning
    assert set(reads.image.values()) == {1}  # the rest, and the intensities, in one pass
    got = _store(out)
    for key in want[0]:
        np.testing.assert_array_equal(got[0][key], want[0][key], err_msg=key)
    pd.testing.assert_frame_equal(got[1], want[1])
    assert got[2] == want[2]

    # a complete store is returned as it is: the images are not read again
    reads, warning = _extract(img, msk, out, **kwargs)
    assert warning == clean_warning
    assert not reads.image
    assert _store(out)[2] == want[2]
