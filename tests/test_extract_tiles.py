"""The tile plan of extract_instances: which tile cuts a window, which blocks a tile holds."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_instances import _tiles as tiles
from zarr_instances import extract_instances
from zarr_instances._geometry import centroids, combine_sums, label_sums, tile_edges
from zarr_instances._tiles import (
    Blocks,
    Handoff,
    Packed,
    Plan,
    assemble_crops,
    copy_regions,
    held_bytes,
    plan_passes,
    take,
    task_with_parts,
    tile_tasks,
    write_groups,
)
from zarr_instances.testing import make_image_and_mask


@settings(max_examples=60, deadline=None)
@given(
    yx=st.tuples(st.integers(5, 80), st.integers(5, 80)),
    chunks=st.tuples(st.integers(2, 30), st.integers(2, 30)),
    tile=st.integers(1, 40),
    diameter=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_windows_reach_only_into_earlier_tiles(yx, chunks, tile, diameter, seed):
    rng = np.random.default_rng(seed)
    n = 30
    cents = np.column_stack([np.zeros(n), rng.integers(0, yx[0], n), rng.integers(0, yx[1], n)])
    cents = cents.astype(np.int64)
    edges_y = tile_edges(_blocks(yx[0], chunks[0]), tile)
    edges_x = tile_edges(_blocks(yx[1], chunks[1]), tile)
    plan = Plan(np.arange(1, n + 1), cents, "id", 0, diameter, edges_y, edges_x, yx)
    n_tx = len(edges_x) - 1
    for k in range(n):
        ys, xs = plan.rect(int(plan.tile[k]))
        y0, x0 = plan.starts[k]
        last_y = min(y0 + diameter - 1, yx[0] - 1)
        last_x = min(x0 + diameter - 1, yx[1] - 1)
        # the window's last pixel (clipped to the image) lies in its tile ...
        assert ys.start <= last_y < ys.stop
        assert xs.start <= last_x < xs.stop
        # ... so the window leaves its tile only upwards and leftwards
        assert y0 + diameter <= ys.stop or ys.stop == yx[0]
        assert x0 + diameter <= xs.stop or xs.stop == yx[1]
    ty, tx = np.divmod(plan.tile, n_tx)
    assert (ty < len(edges_y) - 1).all()
    assert (tx < n_tx).all()


@pytest.mark.parametrize("handoff", [False, True])
@pytest.mark.parametrize(("image_chunks", "mask_chunks"), [(32, 32), (32, (24, 40))])
def test_each_decoded_block_feeds_one_tile_whole(image_chunks, mask_chunks, handoff):
    # Memory: a decoded block is held until every task reading it is done. Each block
    # must go whole to at most one tile; other tiles get small copies (pieces) of it:
    # a task per copy, or (handoff) one task per block taken by each tile.
    image, mask = make_image_and_mask((160, 192), 120, 16, seed=7)
    im = da.from_array(image[:, None], chunks=(2, 1, image_chunks, image_chunks))
    mc = mask_chunks if isinstance(mask_chunks, tuple) else (mask_chunks, mask_chunks)
    mk = da.from_array(mask[None], chunks=(1, *mc))
    sums = combine_sums([label_sums(mask)])
    ids, cents = sums.labels, centroids(sums)
    edges_y = tile_edges(im.chunks[2], 32)
    edges_x = tile_edges(im.chunks[3], 32)
    plan = Plan(ids, cents, "id", 0, 16, edges_y, edges_x, (160, 192))
    iblocks, mblocks = Blocks(im), Blocks(mk)
    graph: dict = {}
    tile_tasks(plan, iblocks, mblocks, [0, ids.size], True, False, "t", graph, handoff=handoff)
    cuts = [task for key, task in graph.items() if key.startswith("zi-cut")]
    assert len(cuts) > 20  # many tiles, most windows reach into a neighbour
    whole: dict[str, int] = {}
    pieces = 0
    taken: set[tuple[str, int]] = set()
    for task in cuts:
        _, args, getters = task[1].value  # task_with_parts: starts and getters hidden
        assert len(args[0]) == len(task) - 2  # a start per piece; the keys are visible
        keys = task[2:]
        refs = [k if g is None else (g[0], k, g[1]) for k, g in zip(keys, getters, strict=True)]
        for key in refs:  # image and mask pieces: a key, or (take, copies task, index)
            if isinstance(key, tuple) and key[0] is take:  # (take, copies task, index)
                assert handoff
                assert graph[key[1]][0] is copy_regions
                assert key[1:] not in taken  # each copy goes to one tile
                taken.add(key[1:])
                pieces += 1
            elif key in graph:
                assert not handoff
                assert graph[key][0].__name__ == "_piece"
                pieces += 1
            else:
                whole[str(key)] = whole.get(str(key), 0) + 1
    assert pieces > 0
    if handoff:  # every copy made is taken
        made = {(k, i) for k, t in graph.items() if t[0] is copy_regions for i in range(len(t[2]))}
        assert taken == made
        assert len(made) > sum(t[0] is copy_regions for t in graph.values())  # fewer tasks
    image_blocks = {k for k in whole if k.startswith(f"('{im.name}'")}
    assert len(image_blocks) > im.numblocks[2] * im.numblocks[3] // 2  # tiles with cells
    assert max(v for k, v in whole.items() if k in image_blocks) == 1
    if mask_chunks == image_chunks:  # aligned mask blocks go whole to one tile too
        assert max(whole.values()) == 1


@pytest.mark.parametrize("handoff", [False, True])
@pytest.mark.parametrize("pack", [False, True])
def test_graph_variants_cut_the_same_crops(handoff, pack, monkeypatch):
    # The graph for a distributed client (a task per part and per copy) and the one for
    # local schedulers (hand-offs), with crops and strips held packed or not, all give
    # the crops of the plain lazy extraction; with pack, strips for the row below wait
    # compressed, and only those.
    import dask

    image, mask = make_image_and_mask((160, 192), 120, 16, seed=7)
    im = da.from_array(image[:, None], chunks=(2, 1, 32, 32))
    mk = da.from_array(mask[None], chunks=(1, 32, 32))
    sums = combine_sums([label_sums(mask)])
    ids, cents = sums.labels, centroids(sums)
    edges = [tile_edges(im.chunks[a], 32) for a in (2, 3)]
    plan = Plan(ids, cents, "id", 0, 16, *edges, (160, 192))
    bounds = [*range(0, ids.size, 8), ids.size]  # groups of 8 rows
    packed: list[bool] = []
    real = tiles._piece

    def piece(block, yx, pack=False):
        packed.append(pack)
        return real(block, yx, pack)

    monkeypatch.setattr(tiles, "_piece", piece)  # before the graph holds it
    graph: dict = {}
    parts = tile_tasks(
        plan, Blocks(im), Blocks(mk), bounds, True, False, "t", graph, pack=pack, handoff=handoff
    )
    shape = (2, 1, 16, 16)
    keys = [f"out-{g}" for g in range(len(bounds) - 1)]
    for g, key in enumerate(keys):
        args = (bounds[g], bounds[g + 1], shape, image.dtype)
        graph[key] = task_with_parts(assemble_crops, args, parts[g])
    graph.update(dict(im.__dask_graph__()))
    graph.update(dict(mk.__dask_graph__()))
    got = np.concatenate(dask.get(graph, keys))
    _, ref = extract_instances(image, mask, 16, tile_size=32)
    np.testing.assert_array_equal(got, ref.compute())
    assert any(packed) == pack
    assert not all(packed)  # strips for the tile to the right are used at once


def _blocks(n: int, chunk: int) -> list[int]:
    """Block sizes of an axis of ``n`` pixels in chunks of ``chunk`` (the last may be short)."""
    return [min(chunk, n - a) for a in range(0, n, chunk)]


@pytest.mark.parametrize("order", ["id", "random"])
def test_passes_bounded_by_crops_held(order):
    # ids in raster order close their write groups tile row by tile row: one pass
    # holds about one tile row of crops whatever the output size; a random order
    # keeps every group open to the end, so a pass holds all its crops.
    _, mask = make_image_and_mask((256, 256), 300, 12, seed=3)
    sums = combine_sums([label_sums(mask)])
    ids, cents = sums.labels, centroids(sums)
    edges = tile_edges([32] * 8, 32)
    plan = Plan(ids, cents, order, 0, 12, edges, edges, (256, 256))
    unit, row_bytes = 4, 100
    n_units = -(-ids.size // unit)
    groups = write_groups(np.arange(n_units), 2)
    limit = 40 * unit * row_bytes  # 40 units: about a third of the output
    passes = plan_passes(plan, groups, unit, ids.size, row_bytes, limit)
    assert [g for p, _ in passes for g in p] == groups  # every group once, in order
    for p, peak in passes:
        held = held_bytes(plan, p, unit, ids.size, row_bytes)
        assert peak == held.max() <= limit
    if order == "id":
        assert len(passes) == 1
        assert passes[0][1] < ids.size * row_bytes / 3
    else:  # most groups stay open until late tiles: several passes
        assert len(passes) >= 2
        for p, peak in passes:
            rows = min(ids.size, p[-1].stop * unit) - p[0].start * unit
            assert peak > rows * row_bytes / 2


def test_write_groups_split_runs():
    todo = np.array([0, 1, 2, 3, 4, 7, 8, 10])
    assert write_groups(todo, 2) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
        range(7, 9),
        range(10, 11),
    ]
    assert write_groups(np.zeros(0, dtype=np.int64), 3) == []


def test_handoff_items_are_taken_once_and_freed():
    import gc
    import weakref

    items = [np.arange(4), np.arange(5)]
    refs = [weakref.ref(a) for a in items]
    h = Handoff(items)
    del items
    assert len(h) == 2
    np.testing.assert_array_equal(h.peek(1), np.arange(5))  # peek leaves it
    got = take(h, 0)
    np.testing.assert_array_equal(got, np.arange(4))
    del got
    gc.collect()
    assert refs[0]() is None  # freed with its reader, while the hand-off lives on
    assert refs[1]() is not None
    with pytest.raises(RuntimeError, match="item 0 of this hand-off was taken already"):
        h.take(0)


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
