"""The sources of one extraction: one image and mask, or a study of many, opened alike.

``extract_instances`` takes an image and its mask, or two mappings ``{source name:
image}`` and ``{source name: mask}`` with the same keys. Either way the inputs become
a list of :class:`Source` (a single image is a study of one source, named after its
file or ``"image"``), sorted by name, every one opened as Dask arrays and checked to
give crops of one shape and dtype.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._formats import path_kind
from ._inputs import OpenedInput, check_same_pixels, open_image, open_mask
from ._store import open_many
from ._tile_tasks import Blocks
from ._windows import check_fits
from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "Source",
    "channel_names_of",
    "check_study",
    "named_inputs",
    "open_sources",
    "single_name",
]

# Zarr paths of this many sources or more are opened all at once
_AT_ONCE_FROM = 8
# file name endings dropped from a single image's path to name its source
_ENDINGS = re.compile(r"(\.ome)?\.(tiff?|zarr|npy|n5)$|/+$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class Source:
    """One image and its mask, opened: ``image`` ``(c, z, y, x)``, ``mask`` ``(z, y, x)``."""

    name: str
    image: OpenedInput
    mask: OpenedInput
    image_blocks: Blocks
    mask_blocks: Blocks


def single_name(image: Any) -> str:
    """Name of the source of a single image: its file name without ending, else ``"image"``."""
    if isinstance(image, (str, os.PathLike)):
        base = os.path.basename(_ENDINGS.sub("", os.fspath(image).rstrip("/")))
        return base or "image"
    return "image"


def named_inputs(image: Any, mask: Any) -> tuple[list[tuple[str, Any, Any]], bool]:
    """Return ``(name, image, mask)`` per source, sorted by name, and whether it is a study.

    Raises
    ------
    ArgumentTypeError
        If only one of ``image`` and ``mask`` is a mapping, or a source name is not a
        non-empty string.
    ArgumentError
        If the mappings are empty or their keys differ (the message names the keys
        found in one only).
    """
    is_map = isinstance(image, Mapping), isinstance(mask, Mapping)
    if not any(is_map):
        return [(single_name(image), image, mask)], False
    if not all(is_map):
        which = "image" if is_map[0] else "mask"
        other = "mask" if is_map[0] else "image"
        kind = type(mask if is_map[0] else image).__name__
        msg = (
            f"{which} is a mapping of sources but {other} is a {kind}: "
            f"pass both as mappings with the same source names ({{name: {other}}})"
        )
        raise ArgumentTypeError(msg)
    for key in (*image, *mask):
        if not isinstance(key, str) or not key:
            msg = (
                f"source names (the keys of image and mask) must be non-empty strings, got {key!r}"
            )
            raise ArgumentTypeError(msg)
    if not image:
        msg = "image and mask are empty mappings: pass at least one source"
        raise ArgumentError(msg)
    only_image = sorted(set(image) - set(mask))
    only_mask = sorted(set(mask) - set(image))
    if only_image or only_mask:
        msg = (
            "image and mask must have the same source names: "
            f"in image only {only_image[:5]!r}, in mask only {only_mask[:5]!r}"
        )
        raise ArgumentError(msg)
    return [(name, image[name], mask[name]) for name in sorted(image)], True


def open_sources(
    named: Sequence[tuple[str, Any, Any]],
    storage_options: dict[str, Any] | None,
    tile_size: int,
    axes: tuple[str | None, str | None],
    diameter: int | None,
) -> list[Source]:
    """Open every source as Dask arrays and check image and mask of each cover one grid.

    The local Zarr paths of many sources are opened all at once first (opening mostly
    waits for metadata reads); the first source in order that fails raises.
    """
    opened: dict[str, Any] = {}
    if len(named) >= _AT_ONCE_FROM:
        paths = [os.fspath(v) for _, *io in named for v in io if isinstance(v, str | os.PathLike)]
        opened = open_many([p for p in paths if path_kind(p) == "zarr"])

    def one(item: tuple[str, Any, Any]) -> Source:
        name, image, mask = item
        img = open_image(image, storage_options, tile_size, axes[0], opened)
        msk = open_mask(mask, storage_options, tile_size, axes[1], opened)
        check_same_pixels(img, msk)
        if diameter is not None:
            check_fits(diameter, (int(img.array.shape[2]), int(img.array.shape[3])))
        return Source(name, img, msk, Blocks(img.array), Blocks(msk.array))

    return [one(item) for item in named]


def check_study(sources: Sequence[Source], z_window: int | None) -> None:
    """Raise unless every source gives crops of one shape and dtype.

    Channels and image dtype must agree; planes too unless ``z_window`` fixes the
    depth of every crop. The message names the first source that differs and the
    first source.
    """
    first = sources[0]
    f_shape, f_dtype = first.image.array.shape, first.image.array.dtype
    for src in sources[1:]:
        shape, dtype = src.image.array.shape, src.image.array.dtype
        what = None
        if dtype != f_dtype:
            what = f"image dtype {dtype} vs {f_dtype}"
        elif shape[0] != f_shape[0]:
            what = f"{shape[0]} channels vs {f_shape[0]}"
        elif z_window is None and shape[1] != f_shape[1]:
            what = f"{shape[1]} planes vs {f_shape[1]} (pass z_window=... for crops of one depth)"
        if what is not None:
            msg = (
                f"every source must give crops of one shape and dtype: source {src.name!r} "
                f"has {what} in source {first.name!r}"
            )
            raise ArgumentError(msg)


def channel_names_of(first: Source, channel_names: Sequence[str] | None) -> list[str] | None:
    """Return the channel names: as given (one per channel), else those the input records."""
    if channel_names is None:
        return first.image.channel_names
    names = [str(c) for c in channel_names]
    n = int(first.image.array.shape[0])
    if len(names) != n:
        msg = f"channel_names must name {n} channels, got {names!r}"
        raise ArgumentError(msg)
    return names
