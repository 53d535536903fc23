"""InstancesDataModule under a real Lightning Trainer: fit, DDP on 2 gloo ranks, resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="needs the [lightning] extra")

from _ddp import free_port, run_ranks  # noqa: E402
from zarr_instances.lightning import InstancesDataModule  # noqa: E402
from zarr_instances.testing import make_instance_store  # noqa: E402

pytestmark = [
    # Lightning 2.6 against torch 2.13 (not ours)
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
    # tiny test data: few batches, few workers
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    # our __len__ is exact per rank and worker count (tested in test_dataloader.py)
    pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__` defined"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]

N, CHUNK, BATCH = 240, 20, 16


class Recorder(pl.LightningModule):
    """A linear classifier that records the rows of every train / val / predict batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2 * 4 * 4, 4)
        self.train_rows: list[list[int]] = []
        self.val_rows: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y, _, rows = batch
        self.train_rows.append([self.current_epoch, *rows.tolist()])
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        rows = batch[-1]
        self.val_rows.extend(rows.tolist())

    def predict_step(self, batch, batch_idx):
        return batch[1], batch[2]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _store(tmp_path):
    path = tmp_path / "s.zarr"
    group = make_instance_store(path, N, (2, 1, 4, 4), chunk_i=CHUNK, n_classes=4)
    labels = np.asarray(group["labels"][...])
    labels[labels < 0] = 0  # every row labelled: counts are easy to check
    return str(path), labels


def _trainer(tmp_path, **kw):
    base = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "default_root_dir": str(tmp_path),
        "enable_checkpointing": False,
    }
    return pl.Trainer(**{**base, **kw})


def test_fit_two_epochs_split_by_chunk_and_predict(tmp_path):
    path, labels = _store(tmp_path)
    dm = InstancesDataModule(path, labels=labels, val_chunks=[1, 5], batch_size=BATCH)
    model = Recorder()
    _trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0).fit(model, datamodule=dm)
    val_rows = set(range(20, 40)) | set(range(100, 120))
    by_epoch = {e: [r for b in model.train_rows if b[0] == e for r in b[1:]] for e in (0, 1)}
    for rows in by_epoch.values():
        assert sorted(rows) == sorted(set(range(N)) - val_rows)
    assert by_epoch[0] != by_epoch[1]  # set_epoch once per epoch: a new order
    assert sorted(model.val_rows) == sorted(list(val_rows) * 2)
    out = _trainer(tmp_path).predict(model, datamodule=dm)
    rows = torch.cat([r for _, r in out]).tolist()
    ids = torch.cat([i for i, _ in out]).tolist()
    assert rows == list(range(N))
    assert ids == [1000 + r for r in rows]


def test_split_by_column(tmp_path):
    path, labels = _store(tmp_path)
    split = np.where(np.arange(N) % 3 == 0, "val", "train")
    split[7] = "test"
    dm = InstancesDataModule(path, labels=labels, split=split, batch_size=BATCH)
    model = Recorder()
    _trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(model, datamodule=dm)
    train = sorted(r for b in model.train_rows for r in b[1:])
    assert train == [r for r in range(N) if r % 3 and r != 7]
    assert sorted(model.val_rows) == list(range(0, N, 3))


@pytest.mark.parametrize("workers", [2])
def test_resume_from_mid_epoch_checkpoint(tmp_path, workers):
    path, labels = _store(tmp_path)
    kw = {
        "labels": labels,
        "val_fraction": 0.0,
        "batch_size": BATCH,
        "num_workers": workers,
        "loader_kwargs": {"multiprocessing_context": "fork", "persistent_workers": True},
    }
    full = Recorder()
    _trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(
        full, datamodule=InstancesDataModule(path, **kw)
    )
    steps_per_epoch = len(full.train_rows) // 2
    stop = 5
    assert stop < steps_per_epoch
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        every_n_train_steps=stop,
        save_top_k=-1,
        filename="{step}",
    )
    first = Recorder()
    _trainer(
        tmp_path,
        max_epochs=1,
        max_steps=stop,
        callbacks=[ckpt],
        limit_val_batches=0,
        enable_checkpointing=True,
    ).fit(first, datamodule=InstancesDataModule(path, **kw))
    assert first.train_rows == full.train_rows[:stop]
    path_ckpt = tmp_path / "ckpt" / f"step={stop}.ckpt"
    saved = torch.load(path_ckpt, weights_only=False)
    assert saved["InstancesDataModule"]["train_loader"]["steps"]  # mid-epoch state saved
    resumed = Recorder()
    dm = InstancesDataModule(path, **kw)
    _trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(
        resumed, datamodule=dm, ckpt_path=str(path_ckpt)
    )
    # the rest of epoch 0, then epoch 1, exactly as the uninterrupted run
    assert resumed.train_rows == full.train_rows[stop:]


def _ddp_fit(rank, world, path, labels, out_dir):
    os.environ.update(
        {
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
    )
    torch.set_num_threads(1)
    dm = InstancesDataModule(path, labels=labels, val_chunks=[0], batch_size=BATCH, num_workers=0)
    model = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.world_size == world and trainer.global_rank == rank
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"train": model.train_rows, "val": model.val_rows}, fh)


@pytest.mark.slow
def test_ddp_two_ranks_gloo(tmp_path):
    path, labels = _store(tmp_path)
    run_ranks(_ddp_fit, 2, path, labels, str(tmp_path), tmp_path=tmp_path, timeout=180)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    train_rows = set(range(CHUNK, N))
    for epoch in (0, 1):
        per_rank = [[r for b in rk["train"] if b[0] == epoch for r in b[1:]] for rk in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == len(train_rows) // 2
        assert set(per_rank[0]).isdisjoint(per_rank[1])
        assert set(per_rank[0]) | set(per_rank[1]) == train_rows
    assert sorted(ranks[0]["val"] + ranks[1]["val"]) == sorted(list(range(CHUNK)) * 2)
