"""Pure axis logic: name the axes of an input and bring it to ``(c, z, y, x)`` / ``(z, y, x)``.

Axes are strings of the letters ``t`` (time), ``c`` (channel), ``z``, ``y`` and ``x``,
one per dimension in the input's order, e.g. ``"yxc"`` for a channels-last RGB image.

1. **Which axes.** Axes given by the caller (``axes=`` / ``mask_axes=``) or recorded
   in the input (NGFF ``multiscales`` axes, OME-TIFF, xarray ``dims``) are *known*;
   given axes that disagree with recorded ones are an error. Without either, the
   default for the number of dimensions is *assumed* (:data:`IMAGE_DEFAULTS`,
   :data:`MASK_DEFAULTS`).
2. **Reorder.** :func:`plan_axes` returns an :class:`AxesPlan`: a ``t`` axis (and, for
   a mask, a ``c`` axis) of length 1 is dropped, the rest is transposed to the target
   order and missing ``c`` / ``z`` axes are added with length 1. The same plan
   applies to NumPy and Dask arrays.
3. **Hints.** When image and mask do not cover the same pixels, :func:`suggest` tries
   the common layouts of the inputs whose axes were assumed and returns the first pair
   that fits, for an error that says which ``axes=`` to pass.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from .errors import ArgumentError

__all__ = [
    "IMAGE",
    "IMAGE_DEFAULTS",
    "MASK",
    "MASK_DEFAULTS",
    "AxesPlan",
    "check_axes",
    "describe",
    "letters",
    "plan_axes",
    "resolve_axes",
    "suggest",
]

LETTERS = "tczyx"
IMAGE = "czyx"
MASK = "zyx"
IMAGE_DEFAULTS = {3: "cyx", 4: "czyx", 5: "tczyx"}
MASK_DEFAULTS = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
# layouts tried for an input whose axes are assumed, most likely first (defaults first)
_IMAGE_LAYOUTS = {
    2: ("yx",),
    3: ("cyx", "yxc", "zyx"),
    4: ("czyx", "zyxc", "zcyx"),
    5: ("tczyx",),
}
_MASK_LAYOUTS = {
    2: ("yx",),
    3: ("zyx", "yxc", "cyx"),
    4: ("czyx", "zyxc", "tzyx"),
    5: ("tczyx",),
}
_LOOKS = {
    "yxc": "looks channels-last",
    "zyxc": "looks channels-last",
    "zyx": "looks like a (z, y, x) stack without a channel axis",
    "yx": "looks like one plane without a channel axis",
}


@dataclass(frozen=True)
class AxesPlan:
    """How an input with ``axes`` becomes ``target``: drop, transpose, add length-1 axes."""

    axes: str
    target: str
    drop: tuple[int, ...]  # dimensions of length 1 taken at index 0 (``t``; ``c`` of a mask)
    perm: tuple[int, ...]  # order of the remaining dimensions in ``target``
    add: tuple[int, ...]  # positions in ``target`` of the axes added with length 1

    def apply(self, arr: Any) -> Any:
        """Return ``arr`` (NumPy or Dask) in the target order."""
        arr = arr[tuple(0 if i in self.drop else slice(None) for i in range(len(self.axes)))]
        if self.perm != tuple(range(len(self.perm))):
            arr = arr.transpose(self.perm)
        if self.add:
            arr = arr[
                tuple(None if i in self.add else slice(None) for i in range(len(self.target)))
            ]
        return arr

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Return the shape an input of ``shape`` gets in the target order."""
        kept = [n for i, n in enumerate(shape) if i not in self.drop]
        moved = iter(kept[p] for p in self.perm)
        return tuple(1 if i in self.add else next(moved) for i in range(len(self.target)))


def letters(names: Any) -> str | None:
    """Return recorded axis names (``["c", "y", "x"]``, ``"CYX"``) as axes, or ``None``.

    ``None`` when the names are not distinct letters of ``tczyx`` (e.g. ``dim_0``).
    """
    if names is None:
        return None
    names = [str(n).lower() for n in names]
    if not names or any(n not in LETTERS or len(n) != 1 for n in names):
        return None
    axes = "".join(names)
    return axes if len(set(axes)) == len(axes) else None


def check_axes(axes: Any, ndim: int, param: str, shape: tuple[int, ...]) -> str:
    """Return ``axes`` in lower case after checking it names ``ndim`` distinct known axes."""
    if not isinstance(axes, str):
        msg = f"{param} must be a string of axis letters such as 'yxc', got {axes!r}"
        raise ArgumentError(msg)
    low = axes.lower()
    bad = sorted(set(low) - set(LETTERS))
    if bad or len(set(low)) != len(low) or not {"y", "x"} <= set(low):
        msg = (
            f"{param}={axes!r} must name each axis once with the letters t, c, z, y, x "
            f"(y and x required), e.g. 'yxc', 'zyx', 'czyx'"
        )
        raise ArgumentError(msg)
    if len(low) != ndim:
        msg = f"{param}={axes!r} names {len(low)} axes, but the input has shape {shape} ({ndim}-D)"
        raise ArgumentError(msg)
    return low


def resolve_axes(
    kind: str,
    shape: tuple[int, ...],
    recorded: str | None,
    given: str | None,
    source: str,
) -> tuple[str, bool]:
    """Return the axes of the ``kind`` (``"image"`` / ``"mask"``) and whether they are known.

    ``recorded``: axes from the input's metadata; ``given``: the caller's ``axes=`` /
    ``mask_axes=``. Without either the default for ``len(shape)`` is assumed.
    """
    param = "axes" if kind == "image" else "mask_axes"
    if given is not None:
        given = check_axes(given, len(shape), param, shape)
        if recorded is not None and recorded != given:
            msg = (
                f"{param}={given!r} disagrees with the axes {recorded!r} that {source} "
                f"records for its shape {shape}; leave {param} out"
            )
            raise ArgumentError(msg)
        return given, True
    if recorded is not None:
        if len(recorded) != len(shape):
            msg = f"{source} records axes {recorded!r} for a {len(shape)}-D {kind} of shape {shape}"
            raise ArgumentError(msg)
        return recorded, True
    default = (IMAGE_DEFAULTS if kind == "image" else MASK_DEFAULTS).get(len(shape))
    if default is None:
        msg = f"{_must(kind)}, got shape {shape} ({len(shape)}-D) from {source}; " + (
            f"for one plane without a channel axis pass {param}='yx'"
            if kind == "image" and len(shape) == 2
            else f"name its axes with {param}=..., e.g. {param}='zyx'"
        )
        raise ArgumentError(msg)
    return default, False


def _must(kind: str) -> str:
    return (
        "image must be (c, y, x) or (c, z, y, x)"
        if kind == "image"
        else "mask must be (y, x) or (z, y, x)"
    )


def plan_axes(kind: str, axes: str, shape: tuple[int, ...], origin: str) -> AxesPlan:
    """Plan how the ``kind`` with ``axes`` and ``shape`` becomes ``(c, z, y, x)`` / ``(z, y, x)``.

    ``origin`` says where the axes came from, for messages. Raises when a dropped
    axis (``t``; ``c`` of a mask) is longer than 1.
    """
    target = IMAGE if kind == "image" else MASK
    dropped = "t" if kind == "image" else "tc"
    drop = []
    for i, (a, n) in enumerate(zip(axes, shape, strict=True)):
        if a not in dropped:
            continue
        if n != 1:
            what = f"{n} time points (axis 't')" if a == "t" else f"{n} channels (axis 'c')"
            fix = "one time point" if a == "t" else "one channel (labels)"
            msg = (
                f"{_must(kind)}, got shape {shape} with {what} in {origin}; pass {fix}, "
                f"e.g. a slice of the array"
            )
            raise ArgumentError(msg)
        drop.append(i)
    kept = [a for i, a in enumerate(axes) if i not in drop]
    order = [a for a in target if a in kept]
    perm = tuple(kept.index(a) for a in order)
    add = tuple(i for i, a in enumerate(target) if a not in kept)
    return AxesPlan(axes, target, tuple(drop), perm, add)


def suggest(
    image_shape: tuple[int, ...],
    image_axes: str | None,
    mask_shape: tuple[int, ...],
    mask_axes: str | None,
) -> tuple[str | None, str | None] | None:
    """Return ``(axes, mask_axes)`` to pass so that image and mask cover the same pixels.

    ``image_axes`` / ``mask_axes``: the known axes of each input (kept), ``None`` where
    assumed (common layouts are tried). An entry of the result is ``None`` where the
    input needs no ``axes``; the result is ``None`` when no pair fits.
    """
    images = (image_axes,) if image_axes else _IMAGE_LAYOUTS.get(len(image_shape), ())
    masks = (mask_axes,) if mask_axes else _MASK_LAYOUTS.get(len(mask_shape), ())
    for ia, ma in itertools.product(images, masks):
        try:
            ishape = plan_axes("image", ia, image_shape, "").shape(image_shape)
            mshape = plan_axes("mask", ma, mask_shape, "").shape(mask_shape)
        except ArgumentError:
            continue
        if ishape[1:] == mshape:
            ia_out = None if image_axes or ia == IMAGE_DEFAULTS.get(len(image_shape)) else ia
            ma_out = None if mask_axes or ma == MASK_DEFAULTS.get(len(mask_shape)) else ma
            if ia_out is not None or ma_out is not None:
                return ia_out, ma_out
    return None


def describe(image_shape: tuple[int, ...], axes: str | None, mask_axes: str | None) -> str:
    """Return the hint for a :func:`suggest` result, e.g. ``"... pass axes='yxc'"``."""
    parts = []
    if axes is not None:
        looks = _LOOKS.get(axes, f"fits the mask as axes {axes!r}")
        parts.append(f"the image {image_shape} {looks}: pass axes={axes!r}")
    if mask_axes is not None:
        parts.append(f"the mask fits as axes {mask_axes!r}: pass mask_axes={mask_axes!r}")
    return "; ".join(parts)
