"""The command line's words: argument types, one-line errors, library messages in CLI terms."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .errors import ZarrInstancesError

__all__ = [
    "USER_ERRORS",
    "CommandParser",
    "Parser",
    "cli_words",
    "diameter",
    "fail",
    "int_at_least",
    "json_object",
    "mib",
]

# Errors the library raises for user input; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ZarrInstancesError,
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class CommandParser(Parser):
    """A subcommand's parser: positional arguments may sit between flags.

    ``extract`` has optional positionals (IMAGE MASK are left out with ``--manifest``),
    which plain argparse would fill too early in ``IMAGE MASK --diameter 8 OUT``;
    parsing intermixed reads the flags first, then all positionals together.
    """

    _inner = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def int_at_least(low: int) -> Callable[[str], int]:
    """Return an argparse ``type`` accepting integers ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"must be an integer >= {low}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if value < low:
            msg = f"must be >= {low}, got {value}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def mib(text: str) -> float:
    """Parse ``--memory-limit``: MiB, at least one byte."""
    try:
        value = float(text)
    except ValueError:
        msg = f"must be a number of MiB > 0, e.g. 256, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not value * 2**20 >= 1:  # also refuses nan
        msg = f"must be a number of MiB > 0, e.g. 256, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


# Python parameter -> CLI word, per command (positional arguments in capitals).
_WORDS = {
    "extract": {
        "out": "OUT",
        "image": "IMAGE",
        "mask": "MASK",
        "diameter": "--diameter",
        "auto_quantile": "--auto-quantile",
        "axes": "--axes",
        "extract_mask": "--extract-mask",
        "chunk_i": "--chunk-i",
        "shards": "--shards",
        "order": "--order",
        "seed": "--seed",
        "zarr_format": "--zarr-format",
        "compressors": "--compressor",
        "tile_size": "--tile-size",
        "memory_limit": "--memory-limit",
        "storage_options": "--storage-options",
        "metadata": "--metadata",
    },
    "inspect": {
        "zarr_path": "STORE",
        "store": "STORE",
        "channel": "--channel",
        "n": "--n",
        "storage_options": "--storage-options",
    },
}


def cli_words(message: str, command: str) -> str:
    """Rewrite a library message for a CLI user: flags for parameters, one line.

    ``name=value`` becomes ``FLAG value`` (``OUT value`` for a positional argument);
    ``name must``, ``name needs`` and ``name: stored`` name the flag;
    ``overwrite=True`` becomes ``--overwrite`` and ``remove_background`` becomes
    ``--keep-background`` (with the values inverted). Names inside paths and quotes
    are left alone.
    """
    text = " ".join(message.split())
    text = text.replace("overwrite=True", "--overwrite").replace("append=True", "--append")
    text = text.replace(
        "the same extract_instances call (or zarr-instances extract command)",
        "the same zarr-instances extract command",
    )

    def keep(match: re.Match[str]) -> str:
        was, now = ("off" if v == "True" else "on" for v in match.groups())
        return f"--keep-background: stored {was}, now {now}"

    text = re.sub(r"\bremove_background: stored (True|False), now (True|False)", keep, text)
    for name, word in _WORDS.get(command, {}).items():
        text = re.sub(rf"(?<![\w'\"./-]){name}=", f"{word} ", text)
        if word.startswith("--"):  # not "image and mask must ..."
            text = re.sub(rf"(?<![\w'\"./-]){name}(?= must\b| needs\b|: stored\b)", word, text)
    return text


def fail(command: str, message: str) -> int:
    print(f"zarr-instances {command}: error: {message}", file=sys.stderr)
    return 2


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def json_object(text: str) -> dict[str, Any]:
    """Parse the value of ``--storage-options``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"must be a JSON object, e.g. '{{\"anon\": true}}', got {text!r} ({exc})"
        raise argparse.ArgumentTypeError(msg) from exc
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "null")
        msg = f"must be a JSON object, e.g. '{{\"anon\": true}}', got {text!r} (a JSON {kind})"
        raise argparse.ArgumentTypeError(msg)
    return value


def diameter(text: str) -> int | str:
    """Parse ``--diameter``: a positive integer or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int_at_least(1)(text)
    except argparse.ArgumentTypeError:
        msg = f"must be an integer >= 1 or 'auto', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
