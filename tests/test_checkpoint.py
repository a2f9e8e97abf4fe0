"""CheckpointManager: atomic, verified, asynchronous checkpoints with a manifest and retention."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import threading
from pathlib import Path

import blake3
import pytest
import torch

from atheria_kit.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    CheckpointLoadError,
    CheckpointManager,
    CheckpointWriteError,
    DiskStorage,
    snapshot_state,
)
from atheria_kit.retention import EveryKth, LatestN

LOGGER = "atheria_kit.checkpoint"


def state_for(step: int, n: int = 64) -> dict:
    """A small training-like state whose values are a known function of ``step``."""
    return {
        "model": {"w": torch.full((n,), float(step)), "b": torch.arange(4, dtype=torch.float64) + step},
        "counters": {"step": step, "history": [float(step), 0.5]},
        "rng": torch.tensor([step], dtype=torch.int64),
    }


def ckpt(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:010d}.pt"


def manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


class GatedStorage(DiskStorage):
    """Real disk writes, but each file's first chunk waits for ``release`` (to hold a write in flight)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_next: OSError | None = None
        self.written: list[str] = []

    def write(self, name, chunks):
        result = super().write(name, chunks)
        self.written.append(name)
        return result

    def write_chunk(self, name, fh, chunk) -> None:
        if name.startswith("ckpt-"):
            self.started.set()
            assert self.release.wait(30), "test never released the gated write"
            if self.fail_next is not None:
                err, self.fail_next = self.fail_next, None
                raise err
        super().write_chunk(name, fh, chunk)


class FailingStorage(DiskStorage):
    """Raises ``error`` after ``after`` bytes of the next checkpoint file have been written (disk full)."""

    def __init__(self, directory: Path, error: OSError, after: int = 1) -> None:
        super().__init__(directory)
        self.error, self.after, self.armed, self.written = error, after, False, 0

    def write_chunk(self, name, fh, chunk) -> None:
        if self.armed and name.startswith("ckpt-"):
            if self.written + len(chunk) > self.after:
                fh.write(chunk[: self.after - self.written])
                raise self.error
            self.written += len(chunk)
        super().write_chunk(name, fh, chunk)


class Recorder:
    """A budget: anything with record_save(seconds)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def record_save(self, seconds: float) -> None:
        self.seconds.append(seconds)


# ------------------------------------------------------------------------------------ save and load


def test_first_run_has_nothing_to_resume(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ckpts")
    assert mgr.load() is None
    assert mgr.latest() is None and mgr.best() is None and mgr.records() == []


@pytest.mark.parametrize("blocking", [True, False])
def test_save_then_load_returns_the_same_state(tmp_path: Path, blocking: bool) -> None:
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(state_for(3), step=3, episode=1, metrics={"loss": 0.25}, blocking=blocking)
        mgr.wait()
        loaded = mgr.load()
    assert loaded is not None
    assert loaded.record.step == 3 and loaded.record.episode == 1 and loaded.record.metrics == {"loss": 0.25}
    expected = state_for(3)
    assert torch.equal(loaded.state["model"]["w"], expected["model"]["w"])
    assert torch.equal(loaded.state["model"]["b"], expected["model"]["b"])
    assert loaded.state["counters"] == expected["counters"]
    # what the kit writes loads with plain torch.load(weights_only=True), no allowlisting
    raw = torch.load(ckpt(tmp_path, 3), weights_only=True)
    assert raw["step"] == 3 and torch.equal(raw["state"]["rng"], torch.tensor([3]))


def test_manifest_records_step_episode_metrics_size_hashes_time_versions_lineage(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False, wall_clock=lambda: 1732000000.5, lineage="run-a1")
    mgr.save(state_for(10), step=10, episode=4, metrics={"loss": 0.3, "acc": 0.9})
    m = manifest(tmp_path)
    assert (m["format"], m["version"], m["monitor"], m["mode"], m["lineage"]) == (
        "atheria-checkpoints", 1, "loss", "min", "run-a1")
    (entry,) = m["checkpoints"]
    data = ckpt(tmp_path, 10).read_bytes()
    assert entry == {
        "file": "ckpt-0000000010.pt",
        "step": 10,
        "episode": 4,
        "metrics": {"loss": 0.3, "acc": 0.9},
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "blake3": blake3.blake3(data).hexdigest(),
        "time": 1732000000.5,
        "versions": {"torch": str(torch.__version__), "atheria_kit": "0.1.0"},
        "lineage": "run-a1",
    }


def test_retention_keeps_best_five_or_latest_and_deletes_the_rest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    losses = {1: 0.9, 2: 0.2, 3: 0.8, 4: 0.1, 5: 0.7, 6: 0.3, 7: 0.6, 8: math.nan}
    for step, loss in losses.items():
        mgr.save(state_for(step), step=step, metrics={"loss": loss})
    # best 5 finite losses: 4 (0.1), 2 (0.2), 6 (0.3), 7 (0.6), 5 (0.7); latest: 8
    kept = {2, 4, 5, 6, 7, 8}
    assert [r.step for r in mgr.records()] == sorted(kept)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == [ckpt(tmp_path, s).name for s in sorted(kept)]
    assert [c["step"] for c in manifest(tmp_path)["checkpoints"]] == sorted(kept)
    assert mgr.best().step == 4 and mgr.latest().step == 8


def test_custom_policy_still_never_deletes_the_newest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, policy=EveryKth(10), async_save=False)
    for step in (5, 10, 15, 20, 25):
        mgr.save(state_for(step), step=step)
    assert [r.step for r in mgr.records()] == [10, 20, 25]


def test_prune_applies_a_changed_policy_at_once_manifest_first_and_keeps_the_newest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, policy=LatestN(10), async_save=False)
    for step in (1, 2, 3, 4):
        mgr.save(state_for(step), step=step)
    assert mgr.prune() == []  # nothing to drop: nothing deleted, nothing rewritten away
    assert [r.step for r in mgr.records()] == [1, 2, 3, 4]
    mgr.policy = LatestN(1)  # the policy's answer changed between saves
    assert mgr.prune() == [ckpt(tmp_path, s).name for s in (1, 2, 3)]
    assert [r.step for r in mgr.records()] == [4]
    assert [c["step"] for c in manifest(tmp_path)["checkpoints"]] == [4]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [ckpt(tmp_path, 4).name,
                                                              ckpt(tmp_path, 4).name + ".integrity.json"]
    mgr.policy = EveryKth(10)  # keeps none of step 4: the newest is kept whatever the policy says
    assert mgr.prune() == []
    assert mgr.latest().step == 4


def test_subscriber_sees_each_commit_with_the_manifest(tmp_path: Path) -> None:
    seen = []
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.subscribe(lambda rec, path: seen.append((rec.step, path, path.is_file())))
    mgr.save(state_for(1), step=1)
    mgr.save(state_for(2), step=2)
    assert seen == [(1, tmp_path / MANIFEST_NAME, True), (2, tmp_path / MANIFEST_NAME, True)]


# ------------------------------------------------------------------------------- corrupt and missing


def _truncate(p: Path) -> None:
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size // 2)


def _flip_bit(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit different
    p.write_bytes(bytes(data))


def _remove(p: Path) -> None:
    p.unlink()


def _make_unreadable(p: Path) -> None:
    p.unlink()
    p.mkdir()  # reading it now fails with an OSError (IsADirectoryError), even for root


@pytest.mark.parametrize("damage", [_truncate, _flip_bit, _remove, _make_unreadable], ids=lambda f: f.__name__[1:])
def test_bad_newest_file_falls_back_to_the_previous_one_with_a_warning(
    tmp_path: Path, damage, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = CheckpointManager(tmp_path, policy=LatestN(3), async_save=False)
    for step in (1, 2, 3):
        mgr.save(state_for(step), step=step, metrics={"loss": 1.0 / step})
    damage(ckpt(tmp_path, 3))
    fresh = CheckpointManager(tmp_path, policy=LatestN(3))  # a new session
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert fresh.latest().step == 2
        loaded = fresh.load()
        best = fresh.best()
    assert loaded.record.step == 2 and torch.equal(loaded.state["model"]["w"], state_for(2)["model"]["w"])
    assert best.step == 2  # step 3 had the best loss but is damaged
    assert any(ckpt(tmp_path, 3).name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_every_file_bad_means_nothing_to_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.save(state_for(1), step=1)
    _flip_bit(ckpt(tmp_path, 1))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert mgr.load() is None
    with pytest.raises(CheckpointLoadError, match=r"blake3 mismatch \(corrupted\)"):
        mgr.load(mgr.records()[0])  # an explicitly named bad checkpoint is an error, not a fallback


def test_a_bad_file_leaves_the_retention_ranking(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_best=1, async_save=False)
    mgr.save(state_for(1), step=1, metrics={"loss": 0.1})
    mgr.save(state_for(2), step=2, metrics={"loss": 0.5})
    _flip_bit(ckpt(tmp_path, 1))
    assert mgr.best().step == 2
    mgr.save(state_for(3), step=3, metrics={"loss": 0.9})
    # step 1 is corrupt and no longer holds the "best" slot: best is now step 2; latest is 3
    assert [r.step for r in mgr.records()] == [2, 3]
    assert not ckpt(tmp_path, 1).exists()


@pytest.mark.parametrize("how", ["missing", "garbage", "wrong-format"])
def test_lost_manifest_is_rebuilt_from_the_files(tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    for step, loss in ((1, 0.5), (2, 0.2), (3, 0.4)):
        mgr.save(state_for(step), step=step, episode=step * 10, metrics={"loss": loss})
    before = manifest(tmp_path)["checkpoints"]
    m = tmp_path / MANIFEST_NAME
    if how == "missing":
        m.unlink()
    elif how == "garbage":
        m.write_bytes(b'{"format": "atheria-chec')  # cut off mid-write by something that is not us
    else:
        m.write_text(json.dumps({"format": "something-else"}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fresh = CheckpointManager(tmp_path)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    after = manifest(tmp_path)["checkpoints"]
    assert [{k: c[k] for k in ("file", "step", "episode", "metrics", "size", "sha256")} for c in after] == [
        {k: c[k] for k in ("file", "step", "episode", "metrics", "size", "sha256")} for c in before
    ]
    assert fresh.best().step == 2 and fresh.load().record.step == 3


def test_file_renamed_but_not_yet_listed_is_adopted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A session killed between the file's rename and the manifest update keeps its newest checkpoint."""
    mgr = CheckpointManager(tmp_path, policy=LatestN(5), async_save=False)
    mgr.save(state_for(1), step=1)
    old_manifest = (tmp_path / MANIFEST_NAME).read_bytes()
    mgr.save(state_for(2), step=2)
    (tmp_path / MANIFEST_NAME).write_bytes(old_manifest)
    (tmp_path / "ckpt-0000000003.pt").write_bytes(b"PK\x03\x04 half a zip")  # not a checkpoint: ignored
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fresh = CheckpointManager(tmp_path, policy=LatestN(5))
    assert [r.step for r in fresh.records()] == [1, 2]
    assert fresh.load().record.step == 2
    assert any("ckpt-0000000003.pt" in r.getMessage() for r in caplog.records)


def test_leftover_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.save(state_for(1), step=1)
    leftovers = [tmp_path / ".tmp-ckpt-0000000002.pt.abc123", tmp_path / ".tmp-manifest.json.x9"]
    for p in leftovers:
        p.write_bytes(b"half written")
    (tmp_path / "notes.txt").write_text("mine")
    CheckpointManager(tmp_path)
    assert not any(p.exists() for p in leftovers)
    assert (tmp_path / "notes.txt").read_text() == "mine" and ckpt(tmp_path, 1).exists()


# ------------------------------------------------------------------------------------ write failures


def test_failed_write_leaves_the_old_file_and_manifest_intact(tmp_path: Path) -> None:
    storage = FailingStorage(tmp_path, OSError(errno.EIO, "I/O error"), after=100)
    mgr = CheckpointManager(tmp_path, async_save=False, storage=storage)
    mgr.save(state_for(5), step=5, metrics={"loss": 1.0})
    old_bytes, old_manifest = ckpt(tmp_path, 5).read_bytes(), (tmp_path / MANIFEST_NAME).read_bytes()
    storage.armed = True
    with pytest.raises(CheckpointWriteError):
        mgr.save(state_for(6), step=5, metrics={"loss": 0.5})  # overwriting the same step fails midway
    assert ckpt(tmp_path, 5).read_bytes() == old_bytes
    assert (tmp_path / MANIFEST_NAME).read_bytes() == old_manifest
    assert not list(tmp_path.glob(".tmp-*"))
    assert mgr.load().state["counters"]["step"] == 5


def _assert_intact_after(mgr: CheckpointManager, directory: Path, exc: pytest.ExceptionInfo, err: int) -> None:
    assert exc.value.errno == err and str(ckpt(directory, 2)) in str(exc.value)
    assert os.strerror(err) in str(exc.value)
    assert [c["step"] for c in manifest(directory)["checkpoints"]] == [1]
    assert not ckpt(directory, 2).exists() and not list(directory.glob(".tmp-*"))
    assert mgr.load().record.step == 1


def test_disk_full_injected_mid_file(tmp_path: Path) -> None:
    storage = FailingStorage(tmp_path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), after=1000)
    mgr = CheckpointManager(tmp_path, async_save=False, storage=storage)
    mgr.save(state_for(1), step=1)
    storage.armed = True
    with pytest.raises(CheckpointWriteError) as exc:
        mgr.save(state_for(2, n=100_000), step=2)
    _assert_intact_after(mgr, tmp_path, exc, errno.ENOSPC)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_on_a_small_tmpfs(small_tmpfs: Path) -> None:
    mgr = CheckpointManager(small_tmpfs, async_save=False)
    mgr.save(state_for(1), step=1)
    with pytest.raises(CheckpointWriteError) as exc:
        mgr.save(state_for(2, n=1_000_000), step=2)  # 4 MB of float32 into a 1 MiB filesystem
    _assert_intact_after(mgr, small_tmpfs, exc, errno.ENOSPC)


def test_permission_denied_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    mgr = CheckpointManager(directory, async_save=False)
    mgr.save(state_for(1), step=1)
    directory.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(CheckpointWriteError) as exc:
                mgr.save(state_for(2), step=2)
            _assert_intact_after(mgr, directory, exc, errno.EACCES)
            return
        # root ignores directory permissions: try the save in a forked child running as "nobody"
        tmp_path.chmod(0o755)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.setgid(65534)
                os.setuid(65534)
                mgr.save(state_for(2), step=2)
                msg = "no error"
            except CheckpointWriteError as e:
                msg = f"{e.errno}|{e}"
            except BaseException as e:
                msg = f"other|{type(e).__name__}: {e}"
            os.write(wfd, msg.encode())
            os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as fh:
            msg = fh.read().decode()
        os.waitpid(pid, 0)
    finally:
        directory.chmod(0o755)
    code, _, text = msg.partition("|")
    assert code == str(errno.EACCES), msg
    assert str(ckpt(directory, 2)) in text and os.strerror(errno.EACCES) in text
    assert [c["step"] for c in manifest(directory)["checkpoints"]] == [1]
    assert mgr.load().record.step == 1


# ---------------------------------------------------------------------------------------- deletion


def test_deleting_truncates_the_file_first(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    mgr = CheckpointManager(directory, policy=LatestN(1), async_save=False)
    mgr.save(state_for(1, n=10_000), step=1)
    witness = tmp_path / "witness"  # a second name for the same inode, outside the checkpoint directory
    os.link(ckpt(directory, 1), witness)
    assert witness.stat().st_size > 40_000
    mgr.save(state_for(2), step=2)  # retention deletes step 1
    assert not ckpt(directory, 1).exists()
    assert witness.stat().st_size == 0  # the inode was truncated before the unlink


# ------------------------------------------------------------------------------------ safe loading


class _Exploit:
    """Unpickling this runs os.makedirs(marker): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _plant_malicious_checkpoint(directory: Path, marker: Path) -> CheckpointManager:
    """An attacker replaces the newest checkpoint and rewrites the manifest's size and hashes to match."""
    mgr = CheckpointManager(directory, async_save=False)
    mgr.save(state_for(1), step=1, metrics={"loss": 0.5})
    mgr.save(state_for(2), step=2, metrics={"loss": 0.1})
    torch.save({"format": "atheria-checkpoint", "step": 2, "state": {"x": _Exploit(marker)}}, ckpt(directory, 2))
    m = manifest(directory)
    data = ckpt(directory, 2).read_bytes()
    m["checkpoints"][-1].update(size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                blake3=blake3.blake3(data).hexdigest())
    (directory / MANIFEST_NAME).write_text(json.dumps(m))
    return CheckpointManager(directory)


@pytest.mark.parametrize("which", ["record", "path"])
def test_malicious_pickle_named_explicitly_is_refused_and_runs_nothing(tmp_path: Path, which: str) -> None:
    marker = tmp_path / "pwned"
    mgr = _plant_malicious_checkpoint(tmp_path / "ckpts", marker)
    target = {"record": mgr.records()[-1], "path": ckpt(tmp_path / "ckpts", 2)}[which]
    with pytest.raises(CheckpointLoadError, match="allow_pickle=True"):
        mgr.load(target)
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=False"):
        mgr.load(target, weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("which", ["latest", "best"])
def test_unsafe_checkpoint_is_skipped_with_a_warning_and_the_next_good_one_is_loaded(
    tmp_path: Path, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    mgr = _plant_malicious_checkpoint(tmp_path / "ckpts", marker)  # step 2 is both the newest and the best
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = mgr.load(which)
    assert loaded.record.step == 1 and torch.equal(loaded.state["model"]["w"], state_for(1)["model"]["w"])
    assert not marker.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(ckpt(tmp_path / "ckpts", 2).name in w and "allow_pickle=True" in w for w in warnings), warnings
    # skipped, not condemned: the file is intact, so it keeps its place and is not deleted by retention
    mgr.save(state_for(3), step=3, metrics={"loss": 0.9})
    mgr.close()
    assert ckpt(tmp_path / "ckpts", 2).exists() and [r.step for r in mgr.records()] == [1, 2, 3]


def test_allow_pickle_opt_in_loads_arbitrary_pickle_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    mgr = _plant_malicious_checkpoint(tmp_path / "ckpts", marker)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mgr.load("latest", allow_pickle=True)
    assert marker.is_dir()  # proves the payload is live, so the refusal above is meaningful
    assert any("arbitrary code" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- async


def test_snapshot_state_is_isolated_from_later_in_place_changes() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    state = {"model": {"w": w, "tied": w}, "hist": [torch.zeros(2)], "pair": (torch.ones(1), 7), "name": "x"}
    snap = snapshot_state(state)
    with torch.no_grad():
        w.add_(5)
    state["hist"][0].fill_(9)
    state["hist"].append(1)
    assert torch.equal(snap["model"]["w"], torch.ones(3)) and not snap["model"]["w"].requires_grad
    assert snap["model"]["w"] is snap["model"]["tied"]  # tied weights stay tied
    assert torch.equal(snap["hist"][0], torch.zeros(2)) and len(snap["hist"]) == 1
    assert isinstance(snap["pair"], tuple) and snap["pair"][1] == 7 and snap["name"] == "x"


def test_snapshot_state_overwrites_a_reusable_earlier_snapshot_in_place() -> None:
    old = snapshot_state(state_for(1))
    buffers = [old["model"]["w"], old["model"]["b"], old["rng"]]
    snap = snapshot_state(state_for(2), reuse=old)
    assert all(a is b for a, b in zip([snap["model"]["w"], snap["model"]["b"], snap["rng"]], buffers, strict=True))
    for key in ("w", "b"):
        assert torch.equal(snap["model"][key], state_for(2)["model"][key])
    assert snap["counters"] == state_for(2)["counters"]


@pytest.mark.parametrize(
    "change",
    ["shape", "dtype", "new key", "longer list", "tensor becomes number"],
)
def test_snapshot_state_allocates_where_the_earlier_snapshot_does_not_fit(change: str) -> None:
    state = {"w": torch.ones(4), "hist": [torch.zeros(2)], "n": torch.tensor(3)}
    old = snapshot_state(state)
    new = {"w": torch.full((4,), 2.0), "hist": [torch.full((2,), 5.0)], "n": torch.tensor(4)}
    if change == "shape":
        new["w"] = torch.full((5,), 2.0)
    elif change == "dtype":
        new["w"] = torch.full((4,), 2, dtype=torch.int32)
    elif change == "new key":
        new["extra"] = torch.ones(2)
    elif change == "longer list":
        new["hist"].append(torch.ones(2))
    else:
        new["n"] = 4
    snap = snapshot_state(new, reuse=old)
    for key, value in new.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(snap[key], value) and snap[key].dtype == value.dtype
        elif isinstance(value, list):
            assert all(torch.equal(a, b) for a, b in zip(snap[key], value, strict=True))
        else:
            assert snap[key] == value
    assert (snap["w"] is old["w"]) == (change not in ("shape", "dtype"))


def test_snapshot_state_never_fills_one_reused_buffer_twice() -> None:
    tied = torch.ones(3)
    old = snapshot_state({"a": tied, "b": tied})  # one buffer, reachable under both keys
    untied = {"a": torch.full((3,), 2.0), "b": torch.full((3,), 7.0)}
    snap = snapshot_state(untied, reuse=old)
    assert torch.equal(snap["a"], untied["a"]) and torch.equal(snap["b"], untied["b"])
    assert snap["a"] is not snap["b"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_snapshot_state_copies_cuda_tensors_to_pinned_memory_and_reuses_them() -> None:
    w = torch.arange(1000, dtype=torch.float32, device="cuda")
    first = snapshot_state({"w": w})
    assert first["w"].device.type == "cpu" and first["w"].is_pinned()
    assert torch.equal(first["w"], w.cpu())
    w.mul_(3)  # queued after the copy on the same stream: must not leak into the first snapshot
    assert torch.equal(first["w"], torch.arange(1000, dtype=torch.float32))
    second = snapshot_state({"w": w}, reuse=first)
    assert second["w"] is first["w"] and torch.equal(second["w"], w.cpu())


def test_saves_reusing_buffers_each_keep_their_own_values(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path)
    mgr = CheckpointManager(tmp_path, policy=LatestN(10), storage=storage)
    state = state_for(1)

    def save(step: int) -> None:
        state["model"]["w"].fill_(float(step))  # the training loop changes the same tensor in place
        mgr.save(state, step=step)

    for step in (1, 2):  # each save reuses the previous, already written, snapshot
        save(step)
        assert mgr.wait(60)
    storage.release.clear()
    storage.started.clear()
    save(3)
    assert storage.started.wait(30)  # step 3 is being written: its buffers must not be reused
    save(4)  # waits in the slot...
    save(5)  # ...and is replaced by step 5
    storage.release.set()
    assert mgr.wait(60)
    save(6)
    mgr.close()
    records = mgr.records()
    assert [r.step for r in records] == [1, 2, 3, 5, 6]
    for rec in records:
        assert torch.equal(mgr.load(rec).state["model"]["w"], torch.full((64,), float(rec.step)))


def test_async_save_writes_the_values_at_save_time(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path)
    storage.release.clear()
    mgr = CheckpointManager(tmp_path, storage=storage)
    state = state_for(1)
    mgr.save(state, step=1)
    assert storage.started.wait(30)
    state["model"]["w"].add_(100)  # the training loop moves on while the write is in flight
    storage.release.set()
    mgr.close()
    assert torch.equal(mgr.load().state["model"]["w"], state_for(1)["model"]["w"])


def test_saves_during_a_write_coalesce_to_the_newest(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path)
    storage.release.clear()
    mgr = CheckpointManager(tmp_path, policy=LatestN(10), storage=storage)
    mgr.save(state_for(1), step=1)
    assert storage.started.wait(30)  # step 1 is in flight
    mgr.save(state_for(2), step=2)  # waits in the slot...
    mgr.save(state_for(3), step=3)  # ...and is replaced by step 3 before it was written
    storage.release.set()
    assert mgr.wait(timeout=60)
    assert [r.step for r in mgr.records()] == [1, 3]
    assert storage.written == [ckpt(tmp_path, 1).name, MANIFEST_NAME, ckpt(tmp_path, 3).name, MANIFEST_NAME]
    assert mgr.coalesced == 1
    mgr.close()


def test_blocking_save_replaces_a_waiting_snapshot_and_is_durable_on_return(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path)
    storage.release.clear()
    mgr = CheckpointManager(tmp_path, policy=LatestN(10), storage=storage)
    mgr.save(state_for(1), step=1)
    assert storage.started.wait(30)
    mgr.save(state_for(2), step=2)  # waiting
    done = threading.Event()

    def emergency() -> None:
        mgr.save(state_for(3), step=3, blocking=True)
        done.set()

    t = threading.Thread(target=emergency)
    t.start()
    with mgr._cond:  # the emergency save drops the waiting snapshot before waiting for the write in flight
        assert mgr._cond.wait_for(lambda: mgr._pending is None, timeout=30)
    assert not done.is_set()
    storage.release.set()
    t.join(60)
    assert done.is_set()
    assert [r.step for r in mgr.records()] == [1, 3] and [c["step"] for c in manifest(tmp_path)["checkpoints"]] == [1, 3]
    mgr.close()


def test_blocking_save_does_not_start_a_writer_thread(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(state_for(1), step=1, blocking=True)
    assert mgr._thread is None
    assert [c["step"] for c in manifest(tmp_path)["checkpoints"]] == [1]


def test_failed_background_write_is_raised_at_the_next_save(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path)
    storage.release.clear()
    storage.fail_next = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    committed = threading.Event()
    mgr = CheckpointManager(tmp_path, policy=LatestN(5), storage=storage)
    mgr.subscribe(lambda rec, _path: committed.set())
    mgr.save(state_for(1), step=1)
    assert storage.started.wait(30)
    mgr.save(state_for(2), step=2)  # queued behind the write that will fail
    storage.release.set()
    assert committed.wait(60)  # step 2 committed, so step 1's failure has been recorded
    with pytest.raises(CheckpointWriteError, match="No space left"):
        mgr.save(state_for(3), step=3)
    mgr.save(state_for(3), step=3)  # reported once; the manager keeps working
    mgr.close()
    assert [r.step for r in mgr.records()] == [2, 3]


@pytest.mark.parametrize("flush", ["wait", "close"])
def test_failed_background_write_is_raised_by_wait_and_close(tmp_path: Path, flush: str) -> None:
    storage = GatedStorage(tmp_path)
    storage.fail_next = OSError(errno.EIO, os.strerror(errno.EIO))
    mgr = CheckpointManager(tmp_path, storage=storage)
    mgr.save(state_for(1), step=1)
    with pytest.raises(CheckpointWriteError, match="Input/output error"):
        getattr(mgr, flush)()
    assert mgr.records() == [] and not list(tmp_path.glob(".tmp-*"))


def test_close_flushes_and_refuses_later_saves(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    for step in range(1, 4):
        mgr.save(state_for(step), step=step, metrics={"loss": 1.0 / step})
    mgr.close()
    assert mgr.records()[-1].step == 3  # the newest snapshot is always written (older ones may coalesce)
    assert not mgr._thread.is_alive()
    with pytest.raises(CheckpointError, match="after close"):
        mgr.save(state_for(4), step=4)


def test_budget_hears_each_committed_save(tmp_path: Path) -> None:
    budget = Recorder()
    storage = GatedStorage(tmp_path)
    storage.release.clear()
    mgr = CheckpointManager(tmp_path, budget=budget, storage=storage)
    mgr.save(state_for(1), step=1)
    assert storage.started.wait(30)
    mgr.save(state_for(2), step=2)
    mgr.save(state_for(3), step=3)  # step 2 coalesced away: never written, never reported
    storage.release.set()
    assert mgr.wait(60)
    mgr.save(state_for(4), step=4, blocking=True)
    mgr.close()
    assert len(budget.seconds) == 3 and all(s > 0 for s in budget.seconds)


def test_budget_duration_covers_snapshot_and_write(tmp_path: Path) -> None:
    ticks = iter(range(100))  # a clock that advances one "second" per reading
    budget = Recorder()
    mgr = CheckpointManager(tmp_path, budget=budget, async_save=False, clock=lambda: float(next(ticks)))
    mgr.save(state_for(1), step=1)
    # readings: snapshot start 0, snapshot end 1 (1 s); write start 2, write end 3 (1 s)
    assert budget.seconds == [2.0]


# ---------------------------------------------------------------------------- moving the directory


@pytest.mark.parametrize("where", ["same-fs", "other-fs"])
def test_moved_directory_keeps_its_rankings(tmp_path: Path, where: str, request: pytest.FixtureRequest) -> None:
    src = tmp_path / "session1"
    mgr = CheckpointManager(src, mode="max", monitor="acc", async_save=False)
    for step, acc in ((1, 0.5), (2, 0.9), (3, 0.7), (4, math.inf)):
        mgr.save(state_for(step), step=step, metrics={"acc": acc})
    base = request.getfixturevalue("other_fs_dir") if where == "other-fs" else tmp_path
    dst = base / "moved"
    shutil.move(str(src), str(dst))
    fresh = CheckpointManager(dst, mode="max", monitor="acc")
    assert fresh.best().step == 2 and fresh.best().path == ckpt(dst, 2)  # inf never counts as best
    assert fresh.load("best").state["counters"]["step"] == 2
    fresh.save(state_for(5), step=5, metrics={"acc": 0.1})
    fresh.close()
    assert not list(dst.glob(".tmp-*")) and fresh.latest().step == 5


# ------------------------------------------------------------------------------------- state_dict


def test_state_dict_is_plain_and_restores_rankings(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    for step, loss in ((1, 0.3), (2, 0.1), (3, 0.2)):
        mgr.save(state_for(step), step=step, metrics={"loss": loss})
    saved = tmp_path / "mgr.pt"
    torch.save(mgr.state_dict(), saved)
    sd = torch.load(saved, weights_only=True)
    (tmp_path / MANIFEST_NAME).unlink()
    for p in tmp_path.glob("ckpt-*.pt"):  # hide the files so the rebuild cannot find them
        p.rename(p.with_suffix(".hidden"))
    fresh = CheckpointManager(tmp_path)
    assert fresh.records() == []
    for p in tmp_path.glob("ckpt-*.hidden"):
        p.rename(p.with_suffix(".pt"))
    fresh.load_state_dict(sd)
    assert [r.step for r in fresh.records()] == [1, 2, 3] and fresh.best().step == 2
    with pytest.raises(ValueError, match="mode='min'"):
        CheckpointManager(tmp_path / "other", mode="max").load_state_dict(sd)


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "lowest"}, "mode='lowest'"),
        ({"keep_best": 0}, "keep_best=0"),
        ({"monitor": ""}, "monitor=''"),
        ({"policy": "best"}, "policy='best'"),
        ({"budget": object()}, "record_save"),
    ],
)
def test_bad_constructor_arguments_name_the_field(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CheckpointManager(tmp_path, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((state_for(1), -1), {}, "step=-1"),
        ((state_for(1), 1.5), {}, "step=1.5"),
        ((state_for(1), 1), {"episode": -2}, "episode=-2"),
        ((state_for(1), 1), {"metrics": {"loss": "low"}}, r"metrics\['loss'\]='low'"),
        (([1, 2], 1), {}, "state=list"),
    ],
)
def test_bad_save_arguments_name_the_field(tmp_path: Path, args: tuple, kwargs: dict, match: str) -> None:
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match=match):
        mgr.save(*args, **kwargs)
    assert not list(tmp_path.glob("ckpt-*"))


def test_load_rejects_an_unknown_selector(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="which=3"):
        CheckpointManager(tmp_path).load(3)


def test_optimizer_state_round_trips_under_weights_only(tmp_path: Path) -> None:
    """A real optimizer's state_dict passes the weights_only unpickler (no allowlisted classes)."""
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.save({"opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1).state_dict()}, step=1)
    with open(ckpt(tmp_path, 1), "rb") as fh:
        assert fh.read(2) == b"PK"  # torch's zip format, not a raw pickle stream
    assert mgr.load().state["opt"]["param_groups"][0]["lr"] == 0.1
