"""``InstancesDataModule``: train / val / predict loaders for Lightning (extra ``[lightning]``).

The module builds three :class:`~zarr_instances.ZarrIterableInstances` over one store:

* **train** and **val** split by chunk (``val_chunks`` or ``val_fraction``, whole chunks,
  so each split keeps chunk-wise reads) or by a per-row column (``split``: rows marked
  ``"val"`` go to validation, ``"train"`` to training, anything else to neither);
* **predict**: every row in ascending order, inference mode, with instance ids and row
  indexes so that outputs join back to the store.

Epochs: the loaders are :class:`~zarr_instances.ZarrDataLoader`, which call
``set_epoch`` themselves at every ``iter()``. Lightning only calls ``set_epoch`` on a
loader's *sampler* (an iterable dataset has none), so nothing advances twice.

DDP: every rank yields the same number of batches by construction; pass
``use_distributed_sampler=False`` to the ``Trainer`` (a ``DistributedSampler`` does not
apply to iterable datasets).

Resume: Lightning saves the state of the train loader in every checkpoint (the fit loop
stores any loader with ``state_dict``; this module's ``state_dict`` stores it too) and
restores it on ``Trainer.fit(ckpt_path=...)``, so a run resumed from a mid-epoch
checkpoint yields exactly the rest of that epoch. The state counts the batches the
loader has yielded; Lightning fetches ahead of training only from loaders without a
length, and these loaders have one, so yielded = trained at every checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dataset import ZarrIterableInstances
from .errors import ArgumentError
from .loader import ZarrDataLoader

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised without the extra
    msg = "zarr_instances.lightning needs Lightning: pip install lightning (the [lightning] extra)"
    raise ImportError(msg) from exc

__all__ = ["InstancesDataModule"]


def _chunk_split(
    n_chunks: int, val_chunks: Any, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if val_chunks is not None:
        val = np.unique(np.asarray(val_chunks, dtype=np.int64))
        if val.size and (val.min() < 0 or val.max() >= n_chunks):
            msg = f"val_chunks must lie in [0, {n_chunks}), got {val_chunks!r}"
            raise ArgumentError(msg)
    else:
        if not 0.0 <= val_fraction < 1.0:
            msg = f"val_fraction must be in [0, 1), got {val_fraction!r}"
            raise ArgumentError(msg)
        k = round(n_chunks * val_fraction)
        if val_fraction > 0:
            k = max(k, 1)
        val = np.sort(np.random.default_rng(seed).permutation(n_chunks)[:k])
    train = np.setdiff1d(np.arange(n_chunks), val)
    return train, val


class InstancesDataModule(pl.LightningDataModule):
    """Train, validation and predict loaders over one instance store.

    Parameters
    ----------
    zarr_path
        Instance store or crop array (path, URL or opened zarr object), as for
        :class:`~zarr_instances.ZarrIterableInstances`.
    instance_ids
        Per-row ids; ``None`` for an instance store group.
    labels
        Per-row integer labels (``< 0`` = unlabeled, dropped from train and val). ``None``:
        train and val run in inference mode (self-supervised training).
    split
        Per-row split column (values ``"train"`` / ``"val"``, anything else in neither).
        Needs ``labels``: rows outside a split are masked as unlabeled in it.
    val_chunks
        Logical chunk indexes of the validation split (when ``split`` is ``None``).
    val_fraction
        Fraction of chunks drawn (with ``seed``) for validation when ``val_chunks`` and
        ``split`` are ``None``; ``0`` disables validation.
    batch_size
        Samples per batch (the datasets yield ready batches).
    num_workers
        DataLoader workers per rank.
    buffer_chunks
        Chunks read and shuffled together in training.
    seed
        Seed of the chunk order and of the within-buffer shuffle in training.
    chunk_i
        Rows per logical chunk (default: the stored chunk size).
    normalize
        Normalisation of the crops (see ``ZarrIterableInstances``).
    storage_options
        For URLs.
    loader_kwargs
        Extra keyword arguments of every ``ZarrDataLoader`` (e.g.
        ``persistent_workers``, ``multiprocessing_context``, ``pin_memory``).
    dataset_kwargs
        Extra keyword arguments of every dataset (e.g. ``x_dtype``, ``drop_last``).
    """

    def __init__(
        self,
        zarr_path: Any,
        instance_ids: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        split: np.ndarray | None = None,
        val_chunks: Any = None,
        val_fraction: float = 0.1,
        batch_size: int = 256,
        num_workers: int = 0,
        buffer_chunks: int = 4,
        seed: int = 0,
        chunk_i: int | None = None,
        normalize: str | tuple[str, float, float] | None = "minmax01",
        storage_options: dict[str, Any] | None = None,
        loader_kwargs: dict[str, Any] | None = None,
        dataset_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if split is not None and labels is None:
            msg = "split needs labels: rows outside a split are masked as unlabeled (-1)"
            raise ArgumentError(msg)
        self.zarr_path = zarr_path
        self.instance_ids = instance_ids
        self.labels = labels
        self.split = None if split is None else np.asarray(split)
        self.val_chunks = val_chunks
        self.val_fraction = float(val_fraction)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.buffer_chunks = buffer_chunks
        self.seed = seed
        self.chunk_i = chunk_i
        self.normalize = normalize
        self.storage_options = storage_options
        self.loader_kwargs = dict(loader_kwargs or {})
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.train_set: ZarrIterableInstances | None = None
        self.val_set: ZarrIterableInstances | None = None
        self.predict_set: ZarrIterableInstances | None = None
        self._train_loader: ZarrDataLoader | None = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ datasets
    def _dataset(self, labels: Any, **kwargs: Any) -> ZarrIterableInstances:
        kw = {
            "chunk_i": self.chunk_i,
            "normalize": self.normalize,
            "batch_size": self.batch_size,
            "storage_options": self.storage_options,
            **self.dataset_kwargs,
            **kwargs,
        }
        return ZarrIterableInstances(self.zarr_path, self.instance_ids, labels, **kw)

    def _split_labels(self, name: str) -> np.ndarray:
        assert self.split is not None and self.labels is not None
        labels = np.asarray(self.labels, dtype=np.int64).copy()
        if self.split.shape != labels.shape:
            msg = f"split must have one value per row ({labels.shape[0]}), got {self.split.shape}"
            raise ArgumentError(msg)
        labels[self.split.astype(str) != name] = -1
        return labels

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (``"fit"``, ``"validate"``, ``"predict"``)."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            train_kw: dict[str, Any] = {
                "shuffle_chunks": True,
                "chunk_seed": self.seed,
                "shuffle_within_chunk": True,
                "buffer_seed": self.seed,
                "buffer_chunks": self.buffer_chunks,
            }
            val_kw: dict[str, Any] = {"drop_unlabeled": True}
            train_labels: np.ndarray | None
            val_labels: np.ndarray | None
            if self.split is not None:
                train_labels, val_labels = (self._split_labels("train"), self._split_labels("val"))
            else:
                probe = self._dataset(self.labels, drop_unlabeled=False)
                train_c, val_c = _chunk_split(
                    probe.selection.n_chunks, self.val_chunks, self.val_fraction, self.seed
                )
                train_kw["allowed_chunk_indexes"] = train_c
                val_kw["allowed_chunk_indexes"] = val_c
                train_labels = val_labels = self.labels
            self.train_set = self._dataset(train_labels, **train_kw)
            has_val = self.split is not None and bool(np.any(self._split_labels("val") >= 0))
            has_val = has_val or (self.split is None and len(val_kw["allowed_chunk_indexes"]) > 0)
            self.val_set = self._dataset(val_labels, **val_kw) if has_val else None
        if stage in (None, "predict") and self.predict_set is None:
            self.predict_set = self._dataset(None)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: ZarrIterableInstances, **kwargs: Any) -> ZarrDataLoader:
        kw = {"batch_size": None, "num_workers": self.num_workers, **self.loader_kwargs}
        if kw["num_workers"] == 0:
            kw.pop("persistent_workers", None)
            kw.pop("multiprocessing_context", None)
        return ZarrDataLoader(dataset, **kw, **kwargs)

    def train_dataloader(self) -> ZarrDataLoader:
        """Return the train loader (built once, so its epoch counter and state persist)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        if self._train_loader is None:
            self._train_loader = self._loader(self.train_set)
        if self._pending_state is not None:
            self._train_loader.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._train_loader

    def val_dataloader(self) -> Any:
        """Return the validation loader (ascending order), or ``[]`` without a val split."""
        if self.train_set is None:
            self.setup("validate")
        if self.val_set is None:
            return []
        return self._loader(self.val_set)

    def predict_dataloader(self) -> ZarrDataLoader:
        """Return the predict loader: every row, ascending, with ids and row indexes.

        Under DDP with ``drop_last=False`` ranks are padded to equal counts by repeating
        rows: drop duplicate row indexes when joining predictions.
        """
        if self.predict_set is None:
            self.setup("predict")
        assert self.predict_set is not None
        return self._loader(self.predict_set)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Return the train loader's position (saved by Lightning in checkpoints)."""
        if self._train_loader is None:
            return {} if self._pending_state is None else {"train_loader": self._pending_state}
        return {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the train loader from :meth:`state_dict` at its next ``iter()``."""
        state = state_dict.get("train_loader")
        if not state:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)
        else:
            self._pending_state = state
