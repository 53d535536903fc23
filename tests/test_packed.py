"""Arrays held compressed: round trip and pickling."""

from __future__ import annotations

import numpy as np
import pytest

from zarr_instances._packed import Packed


@pytest.mark.parametrize("shape", [(0, 2, 1, 8, 8), (3, 2, 1, 8, 8), (400, 2, 1, 64, 64)])
def test_packed_roundtrip_and_pickle(shape):
    import mmap
    import pickle

    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, size=shape, dtype=np.uint16)
    p = Packed(a)
    # large parts live in a mapping of their own, small ones as bytes
    assert isinstance(p.data, mmap.mmap) == (a.nbytes > 2**20)
    np.testing.assert_array_equal(p.unpack(), a)
    q = pickle.loads(pickle.dumps(p))  # a distributed worker sends parts to another
    assert type(q.data) is type(p.data)
    np.testing.assert_array_equal(q.unpack(), a)
    assert q.unpack().dtype == a.dtype
