"""SpatialData input: elements, the object with element names, and a written store."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from zarr_instances import extract_instances
from zarr_instances.testing import make_image_and_mask

HAS_SPATIALDATA = importlib.util.find_spec("spatialdata") is not None


class SpatialData:
    """Stands in for ``spatialdata.SpatialData`` (matched by class name)."""


@pytest.mark.parametrize("where", ["image", "mask"])
def test_spatialdata_object_points_to_its_entry(where):
    image, mask = make_image_and_mask((32, 32), 3, 8, seed=1)
    args = {"image": image, "mask": mask, where: SpatialData()}
    pattern = rf"{where} is a SpatialData object.*zarr_instances\.extract_from_spatialdata\("
    with pytest.raises(TypeError, match=pattern):
        extract_instances(args["image"], args["mask"], 8)
    with pytest.raises(TypeError, match=pattern):  # checked before the other arguments
        extract_instances(args["image"], args["mask"], "cells")


def test_clear_message_without_spatialdata(monkeypatch):
    import builtins

    from zarr_instances import spatialdata as zsd

    real_import = builtins.__import__

    def no_spatialdata(name, *args, **kwargs):
        if name == "spatialdata":
            raise ImportError("No module named 'spatialdata'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spatialdata)
    with pytest.raises(ImportError, match=r"pip install spatialdata \(the \[spatialdata\] extra\)"):
        zsd.extract_from_spatialdata(object(), "img", "cells", 8)


@pytest.mark.skipif(not HAS_SPATIALDATA, reason="needs the [spatialdata] extra")
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)
def test_spatialdata_object_elements_and_store(tmp_path):
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, Labels2DModel

    from zarr_instances.spatialdata import extract_from_spatialdata

    image, mask = make_image_and_mask((64, 64), 12, 10, seed=2)
    sdata = SpatialData(
        images={
            "img": Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=["dapi", "cd3"]),
            "pyramid": Image2DModel.parse(image, dims=("c", "y", "x"), scale_factors=[2]),
        },
        labels={"cells": Labels2DModel.parse(mask, dims=("y", "x"))},
    )
    ids_ref, crops_ref = extract_instances(image, mask, 10)
    expected = crops_ref.compute()
    # the object with element names; a multiscale image uses level 0
    for name in ("img", "pyramid"):
        ids, crops = extract_from_spatialdata(sdata, name, "cells", 10)
        np.testing.assert_array_equal(ids, ids_ref)
        np.testing.assert_array_equal(crops.compute(), expected)
    # the elements, written to a store with channel names recorded
    ids, _ = extract_instances(
        sdata.images["img"],
        sdata.labels["cells"],
        10,
        out=str(tmp_path / "crops.zarr"),
        progress=False,
    )
    import zarr

    group = zarr.open_group(str(tmp_path / "crops.zarr"), mode="r")
    assert group.attrs["zarr_instances"]["channel_names"] == ["dapi", "cd3"]
    np.testing.assert_array_equal(group["image"][...], expected)
    # element paths inside a written SpatialData store (OME-Zarr)
    sdata.write(tmp_path / "sdata.zarr")
    ids, crops = extract_instances(
        str(tmp_path / "sdata.zarr" / "images" / "img"),
        str(tmp_path / "sdata.zarr" / "labels" / "cells"),
        10,
    )
    np.testing.assert_array_equal(crops.compute(), expected)
    # errors name the parameter and list what exists
    with pytest.raises(ValueError, match=r"labels_name='nuclei'.*\['cells'\]"):
        extract_from_spatialdata(sdata, "img", "nuclei", 10)
    with pytest.raises(TypeError, match=r"image is a SpatialData object.*extract_from_spatialdata"):
        extract_instances(sdata, mask, 10)
    # the public entry, exported from the package
    from zarr_instances import extract_from_spatialdata as exported

    assert exported is extract_from_spatialdata
