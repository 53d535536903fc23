from __future__ import annotations

import numpy as np
import pytest

from zarr_instances import ZarrIterableInstances
from zarr_instances.quality import batch_metrics, shuffle_quality
from zarr_instances.testing import make_instance_array


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "a.zarr"
    make_instance_array(path, n=6400, shape=(1, 1, 2, 2), chunk_i=64, compressors=None)
    # labels clustered along rows, as in a store written in spatial / id order
    labels = (np.arange(6400) // 800) % 8
    return str(path), labels


def test_batch_metrics_simple():
    chunks, ent = batch_metrics([np.array([0, 1, 10, 11])], 10, np.array([0, 1] * 6))
    assert chunks == 2.0
    assert ent == pytest.approx(1.0)


def test_quality_orders_configurations(big):
    path, labels = big
    ids = np.arange(labels.size)
    kw = {"shuffle_chunks": True, "shuffle_within_chunk": True, "buffer_seed": 0}
    q1 = shuffle_quality(ZarrIterableInstances(path, ids, labels, **kw), 64)
    q8 = shuffle_quality(ZarrIterableInstances(path, ids, labels, buffer_chunks=8, **kw), 64)
    assert q1.batches == 100
    assert q1.chunks_per_batch == pytest.approx(1.0)
    assert 5 < q8.chunks_per_batch <= 8
    assert q1.chunks_per_batch_global > 30  # a random permutation spreads over many chunks
    assert q1.label_entropy < 0.1  # one chunk per batch: almost one label
    assert q8.label_entropy > q1.label_entropy
    assert q1.label_entropy_global > 2.8  # close to log2(8) = 3
    # a preshuffled store: labels in random row order reach global entropy chunk-wise
    rng = np.random.default_rng(0)
    pre = rng.permutation(labels)
    qp = shuffle_quality(ZarrIterableInstances(path, ids, pre, **kw), 64)
    assert qp.label_entropy > 0.95 * qp.label_entropy_global
