from __future__ import annotations

import numpy as np
import pytest
import torch

from zarr_instances._normalize import normalize_rows


def _ref(x: np.ndarray, mode: str) -> np.ndarray:
    x32 = x.astype(np.float32)
    if mode == "minmax01":
        lo = x32.min(axis=(2, 3, 4), keepdims=True)
        hi = x32.max(axis=(2, 3, 4), keepdims=True)
        return (x32 - lo) / (hi - lo + np.float32(1e-8))
    if mode == "unit" and np.issubdtype(x.dtype, np.integer):
        return x32 / np.float32(np.iinfo(x.dtype).max)
    return x32


@pytest.mark.parametrize("mode", ["minmax01", "unit", "none"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.float64])
def test_gather_and_normalise_matches_reference(mode, dtype, x_dtype):
    rng = np.random.default_rng(1)
    # rows of 2 x 1 x 40 x 40: several rows per cache block, several blocks per call
    src = (rng.random((70, 2, 1, 40, 40)) * 200).astype(dtype)
    src[5] = 7  # a constant crop: minmax01 gives zeros, not NaN
    index = rng.permutation(70)[:53]
    got = normalize_rows(src, index, mode, x_dtype)
    assert got.dtype == x_dtype and tuple(got.shape) == (53, 2, 1, 40, 40)
    want = torch.from_numpy(_ref(src[index], mode)).to(x_dtype)
    torch.testing.assert_close(
        got,
        want,
        rtol=1e-6 if x_dtype != torch.float16 else 1e-3,
        atol=1e-7 if x_dtype != torch.float16 else 1e-3,
    )
    assert not torch.isnan(got).any()
    # no index: all rows in order, same values as gathering 0..n-1
    assert torch.equal(
        normalize_rows(src, None, mode, x_dtype), normalize_rows(src, np.arange(70), mode, x_dtype)
    )


def test_empty_selection():
    src = np.zeros((4, 2, 1, 8, 8), np.uint16)
    out = normalize_rows(src, np.zeros(0, np.int64), "minmax01", torch.float32)
    assert tuple(out.shape) == (0, 2, 1, 8, 8)
