"""The tile tasks: which blocks a tile holds, and the graph variants that cut the crops."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from zarr_instances import _tile_tasks as tiles
from zarr_instances import extract_instances
from zarr_instances._geometry import centroids, combine_sums, label_sums, tile_edges
from zarr_instances._graph import take, task_with_parts
from zarr_instances._study_plan import StudyPlan
from zarr_instances._tile_plan import TilePlan
from zarr_instances._tile_tasks import Blocks, assemble_crops, copy_regions, tile_tasks
from zarr_instances.testing import make_image_and_mask


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
    plan = TilePlan(ids, cents, "id", 0, 16, edges_y, edges_x, (160, 192))
    iblocks, mblocks = Blocks(im), Blocks(mk)
    graph: dict = {}
    tile_tasks(
        StudyPlan.single(plan),
        [iblocks],
        [mblocks],
        [0, ids.size],
        True,
        False,
        "t",
        graph,
        handoff=handoff,
    )
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
    plan = TilePlan(ids, cents, "id", 0, 16, *edges, (160, 192))
    bounds = [*range(0, ids.size, 8), ids.size]  # groups of 8 rows
    packed: list[bool] = []
    real = tiles._piece

    def piece(block, yx, pack=False):
        packed.append(pack)
        return real(block, yx, pack)

    monkeypatch.setattr(tiles, "_piece", piece)  # before the graph holds it
    graph: dict = {}
    parts = tile_tasks(
        StudyPlan.single(plan),
        [Blocks(im)],
        [Blocks(mk)],
        bounds,
        True,
        False,
        "t",
        graph,
        pack=pack,
        handoff=handoff,
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
