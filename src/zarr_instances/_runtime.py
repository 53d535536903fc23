"""Process-wide state, in one place, with the one reset after ``fork``.

Everything zarr-instances keeps in a process beyond a single call lives here:

* **Settings** read from the environment: :func:`numba_setting`
  (``ZARR_INSTANCES_NUMBA``), :func:`mmap_flags` (``ZARR_INSTANCES_MMAP``) and
  :func:`zarrs_setting` (``ZARR_INSTANCES_ZARRS``).
* **Decode threads**: :func:`decode_pool`, the threads that read and decode local
  chunk files, and :func:`scratch`, each thread's reused file buffer;
  :func:`store_pool`, the threads that wait on the reads of several remote stores
  of one buffer at once.
* **Compiled kernels**: :data:`STREAM_KERNELS` and :data:`EXTRACT_KERNELS`, the
  numba kernels of the normalisation and of the extraction once loaded, their
  background warm-ups, and where numba caches them on disk (:func:`numba_cache_for`).
* **zarrs use**: :func:`record_zarrs_use`, the processes that built a zarrs codec
  pipeline (its thread pool does not survive ``fork``).
* **Shared batch segments**: :func:`segment_registry`, the main process's record of
  the shared-memory segments that DataLoader workers sent; :func:`worker_sharing`,
  how a worker sends them (``ZARR_INSTANCES_FILE_SYSTEM_SHARING``).

After ``fork``, :func:`_after_fork_in_child` gives the child fresh locks, no decode
threads (they do not exist in the child) and no kernels if the parent was loading
them at that moment (the loading thread's locks may be held for ever in the child,
which then normalises with NumPy). Nothing runs *before* a fork: a host program's
``os.fork`` never waits for zarr-instances. A loader that wants its forked workers
to inherit ready kernels waits for them itself (:func:`wait_for_kernels`).
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

__all__ = [
    "EXTRACT_KERNELS",
    "STREAM_KERNELS",
    "KernelState",
    "cores",
    "decode_pool",
    "mmap_flags",
    "numba_cache_for",
    "numba_caching",
    "numba_setting",
    "record_zarrs_use",
    "scratch",
    "segment_registry",
    "store_pool",
    "worker_sharing",
    "user_cache_dir",
    "wait_for_kernels",
    "zarrs_setting",
    "zarrs_used_by_parent",
]

_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


# --------------------------------------------------------------------------- settings


def numba_setting() -> Literal["on", "off", "auto"]:
    """Return the ``ZARR_INSTANCES_NUMBA`` switch: ``"on"``, ``"off"`` or ``"auto"``.

    ``0`` switches the compiled kernels off everywhere; ``1`` uses them wherever numba
    is installed (compiling them on first use). Unset (or any other value) is
    ``"auto"``: the streaming dataset loads them in a background thread when it is
    built (a training run streams long enough to repay it) and normalises with NumPy
    until they are ready; extraction uses a kernel only for the steps where it is
    faster than NumPy once compiled, only once it is compiled, and compiles in the
    background only for images large enough to repay it (:mod:`._extract_kernels`).
    Read at every call, so that a test or a script may change it at run time.
    """
    flag = os.environ.get("ZARR_INSTANCES_NUMBA", "").strip().lower()
    if flag in _OFF:
        return "off"
    if flag in _ON:
        return "on"
    return "auto"


def mmap_flags() -> int:
    """Return the flags for mapping large chunk files (``0``: read them into a buffer).

    ``ZARR_INSTANCES_MMAP=0`` switches mapping off. Read once per process.
    """
    global _MMAP
    if _MMAP is None:
        flags = 0
        if os.name == "posix" and hasattr(mmap, "MAP_SHARED"):
            if os.environ.get("ZARR_INSTANCES_MMAP", "1").strip().lower() not in _OFF:
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        _MMAP = flags
    return _MMAP


_MMAP: int | None = None


# --------------------------------------------------------------------------- decode threads


def cores() -> int:
    """Return the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
_SCRATCH = threading.local()


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """Return this process's decode threads, ``threads`` of them.

    The pool is made on first use and made anew when another size is asked for (a
    DataLoader worker asks for its share of the cores: ``cores() // num_workers``).
    """
    global _POOL, _POOL_SIZE
    threads = max(1, int(threads))
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE != threads:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(threads, thread_name_prefix="zarr_instances_decode")
            _POOL_SIZE = threads
        return _POOL


_STORE_POOL: ThreadPoolExecutor | None = None


def store_pool() -> ThreadPoolExecutor:
    """Return this process's threads that wait on several stores' reads (8, made once)."""
    global _STORE_POOL
    with _POOL_LOCK:
        if _STORE_POOL is None:
            _STORE_POOL = ThreadPoolExecutor(8, thread_name_prefix="zarr_instances_stores")
        return _STORE_POOL


def scratch(size: int) -> bytearray:
    """Return this thread's reused byte buffer, at least ``size`` bytes long."""
    buf: bytearray | None = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < size:
        buf = _SCRATCH.buf = bytearray(size)
    return buf


# --------------------------------------------------------------------------- kernels


class KernelState:
    """Loading state of one family of compiled kernels in this process.

    Attributes
    ----------
    table
        The kernels by name once loaded, ``None`` before (or without numba).
    tried
        Whether loading was attempted (``table is None`` then means no numba).
    ready
        Dtypes (``dtype.str``) whose kernels are compiled.
    warming
        The background thread loading them, if one was started.
    in_progress
        Loads running now, in any thread.
    off_after_fork
        Set in a child forked while a load was running: it uses NumPy.
    """

    def __init__(self) -> None:
        self.table: dict[str, Callable[..., Any]] | None = None
        self.tried = False
        self.ready: set[str] = set()
        self.lock = threading.Lock()  # guards warming and in_progress
        self.compile_lock = threading.Lock()  # one import/compile at a time
        self.warming: threading.Thread | None = None
        self.in_progress = 0
        self.off_after_fork = False

    def load(self, compile_table: Callable[[], dict[str, Callable[..., Any]] | None]) -> Any:
        """Return the kernel table, loading it with ``compile_table`` on first use."""
        with self.compile_lock:
            if not self.tried:
                self.table = compile_table()
                self.tried = True
        return self.table

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Count a load as running (:attr:`in_progress`) while the block runs."""
        with self.lock:
            self.in_progress += 1
        try:
            yield
        finally:
            with self.lock:
                self.in_progress -= 1

    def _reset_in_child(self) -> None:
        self.lock, self.compile_lock, self.warming = threading.Lock(), threading.Lock(), None
        if self.in_progress:
            self.off_after_fork = True


STREAM_KERNELS = KernelState()
EXTRACT_KERNELS = KernelState()

_NUMBA_CACHE = True  # whether kernels defined now use numba's on-disk cache


def user_cache_dir() -> str:
    """Return the user's cache folder for the kernels: ``$XDG_CACHE_HOME/zarr_instances/numba``.

    ``~/.cache`` when ``XDG_CACHE_HOME`` is unset.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "zarr_instances", "numba")


def _writable(path: str) -> bool:
    """Whether files can be written in ``path`` (made if missing), tried as numba does."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def numba_cache_for(package_dir: str) -> Iterator[None]:
    """Choose where numba caches the kernels defined (decorated) inside this block.

    numba picks a kernel's cache folder when the kernel is defined: ``NUMBA_CACHE_DIR``
    if set (and writable), else the ``__pycache__`` next to its module, else (some
    versions only) a user folder, else it fails. This makes the fallback explicit:
    when ``NUMBA_CACHE_DIR`` is unset and ``package_dir`` is not writable (a read-only
    install), the kernels cache in :func:`user_cache_dir`, for this block only (other
    numba users keep their own setting); when that is not writable either, they are
    defined without a cache (:func:`numba_caching` is then false) and compiled in
    every process, silently. numba must be importable; the caller holds the kernel
    state's lock.
    """
    global _NUMBA_CACHE
    from numba.core import config as numba_config

    config: Any = numba_config
    saved = config.CACHE_DIR
    chosen, cache = saved, True
    if not (saved and _writable(saved)) and not _writable(os.path.join(package_dir, "__pycache__")):
        chosen = user_cache_dir()
        cache = _writable(chosen)
    config.CACHE_DIR, _NUMBA_CACHE = (chosen if cache else saved), cache
    try:
        yield
    finally:
        config.CACHE_DIR, _NUMBA_CACHE = saved, True


def numba_caching() -> bool:
    """Whether kernels defined now use numba's on-disk cache (see :func:`numba_cache_for`)."""
    return _NUMBA_CACHE


def wait_for_kernels(timeout: float = 30.0) -> bool:
    """Wait up to ``timeout`` seconds for a kernel warm-up in flight; return whether done.

    Called by :class:`~zarr_instances.ZarrDataLoader` before it starts forked workers,
    so that they inherit ready kernels. Never called by a fork itself.
    """
    warming = STREAM_KERNELS.warming
    if warming is None or warming is threading.current_thread():
        return True
    warming.join(timeout)
    return not warming.is_alive()


def _finish_warming_at_exit() -> None:
    # the interpreter must not stop while a warm-up thread imports numba or compiles
    wait_for_kernels(30.0)
    warming = EXTRACT_KERNELS.warming
    if warming is not None and warming is not threading.current_thread():
        warming.join(30.0)


atexit.register(_finish_warming_at_exit)


# --------------------------------------------------------------------------- zarrs

_ZARRS_PIDS: list[int] = []  # processes that built a zarrs pipeline (inherited by fork)


def record_zarrs_use() -> None:
    """Remember that this process built a zarrs codec pipeline."""
    _ZARRS_PIDS.append(os.getpid())


def zarrs_setting() -> bool:
    """Whether zarrs may be used by default (``ZARR_INSTANCES_ZARRS=0`` says no)."""
    return os.environ.get("ZARR_INSTANCES_ZARRS", "1").strip().lower() not in _OFF


def zarrs_used_by_parent() -> bool:
    """Whether a process this one was forked from built a zarrs pipeline (not this one)."""
    return bool(_ZARRS_PIDS) and _ZARRS_PIDS[-1] != os.getpid()


# --------------------------------------------------------------------------- shared segments

_REGISTRY: Any = None


def segment_registry() -> Any:
    """Return this process's :class:`~._shared_batches.SegmentRegistry` (made on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        from ._shared_batches import SegmentRegistry

        _REGISTRY = SegmentRegistry()
    return _REGISTRY


_BATCH_POOL: Any = None  # this worker's pool of batch segments, between iterations
_BATCH_POOL_LOCK = threading.Lock()


def borrow_batch_pool(size: int) -> Any:
    """Return this worker's :class:`~._shared_batches.WorkerBatchPool` for one iteration.

    A persistent worker keeps its segments from one epoch to the next (they are
    allocated, zero-filled and mapped by the main process once, not every epoch).
    While another iteration has the pool (one abandoned and not closed yet), a new
    pool is made. Give it back with :func:`return_batch_pool`.
    """
    global _BATCH_POOL
    with _BATCH_POOL_LOCK:
        pool, _BATCH_POOL = _BATCH_POOL, None
    if pool is None or pool.size != size:
        from ._shared_batches import WorkerBatchPool

        pool = WorkerBatchPool(size)
    return pool


def return_batch_pool(pool: Any) -> None:
    """Give back a pool from :func:`borrow_batch_pool` at the end of its iteration."""
    global _BATCH_POOL
    with _BATCH_POOL_LOCK:
        _BATCH_POOL = pool


_WORKER_SHARING = False
_FORKED = False  # this process is a forked child (set after fork)


def worker_sharing() -> None:
    """In a DataLoader worker: send tensors to the main process by shared-memory file name.

    torch's default (``"file_descriptor"``) passes every batch's memory as a file
    descriptor over a new, authenticated socket connection to the worker, twice per
    batch (crops and columns), which on a small machine costs more CPU than decoding
    the batch. With ``"file_system"`` a batch travels as the name of its segment, and
    the main process finds a segment it has mapped before in torch's cache. Set once,
    in the worker process only (the main process keeps its strategy), and only in a
    forked worker: a spawned one would start torch's shared-memory manager holding the
    pipe by which the DataLoader sees the worker end, so that every shutdown waited for
    the DataLoader's timeout. ``ZARR_INSTANCES_FILE_SYSTEM_SHARING=0`` keeps torch's
    default.
    """
    global _WORKER_SHARING
    if _WORKER_SHARING:
        return
    _WORKER_SHARING = True
    if not _FORKED:
        return
    if os.environ.get("ZARR_INSTANCES_FILE_SYSTEM_SHARING", "1").strip().lower() in _OFF:
        return
    import torch.multiprocessing as tmp

    if "file_system" in tmp.get_all_sharing_strategies():
        tmp.set_sharing_strategy("file_system")


# --------------------------------------------------------------------------- fork


def _after_fork_in_child() -> None:
    """Reset after ``fork``: fresh locks, no parent threads, no half-loaded kernels."""
    global _POOL, _POOL_SIZE, _POOL_LOCK, _SCRATCH, _REGISTRY, _STORE_POOL, _WORKER_SHARING, _FORKED
    global _BATCH_POOL, _BATCH_POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK, _STORE_POOL = None, 0, threading.Lock(), None
    _BATCH_POOL, _BATCH_POOL_LOCK = None, threading.Lock()
    _WORKER_SHARING = False
    _FORKED = True
    _SCRATCH = threading.local()
    STREAM_KERNELS._reset_in_child()
    EXTRACT_KERNELS._reset_in_child()
    _REGISTRY = None  # the parent's received segments are the parent's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
