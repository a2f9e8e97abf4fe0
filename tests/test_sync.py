"""Sync targets, the background worker and resume across sessions (atheria_kit.sync)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
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
    KaggleInputSource,
    RemoteUnavailableError,
    RetryPolicy,
    SourceUnavailableError,
    SyncSchedule,
    SyncWorker,
    colab_drive_target,
    resume_from_best_source,
)
from tests.fakes.clock import ManualClock
from tests.fakes.faulty_fs import FaultyFileSystem
from tests.fakes.google_colab import drop_mount
from tests.helpers import make_checkpoints, no_wait, weights_only_round_trip


def remote_manifest_files(target) -> list[str]:
    return [e["file"] for e in json.loads(_read(target, "manifest.json"))["checkpoints"]]


def _read(target, key: str) -> bytes:
    return target.fs.cat_file(target._path(key))


def memory_target() -> FsspecTarget:
    return FsspecTarget(f"memory://sync-{uuid.uuid4().hex}")


def write_run(directory: Path, steps: list[int], lineage: str, size: int = 1000) -> dict[str, bytes]:
    """A checkpoint folder of the run ``lineage``, manifest written by hand as docs/architecture.md specifies."""
    directory.mkdir(parents=True, exist_ok=True)
    entries, blobs = [], {}
    for step in steps:
        name = f"ckpt-{step:010d}.pt"
        data = (hashlib.sha256(f"{lineage}:{step}".encode()).digest() * (size // 32 + 1))[:size]
        (directory / name).write_bytes(data)
        blobs[name] = data
        entries.append({"file": name, "step": step, "episode": step, "metrics": {"loss": 1.0 / (step + 1)},
                        "size": size, "sha256": hashlib.sha256(data).hexdigest(), "time": 1.7e9 + step,
                        "versions": {}, "lineage": lineage})
    (directory / "manifest.json").write_text(json.dumps(
        {"format": "atheria-checkpoints", "version": 1, "monitor": "loss", "mode": "min", "lineage": lineage,
         "checkpoints": entries}))
    return blobs


def snapshot(target) -> dict[str, bytes]:
    """Every file on a target with its bytes."""
    return {k: _read(target, k) for k in target.list()}


def sync_once(local: Path, target) -> None:
    """One successful mirror of ``local`` by a worker that then stops, leaving ``target`` open for the test."""
    worker = SyncWorker(local, target, wait=no_wait)
    assert worker.sync_now(30)
    assert worker.close(30, final_sync=False, close_target=False)


class AdvancingWait:
    """An injected backoff ``wait`` that records each delay and moves a manual clock by it (no sleeping)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock, self.delays = clock, []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.t += seconds


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


# ------------------------------------------------------------------------------ unreachable vs empty


def _unreachable_targets(tmp_path):
    """Targets that cannot be read, each for a different reason a real remote has."""
    dropped = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)  # Errno 107 on every call
    timing_out = FaultyFileSystem(fsspec.filesystem("memory"))
    for op in ("info", "find", "open_read"):
        timing_out.fail_next(op, TimeoutError("the read timed out"), times=100)
    refused = FaultyFileSystem(fsspec.filesystem("memory"))
    for op in ("info", "find", "open_read"):
        refused.fail_next(op, PermissionError(13, "Permission denied"), times=100)
    return {
        "dropped mount": FsspecTarget("/run", fs=dropped, name="dropped"),
        "timeout": FsspecTarget("/run", fs=timing_out, name="slow"),
        "refused": FsspecTarget("/run", fs=refused, name="refused"),
        "unmounted folder": DirectoryTarget(tmp_path / "mnt" / "MyDrive" / "run", mount_root=tmp_path / "mnt" / "MyDrive"),
    }


@pytest.mark.parametrize("why", ["dropped mount", "timeout", "refused", "unmounted folder"])
def test_an_unreachable_target_says_so_on_every_read(why, tmp_path):
    target = _unreachable_targets(tmp_path)[why]
    for read in (target.list, lambda: target.exists("manifest.json"), target.read_manifest,
                 lambda: target.get("manifest.json", tmp_path / "m.json")):
        with pytest.raises(SourceUnavailableError) as info:
            read()
        assert info.value.source == target.name
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("kind", ["memory", "folder not created yet", "mounted folder"])
def test_a_reachable_empty_target_is_empty(kind, tmp_path):
    if kind == "memory":
        target = memory_target()
    elif kind == "folder not created yet":
        target = DirectoryTarget(tmp_path / "drive" / "run")
    else:
        (tmp_path / "mnt" / "MyDrive").mkdir(parents=True)
        target = DirectoryTarget(tmp_path / "mnt" / "MyDrive" / "run", mount_root=tmp_path / "mnt" / "MyDrive")
    assert target.list() == []
    assert target.exists("manifest.json") is False
    assert target.read_manifest() is None
    with pytest.raises(FileNotFoundError):
        target.get("manifest.json", tmp_path / "m.json")


def test_a_failing_lookup_is_not_a_missing_file(tmp_path):
    # fsspec's own exists() answers False for any error; a timeout on the manifest must not read as "no manifest".
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    target = FsspecTarget(f"/r-{uuid.uuid4().hex}", fs=faulty)
    write_run(tmp_path / "a", [1], "a")
    target.put(tmp_path / "a" / "manifest.json", "manifest.json")
    faulty.fail_next("info", TimeoutError("timed out"))
    with pytest.raises(SourceUnavailableError, match="TimeoutError"):
        target.read_manifest()
    assert target.read_manifest()["lineage"] == "a"  # once it answers, it is read


def test_a_local_disk_error_while_downloading_is_not_called_unreachable(tmp_path, monkeypatch):
    target = memory_target()
    src = tmp_path / "x"
    src.write_bytes(b"1" * 100)
    target.put(src, "ckpt-0000000001.pt")
    import atheria_kit.sync.targets as targets_module

    real = targets_module.atomic_open

    def full_disk(path, mode="wb"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(targets_module, "atomic_open", full_disk)
    with pytest.raises(OSError) as info:
        target.get("ckpt-0000000001.pt", tmp_path / "copy")
    assert not isinstance(info.value, SourceUnavailableError) and info.value.errno == errno.ENOSPC
    monkeypatch.setattr(targets_module, "atomic_open", real)


def test_a_missing_kaggle_input_is_unreachable_and_an_empty_one_is_empty(tmp_path):
    with pytest.raises(SourceUnavailableError, match="Add Input"):
        KaggleInputSource(tmp_path / "absent").read_manifest()
    (tmp_path / "empty").mkdir()
    assert KaggleInputSource(tmp_path / "empty").read_manifest() is None


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


def test_a_drive_that_cannot_be_remounted_is_unreachable_and_nothing_lands_on_the_vm_disk(fake_colab, tmp_path):
    mountpoint = tmp_path / "content" / "drive"
    tgt = colab_drive_target("ckpts", mountpoint=str(mountpoint))
    src = tmp_path / "c.pt"
    src.write_bytes(b"q" * 10)
    tgt.put(src, "ckpt-0000000001.pt")
    drop_mount(fake_colab)
    fake_colab.fail_mount = True
    with pytest.raises(DriveDisconnectedError):
        tgt.list()  # not "empty": a new session must not start from zero on this
    with pytest.raises(SourceUnavailableError):
        tgt.put(src, "ckpt-0000000002.pt")
    assert not (mountpoint / ".dead-endpoint").exists()  # nothing was created under the dead mount point
    assert sorted(p.name for p in (fake_colab.backing_dir / "ckpts").iterdir()) == ["ckpt-0000000001.pt"]


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
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "is failing: 3 attempts in a row" in
                r.message]
    assert len(warnings) == 1
    st = worker.status()
    assert st["failures"] == 4 and st["consecutive_failures"] == 0 and st["healthy"]
    assert remote_manifest_files(tgt) == ["ckpt-0000000001.pt"]
    worker.close(30)


def test_a_session_gets_the_failing_and_recovered_alerts_instead_of_warning_records(tmp_path, caplog):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    tgt = FsspecTarget(f"/a-{uuid.uuid4().hex}", fs=faulty)
    make_checkpoints(tmp_path / "local", [1])
    faulty.fail_next("open_write", OSError(errno.EIO, "Input/output error"), times=3)
    alerts: list[tuple[str, str]] = []
    worker = SyncWorker(tmp_path / "local", tgt, retry=RetryPolicy(initial_delay=1), warn_after=3,
                        wait=lambda _s: None, on_alert=lambda kind, text: alerts.append((kind, text)))
    with caplog.at_level(logging.INFO, logger="atheria_kit.sync"):
        assert worker.sync_now(timeout=30)
    assert [k for k, _ in alerts] == ["failing", "recovered"]
    assert "is failing: 3 attempts in a row (last: OSError: [Errno 5] Input/output error)" in alerts[0][1]
    assert "drive.mount('/content/drive')" in alerts[0][1]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # shown once, by the session
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
    assert res.found and res.step == 9 and res.downloaded and res.verified and res.source == drive.name
    assert res.episode == 9 and res.looked_in == (f"local folder {fresh}", drive.name)
    assert res.describe() == f"resumed from ckpt-0000000009.pt (downloaded from {drive.name}, verified)"
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
    res = resume_from_best_source(tmp_path / "local", [remote])
    assert not res.found and not (tmp_path / "local" / "ckpt-0000000099.pt").exists()


def test_a_first_run_finds_nothing_and_says_where_it_looked(tmp_path):
    empty = memory_target()
    res = resume_from_best_source(tmp_path / "local", [empty])
    assert not res.found and res.step is None and res.source is None and res.unavailable == ()
    assert res.describe() == (f"no checkpoint found in local folder {tmp_path / 'local'}, {empty.name}; "
                              "starting from the beginning")


def test_resume_retries_an_unreachable_remote_with_backoff_until_it_answers(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    remote = FsspecTarget(f"/r-{uuid.uuid4().hex}", fs=faulty, name="flaky drive")
    blobs = write_run(tmp_path / "old-vm", [4, 8], "run-a")
    with SyncWorker(tmp_path / "old-vm", remote, wait=no_wait) as w:
        assert w.sync_now(30)
    faulty.fail_next("info", TimeoutError("timed out"), times=3)  # the first three reads fail, then it answers
    clock = ManualClock()
    wait = AdvancingWait(clock)
    res = resume_from_best_source(tmp_path / "new-vm", [remote], retry_seconds=60, wait=wait, clock=clock)
    assert wait.delays == [1.0, 2.0, 4.0]
    assert res.found and res.step == 8 and res.lineage == "run-a" and res.unavailable == ()
    assert (tmp_path / "new-vm" / "ckpt-0000000008.pt").read_bytes() == blobs["ckpt-0000000008.pt"]


def test_a_remote_that_stays_unreachable_stops_the_start_and_names_the_choices(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)
    broken = FsspecTarget("/nowhere", fs=faulty, name="dead drive")
    clock = ManualClock()
    wait = AdvancingWait(clock)
    with pytest.raises(RemoteUnavailableError) as info:
        resume_from_best_source(tmp_path / "local", [broken], retry_seconds=10, wait=wait, clock=clock)
    # 1 + 2 + 4 s, then the 3 s left of the 10 s window; then it gives up.
    assert wait.delays == [1.0, 2.0, 4.0, 3.0] and clock.t == 10.0
    err = info.value
    assert err.sources == ("dead drive",)
    assert err.last_error.startswith("OSError") and "Transport endpoint is not connected" in err.last_error
    assert "dead drive" in str(err)
    assert ("run again when it is reachable, or start without it by setting remote_unavailable='ignore'"
            in str(err))
    assert not (tmp_path / "local" / "manifest.json").exists()


def test_a_stuck_mount_that_never_answers_is_unreachable_within_the_read_timeout(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    stuck = threading.Event()
    faulty.before_op = lambda op, path: stuck.wait(60)  # every call hangs, like a dead FUSE mount
    remote = FsspecTarget("/stuck", fs=faulty, name="stuck drive")
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailableError) as info:
        resume_from_best_source(tmp_path / "local", [remote], retry_seconds=0, read_timeout=0.3)
    elapsed = time.monotonic() - t0
    stuck.set()
    assert elapsed < 0.3 + 1.0
    assert "stuck drive did not answer within 0.3 s (reading its manifest)" in info.value.last_error


def test_ignore_goes_on_with_what_it_could_read_and_says_what_it_could_not(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)
    broken = FsspecTarget("/nowhere", fs=faulty, name="dead drive")
    write_run(tmp_path / "local", [3], "run-a")
    res = resume_from_best_source(tmp_path / "local", [broken], unavailable="ignore", retry_seconds=0)
    assert res.found and res.source == "local" and res.step == 3 and res.unavailable == ("dead drive",)
    assert res.describe() == ("resumed from ckpt-0000000003.pt (local copy, verified); dead drive could not be read "
                              "(remote_unavailable='ignore'), so a newer checkpoint there was not considered")
    assert any("dead drive unavailable" in p for p in res.problems)


def test_a_download_cut_by_an_outage_is_retried_not_skipped_for_an_older_copy(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    remote = FsspecTarget(f"/r-{uuid.uuid4().hex}", fs=faulty, name="drive")
    write_run(tmp_path / "a", [5, 9], "run-a")
    with SyncWorker(tmp_path / "a", remote, wait=no_wait) as w:
        assert w.sync_now(30)
    write_run(tmp_path / "b", [5], "run-a")  # this VM has an older copy of the same run
    faulty.fail_next("open_read", ConnectionResetError(104, "Connection reset by peer"), times=2)
    clock = ManualClock()
    res = resume_from_best_source(tmp_path / "b", [remote], wait=AdvancingWait(clock), clock=clock)
    assert res.step == 9 and res.downloaded


def test_the_new_vm_scenario_a_brief_outage_never_costs_the_remote_history(tmp_path, other_fs_dir):
    """A new VM whose first read of Drive fails stops (it does not start from zero and prune Drive); the next
    start, with Drive back, resumes from it."""
    faulty = FaultyFileSystem(LocalFileSystem())
    drive = DirectoryTarget(other_fs_dir / "run", fs=faulty, name="Drive")
    write_run(tmp_path / "old-vm", [100, 200, 210], "run-a")
    with SyncWorker(tmp_path / "old-vm", drive, wait=no_wait) as w:
        assert w.sync_now(30)
    history = snapshot(drive)
    faulty.disconnected = lambda: True
    new_vm = tmp_path / "new-vm"
    clock = ManualClock()
    with pytest.raises(RemoteUnavailableError):
        resume_from_best_source(new_vm, [drive], retry_seconds=30, wait=AdvancingWait(clock), clock=clock)
    faulty.disconnected = lambda: False
    assert snapshot(drive) == history
    res = resume_from_best_source(new_vm, [drive], fetch="all")
    assert res.step == 210 and res.lineage == "run-a"
    assert json.loads((new_vm / "manifest.json").read_text())["lineage"] == "run-a"
    with SyncWorker(new_vm, drive, wait=no_wait) as w:  # the resumed run syncs as the owner again
        assert w.sync_now(30)
    assert snapshot(drive) == history


def test_fetch_all_brings_the_best_checkpoints_too(tmp_path):
    remote = memory_target()
    make_checkpoints(tmp_path / "a", [1, 2, 3])
    with SyncWorker(tmp_path / "a", remote, wait=no_wait) as w:
        assert w.sync_now(30)
    res = resume_from_best_source(tmp_path / "b", [remote], fetch="all")
    assert res.step == 3 and res.downloaded
    assert [r.step for r in CheckpointManager(tmp_path / "b").records()] == [1, 2, 3]


# ------------------------------------------------------------------------------ whose remote it is


def test_the_worker_never_touches_another_runs_remote(tmp_path, other_fs_dir):
    drive = DirectoryTarget(other_fs_dir / "run", name="Drive folder")
    write_run(tmp_path / "first", [100, 200], "run-a")
    sync_once(tmp_path / "first", drive)
    before = snapshot(drive)
    write_run(tmp_path / "second", [1, 2, 3], "run-b")  # a different run pointed at the same folder
    worker = SyncWorker(tmp_path / "second", drive, wait=no_wait)
    assert worker.sync_now(30) is False
    st = worker.status()
    assert st["blocked"].startswith("remote Drive folder holds another run (lineage run-a, newest step 200); set "
                                    "start_over=True to archive it, or choose another remote folder")
    assert st["last_error"] == st["blocked"] and not st["healthy"]
    assert snapshot(drive) == before  # nothing written, nothing deleted, the manifest is run-a's
    state = worker.remote_state()
    assert (state.newest_remote_file, state.checkpoints_behind, state.complete) == (None, 3, False)
    assert state.describe().startswith("remote copy is 3 checkpoints behind: it holds no checkpoint of this run "
                                       "(local ckpt-0000000003.pt); last error: remote Drive folder holds another run")
    assert worker.close(30) is False
    assert snapshot(drive) == before


def test_only_own_superseded_files_are_deleted_and_never_newer_ones(tmp_path):
    remote = memory_target()
    write_run(tmp_path / "ahead", [1, 2, 4, 5], "run-a")  # the remote got further than this VM's copy
    sync_once(tmp_path / "ahead", remote)
    stranger = tmp_path / "stranger.pt"
    stranger.write_bytes(b"another run's upload, killed before its manifest")
    remote.put(stranger, "ckpt-0000000000.pt")  # listed by no manifest: not ours to delete
    local = tmp_path / "behind"
    write_run(local, [2, 3], "run-a")
    sync_once(local, remote)
    assert sorted(k for k in remote.list() if k.startswith("ckpt")) == [
        "ckpt-0000000000.pt",  # unknown origin: kept
        "ckpt-0000000002.pt", "ckpt-0000000003.pt",  # local retention keeps these
        "ckpt-0000000004.pt", "ckpt-0000000005.pt",  # newer than the newest local checkpoint: kept
    ]  # step 1, this run's and superseded by its retention, is the only one deleted
    assert remote_manifest_files(remote) == [f"ckpt-{s:010d}.pt" for s in (2, 3, 4, 5)]
    assert _read(remote, "ckpt-0000000000.pt") == stranger.read_bytes()


def test_drive_empties_only_its_own_superseded_files_before_deleting(tmp_path, other_fs_dir):
    faulty = FaultyFileSystem(LocalFileSystem())
    drive = DirectoryTarget(other_fs_dir / "run", fs=faulty)
    write_run(tmp_path / "local", [1, 2], "run-a")
    with SyncWorker(tmp_path / "local", drive, wait=no_wait) as w:
        assert w.sync_now(30)
        orphan = tmp_path / "orphan"
        orphan.write_bytes(b"o" * 50)
        drive.put(orphan, "ckpt-0000000001-r1.pt")  # an unlisted file (a re-save nobody committed)
        (tmp_path / "local" / "ckpt-0000000001.pt").unlink()
        write_run(tmp_path / "local", [2, 3], "run-a")
        faulty.calls.clear()
        assert w.sync_now(30)
    touched = [(op, Path(p).name) for op, p in faulty.calls if op in ("open_write", "rm")]
    assert ("open_write", "ckpt-0000000001.pt") in touched and ("rm", "ckpt-0000000001.pt") in touched
    assert touched.index(("open_write", "ckpt-0000000001.pt")) < touched.index(("rm", "ckpt-0000000001.pt"))
    assert not any(name == "ckpt-0000000001-r1.pt" for _, name in touched)
    assert (other_fs_dir / "run" / "ckpt-0000000001-r1.pt").read_bytes() == b"o" * 50


def test_a_damaged_remote_manifest_is_replaced_but_nothing_it_may_list_is_deleted(tmp_path):
    remote = memory_target()
    write_run(tmp_path / "old", [1, 2], "run-a")
    sync_once(tmp_path / "old", remote)
    remote.fs.pipe_file(remote._path("manifest.json"), b"{ torn")
    write_run(tmp_path / "local", [3], "run-a")
    sync_once(tmp_path / "local", remote)
    assert sorted(k for k in remote.list() if k.startswith("ckpt")) == [
        "ckpt-0000000001.pt", "ckpt-0000000002.pt", "ckpt-0000000003.pt"]
    assert remote_manifest_files(remote) == ["ckpt-0000000003.pt"]


def test_an_unreadable_remote_is_neither_written_nor_pruned_until_it_is_read(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    remote = FsspecTarget(f"/r-{uuid.uuid4().hex}", fs=faulty)
    write_run(tmp_path / "local", [1, 2, 3], "run-a")
    sync_once(tmp_path / "local", remote)
    (tmp_path / "local" / "ckpt-0000000001.pt").unlink()
    write_run(tmp_path / "local", [2, 3, 4], "run-a")
    faulty.calls.clear()
    faulty.fail_next("info", TimeoutError("timed out"), times=3)  # the manifest cannot be read three times
    delays: list[float] = []
    with SyncWorker(tmp_path / "local", remote, wait=delays.append,
                    retry=RetryPolicy(initial_delay=1, multiplier=2, max_delay=8)) as w:
        assert w.sync_now(30)
    assert delays == [1, 2, 4]
    third_failed_read = [i for i, (op, _) in enumerate(faulty.calls) if op == "info"][2]
    assert not [op for op, _ in faulty.calls[: third_failed_read + 1] if op in ("open_write", "mv", "rm")]
    assert remote_manifest_files(remote) == [f"ckpt-{s:010d}.pt" for s in (2, 3, 4)]


def test_archive_keeps_the_previous_run_byte_for_byte_where_later_syncs_never_go(tmp_path, other_fs_dir):
    for drive in (DirectoryTarget(other_fs_dir / "run"), memory_target()):
        write_run(tmp_path / "a", [100, 200], "run-a")
        sync_once(tmp_path / "a", drive)
        before = snapshot(drive)
        local = tmp_path / f"b-{uuid.uuid4().hex}"
        write_run(local, [1], "run-b")
        worker = SyncWorker(local, drive, wait=no_wait, wall_clock=lambda: 1_700_000_000.0)
        assert not worker.sync_now(30)  # another run: refused until it is archived
        key = worker.archive_remote("start over")
        assert key == "archive/run-a-20231114T221320Z"  # 1.7e9 s after the epoch is 2023-11-14 22:13:20 UTC
        archived = {k: v for k, v in snapshot(drive).items() if k.startswith(key + "/")}
        assert archived == {f"{key}/{k}": v for k, v in before.items()}
        for steps in ([1, 2], [2, 3], [3, 4]):  # the new run syncs, and its retention deletes its own files
            write_run(local, steps, "run-b")
            for old in {p.name for p in local.glob("ckpt-*.pt")} - {f"ckpt-{s:010d}.pt" for s in steps}:
                (local / old).unlink()
            assert worker.sync_now(30)
        now = snapshot(drive)
        assert {k: v for k, v in now.items() if k.startswith("archive/")} == archived
        assert sorted(k for k in now if not k.startswith("archive/")) == [
            "ckpt-0000000003.pt", "ckpt-0000000004.pt", "manifest.json"]
        assert worker.close(30, close_target=False)


def test_archive_of_an_empty_remote_is_nothing(tmp_path):
    worker = SyncWorker(tmp_path, memory_target(), wait=no_wait, start=False)
    assert worker.archive_remote() is None


# -------------------------------------------------------------------------- what the remote holds


def test_remote_state_says_how_far_behind_the_remote_is_and_why(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    remote = FsspecTarget(f"/r-{uuid.uuid4().hex}", fs=faulty, name="bucket")
    local = tmp_path / "local"
    write_run(local, [100, 200], "run-a")
    worker = SyncWorker(local, remote, wait=no_wait)
    assert worker.sync_now(30)
    state = worker.remote_state()
    assert state.complete and state.checkpoints_behind == 0
    assert state.describe() == "remote copy is up to date: ckpt-0000000200.pt"
    write_run(local, [100, 200, 220, 240], "run-a")
    gate = threading.Event()
    faulty.fail_next("open_write", OSError(errno.EIO, "Input/output error"), times=1000)
    worker._wait = lambda s: gate.wait(30)  # hold the retry after the first failure
    assert worker.sync_now(0.0) is False
    assert worker._wait_for(lambda: worker.status()["consecutive_failures"] >= 1, 30)
    state = worker.remote_state()
    assert (state.newest_remote_file, state.newest_local_file, state.checkpoints_behind, state.complete) == (
        "ckpt-0000000200.pt", "ckpt-0000000240.pt", 2, False)
    assert state.describe() == ("remote copy is 2 checkpoints behind: newest remote ckpt-0000000200.pt (local "
                                "ckpt-0000000240.pt); last error: OSError: [Errno 5] Input/output error")
    worker.close(0.0)
    gate.set()


def test_a_remote_never_read_is_unknown_not_empty(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)
    write_run(tmp_path / "local", [7], "run-a")
    worker = SyncWorker(tmp_path / "local", FsspecTarget("/x", fs=faulty, name="dead"), wait=lambda s: None,
                        start=False)
    state = worker.remote_state()
    assert not state.known and not state.complete and state.checkpoints_behind == 1
    assert state.describe().startswith("remote copy at dead could not be read; what it holds is unknown "
                                       "(local ckpt-0000000007.pt)")


def test_close_returns_within_its_bound_when_every_upload_fails(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    faulty.fail_next("open_write", TimeoutError("upload timed out"), times=10_000)
    clock, parked = ManualClock(), threading.Event()
    write_run(tmp_path / "local", [1], "run-a")

    def wait(seconds: float) -> None:  # the backoff passes on the injected clock; past the bound, time stands still
        if clock.t >= 100:
            parked.wait(30)
            return
        clock.t += seconds

    worker = SyncWorker(tmp_path / "local", FsspecTarget("/x", fs=faulty), wait=wait, clock=clock,
                        retry=RetryPolicy(initial_delay=5, multiplier=2, max_delay=60))
    assert worker.close(timeout=100) is False
    parked.set()
    assert clock.t == 5 + 10 + 20 + 40 + 60  # the backoff that crossed the 100 s bound was the last one waited
    assert worker.status()["last_error"] == "TimeoutError: upload timed out"
