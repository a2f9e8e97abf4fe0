"""Sync targets, the background worker and resume across sessions (atheria_kit.sync)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from atheria_kit.checkpoint import CheckpointManager
from atheria_kit.sync import (
    DirectoryTarget,
    DriveDisconnectedError,
    FsspecTarget,
    InsufficientSpaceError,
    RetryPolicy,
    SyncSchedule,
    SyncWorker,
    colab_drive_target,
    resume_from_best_source,
)
from tests.fakes.faulty_fs import FaultyFileSystem
from tests.fakes.google_colab import drop_mount
from tests.helpers import make_checkpoints, no_wait, weights_only_round_trip


def remote_manifest_files(target) -> list[str]:
    return [e["file"] for e in json.loads(_read(target, "manifest.json"))["checkpoints"]]


def _read(target, key: str) -> bytes:
    return target.fs.cat_file(target._path(key))


def memory_target() -> FsspecTarget:
    return FsspecTarget(f"memory://sync-{uuid.uuid4().hex}")


# ------------------------------------------------------------------------------------------- targets


@pytest.fixture(params=["drive_dir", "memory", "local_fsspec"])
def target(request, other_fs_dir):
    if request.param == "drive_dir":
        return DirectoryTarget(other_fs_dir / "MyDrive" / "run")
    if request.param == "memory":
        return memory_target()
    return FsspecTarget(str(other_fs_dir / "fsspec-root"), fs=LocalFileSystem())


def test_put_get_list_delete_round_trip(target, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 12345)
    assert target.put(src, "ckpt-0000000001.pt") == 12345
    assert target.put(src, "logs/metrics.jsonl") == 12345
    assert target.list() == ["ckpt-0000000001.pt", "logs/metrics.jsonl"]
    target.get("logs/metrics.jsonl", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"x" * 12345
    target.delete("ckpt-0000000001.pt")
    target.delete("never-existed.pt")
    assert not target.exists("ckpt-0000000001.pt")
    assert target.list() == ["logs/metrics.jsonl"]


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "", "a/./b"])
def test_keys_that_escape_the_root_are_refused(key, tmp_path):
    src = tmp_path / "a"
    src.write_bytes(b"1")
    with pytest.raises(ValueError, match="key="):
        memory_target().put(src, key)


def test_a_cut_off_upload_never_gets_the_final_name(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    tgt = FsspecTarget(f"/cut-{uuid.uuid4().hex}", fs=faulty)
    src = tmp_path / "c.pt"
    src.write_bytes(os.urandom(5000))
    faulty.truncate_next_write(1234)  # silently keeps 1234 of 5000 bytes
    with pytest.raises(Exception, match="incomplete"):
        tgt.put(src, "ckpt-0000000005.pt")
    assert tgt.list() == []  # neither the final name nor the temporary file remains
    tgt.put(src, "ckpt-0000000005.pt")
    assert _read(tgt, "ckpt-0000000005.pt") == src.read_bytes()


def test_upload_of_a_file_that_differs_from_its_hash_is_refused(tmp_path):
    tgt = memory_target()
    src = tmp_path / "c.pt"
    src.write_bytes(b"abc")
    with pytest.raises(Exception, match="does not match its manifest hash"):
        tgt.put(src, "ckpt-0000000001.pt", sha256=hashlib.sha256(b"abd").hexdigest())
    assert tgt.list() == []


def test_drive_delete_truncates_before_unlinking(other_fs_dir, tmp_path):
    faulty = FaultyFileSystem(LocalFileSystem())
    tgt = DirectoryTarget(other_fs_dir / "d", fs=faulty)
    src = tmp_path / "c.pt"
    src.write_bytes(b"y" * 100)
    tgt.put(src, "ckpt-0000000001.pt")
    faulty.calls.clear()
    tgt.delete("ckpt-0000000001.pt")
    ops = [op for op, _ in faulty.calls if op in ("open_write", "rm")]
    assert ops == ["open_write", "rm"]  # truncation (open for write, nothing written) precedes the removal


def test_too_little_free_space_is_a_clear_error(tmp_path, monkeypatch):
    tgt = DirectoryTarget(tmp_path / "d")
    monkeypatch.setattr(tgt, "free_space", lambda: 10)
    src = tmp_path / "c.pt"
    src.write_bytes(b"z" * 100)
    with pytest.raises(InsufficientSpaceError, match="empty the Trash"):
        tgt.put(src, "ckpt-0000000001.pt")


def test_directory_free_space_is_what_the_filesystem_reports(other_fs_dir):
    assert DirectoryTarget(other_fs_dir / "not-yet").free_space() == shutil.disk_usage(other_fs_dir).free
    assert memory_target().free_space() is None


# ------------------------------------------------------------------------------- Colab Drive mount


def test_colab_drive_remounts_after_errno_107(fake_colab, tmp_path):
    mountpoint = tmp_path / "content" / "drive"
    mydrive = mountpoint / "MyDrive"
    faulty = FaultyFileSystem(LocalFileSystem(), disconnected=lambda: not mydrive.is_dir())
    tgt = colab_drive_target("ckpts", mountpoint=str(mountpoint), fs=faulty)
    src = tmp_path / "c.pt"
    src.write_bytes(b"q" * 10)
    tgt.put(src, "ckpt-0000000001.pt")
    drop_mount(fake_colab)  # the FUSE mount dies while training goes on
    tgt.put(src, "ckpt-0000000002.pt")
    assert fake_colab.mounts == [str(mountpoint), str(mountpoint)]
    assert sorted(p.name for p in (fake_colab.backing_dir / "ckpts").iterdir()) == [
        "ckpt-0000000001.pt", "ckpt-0000000002.pt"]


def test_failed_remount_says_so_clearly(fake_colab, tmp_path, caplog):
    mountpoint = tmp_path / "content" / "drive"
    mydrive = mountpoint / "MyDrive"
    tgt = colab_drive_target("ckpts", mountpoint=str(mountpoint),
                             fs=FaultyFileSystem(LocalFileSystem(), disconnected=lambda: not mydrive.is_dir()))
    drop_mount(fake_colab)
    fake_colab.fail_mount = True
    src = tmp_path / "c.pt"
    src.write_bytes(b"q")
    with pytest.raises(DriveDisconnectedError, match="remount failed"):
        tgt.put(src, "ckpt-0000000001.pt")
    assert "force_remount=True" in caplog.text


def test_close_flushes_and_unmounts_drive_and_refuses_later_writes(fake_colab, tmp_path):
    mountpoint = tmp_path / "content" / "drive"
    tgt = colab_drive_target("ckpts", mountpoint=str(mountpoint))
    worker = SyncWorker(tmp_path / "local", tgt, wait=no_wait)
    make_checkpoints(tmp_path / "local", [1])
    assert worker.sync_now(timeout=30)
    assert worker.close(timeout=30)
    assert fake_colab.flush_calls == 1 and fake_colab.mounted_at is None
    worker.request_sync()  # ignored with a warning, never raised into training
    with pytest.raises(Exception, match="closed"):
        tgt.put(tmp_path / "local" / "manifest.json", "x")
    assert (fake_colab.backing_dir / "ckpts" / "ckpt-0000000001.pt").is_file()


# ---------------------------------------------------------------------------------------- worker


def test_worker_mirrors_files_then_manifest_last(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    tgt = FsspecTarget(f"/m-{uuid.uuid4().hex}", fs=faulty)
    blobs = make_checkpoints(tmp_path / "local", [10, 20])
    with SyncWorker(tmp_path / "local", tgt, wait=no_wait) as worker:
        assert worker.sync_now(timeout=30)
    renames = [Path(p).name for op, p in faulty.calls if op == "mv"]
    assert renames == ["ckpt-0000000010.pt", "ckpt-0000000020.pt", "manifest.json"]
    for name, data in blobs.items():
        assert _read(tgt, name) == data
    assert remote_manifest_files(tgt) == list(blobs)
    st = worker.status()
    assert st["bytes_sent"] == 2000 + len(_read(tgt, "manifest.json"))
    assert st["pending"] == 0 and st["failures"] == 0 and st["last_success_time"] is not None


def test_worker_mirrors_retention_and_sends_only_what_changed(tmp_path):
    tgt = memory_target()
    local = tmp_path / "local"
    make_checkpoints(local, [1, 2, 3])
    worker = SyncWorker(local, tgt, wait=no_wait)
    assert worker.sync_now(30)
    sent_before = worker.status()["files_sent"]
    (local / "ckpt-0000000001.pt").unlink()  # local retention dropped step 1 and added step 4
    make_checkpoints(local, [2, 3, 4])
    assert worker.sync_now(30)
    assert sorted(k for k in tgt.list() if k.startswith("ckpt")) == [
        "ckpt-0000000002.pt", "ckpt-0000000003.pt", "ckpt-0000000004.pt"]
    assert worker.status()["files_sent"] - sent_before == 2  # step 4 and the manifest only
    worker.close(30)


def test_failures_are_retried_with_backoff_and_warned_once(tmp_path, caplog):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    tgt = FsspecTarget(f"/r-{uuid.uuid4().hex}", fs=faulty)
    make_checkpoints(tmp_path / "local", [1])
    delays: list[float] = []
    faulty.fail_next("open_write", OSError(errno.EIO, "Input/output error"), times=4)
    worker = SyncWorker(tmp_path / "local", tgt, retry=RetryPolicy(initial_delay=1, multiplier=2, max_delay=5),
                        warn_after=3, wait=delays.append)
    with caplog.at_level(logging.INFO, logger="atheria_kit.sync"):
        assert worker.sync_now(timeout=30)
    assert delays == [1, 2, 4, 5]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "SYNC IS FAILING" in r.message]
    assert len(warnings) == 1
    st = worker.status()
    assert st["failures"] == 4 and st["consecutive_failures"] == 0 and st["healthy"]
    assert remote_manifest_files(tgt) == ["ckpt-0000000001.pt"]
    worker.close(30)


def test_requests_coalesce_to_the_newest_version(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    tgt = FsspecTarget(f"/c-{uuid.uuid4().hex}", fs=faulty)
    gate, entered = threading.Event(), threading.Event()

    def hold(path: str) -> None:  # the first upload blocks until the test lets it go
        if faulty.before_write is not None and "blocker" in path:
            entered.set()
            gate.wait(30)

    faulty.before_write = hold
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"b")
    log = tmp_path / "metrics.jsonl"
    worker = SyncWorker(tmp_path / "local", tgt, wait=no_wait)
    worker.submit_file(blocker)
    assert entered.wait(30)
    for i in range(5):
        log.write_text(f"version {i}\n")
        worker.submit_file(log, "logs/metrics.jsonl")
    assert worker.status()["pending"] == 2  # the blocker in flight + one coalesced log upload
    gate.set()
    assert worker.flush(30)
    assert _read(tgt, "logs/metrics.jsonl") == b"version 4\n"
    assert worker.status()["files_sent"] == 2
    worker.close(30)


def test_a_local_file_that_no_longer_matches_is_skipped_not_published(tmp_path, caplog):
    tgt = memory_target()
    local = tmp_path / "local"
    make_checkpoints(local, [1, 2])
    (local / "ckpt-0000000002.pt").write_bytes(b"bit rot")
    with SyncWorker(local, tgt, wait=no_wait) as worker:
        assert worker.sync_now(30)
    assert remote_manifest_files(tgt) == ["ckpt-0000000001.pt"]
    assert not tgt.exists("ckpt-0000000002.pt")
    assert "does not match its manifest hash" in caplog.text


def test_status_is_a_monitor_status_provider(tmp_path):
    from atheria_kit.monitor import ResourceMonitor

    worker = SyncWorker(tmp_path / "local", memory_target(), wait=no_wait)
    make_checkpoints(tmp_path / "local", [1])
    assert worker.sync_now(30)
    mon = ResourceMonitor(interval=1.0)
    mon.add_status_provider("sync", worker.status)
    snap = mon.snapshot()
    assert snap.extra["sync"]["bytes_sent"] == worker.status()["bytes_sent"] > 0
    worker.close(30)


def test_schedule_every_m_episodes_or_t_seconds():
    now = [0.0]
    s = SyncSchedule(every_episodes=3, every_seconds=100, clock=lambda: now[0])
    decisions = []
    for episode in range(1, 8):
        due = s.due(episode)
        decisions.append(due)
        if due:
            s.mark(episode)
    assert decisions == [True, False, False, True, False, False, True]
    now[0] = 150.0
    assert s.due(8)  # the clock alone makes it due
    s2 = SyncSchedule(every_episodes=3, clock=lambda: now[0])
    s2.load_state_dict(weights_only_round_trip(s.state_dict()))
    assert s2.last_episode == 7 and not s2.due(8) and s2.due(10)


@pytest.mark.parametrize("field,value", [("warn_after", 0), ("every_episodes", 0), ("every_seconds", -1.0)])
def test_bad_settings_name_the_field(field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        if field == "warn_after":
            SyncWorker(tmp_path, memory_target(), warn_after=value, start=False)
        else:
            SyncSchedule(**{field: value})


# ---------------------------------------------------------------------------------------- resume


def test_resume_on_a_fresh_vm_downloads_the_newest_and_verifies_it(tmp_path, other_fs_dir):
    drive = DirectoryTarget(other_fs_dir / "run")
    blobs = make_checkpoints(tmp_path / "old-vm", [5, 9])
    with SyncWorker(tmp_path / "old-vm", drive, wait=no_wait) as w:
        assert w.sync_now(30)
    fresh = tmp_path / "new-vm"
    res = resume_from_best_source(fresh, [drive])
    assert res is not None and res.step == 9 and res.downloaded and res.source == drive.name
    assert (fresh / "ckpt-0000000009.pt").read_bytes() == blobs["ckpt-0000000009.pt"]
    assert [r.step for r in CheckpointManager(fresh).records()] == [9]
    assert CheckpointManager(fresh).latest().step == 9


def test_resume_prefers_a_valid_local_copy_and_skips_a_corrupt_remote(tmp_path, caplog):
    remote = memory_target()
    make_checkpoints(tmp_path / "a", [3, 7])
    with SyncWorker(tmp_path / "a", remote, wait=no_wait) as w:
        assert w.sync_now(30)
    # the newest remote file is damaged after its commit (a half-synced Drive file)
    remote.fs.pipe_file(remote._path("ckpt-0000000007.pt"), b"half")
    local = tmp_path / "b"
    make_checkpoints(local, [3])
    res = resume_from_best_source(local, [remote])
    assert res.step == 3 and res.source == "local" and not res.downloaded
    assert "ckpt-0000000007.pt is not valid" in caplog.text


def test_a_file_without_a_manifest_entry_is_never_taken(tmp_path):
    remote = memory_target()
    src = tmp_path / "x"
    src.write_bytes(b"half uploaded")
    remote.put(src, "ckpt-0000000099.pt")  # no manifest lists it
    assert resume_from_best_source(tmp_path / "local", [remote]) is None


def test_first_run_is_a_no_op_and_an_unreachable_source_is_reported(tmp_path, caplog):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)
    broken = FsspecTarget("/nowhere", fs=faulty, name="dead drive")
    assert resume_from_best_source(tmp_path / "local", []) is None
    assert resume_from_best_source(tmp_path / "local", [broken]) is None
    assert "dead drive unavailable" in caplog.text


def test_fetch_all_brings_the_best_checkpoints_too(tmp_path):
    remote = memory_target()
    make_checkpoints(tmp_path / "a", [1, 2, 3])
    with SyncWorker(tmp_path / "a", remote, wait=no_wait) as w:
        assert w.sync_now(30)
    res = resume_from_best_source(tmp_path / "b", [remote], fetch="all")
    assert res.step == 3
    assert [r.step for r in CheckpointManager(tmp_path / "b").records()] == [1, 2, 3]
