"""Run one DataLoader configuration and print its measurements as one JSON line.

Runs in whichever Python executes it: ``/work/venv`` for ``zarr_instances``, the
baseline venv for harpy. Usage::

    python _loader_runner.py '{"impl": "ours", "path": "...", "workers": 2, ...}'

Config keys: ``impl`` (``ours`` | ``harpy``), ``path``, ``workers``, ``repeats``,
``loader_batch`` (DataLoader batch size for per-sample mode), ``batch_size``
(ours, batched mode: dataset batch size, DataLoader(batch_size=None)),
``buffer_chunks``, ``read_ahead``, ``zarrs`` (use the zarrs codec pipeline),
``harpy_module`` (path of harpy's dataset module file, imported directly so that
harpy's heavy package ``__init__`` is not imported).

Every epoch: ``set_epoch(e)``, iterate the whole DataLoader, count samples. Workers
are persistent, so epoch 0 includes starting them; the cold first-batch latency
is measured on epoch 0 (``iter()`` to first batch, worker start-up included).
Peak RSS of the main process and of each worker is sampled every 20 ms.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from typing import Any

import numpy as np


class RssMonitor:
    """Samples the RSS of this process and of its children (DataLoader workers)."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.main_peak = 0
        self.child_peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            self.main_peak = max(self.main_peak, self._proc.memory_info().rss)
            for ch in self._proc.children(recursive=True):
                try:
                    rss = ch.memory_info().rss
                except psutil.Error:
                    continue
                self.child_peak[ch.pid] = max(self.child_peak.get(ch.pid, 0), rss)
        except psutil.Error:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()


def _dataset(cfg: dict[str, Any], n: int) -> Any:
    import torch

    ids = np.arange(n, dtype=np.int64)
    labels = np.random.default_rng(0).integers(0, 10, n)
    common = {
        "shuffle_chunks": True,
        "chunk_seed": 0,
        "shuffle_within_chunk": True,
        "buffer_seed": 0,
        "normalize": "minmax01",
        "x_dtype": torch.float32,
    }
    if cfg["impl"] == "harpy":
        spec = importlib.util.spec_from_file_location("_harpy_zii", cfg["harpy_module"])
        assert spec is not None
        assert spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_harpy_zii"] = mod
        spec.loader.exec_module(mod)
        return mod.ZarrIterableInstances(cfg["path"], ids, labels, **common)
    from zarr_instances import ZarrIterableInstances

    extra: dict[str, Any] = {}
    if cfg.get("batch_size"):
        extra["batch_size"] = int(cfg["batch_size"])
    if "buffer_chunks" in cfg:
        extra["buffer_chunks"] = int(cfg["buffer_chunks"])
    if "read_ahead" in cfg:
        extra["read_ahead"] = bool(cfg["read_ahead"])
    return ZarrIterableInstances(cfg["path"], ids, labels, **common, **extra)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    import zarr
    from torch.utils.data import DataLoader

    if cfg.get("zarrs"):
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    n = int(zarr.open_array(cfg["path"], mode="r").shape[0])
    workers = int(cfg["workers"])
    with RssMonitor() as mon:
        t_build = time.perf_counter()
        ds = _dataset(cfg, n)
        t_build = time.perf_counter() - t_build
        batched = bool(cfg.get("batch_size"))
        dl = DataLoader(
            ds,
            batch_size=None if batched else int(cfg.get("loader_batch", 256)),
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        rates, firsts, counts, secs = [], [], [], []
        shape = dtype = None
        for epoch in range(int(cfg.get("repeats", 3))):
            ds.set_epoch(epoch)
            count = 0
            t0 = time.perf_counter()
            it = iter(dl)
            first = None
            for batch in it:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if first is None:
                    first = time.perf_counter() - t0
                    shape, dtype = tuple(x.shape), str(x.dtype)
                count += int(x.shape[0])
            dt = time.perf_counter() - t0
            rates.append(count / dt)
            firsts.append(first)
            counts.append(count)
            secs.append(dt)
        del it, dl
    worker_peaks = sorted(mon.child_peak.values())
    return {
        "cfg": cfg,
        "n": n,
        "samples": counts,
        "seconds": secs,
        "rates": rates,
        "rate_median": float(np.median(rates)),
        "first_batch_cold_s": firsts[0],
        "first_batch_warm_s": float(np.median(firsts[1:])) if len(firsts) > 1 else None,
        "build_s": t_build,
        "batch_shape": shape,
        "dtype": dtype,
        "rss_main_peak_mb": mon.main_peak / 2**20,
        "rss_worker_peak_mb": [p / 2**20 for p in worker_peaks],
        "torch": torch.__version__,
        "zarr": zarr.__version__,
    }


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    result = run(config)
    print("RESULT " + json.dumps(result))
