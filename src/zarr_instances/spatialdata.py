"""SpatialData input: :func:`extract_from_spatialdata` (extra ``[spatialdata]``).

:func:`extract_from_spatialdata` is the entry for a ``SpatialData`` object and the
names of its elements. :func:`~zarr_instances.extract_instances` itself accepts
SpatialData *elements* (``sdata.images[name]``, ``sdata.labels[name]``: xarray objects,
level 0 of a multiscale) and the paths of elements inside a written SpatialData store
(``"sdata.zarr/images/name"``, OME-Zarr). The ``spatialdata`` package is imported on
the first call only, so this module imports without it.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .errors import ArgumentError, ArgumentTypeError

__all__ = ["extract_from_spatialdata"]


def _require_spatialdata() -> Any:
    try:
        import spatialdata
    except ImportError as exc:
        msg = (
            "SpatialData input needs the spatialdata package: "
            "pip install spatialdata (the [spatialdata] extra)"
        )
        raise ImportError(msg) from exc
    return spatialdata


def extract_from_spatialdata(
    sdata: Any, image_name: str, labels_name: str, diameter: int, **kwargs: Any
) -> tuple[np.ndarray, da.Array]:
    """Run :func:`~zarr_instances.extract_instances` on two elements of a SpatialData object.

    Parameters
    ----------
    sdata
        A ``spatialdata.SpatialData`` object.
    image_name
        Name of the image element (``sdata.images[image_name]``), ``(c, y, x)`` or
        ``(c, z, y, x)``; level 0 of a multiscale image is used.
    labels_name
        Name of the labels element (``sdata.labels[labels_name]``) covering the same pixels.
    diameter
        Crop size in y and x.
    **kwargs
        Passed to :func:`~zarr_instances.extract_instances` (``out``, ``chunk_i``, ...).

    Returns
    -------
    tuple
        ``(instance_ids, instances)`` as :func:`~zarr_instances.extract_instances`.

    Raises
    ------
    ImportError
        If spatialdata is not installed.
    ArgumentTypeError
        If ``sdata`` is not a SpatialData object.
    ArgumentError
        If an element name is not in ``sdata`` (the message lists the names there).
    """
    spatialdata = _require_spatialdata()
    if not isinstance(sdata, spatialdata.SpatialData):
        msg = f"sdata must be a spatialdata.SpatialData, got {type(sdata).__name__}: {sdata!r:.100}"
        raise ArgumentTypeError(msg)
    if image_name not in sdata.images:
        msg = f"image_name={image_name!r} is not an image of sdata; images: {list(sdata.images)!r}"
        raise ArgumentError(msg)
    if labels_name not in sdata.labels:
        msg = (
            f"labels_name={labels_name!r} is not a labels element of sdata; labels: "
            f"{list(sdata.labels)!r}"
        )
        raise ArgumentError(msg)
    from .extract import extract_instances

    return extract_instances(
        sdata.images[image_name], sdata.labels[labels_name], diameter, **kwargs
    )
