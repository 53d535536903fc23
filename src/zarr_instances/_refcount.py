"""Whether anything still references a buffer, and flags in shared memory.

Reusing an output buffer is safe only while nothing a consumer holds can still see
it. Python and torch answer that question only through private interfaces, and
this module is their one user in zarr-instances:

* ``sys.getrefcount`` of an item of a list: Python references to a tensor;
* ``Tensor._use_count``: C++ references to a tensor (autograd, DLPack);
* ``torch._C._storage_Use_Count``: tensors, views and arrays sharing a storage;
* ``UntypedStorage._new_shared``: shared memory allocated without a copy;
* a 32-bit flag read and written in place (``ctypes``) at the start of a storage.

None of these promises to keep its meaning. :func:`reuse_enabled` therefore runs a
self-test, once per process on first use, which holds a buffer in each way a consumer
can (another tensor, a view, a NumPy array, a DLPack capsule, a tensor made from one,
an autograd graph, the storage object, a tuple) and checks that each is seen, that
dropping it is seen too, that shared memory has the size asked for and is writable,
and that the flag reads what a tensor wrote there and the reverse. If a check fails
or an interface is missing, reuse is off for the process: the pools hand out fresh
memory for every batch (never overwriting, just slower), and a ``RuntimeWarning``
says why, once. A forked child inherits the verdict; a spawned one tests again.
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "keeper",
    "new_shared",
    "only_in",
    "read_flag",
    "reuse_enabled",
    "unused",
    "write_flag",
]

# Calibrated by the self-test: the counts seen when nothing else holds the buffer
# (-1 before: no buffer is ever seen as unused).
_STORAGE_USERS = -1  # _storage_users of a storage held by its keeper only
_STORAGE_REFS = -1  # Python references to that storage's object, as counted here
_ITEM_REFS = -1  # Python references to a tensor held by a list only
_ITEM_STORAGE_USERS = -1  # _storage_users of that tensor's storage
_ITEM_STORAGE_REFS = -1

_NEW_SHARED = True  # UntypedStorage._new_shared passed its checks
_UNTESTED = "untested"
_FAILURE: str | None = _UNTESTED  # why reuse is off (None: on)


# --------------------------------------------------------------------------- interfaces


def new_shared(nbytes: int) -> torch.UntypedStorage:
    """Return ``nbytes`` of shared memory as a CPU storage.

    Uses ``UntypedStorage._new_shared`` when the self-test found it sound; otherwise
    (missing, or wrong size, not shared, not writable) ``Tensor.share_memory_``,
    which costs one extra copy of the zero-filled buffer.
    """
    reuse_enabled()  # runs the self-test once, which checks _new_shared
    return _shared(nbytes)


def _shared(nbytes: int) -> torch.UntypedStorage:
    if _NEW_SHARED:
        return torch.UntypedStorage._new_shared(nbytes)
    return _public_shared(nbytes)


def _public_shared(nbytes: int) -> torch.UntypedStorage:
    return torch.empty(nbytes, dtype=torch.uint8).share_memory_().untyped_storage()


def keeper(storage: torch.UntypedStorage) -> torch.Tensor:
    """Return a byte tensor over all of ``storage``: the reference :func:`unused` allows."""
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _storage_users(t: torch.Tensor) -> int:
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


def _storage_refs(t: torch.Tensor) -> int:
    return sys.getrefcount(t.untyped_storage())


def unused(keeper: torch.Tensor) -> bool:
    """Whether nothing in this process but ``keeper`` references its storage.

    Not another tensor or view on it, a NumPy array, a DLPack capsule, an autograd
    graph, nor its storage object. Only meaningful once :func:`reuse_enabled` is true.
    """
    return _storage_users(keeper) == _STORAGE_USERS and _storage_refs(keeper) == _STORAGE_REFS


def _item_refs(items: list[torch.Tensor], k: int) -> int:
    return sys.getrefcount(items[k])


def only_in(items: list[torch.Tensor], k: int) -> bool:
    """Whether nothing in this process but the list ``items`` references ``items[k]``.

    Neither the tensor (another name, a tuple, a DLPack capsule, an autograd graph)
    nor its memory (a view, a NumPy array, the storage object). Only meaningful once
    :func:`reuse_enabled` is true.
    """
    # the Python count first, while this frame holds no reference of its own
    if _item_refs(items, k) != _ITEM_REFS:
        return False
    t = items[k]
    return (
        t._use_count() == 1  # type: ignore[attr-defined]
        and _storage_users(t) == _ITEM_STORAGE_USERS
        and _storage_refs(t) == _ITEM_STORAGE_REFS
    )


def read_flag(keeper: torch.Tensor) -> int:
    """Return the int32 in the first 4 bytes of ``keeper``'s storage (no tensor made)."""
    return int(ctypes.c_int32.from_address(keeper.data_ptr()).value)


def write_flag(keeper: torch.Tensor, value: int) -> None:
    """Write the int32 ``value`` into the first 4 bytes of ``keeper``'s storage."""
    ctypes.c_int32.from_address(keeper.data_ptr()).value = value


# --------------------------------------------------------------------------- self-test


def reuse_enabled() -> bool:
    """Whether buffers may be reused in this process: the self-test passed.

    The self-test runs on the first call (under a millisecond); a failure
    warns once (``RuntimeWarning``) and switches reuse off for the process.
    """
    global _FAILURE, _STORAGE_USERS, _STORAGE_REFS, _ITEM_REFS
    global _ITEM_STORAGE_USERS, _ITEM_STORAGE_REFS
    if _FAILURE == _UNTESTED:
        failure = _self_test()
        if failure is not None:
            _STORAGE_USERS = _STORAGE_REFS = _ITEM_REFS = -1  # never seen as unused
            _ITEM_STORAGE_USERS = _ITEM_STORAGE_REFS = -1
            msg = (
                f"zarr-instances: buffer reuse is off in this process, because {failure}; "
                "every batch gets fresh memory (correct, but slower). Please report this "
                f"with your versions: torch {torch.__version__}, Python {sys.version.split()[0]}"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        _FAILURE = failure
    return _FAILURE is None


def _self_test() -> str | None:
    """Return why the interfaces above cannot be trusted here, or ``None``."""
    for owner, name in ((torch._C, "_storage_Use_Count"), (torch.Tensor, "_use_count")):
        if not hasattr(owner, name):
            return f"torch has no {getattr(owner, '__name__', owner)}.{name}"
    try:
        # autograd must record graphs even if the first use sits in no_grad/inference
        with torch.inference_mode(False), torch.enable_grad():
            k, failure = _check_shared(64)
            return failure or _check_storages(k) or _check_items()
    except Exception as exc:  # any surprise means the counts cannot be trusted
        return f"the self-test raised {type(exc).__name__}: {exc}"


def _shared_failure(storage: torch.UntypedStorage, nbytes: int) -> str | None:
    if storage.nbytes() != nbytes or not storage.is_shared():
        return f"a {nbytes}-byte shared storage came back with {storage.nbytes()} bytes"
    k = keeper(storage)
    k.fill_(0xA5)
    if int(k.sum()) != 0xA5 * nbytes:
        return "shared memory did not keep what was written"
    write_flag(k, 7)
    as_int = torch.empty(0, dtype=torch.int32).set_(storage, 0, (1,), (1,))
    seen_by_tensor = int(as_int[0])
    as_int[0] = -3
    if seen_by_tensor != 7 or read_flag(k) != -3:
        return "the flag read in place differs from what a tensor sees"
    return None


def _check_shared(nbytes: int) -> tuple[torch.Tensor, str | None]:
    """Return a keeper of shared memory from the route that passes, and why none did."""
    global _NEW_SHARED
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)
        failure = _shared_failure(storage, nbytes)
    except Exception as exc:  # missing or changed: the public route below
        failure = f"UntypedStorage._new_shared raised {type(exc).__name__}: {exc}"
    if failure is not None:
        _NEW_SHARED = False
        storage = _public_shared(nbytes)
        failure = _shared_failure(storage, nbytes)
    return keeper(storage), failure


def _floats_on(k: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32).set_(k.untyped_storage(), 0, (4, 2), (2, 1))


def _grad_graph(t: torch.Tensor) -> torch.Tensor:
    # the product saves ``t`` for the gradient of the weight
    return (t * torch.ones(2, requires_grad=True)).sum()


def _capsule(t: torch.Tensor) -> Any:
    from torch.utils.dlpack import to_dlpack  # missing in some torch: the test fails

    return to_dlpack(t)


# Ways to hold a tensor or its memory. Each takes the tensor and returns the holder.
_HOLDERS: tuple[tuple[str, Callable[[torch.Tensor], Any]], ...] = (
    ("a tensor", lambda t: t),
    ("a tuple", lambda t: (t, 0)),
    ("a view", lambda t: t[1:3]),
    ("a NumPy array", lambda t: t.numpy()),
    ("a DLPack capsule", _capsule),
    ("a tensor from DLPack", lambda t: torch.from_dlpack(_capsule(t))),
    ("an autograd graph", _grad_graph),
    ("its storage object", lambda t: t.untyped_storage()),
)


def _check_storages(k: torch.Tensor) -> str | None:
    """Calibrate and check :func:`unused` on the keeper ``k`` of a shared storage."""
    global _STORAGE_USERS, _STORAGE_REFS
    _STORAGE_USERS, _STORAGE_REFS = _storage_users(k), _storage_refs(k)
    if not unused(keeper(torch.UntypedStorage(32))):
        return "a storage held by its keeper alone counts differently from another"
    for name, hold in _HOLDERS:
        held = hold(_floats_on(k))
        seen = not unused(k)
        del held
        if not seen or not unused(k):
            what = "not seen" if not seen else "still seen once dropped"
            return f"a storage held by {name} was {what}"
    return None


def _check_items() -> str | None:
    """Calibrate and check :func:`only_in` (a tensor in a list)."""
    global _ITEM_REFS, _ITEM_STORAGE_USERS, _ITEM_STORAGE_REFS
    items = [torch.empty(4, 2)]
    _ITEM_REFS = _item_refs(items, 0)
    _ITEM_STORAGE_USERS, _ITEM_STORAGE_REFS = _storage_users(items[0]), _storage_refs(items[0])
    if not only_in([torch.empty(3)], 0):
        return "a tensor held by a list alone counts differently from another"
    for name, hold in _HOLDERS:
        held = hold(items[0])
        seen = not only_in(items, 0)
        del held
        if not seen or not only_in(items, 0):
            what = "not seen" if not seen else "still seen once dropped"
            return f"a tensor held by {name} was {what}"
    return None
