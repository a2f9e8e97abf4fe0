"""Paths the tests and benches share: the repository root and a directory on another filesystem.

Plain module (no torch, no pytest): the kill worker imports it at every cold start.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def other_filesystem(near: Path, prefix: str) -> Path | None:
    """A new directory on tmpfs ``/dev/shm`` when that is a different filesystem from ``near``, else None.

    A Drive mount is another filesystem: renames across it are copies, so tests and benches exercise that too.
    """
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(near).st_dev:
        return None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
