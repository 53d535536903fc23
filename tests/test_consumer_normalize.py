"""``normalize_in="consumer"``: stored-dtype crops out, ``ds.normalizer`` equal to the default."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from zarr_instances import (
    BatchNormalizer,
    ZarrDataLoader,
    ZarrIterableInstances,
    extract_instances,
)
from zarr_instances.errors import ArgumentError, ClippedInstancesWarning
from zarr_instances.testing import make_image_and_mask, make_instance_store


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study of two sources of different brightness (for ``normalize="percentile"``)."""
    images, masks = {}, {}
    for name, factor, seed in (("dim", 1, 0), ("bright", 3, 1)):
        image, mask = make_image_and_mask((80, 80), 18, 12, seed=seed)
        images[name] = (image.astype(np.uint32) * factor).astype(np.uint16)
        masks[name] = mask
    out = str(tmp_path_factory.mktemp("consumer") / "study.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClippedInstancesWarning)
        extract_instances(images, masks, 12, out=out, chunk_i=7, order="random", progress=False)
    return out


@pytest.fixture(scope="module")
def floats(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("consumer_f") / "f.zarr")
    make_instance_store(path, n=90, chunk_i=20, dtype="float32", n_classes=None)
    return path


def _stream(path, workers, batched, **kw):
    ds = ZarrIterableInstances(
        path, None, shuffle_chunks=True, shuffle_within_chunk=True, buffer_seed=2,
        batch_size=8 if batched else None, **kw,
    )  # fmt: skip
    if workers:
        loader = ZarrDataLoader(ds, batch_size=None if batched else 8, num_workers=workers,
                                multiprocessing_context="fork")  # fmt: skip
    else:
        loader = ZarrDataLoader(ds, batch_size=None if batched else 8)
    return ds, [(x, row) for x, _ids, row in loader]


@pytest.mark.parametrize(
    ("mode", "workers", "batched"),
    [
        ("minmax01", 0, True),
        ("minmax01", 2, True),
        ("minmax01", 0, False),
        ("minmax01", 2, False),
        ("unit", 0, True),
        ("percentile", 0, True),
        ("percentile", 2, False),
        (("percentile", 5.0, 95.0), 0, True),
        ("none", 0, True),
    ],
)
def test_consumer_normalizer_equals_the_dataset_path(study, mode, workers, batched):
    _, want = _stream(study, workers, batched, normalize=mode)
    ds, got = _stream(study, workers, batched, normalize=mode, normalize_in="consumer")
    norm = ds.normalizer
    assert len(got) == len(want) > 1
    for (raw, row), (x, row_want) in zip(got, want, strict=True):
        assert raw.dtype == torch.uint16  # half the bytes of float32 left the workers
        assert torch.equal(row, row_want)
        out = norm(raw, row)
        assert out.dtype == x.dtype == torch.float32
        assert torch.equal(out, x)  # bit for bit
        # the torch operations a GPU batch goes through give the same bits
        assert torch.equal(norm.apply_torch(raw, row), x)
    if mode == "minmax01":
        assert float(x.max()) > 0.99  # the comparison is not of zeros


def test_consumer_normalizer_float_store_and_x_dtype(floats):
    _, want = _stream(floats, 0, True, x_dtype=torch.float64)
    ds, got = _stream(floats, 0, True, x_dtype=torch.float64, normalize_in="consumer")
    for (raw, row), (x, _) in zip(got, want, strict=True):
        assert raw.dtype == torch.float32
        out = ds.normalizer(raw, row)
        assert out.dtype == torch.float64 and torch.equal(out, x)
        assert torch.equal(ds.normalizer.apply_torch(raw, row), x)
    # one crop (per-sample mode without a DataLoader) keeps its shape
    one = next(iter(ZarrIterableInstances(floats, None, normalize_in="consumer")))[0]
    assert ds.normalizer(one).shape == one.shape


def test_consumer_normalizer_errors(study):
    ds = ZarrIterableInstances(study, None, normalize="percentile", normalize_in="consumer")
    x = next(iter(ds))[0]
    with pytest.raises(ArgumentError, match="needs the global row of each crop"):
        ds.normalizer(x)
    with pytest.raises(ArgumentError, match="needs the global row of each crop"):
        ds.normalizer.apply_torch(x[None])
    with pytest.raises(ArgumentError, match="one row per crop: 1 crops, 2 rows"):
        ds.normalizer(x, torch.tensor([0, 1]))
    with pytest.raises(ArgumentError, match="x must be a batch"):
        ds.normalizer(x[0])
    with pytest.raises(ArgumentError, match="normalize_in must be 'dataset' or 'consumer'"):
        ZarrIterableInstances(study, None, normalize_in="gpu")
    assert isinstance(ds.normalizer, BatchNormalizer)
    assert "percentile" in repr(ds.normalizer)
