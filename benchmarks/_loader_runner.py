"""Run one DataLoader configuration and print its measurements as one JSON line.

Runs in whichever Python executes it: ``/work/venv`` for ``zarr_instances``, the
baseline venv for harpy. Usage::

    python _loader_runner.py '{"impl": "ours", "path": "...", "workers": 2, ...}'

Config keys: ``impl`` (``ours`` | ``harpy`` | ``ipc``: a dataset that reads nothing and
yields shared-memory batches of the store's shape, the DataLoader's worker-to-main
transfer cost alone; with ``pooled`` in the worker's reused segments, as ours; with
``fill: false`` it does not even write them), ``path``, ``workers``, ``repeats``,
``loader_batch`` (DataLoader batch size for per-sample mode), ``batch_size``
(ours, batched mode: dataset batch size, DataLoader(batch_size=None)),
``buffer_chunks``, ``read_ahead``, ``zarrs`` (use the zarrs codec pipeline),
``harpy_module`` (path of harpy's dataset module file, imported directly so that
harpy's heavy package ``__init__`` is not imported), ``touch`` (the consumer reads every
value of each batch, ``float(x.sum())``, as a training step would; default: counts only),
``persistent`` (default true: persistent workers; false: the DataLoader's default, new
workers forked every epoch).

Every epoch: ``set_epoch(e)``, iterate the whole DataLoader, count samples. Workers
are persistent unless told otherwise, so epoch 0 includes starting them; the cold
first-batch latency is measured on epoch 0 (``iter()`` to first batch, worker start-up
included).
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

_CHILD_SCAN_TICKS = 25  # list the child processes every 0.5 s


class RssMonitor:
    """Samples the RSS of this process and of its children (DataLoader workers)."""

    def __init__(self, interval: float = 0.02, children: bool = True) -> None:
        import psutil

        # Listing children scans every process of the machine (/proc): ~1-3 ms, a few
        # % of a core at 50 Hz, taken from the loader being measured; so only when
        # there are workers to watch, and only every _CHILD_SCAN_TICKS ticks (the
        # workers found are read every tick: a few /proc files each).
        self._children = children
        self._proc = psutil.Process()
        self._interval = interval
        self.main_peak = 0
        self.child_peak: dict[int, int] = {}
        self.child_cpu: dict[int, float] = {}
        self._known: list[Any] = []
        self._ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            self.main_peak = max(self.main_peak, self._proc.memory_info().rss)
            if self._children and self._ticks % _CHILD_SCAN_TICKS == 0:
                self._known = self._proc.children(recursive=True)
            self._ticks += 1
            for ch in self._known:
                try:
                    rss = ch.memory_info().rss
                    cpu = ch.cpu_times()
                except psutil.Error:
                    continue
                self.child_peak[ch.pid] = max(self.child_peak.get(ch.pid, 0), rss)
                self.child_cpu[ch.pid] = cpu.user + cpu.system
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


def _ipc_only_class() -> Any:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    from zarr_instances import _runtime
    from zarr_instances._normalize import empty_output

    class IpcOnly(IterableDataset):
        """Yields ``(x, y, id, row)`` batches like ours, filled with ones: no reading.

        ``pooled``: in segments reused as ours are (``WorkerBatchPool``), otherwise in
        a fresh shared-memory segment per batch, as torch's own collation does.
        """

        def __init__(self, n: int, batch_size: int, pooled: bool, fill: bool = True) -> None:
            self.n, self.batch_size, self.pooled, self.fill = n, batch_size, pooled, fill

        def set_epoch(self, epoch: int) -> None:
            pass

        def __iter__(self) -> Any:
            info = get_worker_info()
            k, w = (0, 1) if info is None else (info.id, info.num_workers)
            shared = info is not None
            if shared:
                _runtime.worker_sharing()  # by segment name, as ours
            # the worker's pool, kept from epoch to epoch, as ours
            pool = _runtime.borrow_batch_pool(8) if shared and self.pooled else None
            try:
                for a in range(k * self.batch_size, self.n, w * self.batch_size):
                    m = min(self.batch_size, self.n - a)
                    shape = (m, 2, 1, 64, 64)
                    if pool is not None:
                        x = pool.take(shape, torch.float32)
                    else:
                        x = empty_output(shape, torch.float32, shared)
                    if self.fill:
                        x.numpy()[...] = 1.0
                    if pool is not None:
                        yield pool.pack(x, [np.ones(m, np.int64)] * 3)
                        continue
                    cols = empty_output((3, m), torch.int64, shared)
                    yield (x, *cols.unbind(0))
            finally:
                if pool is not None:
                    _runtime.return_batch_pool(pool)

    return IpcOnly


def _ipc_only(n: int, batch_size: int, pooled: bool = False, fill: bool = True) -> Any:
    return _ipc_only_class()(n, batch_size, pooled, fill)


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
    if cfg["impl"] == "ipc":
        fill = bool(cfg.get("fill", True))
        return _ipc_only(n, int(cfg["batch_size"]), bool(cfg.get("pooled")), fill)
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
    if cfg.get("normalize_in"):
        extra["normalize_in"] = str(cfg["normalize_in"])
    return ZarrIterableInstances(cfg["path"], ids, labels, **common, **extra)


def _minmax01_numpy(x: np.ndarray, channels: int) -> np.ndarray:
    xf = x.reshape(x.shape[0], channels, -1).astype(np.float32)
    lo = xf.min(axis=2, keepdims=True)
    hi = xf.max(axis=2, keepdims=True)
    xf -= lo
    xf /= (hi - lo) + np.float32(1e-8)
    return xf


def run_annbatch(cfg: dict[str, Any]) -> dict[str, Any]:
    """annbatch ``Loader`` over a 2-D ``(n, c*z*y*x)`` copy of the store, in-process.

    annbatch needs Python >= 3.12, where no torch wheel is on this machine, so it
    yields NumPy batches; the same minmax01 normalisation is applied per batch in
    NumPy (float32) to do the same work as the torch loaders.
    """
    import annbatch
    import zarr

    arr = zarr.open_array(cfg["path"], mode="r")
    n = int(arr.shape[0])
    channels = int(cfg.get("channels", 2))
    with RssMonitor(children=False) as mon:
        cpu0 = time.process_time()
        t_build = time.perf_counter()
        loader = annbatch.Loader(
            chunk_size=int(cfg.get("chunk_size", 1024)),
            preload_nchunks=int(cfg.get("preload_nchunks", 4)),
            batch_size=int(cfg.get("loader_batch", 256)),
            shuffle=True,
            rng=np.random.default_rng(0),
        )
        loader.add_dataset(arr)
        t_build = time.perf_counter() - t_build
        rates, firsts, counts = [], [], []
        for _ in range(int(cfg.get("repeats", 3))):
            count, first = 0, None
            t0 = time.perf_counter()
            for out in loader:
                x = _minmax01_numpy(out["X"], channels)
                if first is None:
                    first = time.perf_counter() - t0
                count += int(x.shape[0])
            rates.append(count / (time.perf_counter() - t0))
            firsts.append(first)
            counts.append(count)
    cpu = time.process_time() - cpu0
    return {
        "cpu_main_s": cpu,
        "samples_per_cpu_s": sum(counts) / cpu,
        "cfg": cfg,
        "n": n,
        "samples": counts,
        "rates": rates,
        "rate_median": float(np.median(rates)),
        "first_batch_cold_s": firsts[0],
        "build_s": t_build,
        "rss_main_peak_mb": mon.main_peak / 2**20,
        "rss_worker_peak_mb": [],
        "annbatch": annbatch.__version__ if hasattr(annbatch, "__version__") else "?",
        "zarr": zarr.__version__,
    }


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg["impl"] == "annbatch":
        return run_annbatch(cfg)
    import torch
    import zarr
    from torch.utils.data import DataLoader

    if cfg.get("zarrs"):
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    n = int(zarr.open_array(cfg["path"], mode="r").shape[0])
    workers = int(cfg["workers"])
    if cfg.get("sharing"):
        torch.multiprocessing.set_sharing_strategy(str(cfg["sharing"]))
    cpu0 = time.process_time()
    with RssMonitor(children=workers > 0) as mon:
        t_build = time.perf_counter()
        ds = _dataset(cfg, n)
        t_build = time.perf_counter() - t_build
        batched = bool(cfg.get("batch_size"))
        loader_cls = DataLoader
        if cfg.get("loader") == "zarr":  # ZarrDataLoader: waits for the kernels before forking
            from zarr_instances import ZarrDataLoader as loader_cls  # type: ignore[assignment]
        dl = loader_cls(
            ds,
            batch_size=None if batched else int(cfg.get("loader_batch", 256)),
            num_workers=workers,
            persistent_workers=workers > 0 and bool(cfg.get("persistent", True)),
        )
        rates, firsts, counts, secs = [], [], [], []
        touch = bool(cfg.get("touch"))
        # normalize_in="consumer": the batch arrives as stored, normalised here (CPU)
        norm = ds.normalizer if cfg.get("normalize_in") == "consumer" else None
        shape = dtype = None
        for epoch in range(int(cfg.get("repeats", 3))):
            ds.set_epoch(epoch)
            count = 0
            t0 = time.perf_counter()
            it = iter(dl)
            first = None
            for batch in it:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if norm is not None:
                    x = norm(x, batch[-1])
                if touch:  # read every value, as a training step would
                    float(x.sum())
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
    cpu_main = time.process_time() - cpu0
    cpu_workers = sum(mon.child_cpu.values())
    worker_peaks = sorted(mon.child_peak.values())
    return {
        "cpu_main_s": cpu_main,
        "cpu_workers_s": cpu_workers,
        "samples_per_cpu_s": sum(counts) / (cpu_main + cpu_workers),
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
