"""Every ```python block of the README and of docs/*.md runs as written.

Each block runs in a fresh interpreter, in an empty temporary folder, under a time limit, so a block can use
only what the package ships and what the block itself sets up. A block that is a fragment (a signature, a loop
body) carries the marker ``<!-- fragment -->`` on the line before its fence; fragments are reported as skipped,
so ``pytest -ra`` lists each one, and they must stay few.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._paths import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
FRAGMENT = re.compile(r"^<!--\s*fragment\b.*-->$")
BLOCK_TIMEOUT_S = 90
#: At most this share of the blocks may be fragments: examples are meant to run.
MAX_FRAGMENT_SHARE = 0.25


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    code: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(REPO_ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with the line of their fence and their fragment marker."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"{path.name}:{i + 1}: unclosed ```python block"
            blocks.append(Block(path, i + 1, "\n".join(lines[i + 1:end]) + "\n", bool(FRAGMENT.match(before))))
            i = end
        i += 1
    return blocks


BLOCKS = [b for doc in DOCUMENTS for b in python_blocks(doc)]


def test_the_block_finder_reads_fences_and_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```python\nx = 1\n```\n\n<!-- fragment -->\n```python\nsession.log(x)\n```\n"
                   "```bash\nls\n```\n<!-- fragment: a loop body -->\n\n```python\ny\n```\n")
    found = python_blocks(doc)
    assert [(b.line, b.code, b.fragment) for b in found] == [
        (3, "x = 1\n", False), (8, "session.log(x)\n", True), (16, "y\n", True)]


def test_fragments_are_few():
    fragments = [b.id for b in BLOCKS if b.fragment]
    assert BLOCKS, "no ```python blocks found"
    assert len(fragments) <= MAX_FRAGMENT_SHARE * len(BLOCKS), (
        f"{len(fragments)} of {len(BLOCKS)} blocks are marked as fragments: {fragments}")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_documented_example_runs(block: Block, tmp_path: Path) -> None:
    if block.fragment:
        pytest.skip(f"{block.id} is marked <!-- fragment -->")
    script = tmp_path / "example.py"
    script.write_text(block.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "ATHERIA_"))}
    env.update(MPLBACKEND="Agg", ATHERIA_HEADLESS="1")
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: did not finish in {BLOCK_TIMEOUT_S} s")
    assert done.returncode == 0, f"{block.id} failed:\n{block.code}\n--- stderr:\n{done.stderr[-4000:]}"
