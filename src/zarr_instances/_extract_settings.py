"""The arguments of ``extract_instances``: checked into one frozen :class:`Settings`.

Also the two choices made from them once the inputs are known: the rows per output
chunk (:func:`resolve_chunk_i`) and the store's attributes (:func:`store_attrs`).
Nothing here reads an input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._geometry import default_chunk_rows
from ._validate import check_int
from .errors import ArgumentError, ArgumentTypeError

if TYPE_CHECKING:
    from ._sources import Source
    from ._write import StoreLayout

__all__ = ["Settings", "reject_spatialdata", "resolve_chunk_i", "settings", "store_attrs"]

_ORDERS = ("id", "random")


@dataclass(frozen=True)
class Settings:
    """The checked arguments of one ``extract_instances`` call (``chunk_i`` as given).

    ``diameter`` is ``None`` for ``diameter="auto"`` until it is chosen from the
    objects' extents (with ``auto_quantile``); ``z_window`` ``None`` keeps all planes.
    """

    diameter: int | None
    auto_quantile: float
    z_window: int | None
    out: str | None
    remove_background: bool
    extract_mask: bool
    chunk_i: int | None
    order: str
    seed: int
    overwrite: bool
    shards: int | None
    zarr_format: int
    tile_size: int
    memory_limit: int
    storage_options: dict[str, Any] | None
    progress: bool | None


def reject_spatialdata(image: Any, mask: Any) -> None:
    """Raise if ``image`` or ``mask`` is a ``SpatialData`` object (it has its own entry)."""
    for name, value in (("image", image), ("mask", mask)):
        if type(value).__name__ == "SpatialData":
            msg = (
                f"{name} is a SpatialData object: call zarr_instances.extract_from_spatialdata("
                "sdata, image_name, labels_name, diameter, ...), or pass its elements "
                "(image=sdata.images[name], mask=sdata.labels[name])"
            )
            raise ArgumentTypeError(msg)


def _diameter(diameter: Any, depth: Any, auto_quantile: Any) -> tuple[int | None, float]:
    """Check ``diameter`` (an int >= 1 or ``"auto"``), ``depth`` and ``auto_quantile``."""
    if isinstance(auto_quantile, bool) or not isinstance(auto_quantile, (int, float)):
        msg = f"auto_quantile must be a number in (0, 1], got {auto_quantile!r}"
        raise ArgumentTypeError(msg)
    if not 0 < auto_quantile <= 1:
        msg = f"auto_quantile must be in (0, 1] (e.g. 0.99), got {auto_quantile!r}"
        raise ArgumentError(msg)
    if isinstance(diameter, str):
        if diameter != "auto":
            msg = f'diameter must be a positive integer or "auto", got {diameter!r}'
            raise ArgumentError(msg)
        if depth is not None:
            msg = f'depth needs an integer diameter, got depth={depth!r} with diameter="auto"'
            raise ArgumentError(msg)
        return None, float(auto_quantile)
    d = check_int(diameter, "diameter", minimum=1)
    if depth is not None and check_int(depth, "depth") < d // 2:
        msg = f"depth must be >= diameter // 2 = {d // 2}, got {depth!r}"
        raise ArgumentError(msg)
    return d, float(auto_quantile)


def settings(
    *,
    diameter: Any,
    depth: Any,
    auto_quantile: Any,
    z_window: Any,
    out: str | os.PathLike[str] | None,
    remove_background: bool,
    extract_mask: bool,
    chunk_i: Any,
    order: str,
    seed: Any,
    overwrite: bool,
    shards: Any,
    zarr_format: Any,
    tile_size: Any,
    memory_limit: Any,
    storage_options: dict[str, Any] | None,
    progress: bool | None,
) -> Settings:
    """Check the arguments that need no input array; raise naming the first bad one."""
    d, quantile = _diameter(diameter, depth, auto_quantile)
    if z_window is not None:
        z_window = check_int(z_window, "z_window", minimum=1)
    if order not in _ORDERS:
        msg = f"order must be one of {_ORDERS!r}, got {order!r}"
        raise ArgumentError(msg)
    seed = check_int(seed, "seed")
    tile_size = check_int(tile_size, "tile_size", minimum=1)
    memory_limit = check_int(memory_limit, "memory_limit", minimum=1)
    if zarr_format not in (2, 3):
        msg = f"zarr_format must be 2 or 3, got {zarr_format!r}"
        raise ArgumentError(msg)
    if chunk_i is not None:
        chunk_i = check_int(chunk_i, "chunk_i", minimum=1)
    if shards is not None:
        shards = check_int(shards, "shards", minimum=1)
        if zarr_format != 3:
            msg = f"shards needs zarr_format=3, got shards={shards!r}, zarr_format={zarr_format!r}"
            raise ArgumentError(msg)
    if extract_mask and out is None:
        msg = "extract_mask=True writes the mask crops to the store: pass out=..."
        raise ArgumentError(msg)
    return Settings(
        diameter=d,
        auto_quantile=quantile,
        z_window=z_window,
        out=None if out is None else os.fspath(out),
        remove_background=remove_background,
        extract_mask=extract_mask,
        chunk_i=chunk_i,
        order=order,
        seed=seed,
        overwrite=overwrite,
        shards=shards,
        zarr_format=int(zarr_format),
        tile_size=tile_size,
        memory_limit=memory_limit,
        storage_options=storage_options,
        progress=progress,
    )


def resolve_chunk_i(chunk_i: int | None, shards: int | None, crop_bytes: int, n: int) -> int:
    """Rows per output chunk: as given, or about 2 MiB of crops dividing ``shards``."""
    if chunk_i is None:
        chunk_i = default_chunk_rows(crop_bytes, n)
        if shards is not None:
            chunk_i = max(d for d in range(1, min(chunk_i, shards) + 1) if shards % d == 0)
    if shards is not None and shards % chunk_i:
        msg = f"shards must be a multiple of chunk_i={chunk_i}, got shards={shards!r}"
        raise ArgumentError(msg)
    return chunk_i


def store_attrs(
    s: Settings,
    sources: Sequence[Source],
    names: list[str] | None,
    layout: StoreLayout,
    windows: dict[str, Any],
    study: bool,
) -> dict[str, Any]:
    """Return the store's ``zarr_instances`` attributes (version, sources, parameters).

    ``parameters`` are what a resumed call must repeat; ``z_window`` and
    ``auto_quantile`` appear there only when used. ``windows`` (how the diameter was
    chosen, how many windows clip their object) is recorded as it is. A single image
    records its inputs under ``source`` and its shape as ``image_shape``; a study
    records every source's under ``sources`` and its shapes per source name.
    """
    from . import __version__

    first = sources[0].image.array
    shapes = {x.name: [int(d) for d in x.image.array.shape] for x in sources}
    parameters: dict[str, Any] = {
        "diameter": s.diameter,
        "remove_background": bool(s.remove_background),
        "extract_mask": bool(s.extract_mask),
        "order": s.order,
        "seed": s.seed,
        "chunk_i": layout.chunk_i,
        "shards": s.shards,
        "zarr_format": s.zarr_format,
        "compressors": repr(layout.compressors),
        "dtype": str(first.dtype),
        "image_shape": shapes if study else shapes[sources[0].name],
        "n_instances": int(layout.n),
    }
    if s.z_window is not None:
        parameters["z_window"] = s.z_window
    if "auto_quantile" in windows:
        parameters["auto_quantile"] = windows["auto_quantile"]
    inputs = {x.name: {"image": x.image.source, "mask": x.mask.source} for x in sources}
    where: dict[str, Any] = {"sources": inputs} if study else {"source": inputs[sources[0].name]}
    return {
        "version": __version__,
        **where,
        "channel_names": names,
        "parameters": parameters,
        "windows": windows,
        "axes": ["i", "c", "z", "y", "x"],
    }
