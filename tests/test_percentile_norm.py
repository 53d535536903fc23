"""``normalize="percentile"``: each crop scaled with its own source's stored percentiles."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
import zarr

from zarr_instances import ZarrDataLoader, ZarrIterableInstances, extract_instances, read_table
from zarr_instances._normalize import normalize_rows
from zarr_instances._percentile import SourceScales
from zarr_instances.errors import ArgumentError, ClippedInstancesWarning
from zarr_instances.testing import make_image_and_mask

# source -> brightness factor: "bright" is "dim" four times brighter (same cells)
FACTORS = {"dim": 1, "bright": 4, "other": 2}
N_CELLS = 24


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    images, masks = {}, {}
    for name, factor in FACTORS.items():
        seed = 1 if name == "other" else 0  # "dim" and "bright": the same cells
        image, mask = make_image_and_mask((96, 96), N_CELLS, 14, seed=seed)
        images[name] = (image.astype(np.uint32) * factor).astype(np.uint16)
        masks[name] = mask
    out = str(tmp_path_factory.mktemp("pnorm") / "study.zarr")
    with pytest.warns(ClippedInstancesWarning):  # some cells touch their window's edge
        extract_instances(
            images, masks, 14, out=out, chunk_i=10, order="random", seed=3, progress=False
        )
    return out


def reference(store: str, low_q: float = 1.0, high_q: float = 99.0) -> np.ndarray:
    """``clip((x - lo) / (hi - lo), 0, 1)`` per row, with its source's lo/hi, in float32."""
    group = zarr.open_group(store, mode="r")
    x = np.asarray(group["image"][...]).astype(np.float32)
    intensity = group.attrs["zarr_instances"]["intensity"]
    qs = intensity["percentiles"]
    sources = read_table(store)["source"].astype(str).to_numpy()
    table = {
        name: np.array([[row[qs.index(low_q)], row[qs.index(high_q)]] for row in channels])
        for name, channels in intensity["sources"].items()
    }
    lo = np.stack([table[s][:, 0] for s in sources]).astype(np.float32)
    hi = np.stack([table[s][:, 1] for s in sources]).astype(np.float32)
    lo, hi = lo[:, :, None, None, None], hi[:, :, None, None, None]
    return np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32)


def collect(batches, batched: bool) -> tuple[np.ndarray, np.ndarray]:
    xs, rows = [], []
    for x, _ids, row in batches:
        xs.append(x.numpy() if batched else x.numpy()[None])
        rows.append(np.atleast_1d(np.asarray(row)))
    return np.concatenate(xs), np.concatenate(rows)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batched", [False, True])
def test_streamed_values_match_numpy_reference(study, batched, num_workers):
    want = reference(study)
    ds = ZarrIterableInstances(
        study, None, normalize="percentile", shuffle_chunks=True, shuffle_within_chunk=True,
        buffer_seed=5, batch_size=7 if batched else None,
    )  # fmt: skip
    loader = ZarrDataLoader(ds, batch_size=None if batched else 7, num_workers=num_workers)
    x, rows = collect(loader, batched=True)
    assert x.dtype == np.float32 and x.shape == want.shape
    assert sorted(rows.tolist()) == list(range(want.shape[0]))
    np.testing.assert_allclose(x, want[rows], rtol=1e-5, atol=1e-6)
    assert x.min() == 0.0 and x.max() == 1.0  # clipped at the percentiles


def test_per_sample_iteration_without_loader(study):
    want = reference(study)
    ds = ZarrIterableInstances(study, None, normalize="percentile")
    x, rows = collect(ds, batched=False)
    np.testing.assert_allclose(x, want[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q", [(0.1, 99.9), (5, 95), (1, 50)])
def test_chosen_percentiles(study, q):
    want = reference(study, *q)
    ds = ZarrIterableInstances(study, None, normalize=("percentile", *q), batch_size=16)
    x, rows = collect(ds, batched=True)
    np.testing.assert_allclose(x, want[rows], rtol=1e-5, atol=1e-6)


def test_brighter_source_gives_the_same_crops(study):
    """A slide stained four times brighter: same values after percentile, not after unit."""
    table = read_table(study)
    key = table["instance_id"].to_numpy()
    dim = np.flatnonzero(table["source"] == "dim")
    bright = np.flatnonzero(table["source"] == "bright")
    dim, bright = dim[np.argsort(key[dim])], bright[np.argsort(key[bright])]
    assert (key[dim] == key[bright]).all()

    def by_row(normalize):
        ds = ZarrIterableInstances(study, None, normalize=normalize, batch_size=64)
        x, rows = collect(ds, batched=True)
        return x[np.argsort(rows)]

    x = by_row("percentile")
    np.testing.assert_allclose(x[dim], x[bright], atol=1e-6)
    unit = by_row("unit")
    assert unit[bright].mean() > 3 * unit[dim].mean()


def test_half_precision_output(study):
    ds = ZarrIterableInstances(study, None, normalize="percentile", x_dtype=torch.float16)
    x, rows = collect(ds, batched=False)
    assert x.dtype == np.float16
    np.testing.assert_allclose(x, reference(study)[rows], atol=1e-3)


# ----------------------------------------------------------------- scales and kernels


def test_equal_or_missing_percentiles_give_zero():
    src = np.arange(2 * 2 * 1 * 3 * 3, dtype=np.uint16).reshape(2, 2, 1, 3, 3) * 100
    low = np.array([[5.0, np.nan]], np.float32)
    high = np.array([[5.0, np.nan]], np.float32)  # hi == lo; a channel without pixels
    scales = SourceScales(np.zeros(2, np.int32), low, high, (1.0, 99.0))
    out = normalize_rows(src, None, "percentile", torch.float32, scales=scales.of_rows([0, 1]))
    assert torch.equal(out, torch.zeros_like(out))


def test_scales_pickle_with_their_codes():
    scales = SourceScales(np.array([1, 0, 1]), np.zeros((2, 1)), np.ones((2, 1)) * 4, (1.0, 99.0))
    back = pickle.loads(pickle.dumps(scales))
    assert back.codes.dtype == np.int16 and back.codes.tolist() == [1, 0, 1]
    assert back.of_rows(np.array([2]))[1].tolist() == [[0.25]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_compiled_and_numpy_routes_are_bit_identical(dtype, monkeypatch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    src = (rng.random((40, 3, 2, 9, 7)) * 250).astype(dtype)
    index = rng.permutation(40)[:33]
    low = rng.random((33, 3)).astype(np.float32) * 50
    inv = np.float32(1) / (rng.random((33, 3)).astype(np.float32) * 150 + 1)
    inv[0, 1] = 0  # hi == lo
    outs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("ZARR_INSTANCES_NUMBA", flag)
        outs.append(normalize_rows(src, index, "percentile", torch.float32, scales=(low, inv)))
    assert torch.equal(outs[0], outs[1])
    want = np.clip((src[index].astype(np.float32) - low[..., None, None, None])
                   * inv[..., None, None, None], 0, 1)  # fmt: skip
    np.testing.assert_array_equal(outs[0].numpy(), want)


# ----------------------------------------------------------------- errors


def _copy(study, tmp_path, name):
    path = tmp_path / name
    shutil.copytree(study, path)
    return path


@pytest.mark.filterwarnings("ignore:Consolidated metadata:zarr.errors.ZarrUserWarning")
def test_store_without_intensity_attributes(study, tmp_path):
    path = _copy(study, tmp_path, "no_intensity.zarr")
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs["zarr_instances"])
    del attrs["intensity"]
    group.attrs["zarr_instances"] = attrs
    zarr.consolidate_metadata(path)
    with pytest.raises(ArgumentError, match=r"normalize='percentile'.*lacks per-source"):
        ZarrIterableInstances(str(path), None, normalize="percentile")
    ZarrIterableInstances(str(path), None, normalize="minmax01")  # other modes still work


@pytest.mark.filterwarnings("ignore:Consolidated metadata:zarr.errors.ZarrUserWarning")
def test_store_without_table(study, tmp_path):
    path = _copy(study, tmp_path, "no_obs.zarr")
    shutil.rmtree(path / "obs")
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    zarr.consolidate_metadata(group.store)
    with pytest.raises(ArgumentError, match=r"instance table 'obs'.*lacks per-source.*re-extract"):
        ZarrIterableInstances(str(path), None, normalize="percentile")


def test_bare_array(tmp_path):
    arr = zarr.create_array(tmp_path / "bare.zarr", shape=(4, 1, 1, 8, 8), dtype="uint16")
    with pytest.raises(ArgumentError, match=r"normalize.*bare crop array.*lacks per-source"):
        ZarrIterableInstances(arr, np.arange(4), normalize="percentile")


def test_percentiles_not_stored(study):
    with pytest.raises(ArgumentError, match=r"stores the percentiles \['0.1', '1', '5', '50'"):
        ZarrIterableInstances(study, None, normalize=("percentile", 2, 98))


@pytest.mark.parametrize(
    "mode",
    [("percentile", 99, 1), ("percentile", 1), ("percentile", "1", 99), ["percentile", -1, 50],
     ("percentile", 1, 101), ("percentile", True, 99)],
)  # fmt: skip
def test_malformed_percentile_mode(study, mode):
    with pytest.raises(ArgumentError, match=r"normalize=\('percentile', low, high\)"):
        ZarrIterableInstances(study, None, normalize=mode)


def test_unknown_mode_lists_percentile(study):
    with pytest.raises(ArgumentError, match="'percentile'"):
        ZarrIterableInstances(study, None, normalize="percentiles")
