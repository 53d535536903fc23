"""Draw docs/images/sampling.png from the real plan: which rows each rank and worker streams.

Run ``PYTHONPATH=src python docs/figures.py``.
"""

from __future__ import annotations

import colorsys
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from zarr_instances import ZarrIterableInstances
from zarr_instances._resume import Resume
from zarr_instances.testing import make_instance_array

N, CHUNK, WORLD, WORKERS, CELL = 80, 8, 2, 2, 14


def streams(ds: ZarrIterableInstances, epoch: int) -> dict[tuple[int, int], np.ndarray]:
    """Rows streamed by every (rank, worker) in ``epoch``, from the dataset's plan."""
    out = {}
    for rank in range(WORLD):
        for worker in range(WORKERS):
            plan = ds._plan(epoch, (rank, WORLD, worker, WORKERS), Resume())
            rows = [b.rows for b in plan.buffers()]
            out[(rank, worker)] = np.concatenate(rows) if rows else np.zeros(0, int)
    return out


def colour(chunk: int, n: int) -> tuple[int, int, int]:
    """Return a distinct colour per chunk."""
    r, g, b = colorsys.hsv_to_rgb(chunk / n, 0.55, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def main() -> None:
    """Draw the figure."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.zarr")
        make_instance_array(path, N, (1, 1, 2, 2), chunk_i=CHUNK)
        ds = ZarrIterableInstances(
            path,
            np.arange(N),
            shuffle_chunks=True,
            shuffle_within_chunk=True,
            buffer_seed=0,
            buffer_chunks=2,
        )
        epochs = {e: streams(ds, e) for e in (0, 1)}
    n_chunks = N // CHUNK
    width = max(len(s) for ep in epochs.values() for s in ep.values())
    left, top, gap = 150, 44, 30
    h = top + 2 * (WORLD * WORKERS * (CELL + 4) + gap) + 60
    img = Image.new(
        "RGB", (max(left + width * CELL, left + n_chunks * 3 * CELL, 620) + 20, h), "white"
    )
    d = ImageDraw.Draw(img)
    d.text(
        (10, 6), "each cell = one sample in stream order, colour = its source chunk", fill="black"
    )
    d.text(
        (10, 20),
        f"{N} rows, {n_chunks} chunks of {CHUNK}, shuffle_chunks, "
        "shuffle_within_chunk, buffer_chunks=2, 2 ranks x 2 workers",
        fill="black",
    )
    y = top
    for epoch, ss in epochs.items():
        d.text((10, y), f"epoch {epoch}", fill="black")
        y += 16
        for (rank, worker), rows in ss.items():
            d.text((10, y + 1), f"rank {rank} worker {worker}", fill="black")
            for j, row in enumerate(rows):
                x0 = left + j * CELL
                d.rectangle(
                    [x0, y, x0 + CELL - 2, y + CELL - 2], fill=colour(int(row) // CHUNK, n_chunks)
                )
            y += CELL + 4
        y += gap - 16
    y += 4
    d.text((10, y), "chunk:", fill="black")
    for c in range(n_chunks):
        x0 = left + c * 3 * CELL
        d.rectangle([x0, y, x0 + CELL - 2, y + CELL - 2], fill=colour(c, n_chunks))
        d.text((x0 + CELL + 2, y + 1), str(c), fill="black")
    out = os.path.join(os.path.dirname(__file__), "images", "sampling.png")
    img.save(out)
    print(out)


if __name__ == "__main__":
    main()
