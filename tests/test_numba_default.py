"""When extraction uses its numba kernels by default, and where numba caches them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dask
import numpy as np
import pytest

from zarr_instances import _extract_kernels, _runtime, extract_instances
from zarr_instances._geometry import crop_windows_numpy, label_sums_numpy
from zarr_instances.testing import make_image_and_mask

numba = pytest.importorskip("numba")

PKG = Path(__file__).resolve().parents[1] / "src" / "zarr_instances"


@pytest.fixture
def fresh(monkeypatch):
    """A process whose extraction kernels were never loaded (numba itself is imported)."""
    state = _runtime.KernelState()
    monkeypatch.setattr(_runtime, "EXTRACT_KERNELS", state)
    monkeypatch.delenv("ZARR_INSTANCES_NUMBA", raising=False)
    return state


def _extract(image, mask, **kw):
    with dask.config.set(scheduler="synchronous"):
        ids, crops = extract_instances(image, mask, 16, tile_size=64, chunk_i=7, **kw)
        return ids, crops.compute()


def test_auto_small_extraction_loads_and_compiles_nothing(fresh, monkeypatch):
    image, mask = make_image_and_mask((128, 96), 30, 12, seed=3)
    assert "numba" in sys.modules  # before, this alone made extraction compile
    ids, auto = _extract(image, mask)
    assert not fresh.tried and fresh.table is None and fresh.warming is None
    for flag in ("0", "1"):
        monkeypatch.setenv("ZARR_INSTANCES_NUMBA", flag)
        got_ids, got = _extract(image, mask)
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got, auto)
    assert fresh.table is not None  # "1" loaded them


def test_auto_uses_a_kernel_only_once_compiled_for_those_arguments(monkeypatch):
    monkeypatch.delenv("ZARR_INSTANCES_NUMBA", raising=False)
    table = _extract_kernels._kernels()
    assert table is not None
    kernel = table["label_sums"]
    mask = np.zeros((1, 7, 9), np.uint16)
    mask[0, 2:5, 3:8] = 9
    mask.flags.writeable = False  # a type no other test compiles
    before = len(kernel.signatures)
    assert _extract_kernels.label_sums(mask, (0, 1, 2)) is None
    assert len(kernel.signatures) == before  # no compile on the way
    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    on = _extract_kernels.label_sums(mask, (0, 1, 2))
    assert on is not None and len(kernel.signatures) == before + 1
    monkeypatch.delenv("ZARR_INSTANCES_NUMBA")
    auto = _extract_kernels.label_sums(mask, (0, 1, 2))
    assert auto is not None  # compiled now: used
    ref = label_sums_numpy(mask, (0, 1, 2))
    np.testing.assert_array_equal(auto[0], ref.labels)
    np.testing.assert_array_equal(auto[1][:, 0], ref.count)


def _cut_args():
    image, mask = make_image_and_mask((64, 64), 6, 12, seed=5)
    starts = np.array([[3, 4], [20, 30], [40, 10]], np.int64)
    labels = mask[starts[:, 0] + 6, starts[:, 1] + 6].astype(np.int64)
    return image[:, None], mask[None], (0, 0), starts, labels, 16, np.zeros(3, np.int64), 1


def test_auto_leaves_plain_cuts_to_numpy(monkeypatch):
    args = _cut_args()
    for rb in (False, True):  # compile both
        monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
        assert _extract_kernels.cut_windows(*args, remove_background=rb, with_mask=False)
    monkeypatch.delenv("ZARR_INSTANCES_NUMBA")
    assert _extract_kernels.cut_windows(*args, remove_background=False, with_mask=False) is None
    got = _extract_kernels.cut_windows(*args, remove_background=True, with_mask=False)
    assert got is not None
    ref = crop_windows_numpy(*args, remove_background=True, with_mask=False)
    np.testing.assert_array_equal(got[0], ref[0])


def test_warm_up_only_for_large_images_and_in_the_background(fresh, monkeypatch):
    assert _extract_kernels.warm_up(np.uint16, np.int32, 8192 * 8192) is None
    assert not fresh.tried  # an 8k x 8k image does not repay a compile
    monkeypatch.setenv("ZARR_INSTANCES_NUMBA", "1")
    assert _extract_kernels.warm_up(np.uint16, np.int32, 2**40) is None  # compiles on use
    monkeypatch.delenv("ZARR_INSTANCES_NUMBA")
    monkeypatch.setattr(_extract_kernels, "WARM_PIXELS", 64 * 64)
    thread = _extract_kernels.warm_up(np.uint16, np.int32, 64 * 64)
    assert thread is not None and thread.name == "zarr_instances_jit"
    thread.join(120)
    assert not thread.is_alive() and fresh.in_progress == 0
    args = _cut_args()
    for wm in (False, True):
        got = _extract_kernels.cut_windows(*args, remove_background=True, with_mask=wm)
        assert got is not None  # warmed for exactly what extraction passes
        ref = crop_windows_numpy(*args, remove_background=True, with_mask=wm)
        np.testing.assert_array_equal(got[0], ref[0])
        if wm:
            np.testing.assert_array_equal(got[1], ref[1])
    assert _extract_kernels.label_sums(args[1], (0, 0, 0)) is not None


_COMPILE_ONE = """
import numpy as np
from numba.core import config
from zarr_instances import _extract_kernels
m = np.zeros((1, 4, 4), np.int32)
m[0, 1:3, 1:3] = 5
out = np.empty((1, 1, 1, 2, 2), np.uint8)
st, zs = np.array([[1, 1]], np.int64), np.zeros(1, np.int64)
_extract_kernels._kernels()["cut_mask"](m, 0, 0, st, zs, np.array([5], np.int32), 2, out)
assert out.sum() == 4, out
assert not config.CACHE_DIR, config.CACHE_DIR  # restored for other numba users
print("ok")
"""


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("cache_writable", [True, False])
def test_read_only_install_caches_in_the_user_folder(cache_writable):
    root = Path(tempfile.mkdtemp(prefix="zi-ro-"))
    try:
        pkg = root / "site" / "zarr_instances"
        shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
        cache = root / "cache"
        cache.mkdir()
        cmd = [sys.executable, "-c", _COMPILE_ONE]
        if os.geteuid() == 0:  # root writes through any mode: without that capability
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("root, and no setpriv to drop the override of file modes")
            drop = "-dac_override,-dac_read_search,-fowner"
            cmd = [setpriv, "--inh-caps=-all", f"--bounding-set={drop}", *cmd]
        if not cache_writable:
            cache.chmod(0o555)
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        (root / "site").chmod(0o555)
        before = _tree(pkg)
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env.update(
            PYTHONPATH=str(root / "site"),
            XDG_CACHE_HOME=str(cache),
            HOME=str(root),
            PYTHONDONTWRITEBYTECODE="1",
            ZARR_INSTANCES_NUMBA="1",
        )
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if "setpriv:" in res.stderr:
            pytest.skip(f"cannot drop capabilities here: {res.stderr.strip()}")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "ok"
        assert "warn" not in res.stderr.lower(), res.stderr
        assert _tree(pkg) == before  # nothing written into the package
        cached = [p.name for p in (cache / "zarr_instances" / "numba").rglob("*.nb*")]
        if cache_writable:
            assert any(n.startswith("_extract_numba.cut_mask") for n in cached), cached
        else:
            assert not (cache / "zarr_instances").exists()
    finally:
        for p in [root, *root.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
