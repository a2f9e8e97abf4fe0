"""Shared fixtures: a directory on another filesystem and the platform fakes."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._paths import other_filesystem
from tests.fakes.google_colab import install_fake_colab
from tests.fakes.kaggle_secrets import make_kaggle_secrets


@pytest.fixture
def other_fs_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a different filesystem from the system temp dir (tmpfs /dev/shm), like a Drive mount."""
    d = other_filesystem(tmp_path, prefix="atheria-test-")
    if d is None:
        pytest.skip("no separate filesystem (/dev/shm) available")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_colab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a fake ``google.colab`` whose Drive is a folder; returns its shared state."""
    modules, state = install_fake_colab(tmp_path / "drive-backing")
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return state


@pytest.fixture
def fake_kaggle_secrets(monkeypatch: pytest.MonkeyPatch):
    """Install a fake ``kaggle_secrets``; returns the dict of secrets it serves (fill it in the test)."""
    secrets: dict[str, str] = {}
    monkeypatch.setitem(sys.modules, "kaggle_secrets", make_kaggle_secrets(secrets))
    return secrets
