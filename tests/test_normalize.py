from __future__ import annotations

import numpy as np
import pytest
import torch

from zarr_instances._normalize import normalize_rows


def _ref(x: np.ndarray, mode: str) -> np.ndarray:
    x32 = x.astype(np.float32)
    if mode == "minmax01":
        lo = x32.min(axis=(2, 3, 4), keepdims=True)
        hi = x32.max(axis=(2, 3, 4), keepdims=True)
        return (x32 - lo) / (hi - lo + np.float32(1e-8))
    if mode == "unit" and np.issubdtype(x.dtype, np.integer):
        return x32 / np.float32(np.iinfo(x.dtype).max)
    return x32


@pytest.mark.parametrize("mode", ["minmax01", "unit", "none"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.float64])
def test_gather_and_normalise_matches_reference(mode, dtype, x_dtype):
    rng = np.random.default_rng(1)
    # rows of 2 x 1 x 40 x 40: several rows per cache block, several blocks per call
    src = (rng.random((70, 2, 1, 40, 40)) * 200).astype(dtype)
    src[5] = 7  # a constant crop: minmax01 gives zeros, not NaN
    index = rng.permutation(70)[:53]
    got = normalize_rows(src, index, mode, x_dtype)
    assert got.dtype == x_dtype and tuple(got.shape) == (53, 2, 1, 40, 40)
    want = torch.from_numpy(_ref(src[index], mode)).to(x_dtype)
    torch.testing.assert_close(
        got,
        want,
        rtol=1e-6 if x_dtype != torch.float16 else 1e-3,
        atol=1e-7 if x_dtype != torch.float16 else 1e-3,
    )
    assert not torch.isnan(got).any()
    # no index: all rows in order, same values as gathering 0..n-1
    assert torch.equal(
        normalize_rows(src, None, mode, x_dtype), normalize_rows(src, np.arange(70), mode, x_dtype)
    )


def test_empty_selection():
    src = np.zeros((4, 2, 1, 8, 8), np.uint16)
    out = normalize_rows(src, np.zeros(0, np.int64), "minmax01", torch.float32)
    assert tuple(out.shape) == (0, 2, 1, 8, 8)


# ----------------------------------------------------------------- compiled kernels

numba = pytest.importorskip("numba")


@pytest.fixture(params=["numba", "numpy"])
def route(request, monkeypatch):
    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1" if request.param == "numba" else "0")
    return request.param


def test_kernel_switch_follows_environment(route):
    from zarr_instances import _kernels

    assert _kernels.enabled() is (route == "numba")


@pytest.mark.parametrize("mode", ["minmax01", "unit", "none"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.int64])
@pytest.mark.parametrize("shape", [(2, 1, 9, 7), (3, 4, 5, 6), (1, 1, 1, 1)])
def test_kernel_is_bit_identical_to_numpy(mode, dtype, shape, monkeypatch):
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    src = rng.integers(lo, hi, (31, *shape), dtype=dtype, endpoint=True)
    src[3] = 5  # constant crop
    src[4, 0] = info.min  # extremes of the dtype
    src[4, -1] = info.max
    index = rng.permutation(31)[:29]
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("ZARR_INSTANCES_NUMBA", flag)
        results[flag] = [
            normalize_rows(src, index, mode, torch.float32),
            normalize_rows(src, None, mode, torch.float32),
        ]
    for got, want in zip(results["1"], results["0"], strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, want)  # bit for bit, not just close


def test_kernel_skips_float_and_non_contiguous_input(monkeypatch):
    from zarr_instances import _kernels

    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    out = np.empty((4, 2, 3, 3), np.float32)
    floats = np.ones((4, 2, 3, 3), np.float32)
    assert not _kernels.gather_scale(floats, None, "minmax01", out)
    strided = np.ones((4, 2, 3, 6), np.uint16)[..., ::2]
    assert not _kernels.gather_scale(strided, None, "minmax01", out)
    ints = np.arange(72, dtype=np.uint16).reshape(4, 2, 3, 3)
    assert _kernels.gather_scale(ints, np.array([3, 0, 1, 2]), "minmax01", out)
    assert out[0, 0].min() == 0 and out[0, 0].max() == pytest.approx(1)


# ----------------------------------------------------------------- output pool


def test_pool_reuses_only_tensors_nobody_holds():
    from zarr_instances._normalize import OutputPool

    pool = OutputPool(size=3)
    assert pool.enabled
    a = pool.take((4, 5), torch.float32)
    ptr = a.data_ptr()
    del a
    b = pool.take((4, 5), torch.float32)
    assert b.data_ptr() == ptr  # released: reused

    # held in any of these ways: never handed out again
    holders = {
        "tensor": lambda t: t,
        "view": lambda t: t[1:],
        "numpy": lambda t: t.numpy(),
        "tuple": lambda t: (t, 1),
        "autograd": lambda t: (t.requires_grad_(False) * torch.ones(5, requires_grad=True)).sum(),
    }
    for name, hold in holders.items():
        pool = OutputPool(size=3)
        t = pool.take((4, 5), torch.float32)
        ptr = t.data_ptr()
        kept = hold(t)
        del t
        other = pool.take((4, 5), torch.float32)
        assert other.data_ptr() != ptr, name
        del kept, other
        again = pool.take((4, 5), torch.float32)
        assert again.data_ptr() in {ptr} | {x.data_ptr() for x in pool._items}, name


def test_pool_never_reuses_a_tensor_sent_to_another_process():
    from zarr_instances._normalize import OutputPool

    pool = OutputPool(size=3)
    t = pool.take((4, 5), torch.float32)
    queue = torch.multiprocessing.get_context("spawn").SimpleQueue()
    queue.put(t)  # pickling moves the storage to shared memory, as sending it does
    assert t.untyped_storage().is_shared()
    ptr = t.data_ptr()
    del t
    assert pool.take((4, 5), torch.float32).data_ptr() != ptr
    queue.close()


def test_pool_never_overwrites_kept_batches(tmp_path):
    from zarr_instances import ZarrIterableInstances
    from zarr_instances.testing import make_instance_store

    path = tmp_path / "s.zarr"
    make_instance_store(path, n=300, chunk_i=32, seed=3)
    ds = ZarrIterableInstances(str(path), batch_size=16, buffer_chunks=2, normalize="minmax01")
    kept = [(x.clone(), x) for x, *_ in ds]  # the loader keeps every batch alive
    assert len({x.data_ptr() for _, x in kept}) == len(kept)
    assert all(torch.equal(a, b) for a, b in kept)
    # the same epoch again, batches dropped as they come: pooled tensors are reused
    ptrs = {x.data_ptr() for x, *_ in ds}
    assert len(ptrs) < len(kept)


def test_pool_never_overwrites_kept_samples(tmp_path):
    from zarr_instances import ZarrIterableInstances
    from zarr_instances.testing import make_instance_store

    path = tmp_path / "s.zarr"
    make_instance_store(path, n=700, chunk_i=300, seed=4)
    ds = ZarrIterableInstances(str(path), shuffle_within_chunk=True, buffer_seed=1)
    n = 0
    kept = []
    for x, *_ in ds:  # views into blocks of up to 256 rows
        if n % 97 == 0:  # some blocks stay referenced, the others are reused
            kept.append((x.clone(), x))
        n += 1
    assert n == 700 and len(kept) == 8
    assert all(torch.equal(a, b) for a, b in kept)


def test_kernel_warm_up_thread_is_joined_by_the_iteration(tmp_path, monkeypatch):
    import threading

    from zarr_instances import ZarrIterableInstances, _runtime
    from zarr_instances.testing import make_instance_store

    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    monkeypatch.setattr(_runtime.STREAM_KERNELS, "ready", set())  # as in a fresh process
    path = tmp_path / "s.zarr"
    make_instance_store(path, n=200, chunk_i=50, dtype="uint8", seed=5)
    for batch_size in (None, 32):
        ds = ZarrIterableInstances(str(path), batch_size=batch_size)
        it = iter(ds)
        next(it)
        del it  # stopped early: the generator's cleanup joins the thread
        assert not any(t.name == "zarr_instances_jit" for t in threading.enumerate())
    assert "|u1" in _runtime.STREAM_KERNELS.ready


def _child_ready(q):
    from zarr_instances import _kernels, _runtime

    q.put(("|u1" in _runtime.STREAM_KERNELS.ready, _kernels._switched_off()))


def _worker_ready(_):
    from zarr_instances import _kernels, _runtime

    return "|u1" in _runtime.STREAM_KERNELS.ready and not _kernels._switched_off()


class _Probe(torch.utils.data.IterableDataset):
    def __init__(self, ds):
        super().__init__()
        self.ds = ds

    def __iter__(self):
        yield _worker_ready(None)

    def set_epoch(self, epoch):
        self.ds.set_epoch(epoch)


def test_zarr_data_loader_forks_workers_with_the_kernels_warmed_up_at_construction(
    tmp_path, monkeypatch
):
    # The dataset starts loading the kernels when it is built; ZarrDataLoader waits for
    # that before it forks its workers, so they have them ready (and do not import
    # numba each, which non-persistent workers would otherwise do every epoch).
    pytest.importorskip("numba")
    from zarr_instances import ZarrDataLoader, ZarrIterableInstances, _runtime
    from zarr_instances.testing import make_instance_store

    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    monkeypatch.setattr(_runtime.STREAM_KERNELS, "ready", set())  # as in a fresh process
    path = tmp_path / "s.zarr"
    make_instance_store(path, n=20, chunk_i=10, dtype="uint8", seed=5)
    ds = ZarrIterableInstances(str(path), batch_size=4)
    loader = ZarrDataLoader(
        _Probe(ds), batch_size=None, num_workers=1, multiprocessing_context="fork"
    )
    assert list(loader) == [True]


def test_a_fork_does_not_wait_for_a_warm_up_in_flight(tmp_path, monkeypatch):
    import multiprocessing
    import threading
    import time

    from zarr_instances import _runtime

    release = threading.Event()
    slow = threading.Thread(target=release.wait, name="zarr_instances_jit", daemon=True)
    slow.start()
    monkeypatch.setattr(_runtime.STREAM_KERNELS, "warming", slow)  # a warm-up that hangs
    monkeypatch.setattr(_runtime.STREAM_KERNELS, "in_progress", 1)
    monkeypatch.setattr(_runtime.STREAM_KERNELS, "ready", set())
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    t0 = time.perf_counter()
    p = ctx.Process(target=_child_ready, args=(q,))
    p.start()
    forked = time.perf_counter() - t0
    ready, off = q.get(timeout=60)
    p.join(60)
    release.set()
    assert forked < 5  # no hook holds the fork (it used to wait up to 30 s)
    assert off and not ready  # the child normalises with NumPy


def _child_kernel_state(q):
    from zarr_instances import _kernels, _runtime

    q.put((_kernels._switched_off(), _runtime.STREAM_KERNELS.lock.acquire(timeout=5)))


def test_fork_during_kernel_compile_falls_back_to_numpy_in_the_child(monkeypatch):
    import multiprocessing

    from zarr_instances import _kernels, _runtime

    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    ctx = multiprocessing.get_context("fork")
    # as if another thread were importing numba / compiling, holding our lock
    monkeypatch.setattr(_runtime.STREAM_KERNELS, "in_progress", 1)
    with _runtime.STREAM_KERNELS.lock:
        q = ctx.Queue()
        p = ctx.Process(target=_child_kernel_state, args=(q,))
        p.start()
    off, lock_free = q.get(timeout=60)
    p.join(60)
    assert off and lock_free  # NumPy in the child, and its lock is usable
    assert not _kernels._switched_off()  # the parent is unchanged


def test_two_concurrent_iterations_do_not_share_output_memory(tmp_path):
    from zarr_instances import ZarrIterableInstances
    from zarr_instances.testing import make_instance_store

    path = tmp_path / "s.zarr"
    make_instance_store(path, n=400, chunk_i=40, seed=6)
    ds = ZarrIterableInstances(str(path), batch_size=16, buffer_chunks=2, buffer_seed=2)
    want = [x.clone() for x, *_ in ds]
    pairs = []
    for (a, *_), (b, *_) in zip(ds, ds, strict=True):  # two read-ahead threads at once
        pairs.append((a, b))  # both kept alive while the iterations go on
    assert len(pairs) == len(want)
    for (a, b), w in zip(pairs, want, strict=True):
        assert a.data_ptr() != b.data_ptr()
        assert torch.equal(a, w) and torch.equal(b, w)
