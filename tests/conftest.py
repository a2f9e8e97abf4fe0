"""Shared fixtures: the repository's paths, the real-data directory and the platform fakes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.fakes.google_colab import install_fake_colab
from tests.fakes.kaggle_secrets import make_kaggle_secrets

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def shared_data() -> Path:
    """The development data set beside the checkout (real Binance candles); skips where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real market data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def other_fs_dir(tmp_path: Path) -> Path:
    """A directory on a different filesystem from the system temp dir (tmpfs /dev/shm), like a Drive mount."""
    base = Path("/dev/shm")
    if not base.is_dir() or os.stat(base).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no separate filesystem (/dev/shm) available")
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="atheria-test-", dir=base))
    yield d
    import shutil

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
