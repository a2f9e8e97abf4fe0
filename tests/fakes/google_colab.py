"""A fake ``google.colab`` package that follows the real one's API (drive, userdata, the IPython shell class).

Real API (google.colab, colabtools):
- ``drive.mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False)``
- ``drive.flush_and_unmount(timeout_ms=24 * 60 * 60 * 1000)``
- ``userdata.get(key)`` raising ``userdata.SecretNotFoundError`` / ``userdata.NotebookAccessError``
- the kernel's shell class lives in ``google.colab._shell`` (``Shell``).

``install_fake_colab(backing_dir)`` builds the modules; "Drive" is ``backing_dir`` (use a directory on another
filesystem, such as /dev/shm, to get Drive's cross-device behaviour).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path


class FakeColabState:
    def __init__(self, backing_dir: Path) -> None:
        self.backing_dir = Path(backing_dir)
        self.mounts: list[str] = []
        self.flush_calls = 0
        self.mounted_at: str | None = None
        self.fail_mount = False
        self.secrets: dict[str, str] = {}
        self.secret_access_denied: set[str] = set()


def install_fake_colab(backing_dir: os.PathLike | str) -> tuple[dict[str, types.ModuleType], FakeColabState]:
    """Return the fake modules (to put into ``sys.modules``) and the state they share."""
    state = FakeColabState(Path(backing_dir))
    state.backing_dir.mkdir(parents=True, exist_ok=True)

    colab = types.ModuleType("google.colab")
    colab.__path__ = []  # a package
    drive = types.ModuleType("google.colab.drive")
    userdata = types.ModuleType("google.colab.userdata")
    shell_mod = types.ModuleType("google.colab._shell")

    def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
        if state.fail_mount:
            raise ValueError("mount failed")
        state.mounts.append(str(mountpoint))
        mp = Path(mountpoint)
        mp.mkdir(parents=True, exist_ok=True)
        link = mp / "MyDrive"
        if link.is_symlink() or link.exists():
            if not force_remount and state.mounted_at == str(mountpoint):
                return
            if link.is_symlink():
                link.unlink()
        link.symlink_to(state.backing_dir, target_is_directory=True)
        state.mounted_at = str(mountpoint)

    def flush_and_unmount(timeout_ms=24 * 60 * 60 * 1000):
        state.flush_calls += 1
        if state.mounted_at is None:
            raise ValueError("Drive not mounted, so nothing to flush and unmount.")
        link = Path(state.mounted_at) / "MyDrive"
        if link.is_symlink():
            link.unlink()
        state.mounted_at = None

    class SecretNotFoundError(Exception):
        pass

    class NotebookAccessError(Exception):
        pass

    def get(key):
        if key in state.secret_access_denied:
            raise NotebookAccessError(key)
        if key not in state.secrets:
            raise SecretNotFoundError(key)
        return state.secrets[key]

    class Shell:  # the class of get_ipython() inside a Colab kernel
        pass

    Shell.__module__ = "google.colab._shell"
    drive.mount = mount
    drive.flush_and_unmount = flush_and_unmount
    userdata.get = get
    userdata.SecretNotFoundError = SecretNotFoundError
    userdata.NotebookAccessError = NotebookAccessError
    shell_mod.Shell = Shell
    colab.drive = drive
    colab.userdata = userdata
    colab._shell = shell_mod

    google = sys.modules.get("google")
    if google is None:
        google = types.ModuleType("google")
        google.__path__ = []
    modules = {
        "google": google,
        "google.colab": colab,
        "google.colab.drive": drive,
        "google.colab.userdata": userdata,
        "google.colab._shell": shell_mod,
    }
    return modules, state


def drop_mount(state: FakeColabState) -> None:
    """Simulate the Drive FUSE mount dropping (Errno 107): MyDrive points nowhere."""
    if state.mounted_at is None:
        return
    link = Path(state.mounted_at) / "MyDrive"
    if link.is_symlink():
        link.unlink()
    dead = Path(state.mounted_at) / ".dead-endpoint"
    link.symlink_to(dead, target_is_directory=True)
