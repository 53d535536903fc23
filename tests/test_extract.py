from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances import extract_instances
from zarr_instances.testing import make_image_and_mask


def reference(image, mask, diameter, remove_background, z_window=None):
    """Plain NumPy, one label at a time: ids ascending, crops (i, c, z, d, d)."""
    if image.ndim == 3:
        image, mask = image[:, None], mask[None]
    c, nz, ny, nx = image.shape
    ids = np.unique(mask)
    ids = ids[ids != 0]
    depth = nz if z_window is None else z_window
    crops = np.zeros((ids.size, c, depth, diameter, diameter), dtype=image.dtype)
    for k, lab in enumerate(ids):
        zz, yy, xx = np.nonzero(mask == lab)
        z0 = 0 if z_window is None else int(np.rint(zz.mean())) - z_window // 2
        y0 = int(np.rint(yy.mean())) - diameter // 2
        x0 = int(np.rint(xx.mean())) - diameter // 2
        for dz in range(depth):
            for dy in range(diameter):
                for dx in range(diameter):
                    z, y, x = z0 + dz, y0 + dy, x0 + dx
                    if 0 <= z < nz and 0 <= y < ny and 0 <= x < nx:
                        keep = (mask[z, y, x] == lab) if remove_background else True
                        crops[k, :, dz, dy, dx] = image[:, z, y, x] * keep
    return ids, crops


def random_case(seed, shape, n_labels, channels=2):
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 500), n_labels, replace=False)  # non-contiguous
    mask = np.zeros(shape, dtype=rng.choice([np.uint8, np.int16, np.int32, np.uint64]))
    for lab in ids:  # rectangles, often touching the edge, plus stray pixels
        y0, x0 = rng.integers(-3, shape[-2]), rng.integers(-3, shape[-1])
        h, w = rng.integers(1, 9, 2)
        mask[..., max(0, y0) : y0 + h, max(0, x0) : x0 + w] = lab
    stray = rng.random(shape) < 0.02
    mask[stray] = rng.choice(ids, stray.sum())
    image = rng.integers(1, 60000, (channels, *shape)).astype(np.uint16)
    return image, mask


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    z=st.sampled_from([None, 1, 3]),
    yx=st.tuples(st.integers(4, 30), st.integers(4, 30)),
    n_labels=st.integers(1, 8),
    diameter=st.integers(1, 12),
    remove_background=st.booleans(),
    chunk=st.integers(3, 16),
    tile=st.integers(1, 20),
    order=st.sampled_from(["id", "random"]),
)
def test_matches_reference(seed, z, yx, n_labels, diameter, remove_background, chunk, tile, order):
    shape = yx if z is None else (z, *yx)
    diameter = min(diameter, *yx)  # a larger window is an error
    image, mask = random_case(seed, shape, n_labels)
    if not mask.any():
        mask[..., 0, 0] = 7
    ref_ids, ref = reference(image, mask, diameter, remove_background)
    dimage = da.from_array(image, chunks=(1,) * (image.ndim - 2) + (chunk, chunk + 1))
    dmask = da.from_array(mask, chunks=(1,) * (mask.ndim - 2) + (chunk + 2, chunk))
    with dask.config.set(scheduler="synchronous"):
        ids, inst = extract_instances(
            dimage,
            dmask,
            diameter,
            remove_background=remove_background,
            tile_size=tile,
            order=order,
            seed=seed % 100,
            chunk_i=3,
        )
        got = inst.compute()
    assert ids.dtype == np.int64
    if order == "id":
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(got, ref)
    else:
        perm = np.random.default_rng(seed % 100).permutation(ref_ids.size)
        np.testing.assert_array_equal(ids, ref_ids[perm])
        np.testing.assert_array_equal(got, ref[perm])
    assert got.shape == (ref_ids.size, 2, z or 1, diameter, diameter)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    nz=st.integers(1, 6),
    z_window=st.integers(1, 8),
    diameter=st.integers(1, 10),
    remove_background=st.booleans(),
    chunk=st.tuples(st.integers(1, 4), st.integers(3, 12)),
    tile=st.integers(1, 20),
    order=st.sampled_from(["id", "random"]),
    numba=st.sampled_from(["0", "1"]),
)
def test_z_window_matches_reference(
    seed, nz, z_window, diameter, remove_background, chunk, tile, order, numba
):
    image, mask = random_case(seed, (nz, 16, 14), 6)
    rng = np.random.default_rng(seed)
    for lab in np.unique(mask[mask != 0]):  # objects on a few planes only
        keep = np.zeros(nz, dtype=bool)
        keep[rng.integers(0, nz) : rng.integers(0, nz) + rng.integers(1, 3)] = True
        mask[~keep[:, None, None] & (mask == lab)] = 0
    if not mask.any():
        mask[-1, 0, 0] = 7
    ref_ids, ref = reference(image, mask, diameter, remove_background, z_window)
    cz, cyx = chunk
    dimage = da.from_array(image, chunks=(1, cz, cyx, cyx + 1))
    dmask = da.from_array(mask, chunks=(cz, cyx + 2, cyx))
    kw = {"remove_background": remove_background, "tile_size": tile, "order": order, "seed": 3}
    with dask.config.set(scheduler="synchronous"), pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZARR_INSTANCES_NUMBA", numba)
        ids, inst = extract_instances(dimage, dmask, diameter, z_window=z_window, chunk_i=4, **kw)
        got = inst.compute()
    perm = np.arange(ref_ids.size)
    if order == "random":
        perm = np.random.default_rng(3).permutation(ref_ids.size)
    np.testing.assert_array_equal(ids, ref_ids[perm])
    assert got.shape == (ref_ids.size, 2, z_window, diameter, diameter)
    np.testing.assert_array_equal(got, ref[perm])


def test_z_window_store_with_mask(tmp_path):
    image, mask = random_case(4, (5, 20, 18), 6)
    ids, _ = extract_instances(
        image, mask, 8, z_window=3, out=tmp_path / "z.zarr", extract_mask=True
    )
    g = zarr.open_group(tmp_path / "z.zarr")
    assert g["image"].shape == (ids.size, 2, 3, 8, 8)
    assert g["mask"].shape == (ids.size, 1, 3, 8, 8)
    assert g.attrs["zarr_instances"]["parameters"]["z_window"] == 3
    _, ref = reference(image, mask, 8, True, 3)
    np.testing.assert_array_equal(g["image"][...], ref)
    own = (
        reference(mask[None].astype(np.int64), mask, 8, False, 3)[1]
        == ids[:, None, None, None, None]
    )
    np.testing.assert_array_equal(g["mask"][...], own.astype(np.uint8))


def test_half_pixel_ties_round_to_even():
    mask = np.zeros((20, 20), dtype=np.int32)
    mask[4:6, 4:6] = 1  # centre 4.5 → 4
    mask[10:12, 10:12] = 2  # centre 10.5 → 10
    mask[15:17, 5] = 3  # y 15.5 → 16, x 5
    image = np.arange(400, dtype=np.float32).reshape(1, 20, 20)
    for chunks in (20, 5, (11, 9)):
        _, inst = extract_instances(
            da.from_array(image, chunks=(1, chunks, chunks)),
            mask,
            1,
            remove_background=False,
        )
        got = inst.compute()[:, 0, 0, 0, 0]
        np.testing.assert_array_equal(got, image[0, [4, 10, 16], [4, 10, 5]])


@pytest.mark.parametrize("chunks", [(64, 64), (17, 33), (128, 128)])
def test_independent_of_chunking_and_tiles(chunks):
    image, mask = make_image_and_mask((128, 128), 40, 16, seed=3)
    base_ids, base = extract_instances(image, mask, 16)
    base = base.compute()
    for tile in (8, 50, 1000):
        ids, inst = extract_instances(
            da.from_array(image, chunks=(2, *chunks)),
            da.from_array(mask, chunks=chunks),
            16,
            tile_size=tile,
        )
        np.testing.assert_array_equal(ids, base_ids)
        np.testing.assert_array_equal(inst.compute(), base)


def test_inputs_zarr_array_path_and_ome_zarr(tmp_path):
    image, mask = make_image_and_mask((3, 48, 40), 12, 10, seed=1)
    _, ref = extract_instances(image, mask, 10)
    ref = ref.compute()
    zimg = zarr.create_array(tmp_path / "img.zarr", data=image, chunks=(1, 1, 16, 16))
    zmask = zarr.create_array(tmp_path / "mask.zarr", data=mask, chunks=(1, 20, 20))
    _, a = extract_instances(zimg, zmask, 10)
    _, b = extract_instances(str(tmp_path / "img.zarr"), tmp_path / "mask.zarr", 10)
    # OME-Zarr (v0.4 on Zarr format 2): (t, c, z, y, x) level 0 + a downscaled level.
    ome = zarr.open_group(tmp_path / "ome.zarr", mode="w", zarr_format=2)
    ome.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n} for n in "tczyx"],
            "datasets": [{"path": "0"}, {"path": "1"}],
        }
    ]
    ome.attrs["omero"] = {"channels": [{"label": "DAPI"}, {"label": "CD3"}]}
    ome.create_array("0", shape=(1, *image.shape), dtype=image.dtype, chunks=(1, 1, 1, 16, 16))
    ome["0"][0] = image
    ome.create_array("1", shape=(1, 2, 3, 24, 20), dtype=image.dtype)
    out = tmp_path / "out.zarr"
    _, c = extract_instances(tmp_path / "ome.zarr", zmask, 10, out=out)
    for got in (a, b, c):
        np.testing.assert_array_equal(got.compute(), ref)
    attrs = zarr.open_group(out, mode="r").attrs["zarr_instances"]
    assert attrs["channel_names"] == ["DAPI", "CD3"]


def test_distributed_local_cluster_identical(tmp_path):
    distributed = pytest.importorskip("distributed")
    image, mask = make_image_and_mask((96, 96), 30, 12, seed=5)
    zimg = zarr.create_array(tmp_path / "img.zarr", data=image, chunks=(2, 32, 32))
    zmask = zarr.create_array(tmp_path / "mask.zarr", data=mask, chunks=(40, 40))
    ids0, ref = extract_instances(zimg, zmask, 12, tile_size=32, out=tmp_path / "a.zarr")
    ref = ref.compute()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        ids1, inst = extract_instances(
            str(tmp_path / "img.zarr"),
            str(tmp_path / "mask.zarr"),
            12,
            tile_size=32,
            out=tmp_path / "b.zarr",
            extract_mask=True,
        )
        got = inst.compute()
        ids2, lazy = extract_instances(zimg, zmask, 12, tile_size=32)
        got2 = lazy.compute()
    np.testing.assert_array_equal(ids0, ids1)
    np.testing.assert_array_equal(ids0, ids2)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got2, ref)


_NO_DISTRIBUTED = """
import sys, dask, numpy as np, zarr
from zarr_instances import extract_instances
from zarr_instances._schedule import scheduler
from zarr_instances.testing import make_image_and_mask
image, mask = make_image_and_mask((64, 64), 12, 10, seed=3)
ids, a = extract_instances(image, mask, 10, tile_size=32, out=sys.argv[1] + "/a.zarr")
with dask.config.set(scheduler="sync"):
    assert scheduler() is dask.local.get_sync, scheduler()
    ids2, b = extract_instances(image, mask, 10, tile_size=32, out=sys.argv[1] + "/b.zarr")
imported = "distributed" in sys.modules
np.testing.assert_array_equal(ids, ids2)
np.testing.assert_array_equal(a.compute(scheduler="sync"), b.compute(scheduler="sync"))
print(imported, ids.size)
"""


def test_default_scheduler_does_not_import_distributed(tmp_path):
    # Dask imports distributed (~0.13 s) to look for a client unless it is handed the
    # scheduler; extract_instances hands it over when no client can exist.
    import subprocess
    import sys

    got = subprocess.run(
        [sys.executable, "-c", _NO_DISTRIBUTED, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    imported, n = got.stdout.split()
    assert imported == "False"
    assert int(n) > 0


def test_process_pool_scheduler_gives_the_same_store(tmp_path, monkeypatch):
    # Dask's process pool pickles every result it hands on: the hand-offs, and the
    # packed crops and strips (packing forced), reach each task as copies.
    import zarr_instances._extract_write as xw

    image, mask = make_image_and_mask((96, 96), 30, 12, seed=5)
    kwargs = {"tile_size": 32, "chunk_i": 3, "extract_mask": True}
    ids0, ref = extract_instances(image, mask, 12, out=tmp_path / "a.zarr", **kwargs)
    monkeypatch.setattr(xw, "_PACK_ABOVE", 0)
    with dask.config.set(scheduler="processes", num_workers=2):
        ids1, got = extract_instances(image, mask, 12, out=tmp_path / "b.zarr", **kwargs)
    np.testing.assert_array_equal(ids0, ids1)
    np.testing.assert_array_equal(got.compute(scheduler="sync"), ref.compute(scheduler="sync"))
    a, b = zarr.open_group(tmp_path / "a.zarr"), zarr.open_group(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a["mask"][...], b["mask"][...])
