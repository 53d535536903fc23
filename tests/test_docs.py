"""Every Python code block of README.md and docs/*.md runs as written.

Conventions (for whoever writes the docs):

- Every fenced block opened with ```` ```python ```` is code that runs. The blocks of
  one Markdown file run in order, in one namespace, in a fresh empty working directory
  (a block may use names and files made by an earlier block of the same file).
- A block may be preceded (last non-blank line before the fence) by
  ``<!-- setup: NAME -->``: the snippet ``SETUPS[NAME]`` below runs first, in the same
  namespace and directory. Setups only make input files a reader has of their own
  (e.g. an image and a mask); keep them few and small.
- A block that cannot run here (it needs S3 credentials, GPUs, a package outside the
  test environment) is preceded by ``<!-- not-run: REASON -->``. Such blocks are
  counted: there must stay few of them (``MAX_NOT_RUN``), each with a reason.
- Code that is not ours to run (harpy, which is not installed) goes in ```` ```text ````
  blocks or comments, never in a ```` ```python ```` block.

HTML comments do not show in GitHub's rendering of README.md nor in the mkdocs site.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

MIN_RUN = 10  # blocks that must run: the docs may not quietly lose their examples
MAX_NOT_RUN = 5  # blocks marked not-run

SETUPS = {
    # An image (c, y, x) uint16 and its label mask (y, x) as Zarr arrays in the working
    # directory: what a reader passes as paths.
    "image-and-mask-files": """
import zarr
from zarr_instances.testing import make_image_and_mask
_image, _mask = make_image_and_mask((256, 256), 40, 24, seed=0)
zarr.create_array("image.zarr", data=_image)
zarr.create_array("mask.zarr", data=_mask)
del _image, _mask
""",
}

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([^\s`]*)")
_MARK = re.compile(r"^<!--\s*(setup|not-run)\s*:\s*(.*?)\s*-->$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    setup: str | None = None
    not_run: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        block = Block(path, i + 2, lang, "\n".join(lines[i + 1 : j]) + "\n")
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mark = _MARK.match(lines[k].strip()) if k >= 0 else None
        if mark:
            kind, value = mark.groups()
            if kind == "setup":
                block.setup = value
            else:
                block.not_run = value
        out.append(block)
        i = j + 1
    return out


ALL_BLOCKS = [b for p in DOC_FILES for b in _blocks(p)]
PYTHON = [b for b in ALL_BLOCKS if b.lang == "python"]


def _run(code: str, filename: str, first_line: int, namespace: dict) -> None:
    # padded so that tracebacks name the line of the Markdown file
    exec(compile("\n" * (first_line - 1) + code, filename, "exec"), namespace)


@pytest.mark.parametrize(
    "doc",
    [p for p in DOC_FILES if any(b.path == p and b.not_run is None for b in PYTHON)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_python_blocks_run(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in (b for b in PYTHON if b.path == doc and b.not_run is None):
        if block.setup is not None:
            _run(SETUPS[block.setup], f"<setup {block.setup}>", 1, namespace)
        # a reader sees warnings, they do not stop the example
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            _run(block.code, block.where, block.line, namespace)


def test_enough_blocks_run_and_few_are_skipped():
    run = [b for b in PYTHON if b.not_run is None]
    skipped = [b for b in PYTHON if b.not_run is not None]
    assert len(run) >= MIN_RUN, [b.where for b in run]
    assert len(skipped) <= MAX_NOT_RUN, [(b.where, b.not_run) for b in skipped]
    for b in skipped:
        assert len(b.not_run) >= 10, f"{b.where}: not-run needs a reason"
        assert b.setup is None


def test_markers_are_known():
    for b in ALL_BLOCKS:
        if b.setup is not None or b.not_run is not None:
            assert b.lang == "python", f"{b.where}: a marker before a {b.lang!r} block"
        if b.setup is not None:
            assert b.setup in SETUPS, f"{b.where}: unknown setup {b.setup!r}"


def test_no_python_block_hides_behind_another_tag():
    # ```py, ```python3, ```pycon would escape the runner above
    for b in ALL_BLOCKS:
        assert b.lang in {"python", "bash", "text", "", "yaml", "json", "toml"}, (
            f"{b.where}: code block tagged {b.lang!r}"
        )


def test_no_block_imports_harpy():
    for b in PYTHON:
        assert not re.search(r"^\s*(import|from)\s+harpy\b", b.code, re.M), b.where


def test_install_instructions_use_the_repository():
    # the package is not on the package index: installs are from a clone
    bad = re.compile(r"pip install\s+(-U\s+)?[\"']?zarr-instances")
    # (nor in the error messages and docstrings of the package)
    for path in [*DOC_FILES, ROOT / "BENCHMARKS.md", *sorted((ROOT / "src").rglob("*.py"))]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not bad.search(line), f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
