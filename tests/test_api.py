from __future__ import annotations

import subprocess
import sys

import zarr_instances


def test_all_is_sorted_and_resolves():
    assert zarr_instances.__all__ == sorted(zarr_instances.__all__)
    for name in zarr_instances.__all__:
        assert getattr(zarr_instances, name) is not None


def test_import_does_not_load_torch():
    code = (
        "import sys, zarr_instances\n"
        "assert 'torch' not in sys.modules, 'torch imported eagerly'\n"
        "from zarr_instances import extract_instances\n"
        "assert 'torch' not in sys.modules\n"
        "from zarr_instances import ZarrIterableInstances\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_subclass_builtins():
    assert issubclass(zarr_instances.ArgumentError, ValueError)
    assert issubclass(zarr_instances.ArgumentTypeError, TypeError)
    assert issubclass(zarr_instances.StoreNotFoundError, FileNotFoundError)
    assert issubclass(zarr_instances.StoreExistsError, FileExistsError)
    assert issubclass(zarr_instances.ChunkReadError, OSError)
    assert issubclass(zarr_instances.StoreIncompleteError, ValueError)
