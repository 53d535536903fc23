"""The inputs of ``zarr-instances extract``: one image, a manifest CSV, or glob patterns.

A study is given either as ``--manifest study.csv`` (columns ``source,image,mask``;
relative paths are read from the CSV's folder) or as IMAGE and MASK glob patterns,
whose files are paired by source name (:data:`PAIRING_RULE`). Either way the result
is two mappings ``{source: path}`` for :func:`~zarr_instances.extract_instances`.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from typing import Any

from ._sources import single_name
from ._store import is_url
from .errors import ArgumentError

__all__ = ["PAIRING_RULE", "has_glob", "manifest_study", "pair_globs", "study_inputs"]

PAIRING_RULE = (
    "IMAGE and MASK may be glob patterns (quote them), e.g. 'images/*.tif' 'masks/*.tif': "
    "their files are paired by source name, the file name without its extension (.ome.tif, "
    ".tif, .tiff, .zarr, .npy, .n5, else the last one); when the image and mask names differ "
    "by a suffix or prefix common to all of them (cell1.tif and cell1_mask.tif, or "
    "img_cell1.tif and lbl_cell1.tif), it is dropped. A file without a partner is an error."
)
_COLUMNS = ("source", "image", "mask")
_SHOW = 5


def has_glob(text: str | None) -> bool:
    """Whether a command line path is a glob pattern (``*``, ``?`` or ``[``)."""
    return text is not None and not is_url(text) and glob.has_magic(text)


def _stem(path: str) -> str:
    name = single_name(path)
    if name == os.path.basename(path.rstrip("/")):  # no known ending: drop the last one
        name = os.path.splitext(name)[0] or name
    return name


def _common_prefix(names: Sequence[str]) -> str:
    first, last = min(names), max(names)
    k = 0
    while k < min(len(first), len(last)) and first[k] == last[k]:
        k += 1
    return first[:k]


def _common_suffix(names: Sequence[str]) -> str:
    return _common_prefix([n[::-1] for n in names])[::-1]


def _strip(names: Sequence[str], k: int, suffix: bool) -> list[str]:
    if k == 0:
        return list(names)
    return [n[:-k] if suffix else n[k:] for n in names]


def _best_strip(images: list[str], masks: list[str], suffix: bool) -> tuple[list[str], list[str]]:
    """Drop the suffixes (or prefixes) common to each side that pair the most names.

    Ties go to the shortest drop; no name may become empty.
    """
    common = _common_suffix if suffix else _common_prefix
    ci, cm = len(common(images)), len(common(masks))
    best = (-1, 0, 0, 0)  # matched, -dropped, ki, km
    for ki in range(ci + 1):
        a = _strip(images, ki, suffix)
        if "" in a:
            continue
        seen = set(a)
        for km in range(cm + 1):
            b = _strip(masks, km, suffix)
            if "" in b:
                continue
            score = (len(seen & set(b)), -(ki + km), ki, km)
            best = max(best, score)
    _, _, ki, km = best
    a, b = _strip(images, ki, suffix), _strip(masks, km, suffix)
    if ki and km:  # both sides dropped a word: drop the separator before it too
        end = -1 if suffix else 0
        names = a + b
        if all(len(n) > 1 and n[end] == names[0][end] in "_-. " for n in names):
            a, b = _strip(a, 1, suffix), _strip(b, 1, suffix)
    return a, b


def pair_globs(image: str, mask: str) -> tuple[dict[str, str], dict[str, str]]:
    """Match the patterns IMAGE and MASK and pair their files by source name.

    Raises
    ------
    ArgumentError
        If a pattern matches nothing, two files of one side get the same source
        name, or a file has no partner (the message names them).
    """
    sides = []
    for word, pattern in (("IMAGE", image), ("MASK", mask)):
        files = sorted(glob.glob(os.path.expanduser(pattern)))
        if not files:
            msg = f"{word} pattern {pattern!r} matches no file or folder; check the path"
            raise ArgumentError(msg)
        sides.append(files)
    img_files, mask_files = sides
    names = [[_stem(f) for f in img_files], [_stem(f) for f in mask_files]]
    if set(names[0]) != set(names[1]):
        a, b = _best_strip(names[0], names[1], suffix=True)
        if set(a) != set(b):
            a, b = _best_strip(a, b, suffix=False)
        names = [a, b]
    out: list[dict[str, str]] = []
    for word, files, keys in (("IMAGE", img_files, names[0]), ("MASK", mask_files, names[1])):
        found: dict[str, str] = {}
        for key, path in zip(keys, files, strict=True):
            if key in found:
                msg = (
                    f"{word} pattern matches two files of source {key!r}: {found[key]!r} and "
                    f"{path!r}; make the pattern match one file per source"
                )
                raise ArgumentError(msg)
            found[key] = path
        out.append(found)
    images, masks = out
    lonely = [images[k] for k in images if k not in masks]
    lonely_masks = [masks[k] for k in masks if k not in images]
    if lonely or lonely_masks:
        parts = []
        if lonely:
            parts.append(f"images without a mask: {_names(lonely)}")
        if lonely_masks:
            parts.append(f"masks without an image: {_names(lonely_masks)}")
        msg = (
            f"IMAGE {image!r} and MASK {mask!r} do not pair up: {'; '.join(parts)}. Files "
            "pair by name without extension and without a suffix/prefix common to all "
            "images or all masks (see --help); rename or move them, or use --manifest"
        )
        raise ArgumentError(msg)
    return images, masks


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:_SHOW])
    return shown + (f" and {len(paths) - _SHOW} more" if len(paths) > _SHOW else "")


def manifest_study(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """Read ``--manifest``: a CSV with columns source, image, mask (one row per source).

    Relative image and mask paths are read from the CSV's folder; URLs are kept.

    Raises
    ------
    ArgumentError
        If the file is missing or unreadable, a column is missing, a row has an empty
        value, a source repeats, or a local image or mask does not exist.
    """
    where = f"--manifest {path!r}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except FileNotFoundError:
        msg = f"{where}: no such file; give a CSV with columns {','.join(_COLUMNS)}"
        raise ArgumentError(msg) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        msg = f"{where}: cannot read it as a CSV file ({exc})"
        raise ArgumentError(msg) from None
    header = [str(h).strip() for h in header if h is not None]
    missing = [c for c in _COLUMNS if c not in header]
    if not rows or missing:
        found = f"found columns {header!r}" if rows else "it has no rows"
        msg = (
            f"{where} needs the column(s) {', '.join(repr(c) for c in missing or _COLUMNS)} "
            f"({found}); write a header line 'source,image,mask' and one row per source"
        )
        raise ArgumentError(msg)
    folder = os.path.dirname(os.path.abspath(path))
    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    for line, raw in enumerate(rows, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        empty = [c for c in _COLUMNS if not row.get(c)]
        if empty:
            msg = f"{where} line {line}: empty {', '.join(empty)}; fill in every column"
            raise ArgumentError(msg)
        name = row["source"]
        if name in images:
            msg = f"{where} line {line}: source {name!r} repeats; name every source once"
            raise ArgumentError(msg)
        for column, into in (("image", images), ("mask", masks)):
            value = row[column]
            if not is_url(value):
                value = os.path.join(folder, os.path.expanduser(value))
                if not os.path.exists(value):
                    msg = (
                        f"{where} line {line} (source {name!r}): {column} {row[column]!r} "
                        f"does not exist (read as {value!r}; relative paths are read from "
                        "the CSV's folder)"
                    )
                    raise ArgumentError(msg)
            into[name] = value
    return images, masks


def study_inputs(image: str | None, mask: str | None, manifest: str | None) -> tuple[Any, Any, int]:
    """Return extract's image and mask: paths, or ``{source: path}`` of a study; and the count."""
    if manifest is not None:
        if image is not None:
            msg = "--manifest replaces IMAGE and MASK: give only OUT besides the flags"
            raise ArgumentError(msg)
        images, masks = manifest_study(manifest)
        return images, masks, len(images)
    if image is None or mask is None:
        msg = "give IMAGE MASK OUT, or --manifest study.csv OUT"
        raise ArgumentError(msg)
    if has_glob(image) != has_glob(mask):
        msg = (
            f"IMAGE {image!r} and MASK {mask!r}: either both are glob patterns (a study) "
            "or neither is (one image)"
        )
        raise ArgumentError(msg)
    if has_glob(image):
        images, masks = pair_globs(image, mask)
        return images, masks, len(images)
    return image, mask, 1
