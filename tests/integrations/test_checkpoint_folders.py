"""Sealed checkpoint folders: a folder counts only when its seal lists exactly its files with their sizes and
sha256; a remote folder counts only once its seal arrived; pruning touches only this run's rotated folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from atheria_kit.integrations.checkpoint_folders import (
    SEAL_NAME,
    FolderPusher,
    list_remote_folders,
    newest_verified_folder,
    remote_target,
    restore_newest_remote,
    seal_folder,
    verify_folder,
)
from atheria_kit.sync import DirectoryTarget, SourceUnavailableError


def make_folder(root: Path, step: int, payload: bytes = b"weights") -> Path:
    """A folder shaped like a Trainer checkpoint (weights, optimizer, a nested file)."""
    folder = root / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload * 100 + bytes([step % 256]))
    (folder / "optimizer.pt").write_bytes(b"opt" * 50)
    (folder / "sub" / "extra.json").write_text('{"a": 1}')
    return folder


def test_the_seal_lists_every_file_with_its_size_and_sha256_and_the_step_and_lineage(tmp_path):
    folder = make_folder(tmp_path, 500)
    seal_folder(folder, lineage="run-a")
    doc = json.loads((folder / SEAL_NAME).read_text())
    expected = {}
    for rel in ("model.safetensors", "optimizer.pt", "sub/extra.json"):
        data = (folder / rel).read_bytes()
        expected[rel] = (len(data), hashlib.sha256(data).hexdigest())
    assert {f["path"]: (f["size"], f["sha256"]) for f in doc["files"]} == expected
    assert (doc["step"], doc["lineage"]) == (500, "run-a")
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]  # the atomic write left no temp file
    assert verify_folder(folder).ok


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / "optimizer.pt").unlink(), "file optimizer.pt is missing"),
    (lambda f: (f / "late.bin").write_bytes(b"x"), "file late.bin was added after the seal"),
    (lambda f: (f / "model.safetensors").write_bytes(b"short"), "file model.safetensors has 5 bytes"),
    # same size, one byte different: only the hash can tell
    (lambda f: (f / "optimizer.pt").write_bytes(b"opt" * 49 + b"opX"), "file optimizer.pt changed after the seal"),
    (lambda f: (f / SEAL_NAME).unlink(), "it has no atheria-folder.json"),
])
def test_a_missing_added_or_changed_file_is_not_verified_and_the_reason_names_it(tmp_path, damage, reason):
    folder = make_folder(tmp_path, 4)
    seal_folder(folder, lineage="run-a")
    damage(folder)
    check = verify_folder(folder)
    assert not check.ok
    assert reason in check.reason


def test_the_newest_verified_folder_skips_a_newer_half_written_one_with_a_warning_and_deletes_nothing(tmp_path):
    seal_folder(make_folder(tmp_path, 4), lineage="run-a")
    half = make_folder(tmp_path, 8)  # the Trainer was killed while writing it: no seal
    (tmp_path / "checkpoint-12").mkdir()  # killed right after mkdir
    warnings: list[str] = []
    check = newest_verified_folder(tmp_path, warn=warnings.append)
    assert check.folder.name == "checkpoint-4" and check.step == 4
    assert [w.split(":")[0] for w in warnings] == [f"skipped checkpoint-12 in {tmp_path}",
                                                   f"skipped checkpoint-8 in {tmp_path}"]
    assert half.is_dir() and (tmp_path / "checkpoint-12").is_dir()


def test_no_folder_at_all_gives_none(tmp_path):
    assert newest_verified_folder(tmp_path / "absent") is None


class RecordingTarget(DirectoryTarget):
    """A real directory target that remembers the order of its uploads."""

    def __init__(self, path):
        super().__init__(path)
        self.order: list[str] = []

    def put(self, src, key, *, sha256=None):
        n = super().put(src, key, sha256=sha256)
        self.order.append(key)
        return n


def test_a_pushed_folder_arrives_files_first_and_seal_last_and_restores_verified_on_a_fresh_disk(tmp_path):
    local = tmp_path / "out"
    folder = make_folder(local, 8)
    seal_folder(folder, lineage="run-a")
    target = RecordingTarget(tmp_path / "remote")
    pusher = FolderPusher(target, "run-a")
    pusher.submit(folder)
    assert pusher.close(timeout=30)
    assert target.order[-1] == f"checkpoint-8/{SEAL_NAME}"
    assert sorted(target.order[:-1]) == ["checkpoint-8/model.safetensors", "checkpoint-8/optimizer.pt",
                                         "checkpoint-8/sub/extra.json"]
    fresh = tmp_path / "fresh"
    (fresh / ".tmp-restore-checkpoint-8.deadbeef").mkdir(parents=True)  # a download killed in an earlier session
    check = restore_newest_remote(target, fresh)
    assert sorted(p.name for p in fresh.iterdir()) == ["checkpoint-8"]
    assert check.ok and check.folder == fresh / "checkpoint-8"
    assert (fresh / "checkpoint-8" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_a_remote_folder_without_its_seal_is_an_interrupted_upload_and_is_never_restored(tmp_path):
    remote = tmp_path / "remote"
    older = make_folder(tmp_path / "src", 4)
    seal_folder(older, lineage="run-a")
    shutil.copytree(older, remote / "checkpoint-4")
    newer = make_folder(tmp_path / "src", 8)
    seal_folder(newer, lineage="run-a")
    shutil.copytree(newer, remote / "checkpoint-8")
    (remote / "checkpoint-8" / SEAL_NAME).unlink()  # the upload stopped before its last file
    warnings: list[str] = []
    check = restore_newest_remote(DirectoryTarget(remote), tmp_path / "fresh", warn=warnings.append)
    assert check.folder.name == "checkpoint-4"
    assert any("checkpoint-8" in w and "did not finish" in w for w in warnings)
    assert not (tmp_path / "fresh" / "checkpoint-8").exists()


def test_a_remote_copy_that_does_not_match_its_seal_is_skipped_for_the_next_older_one(tmp_path):
    remote = tmp_path / "remote"
    for step in (4, 8):
        f = make_folder(tmp_path / "src", step)
        seal_folder(f, lineage="run-a")
        shutil.copytree(f, remote / f.name)
    (remote / "checkpoint-8" / "optimizer.pt").write_bytes(b"opt" * 49 + b"opX")  # corrupted on the remote
    warnings: list[str] = []
    check = restore_newest_remote(DirectoryTarget(remote), tmp_path / "fresh", warn=warnings.append)
    assert check.folder.name == "checkpoint-4"
    assert any("checkpoint-8" in w and "optimizer.pt" in w for w in warnings)
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["checkpoint-4"]  # no staging left over


def test_an_unreachable_remote_raises_instead_of_looking_empty(tmp_path):
    mount = tmp_path / "drive"  # a mount root that is not there: the storage is not mounted
    target = DirectoryTarget(mount / "MyDrive" / "run", mount_root=mount)
    with pytest.raises(SourceUnavailableError):
        list_remote_folders(target)
    with pytest.raises(SourceUnavailableError):
        restore_newest_remote(target, tmp_path / "fresh")


def test_pruning_removes_only_folders_this_run_pushed_never_another_runs_or_other_files(tmp_path):
    remote = tmp_path / "remote"
    target = DirectoryTarget(remote)
    other = make_folder(tmp_path / "theirs", 2)
    seal_folder(other, lineage="run-b")
    shutil.copytree(other, remote / "checkpoint-2")  # another run's folder in the same remote
    (remote / "notes.txt").write_text("mine, not a checkpoint")
    pusher = FolderPusher(target, "run-a")
    for step in (4, 6):
        f = make_folder(tmp_path / "ours", step)
        seal_folder(f, lineage="run-a")
        pusher.submit(f)
        assert pusher.flush(timeout=30)
    pusher.prune(["checkpoint-2", "checkpoint-4"])  # checkpoint-2 was never pushed by this run
    assert pusher.close(timeout=30)
    assert sorted(f.name for f in list_remote_folders(target)) == ["checkpoint-2", "checkpoint-6"]
    assert verify_folder(remote / "checkpoint-2").ok and (remote / "notes.txt").exists()
    assert pusher.pushed == ["checkpoint-6"]


def test_a_failing_upload_is_retried_in_the_background_and_reported(tmp_path):
    class FlakyTarget(DirectoryTarget):
        fail = 2

        def put(self, src, key, *, sha256=None):
            if self.fail:
                self.fail -= 1
                raise OSError("connection reset")
            return super().put(src, key, sha256=sha256)

    from atheria_kit.sync import RetryPolicy

    alerts: list[tuple[str, str]] = []
    folder = make_folder(tmp_path / "out", 4)
    seal_folder(folder, lineage="run-a")
    target = FlakyTarget(tmp_path / "remote")
    pusher = FolderPusher(target, "run-a", retry=RetryPolicy(initial_delay=0.0), on_alert=lambda k, t: alerts.append((k, t)))
    pusher.submit(folder)
    assert pusher.close(timeout=30)
    assert [k for k, _ in alerts] == ["failing", "recovered"]
    assert "connection reset" in alerts[0][1]
    assert verify_folder(tmp_path / "remote" / "checkpoint-4").ok


def test_a_remote_that_does_not_answer_a_prune_listing_is_a_reported_failure_and_the_prune_is_retried(tmp_path):
    import threading

    from atheria_kit.sync import RetryPolicy

    class StuckListing(DirectoryTarget):
        """A mount whose listing hangs while ``stuck`` is set (a Drive mount that stopped answering)."""

        stuck = False
        release = threading.Event()

        def list(self):
            if self.stuck:
                self.release.wait(30)
            return super().list()

    target = StuckListing(tmp_path / "remote")
    failing = threading.Event()
    alerts: list[tuple[str, str]] = []

    def alert(kind, text):
        alerts.append((kind, text))
        failing.set()

    pusher = FolderPusher(target, "run-a", retry=RetryPolicy(initial_delay=0.0), on_alert=alert, list_timeout=0.2)
    for step in (4, 6):
        f = make_folder(tmp_path / "ours", step)
        seal_folder(f, lineage="run-a")
        pusher.submit(f)
        assert pusher.flush(timeout=30)
    target.stuck = True
    pusher.prune(["checkpoint-4"])
    assert failing.wait(30), "a hung listing must fail within list_timeout, not hold the thread"
    assert alerts[0][0] == "failing" and "did not answer within 0.2 s" in alerts[0][1]
    assert (tmp_path / "remote" / "checkpoint-4" / SEAL_NAME).exists()  # nothing deleted on a failed listing
    target.stuck = False
    target.release.set()
    assert pusher.close(timeout=30)
    assert [f.name for f in list_remote_folders(target)] == ["checkpoint-6"]
    assert [k for k, _ in alerts] == ["failing", "recovered"]


def test_a_folder_this_run_pushed_but_another_run_sealed_since_is_not_pruned(tmp_path):
    remote = tmp_path / "remote"
    target = DirectoryTarget(remote)
    theirs = make_folder(tmp_path / "theirs", 4)
    seal_folder(theirs, lineage="run-b")
    shutil.copytree(theirs, remote / "checkpoint-4")  # run-b wrote checkpoint-4 over this run's copy
    pusher = FolderPusher(target, "run-a")
    pusher.load_state_dict({"lineage": "run-a", "pushed": ["checkpoint-4"]})  # an earlier session pushed it
    pusher.prune(["checkpoint-4"])
    assert pusher.close(timeout=30)
    assert verify_folder(remote / "checkpoint-4").ok
    assert verify_folder(remote / "checkpoint-4").lineage == "run-b"


def test_an_unmounted_drive_path_is_unreachable_not_an_empty_remote_and_nothing_is_written_under_it(tmp_path):
    assert not Path("/content").exists()  # this machine is no Colab VM: its Drive is "not mounted"
    target = remote_target("/content/drive/MyDrive/atheria/run")
    with pytest.raises(SourceUnavailableError, match="not mounted"):
        list_remote_folders(target)
    folder = make_folder(tmp_path / "out", 4)
    seal_folder(folder, lineage="run-a")
    import threading

    failing = threading.Event()
    pusher = FolderPusher(target, "run-a", on_alert=lambda kind, text: failing.set())
    pusher.submit(folder)
    assert failing.wait(30)
    assert "not mounted" in pusher.last_error and pusher.pushed == []
    pusher.close(timeout=0)
    assert not Path("/content").exists()


def test_a_remote_folder_that_existed_at_the_start_and_vanished_is_unreachable_and_a_new_one_is_empty(tmp_path):
    existing = tmp_path / "mounted" / "run"
    existing.mkdir(parents=True)
    target = remote_target(str(existing))
    assert list_remote_folders(target) == []
    shutil.rmtree(tmp_path / "mounted")  # a network mount that dropped
    with pytest.raises(SourceUnavailableError):
        list_remote_folders(target)
    assert list_remote_folders(remote_target(tmp_path / "new" / "run")) == []  # a new remote folder elsewhere
    assert remote_target(target) is target and remote_target("memory://bucket/run").name.startswith("memory")
    with pytest.raises(ValueError, match="remote=' ' is invalid"):
        remote_target(" ")
