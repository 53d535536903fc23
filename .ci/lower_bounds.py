"""Print pip constraints that pin every dependency to its declared lower bound.

Usage: ``python .ci/lower_bounds.py [EXTRA ...] > constraints.txt`` (default extra: ``test``).

Reads ``pyproject.toml`` next to this folder: the core dependencies plus the named extras
(an extra that names this project, ``zarr-instances[a,b]``, is followed). Every ``>=X``
becomes ``name==X``. torch is the exception: it stays at the CPU build on disk
(``torch==2.13.0``), whatever its declared floor, so that no other torch is downloaded.
A requirement without a ``>=`` floor is an error: every dependency must declare one.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TORCH = "torch==2.13.0"
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(pyproject: Path, extras: list[str]) -> list[str]:
    """Return one ``name==floor`` line per dependency of the core and these extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    self_name = _norm(project["name"])
    optional = project.get("optional-dependencies", {})
    reqs: list[str] = list(project["dependencies"])
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"no extra {extra!r} in {pyproject}")
        for req in optional[extra]:
            m = _REQ.match(req)
            if m and _norm(m[1]) == self_name:
                todo.extend(e.strip() for e in (m[2] or "").split(",") if e.strip())
            else:
                reqs.append(req)
    pins: dict[str, str] = {}
    for req in reqs:
        m = _REQ.match(req.split(";")[0])
        if not m:
            raise SystemExit(f"cannot read requirement {req!r}")
        name = _norm(m[1])
        if name == "torch":
            pins[name] = TORCH
            continue
        floor = re.search(r">=\s*([0-9][^,\s]*)", m[3])
        if not floor:
            raise SystemExit(f"{req!r} declares no lower bound (>=)")
        line = f"{name}=={floor[1]}"
        if pins.get(name, line) != line:
            raise SystemExit(f"{name} has two different floors: {pins[name]} and {line}")
        pins[name] = line
    return sorted(pins.values())


def main(argv: list[str]) -> None:
    """Print the constraints for the extras named in ``argv`` (default ``test``)."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    print("\n".join(constraints(pyproject, argv or ["test"])))


if __name__ == "__main__":
    main(sys.argv[1:])
