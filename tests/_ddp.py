"""Run a function on real gloo ranks (spawned processes on 127.0.0.1)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple, errfile: str):
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        fn(rank, world, *args)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        with open(errfile, "w") as fh:
            fh.write(traceback.format_exc())
        raise


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, tmp_path, timeout: float = 120):
    """Start ``world`` spawned ranks running ``fn(rank, world, *args)``; fail on error or hang."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = []
    for rank in range(world):
        err = str(tmp_path / f"rank{rank}.err")
        p = ctx.Process(target=_entry, args=(fn, rank, world, port, args, err))
        p.start()
        procs.append((p, err))
    failures = []
    for p, err in procs:
        p.join(timeout)
        if p.is_alive():
            for q, _ in procs:
                q.kill()
            raise AssertionError(f"rank hung for more than {timeout}s (killed)")
        if p.exitcode != 0:
            text = open(err).read() if os.path.exists(err) else ""
            failures.append(f"exit code {p.exitcode}\n{text}")
    if failures:
        raise AssertionError("\n".join(failures))
