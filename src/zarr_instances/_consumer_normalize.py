"""``normalize_in="consumer"``: crops leave the dataset as stored, normalised where used.

By default the dataset normalises each crop where it reads it (in the DataLoader
worker) and yields float32, twice the bytes of uint16 crops through the workers'
shared memory. With ``normalize_in="consumer"`` it yields the crops in their stored
dtype instead, and :class:`BatchNormalizer` (``dataset.normalizer``) applies the
dataset's ``normalize`` mode to a batch on whatever device the batch is on: on the CPU
with the dataset's own routine (:func:`._normalize.normalize_rows`, the compiled kernel
where loaded), elsewhere (a GPU once the batch was moved there) with ``torch``
operations that are the float32 operations of that routine, in the same order. Either
way the result is equal to what the dataset yields by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _kernels
from ._normalize import check_normalize, normalize_rows
from ._percentile import SourceScales
from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "NORMALIZE_IN",
    "BatchNormalizer",
    "check_normalize_in",
    "check_x_dtype",
    "stored_torch_dtype",
]

NORMALIZE_IN = ("dataset", "consumer")
_EPS = 1e-8  # as ._normalize._EPS


def check_x_dtype(x_dtype: object) -> torch.dtype:
    """Return ``x_dtype`` if it is a :class:`torch.dtype`, else raise naming it."""
    if not isinstance(x_dtype, torch.dtype):
        msg = f"x_dtype must be a torch.dtype, got {type(x_dtype).__name__}: {x_dtype!r}"
        raise ArgumentTypeError(msg)
    return x_dtype


def check_normalize_in(value: object) -> str:
    """Return ``value`` if it is ``"dataset"`` or ``"consumer"``, else raise naming it."""
    if not isinstance(value, str) or value not in NORMALIZE_IN:
        msg = f"normalize_in must be 'dataset' or 'consumer', got {value!r}"
        raise ArgumentError(msg)
    return value


def stored_torch_dtype(dtype: np.dtype) -> torch.dtype:
    """Return the torch dtype of crops stored as ``dtype`` (yielded as they are).

    Raises
    ------
    ArgumentError
        If this torch has no such dtype (``uint16`` and ``uint32`` need torch >= 2.3).
    """
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    except TypeError as exc:
        msg = (
            f"normalize_in='consumer' yields the crops as stored ({dtype}), which torch "
            f"{torch.__version__} cannot hold; use normalize_in='dataset' or torch >= 2.3"
        )
        raise ArgumentError(msg) from exc


class BatchNormalizer:
    """Apply a dataset's ``normalize`` mode to batches of crops in their stored dtype.

    Call it on each batch ``x`` (``(n, c, z, y, x)``, or one crop ``(c, z, y, x)``) that
    a dataset built with ``normalize_in="consumer"`` yields, on the CPU or after moving
    the batch to another device; the result is on the same device, in the dataset's
    ``x_dtype``, and equal to what the dataset yields with ``normalize_in="dataset"``.
    ``normalize="percentile"`` needs the batch's global rows (``return_row_index=True``,
    the default), to find each crop's source.

    Parameters
    ----------
    mode
        The dataset's normalisation mode (``"minmax01"``, ``"unit"``,
        ``"percentile"``, ``"none"``).
    x_dtype
        Dtype of the result.
    stored
        Dtype of the stored crops (for ``"unit"``: integers are divided by its maximum).
    scales
        ``"percentile"`` only: the sources and percentiles of the dataset's rows.

    Notes
    -----
    Build it once (``normalize = ds.normalizer``) and call it on every batch: it keeps
    the per-source tables of ``"percentile"`` on each device it has seen.
    """

    def __init__(
        self,
        mode: str,
        x_dtype: torch.dtype,
        stored: np.dtype,
        scales: SourceScales | None = None,
    ) -> None:
        self.mode = check_normalize(mode)
        self.x_dtype = x_dtype
        self.stored = np.dtype(stored)
        self._scales = scales
        self._factor: np.float32 | None = None
        if self.mode == "unit":
            if np.issubdtype(self.stored, np.integer):
                self._factor = np.float32(1 / float(np.iinfo(self.stored).max))
            elif self.stored == np.bool_:
                self._factor = np.float32(1.0)
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        if x_dtype == torch.float32 and self.mode != "none":
            # the compiled kernels of the CPU path load in the background from now on
            _kernels.warm_up(self.stored)

    def __repr__(self) -> str:
        return f"BatchNormalizer(mode={self.mode!r}, x_dtype={self.x_dtype}, stored={self.stored})"

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Return the rows' source codes and the sources' low and inverse span on ``device``."""
        if device not in self._on_device:
            s = self._scales
            assert s is not None
            codes = torch.from_numpy(np.asarray(s.codes, dtype=np.int64))
            tables = (codes, torch.from_numpy(s.low), torch.from_numpy(s.inv))
            self._on_device[device] = tuple(t.to(device) for t in tables)
        return self._on_device[device]

    def __call__(self, x: torch.Tensor, rows: torch.Tensor | Any = None) -> torch.Tensor:
        """Return ``x`` normalised (``rows``: the global row of each crop, for percentile)."""
        single = x.dim() == 4
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 5:
            msg = (
                "x must be a batch (n, c, z, y, x) or a crop (c, z, y, x), got shape "
                f"{tuple(x.shape)}"
            )
            raise ArgumentError(msg)
        out = self._on_cpu(x, rows) if x.device.type == "cpu" else self.apply_torch(x, rows)
        return out.squeeze(0) if single else out

    def apply_torch(self, x: torch.Tensor, rows: torch.Tensor | Any = None) -> torch.Tensor:
        """Normalise a batch ``(n, c, z, y, x)`` with ``torch`` operations on its device.

        What a call does on a device other than the CPU; on the CPU it gives the same
        result as a call, more slowly (several passes instead of one).
        """
        return (self._float32(x, rows) if self.mode != "none" else x).to(self.x_dtype)

    def _on_cpu(self, x: torch.Tensor, rows: Any) -> torch.Tensor:
        """Normalise on the CPU with the dataset's own routine (compiled kernel, one pass)."""
        scales = None
        if self.mode == "percentile":
            assert self._scales is not None
            scales = self._scales.of_rows(self._rows(rows, x.shape[0]).numpy())
        src = x.numpy() if x.is_contiguous() else x.contiguous().numpy()
        return normalize_rows(src, None, self.mode, self.x_dtype, scales=scales)

    @staticmethod
    def _rows(rows: Any, n: int) -> torch.Tensor:
        if rows is None:
            msg = (
                "normalize='percentile' in the consumer needs the global row of each crop: "
                "call the normalizer with the batch's rows (return_row_index=True)"
            )
            raise ArgumentError(msg)
        r = torch.as_tensor(rows).reshape(-1).to(torch.int64)
        if r.numel() != n:
            msg = f"rows must give one row per crop: {n} crops, {r.numel()} rows"
            raise ArgumentError(msg)
        return r

    def _float32(self, x: torch.Tensor, rows: Any) -> torch.Tensor:
        xf = x.to(torch.float32)
        n, c = xf.shape[:2]
        bshape = (n, c, 1, 1, 1)

        def f32(value: float) -> torch.Tensor:
            return torch.tensor(value, dtype=torch.float32, device=xf.device)

        if self.mode == "minmax01":
            flat = xf.reshape(n, c, -1)
            lo = flat.amin(dim=2).reshape(bshape)
            span = flat.amax(dim=2).reshape(bshape) - lo + f32(_EPS)
            return (xf - lo) * (f32(1.0) / span)
        if self.mode == "unit":
            return xf if self._factor is None else xf * f32(float(self._factor))
        # percentile
        r = self._rows(rows, n).to(xf.device)
        codes, low, inv = self._tables(xf.device)
        source = codes[r]
        out = (xf - low[source].reshape(bshape)) * inv[source].reshape(bshape)
        return out.clamp_(0.0, 1.0)
