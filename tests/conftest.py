from __future__ import annotations

import numpy as np
import pytest
import zarr

from zarr_instances.testing import make_instance_array, make_instance_store


def pytest_configure(config):
    # Small test windows clip objects on purpose; tests of the report catch it with
    # pytest.warns (which records it whatever the filters say).
    config.addinivalue_line(
        "filterwarnings", "ignore::zarr_instances.errors.ClippedInstancesWarning"
    )


@pytest.fixture
def store(tmp_path) -> zarr.Group:
    """An instance-store group: 1,050 rows, chunks of 100, labels in [-1, 4)."""
    return make_instance_store(tmp_path / "store.zarr", n=1050, chunk_i=100)


@pytest.fixture
def array_path(tmp_path) -> str:
    """A bare crop array of 530 rows in chunks of 50."""
    path = tmp_path / "crops.zarr"
    make_instance_array(path, n=530, chunk_i=50)
    return str(path)


@pytest.fixture
def ids530() -> np.ndarray:
    return np.arange(530, dtype=np.int64) * 3 + 7


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server process on 127.0.0.1 (free port) with IAM authentication on."""
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    pytest.importorskip("s3fs", reason="needs s3fs (the test extra)")
    from _s3 import start_s3_server, stop_s3_server

    server = start_s3_server()
    try:
        yield server
    finally:
        stop_s3_server(server)
