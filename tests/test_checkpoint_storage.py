"""Storage errors are clear: an unwritable directory is refused when the manager is made, and a disk that
fills up mid-write raises ``CheckpointWriteError`` and leaves the previous checkpoints and manifest intact.

Real filesystems: a 2 MiB tmpfs (filled for real), a read-only remount of it, and a directory without
write permission entered by an unprivileged process. Tests that need root to mount skip with the reason.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from atheria_kit.checkpoint import MANIFEST_NAME, CheckpointManager, CheckpointWriteError


def state_for(step: int, n: int = 64) -> dict:
    return {"w": torch.full((n,), float(step)), "step": step}


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte with one file; return it (delete it to free space)."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 1):  # smaller and smaller writes until not even one byte fits
            try:
                while fh.write(b"\0" * size):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


def listing(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n != "filler.bin")


def test_a_read_only_filesystem_is_refused_at_construction(small_tmpfs: Path) -> None:
    CheckpointManager(small_tmpfs / "run", async_save=False).save(state_for(1), step=1)
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    try:
        with pytest.raises(CheckpointWriteError) as exc:
            CheckpointManager(small_tmpfs / "run")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=False)
    err = exc.value
    assert err.errno == errno.EROFS and err.path == small_tmpfs / "run"
    assert str(small_tmpfs / "run") in str(err) and os.strerror(errno.EROFS) in str(err)
    assert "read-only" in err.hint and "EROFS" in str(err)
    assert CheckpointManager(small_tmpfs / "run").load().record.step == 1  # nothing was touched


def test_a_directory_without_write_permission_is_refused_at_construction(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    CheckpointManager(directory, async_save=False).save(state_for(1), step=1)
    directory.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(CheckpointWriteError) as exc:
                CheckpointManager(directory)
            code, text = exc.value.errno, str(exc.value)
        else:  # root ignores permissions: construct in a forked child running as "nobody"
            tmp_path.chmod(0o755)
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    CheckpointManager(directory)
                    msg = "None|no error"
                except CheckpointWriteError as e:
                    msg = f"{e.errno}|{e}"
                except BaseException as e:
                    msg = f"None|{type(e).__name__}: {e}"
                os.write(wfd, msg.encode())
                os._exit(0)
            os.close(wfd)
            with os.fdopen(rfd, "rb") as fh:
                code_text, _, text = fh.read().decode().partition("|")
            os.waitpid(pid, 0)
            code = None if code_text == "None" else int(code_text)
    finally:
        directory.chmod(0o755)
    assert code == errno.EACCES, text
    assert str(directory) in text and os.strerror(errno.EACCES) in text and "writable" in text


def test_a_full_disk_is_refused_at_construction(small_tmpfs: Path) -> None:
    fill(small_tmpfs)
    with pytest.raises(CheckpointWriteError) as exc:
        CheckpointManager(small_tmpfs / "run")
    assert exc.value.errno == errno.ENOSPC and "free space" in str(exc.value)


@pytest.mark.parametrize("how", ["blocking", "wait", "close"])
def test_a_disk_that_fills_mid_write_keeps_the_previous_checkpoints_and_the_next_save_works(
    small_tmpfs: Path, how: str
) -> None:
    mgr = CheckpointManager(small_tmpfs, policy=None, async_save=how != "blocking")
    mgr.save(state_for(1), step=1, metrics={"loss": 0.5}, blocking=True)
    mgr.save(state_for(1, n=100), step=1, metrics={"loss": 0.4}, blocking=True)  # revision 1 of step 1
    before = listing(small_tmpfs), (small_tmpfs / MANIFEST_NAME).read_bytes()
    with pytest.raises(CheckpointWriteError) as exc:
        mgr.save(state_for(2, n=1_000_000), step=2)  # 4 MB into a 2 MiB filesystem
        if how == "wait":
            mgr.wait()
        elif how == "close":
            mgr.close()
    assert exc.value.errno == errno.ENOSPC and "ckpt-0000000002.pt" in str(exc.value)
    assert "free space" in str(exc.value)
    assert (listing(small_tmpfs), (small_tmpfs / MANIFEST_NAME).read_bytes()) == before  # no temp, no sidecar
    fresh = CheckpointManager(small_tmpfs)
    loaded = fresh.load()
    assert (loaded.record.file, loaded.record.step) == ("ckpt-0000000001-r1.pt", 1)
    assert torch.equal(loaded.state["w"], state_for(1, n=100)["w"])
    fresh.save(state_for(2, n=100_000), step=2, blocking=True)  # fits: the run goes on
    assert CheckpointManager(small_tmpfs).load().record.step == 2


def test_a_disk_filled_by_something_else_fails_the_save_until_space_is_freed(small_tmpfs: Path) -> None:
    mgr = CheckpointManager(small_tmpfs, async_save=False)
    mgr.save(state_for(1), step=1)
    before = listing(small_tmpfs), (small_tmpfs / MANIFEST_NAME).read_bytes()
    filler = fill(small_tmpfs)
    with pytest.raises(CheckpointWriteError) as exc:
        mgr.save(state_for(2), step=2)
    assert exc.value.errno == errno.ENOSPC
    assert (listing(small_tmpfs), (small_tmpfs / MANIFEST_NAME).read_bytes()) == before
    filler.unlink()  # the user frees space
    mgr.save(state_for(2), step=2)
    assert CheckpointManager(small_tmpfs).load().record.step == 2
