"""Equal batches on every DDP rank, on real gloo ranks, with a DDP model that must not hang."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from _ddp import run_ranks
from zarr_instances import ZarrDataLoader, ZarrIterableInstances
from zarr_instances.testing import make_instance_array

# (rows, chunk) — the reference gave 18/24/24/8 and 20/19/19/0 batches of 64 on 4 ranks
CASES = {"4637x500": (4637, 500), "4500x500": (4500, 500), "130x50": (130, 50)}


def _rank_counts(rank, world, paths, out_dir):
    import torch.distributed as dist

    counts = {}
    for name, path in paths.items():
        n = int(name.split("x")[0])
        ids = np.arange(n)
        for workers in (0, 2):
            for batched in (False, True):
                ds = ZarrIterableInstances(
                    path,
                    ids,
                    shuffle_chunks=True,
                    shuffle_within_chunk=True,
                    buffer_seed=1,
                    normalize="none",
                    return_instance_id=False,
                    batch_size=64 if batched else None,
                )
                # ranks are spawned, so their DataLoaders would spawn too; fork is what a
                # torchrun rank gets by default on Linux
                loader = DataLoader(
                    ds,
                    batch_size=None if batched else 64,
                    num_workers=workers,
                    multiprocessing_context="fork" if workers else None,
                )
                batches, rows = 0, []
                for _x, row in loader:
                    batches += 1
                    rows.extend(row.tolist())
                counts[f"{name}/w{workers}/b{int(batched)}"] = [batches, len(rows), len(ds)]
                assert batches == ds.num_batches(workers, 64)
                np.save(f"{out_dir}/{name}-w{workers}-b{int(batched)}-r{rank}.npy", rows)
    # a DDP model trains one epoch; a rank with fewer batches would hang the all-reduce
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2 * 16 * 16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ds = ZarrIterableInstances(
        paths["4637x500"],
        np.arange(4637),
        shuffle_chunks=True,
        return_instance_id=False,
        return_row_index=False,
    )
    loader = ZarrDataLoader(ds, batch_size=64, num_workers=2, multiprocessing_context="fork")
    steps = 0
    for x in loader:
        loss = model(x.flatten(1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    counts["ddp_steps"] = steps
    dist.barrier()
    with open(f"{out_dir}/counts{rank}.json", "w") as fh:
        json.dump(counts, fh)


@pytest.mark.slow
def test_equal_batches_on_every_rank(tmp_path):
    paths = {}
    for name, (n, chunk) in CASES.items():
        paths[name] = str(tmp_path / f"{name}.zarr")
        make_instance_array(paths[name], n=n, chunk_i=chunk, compressors=None)
    world = 4
    run_ranks(_rank_counts, world, paths, str(tmp_path), tmp_path=tmp_path, timeout=180)
    per_rank = [json.loads((tmp_path / f"counts{r}.json").read_text()) for r in range(world)]
    for key in per_rank[0]:
        values = [c[key] for c in per_rank]
        assert all(v == values[0] for v in values), (key, values)
    for name, (n, _) in CASES.items():
        share = -(-n // world)
        for w in (0, 2):
            for b in (0, 1):
                key = f"{name}/w{w}/b{b}"
                assert per_rank[0][key][1:] == [share, share], key
                rows = np.concatenate(
                    [np.load(tmp_path / f"{name}-w{w}-b{b}-r{r}.npy") for r in range(world)]
                )
                assert set(rows.tolist()) == set(range(n))
                assert rows.size - n == share * world - n  # repeats are the padding only
    assert per_rank[0]["ddp_steps"] > 0
    # batches of 64 on 4 ranks, as in the reference's failing cases
    assert per_rank[0]["4637x500/w0/b0"][0] == 19
    assert per_rank[0]["4500x500/w2/b0"][0] == 18


# --------------------------------------------------------------------------- table labels


def _table_loader(path, where):
    ds = ZarrIterableInstances(
        path,
        None,
        labels="cell_type",
        where=where,
        shuffle_chunks=True,
        shuffle_within_chunk=True,
        buffer_seed=3,
        normalize="none",
        batch_size=4,
    )
    return ZarrDataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")


def _batches(loader, limit=None):
    out = []
    for batch in loader:
        out.append(batch[3].tolist())
        if limit is not None and len(out) == limit:
            break
    return out


def _table_rank(rank, world, path, where, out_dir, phase):
    if phase == "first":
        loader = _table_loader(path, where)
        full = _batches(loader)
        assert len(full) == len(loader)
        cut = _table_loader(path, where)
        it = iter(cut)
        head = [next(it)[3].tolist() for _ in range(3)]
        state = cut.state_dict()
        del it
        resumed = _table_loader(path, where)
        resumed.load_state_dict(state)
        assert head + _batches(resumed) == full  # exact resume, batch for batch
        if rank == 0:
            torch.save(state, f"{out_dir}/state.pt")
        result = {"full": full, "head": head, "steps": state["steps"]}
    else:
        state = torch.load(f"{out_dir}/state.pt", weights_only=False)
        loader = _table_loader(path, where)
        loader.load_state_dict(state)
        result = {"rest": _batches(loader), "classes": loader.dataset.classes}
    with open(f"{out_dir}/{phase}{rank}.json", "w") as fh:
        json.dump(result, fh)


@pytest.mark.slow
@pytest.mark.parametrize("stores", [1, 2])
def test_table_labels_where_and_group_split_on_ranks(tmp_path, stores):
    """labels= column, where= a group_split part: 4 gloo ranks x 2 workers, resumed at 2.

    With ``stores=2`` the dataset is a list of two study stores (chunked differently).
    """
    from _table_study import make_study
    from zarr_instances import group_split, read_table

    if stores == 1:
        path = str(tmp_path / "study.zarr")
        make_study(path, n_sources=8, cells=20, chunk_i=8, seed=1)
    else:
        path = [str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]
        make_study(path[0], n_sources=4, cells=20, chunk_i=8, seed=1)
        make_study(path[1], n_sources=5, cells=20, chunk_i=6, seed=2)
    table = read_table(path)
    train, _ = group_split(table, by="source", fractions=(0.75, 0.25), seed=0)
    selected = np.flatnonzero(train & table["cell_type"].notna().to_numpy())
    run_ranks(_table_rank, 4, path, train, str(tmp_path), "first", tmp_path=tmp_path, timeout=180)
    first = [json.loads((tmp_path / f"first{r}.json").read_text()) for r in range(4)]
    assert len({len(f["full"]) for f in first}) == 1  # equal batches per rank
    assert all(f["steps"] == first[0]["steps"] for f in first)  # lockstep
    rows = [r for f in first for b in f["full"] for r in b]
    share = -(-selected.size // 4)
    assert len(rows) == 4 * share
    assert set(rows) == set(selected.tolist())  # every selected row, no other
    assert len(rows) - len(set(rows)) == 4 * share - selected.size  # padding only
    # elastic: the saved state resumes on 2 ranks, every unseen selected row once
    run_ranks(_table_rank, 2, path, train, str(tmp_path), "elastic", tmp_path=tmp_path)
    rest = [json.loads((tmp_path / f"elastic{r}.json").read_text()) for r in range(2)]
    assert rest[0]["classes"] == list(table["cell_type"].cat.categories)
    assert sorted(rest[0]["classes"]) == sorted(table["cell_type"].dropna().unique())
    assert len(rest[0]["rest"]) == len(rest[1]["rest"])
    seen = {r for f in first for b in f["head"] for r in b}
    new = [r for f in rest for b in f["rest"] for r in b]
    unseen = set(selected.tolist()) - seen
    assert set(new) == unseen
    assert len(new) - len(unseen) < 2  # padding only
