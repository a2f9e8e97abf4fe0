"""The session at its edges: storage that fails, two sessions on one folder, a resume after a kill, typos.

Real processes and real filesystems: a tmpfs that fills up, a read-only mount, a worker killed with SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from atheria_kit.lease import LeaseHeldError
from atheria_kit.runlog import read_jsonl
from atheria_kit.session import SessionStorageError, TrainingSession
from atheria_kit.session_config import SessionConfig
from tests._paths import REPO_ROOT
from tests.fakes.clock import ManualClock
from tests.test_session import EPISODE_SECONDS, T0, config, make_objects, train_episode

WORKER = REPO_ROOT / "tests" / "session_worker.py"


@pytest.fixture
def local_env(tmp_path):
    from atheria_kit.platform import detect_environment

    return detect_environment({}, shell=None, kind="local", cwd=tmp_path, nvml=None, torch_module=None)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """Mount a real tmpfs of a given size (KiB) at a fresh folder; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(kib: int, *options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        opts = ",".join((f"size={kib}k", *options))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _train(session: TrainingSession, clock: ManualClock, objects, hook=None) -> None:
    model, opt, sched, gens = objects
    for ep in session.episodes():
        metrics = train_episode(model, opt, gens)
        sched.step()
        if hook is not None:
            hook(ep)
        clock.t += EPISODE_SECONDS
        session.log(**metrics)


def _session(cfg: SessionConfig, env, clock, out: io.StringIO) -> tuple[TrainingSession, tuple]:
    session = TrainingSession(cfg, environment=env, clock=clock, stream=out)
    objects = make_objects()
    model, opt, sched, gens = objects
    session.restore(model=model, optimizer=opt, scheduler=sched, generators=gens)
    return session, objects


# ------------------------------------------------------------------------------------------- storage


def test_a_read_only_folder_is_a_one_line_error_naming_path_and_errno_before_any_training(tmpfs, local_env):
    root = tmpfs(1024, "ro")
    cfg = config(root, max_training_seconds=10_000)
    with pytest.raises(SessionStorageError) as err:
        TrainingSession(cfg, environment=local_env, clock=ManualClock(T0), stream=io.StringIO())
    text = str(err.value)
    assert str(root) in text and "[Errno 30] Read-only file system" in text and "Nothing was trained" in text
    assert "\n" not in text
    assert err.value._render_traceback_() == [f"\x1b[31mSessionStorageError: {text}\x1b[0m"]


def test_a_disk_that_fills_mid_run_ends_the_session_cleanly_and_the_next_one_resumes(tmpfs, local_env, tmp_path):
    root = tmpfs(8 * 1024)
    filler = root / "filler.bin"

    def fill_the_disk(ep: int) -> None:
        if ep == 5:  # another process took the space: what is left cannot hold a checkpoint
            session.checkpoints.wait()  # checkpoint 4 is on disk before the space goes
            with open(filler, "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                except OSError:
                    pass

    out = io.StringIO()
    cfg = config(root, max_training_seconds=10_000, save_every_episodes=2)
    session, objects = _session(cfg, local_env, ManualClock(T0), out)  # noqa: F841 (the hook reads it)
    _train(session, session._clock, objects, hook=fill_the_disk)
    result = session.finish()
    assert result.end_reason == "error" and result.episodes_done < cfg.total_episodes
    said = out.getvalue()
    assert "No space left on device" in said and "the last good checkpoint (ckpt-0000000004.pt) is kept" in said
    assert "Free space" in said and "press Run all" in said

    filler.unlink()  # the user frees space; the next session resumes from the last good checkpoint
    out2 = io.StringIO()
    clock = ManualClock(T0)
    session2, objects2 = _session(cfg, local_env, clock, out2)
    assert session2.episode == 4
    assert "resumed from ckpt-0000000004.pt (local copy, verified) at episode 4/12" in out2.getvalue()
    _train(session2, clock, objects2)
    assert session2.finish().end_reason == "done"

    # The same run without the full disk ends with the same parameters.
    ref_clock = ManualClock(T0)
    ref, ref_objects = _session(config(tmp_path / "ref", max_training_seconds=10_000, save_every_episodes=2),
                                local_env, ref_clock, io.StringIO())
    _train(ref, ref_clock, ref_objects)
    ref.finish()
    for a, b in zip(objects2[0].parameters(), ref_objects[0].parameters(), strict=True):
        assert a.detach().equal(b.detach())


# --------------------------------------------------------------------------------------- processes


def _start_worker(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), "--root", str(root), *args], cwd=REPO_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"worker ended before {prefix!r}: {lines} {proc.stderr.read()}")


def test_a_second_session_on_the_same_folder_refuses_and_a_dead_ones_folder_is_taken_over(tmp_path, local_env):
    root = tmp_path / "root"
    worker = _start_worker(root, "--hold-at", "3")
    try:
        _read_until(worker, "HOLD 3")
        cfg = SessionConfig(experiment_name="w", root=str(root), drive_sync_every=0, live_view="off",
                            handle_signals=False)
        with pytest.raises(LeaseHeldError) as err:
            TrainingSession(cfg, environment=local_env, stream=io.StringIO())
        assert f"pid {worker.pid}" in str(err.value) and "in use by another session" in str(err.value)
        # The refused session changed nothing: the worker goes on and finishes normally.
        worker.stdin.write("go\n")
        worker.stdin.flush()
        end = _read_until(worker, "END")[-1].split()
        assert end[:3] == ["END", "done", "12"]
    finally:
        worker.kill()
        worker.wait()

    # A session killed while holding the folder: the next one on this host takes over at once, and says so.
    worker = _start_worker(root / "again", "--hold-at", "2")
    _read_until(worker, "HOLD 2")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    out = io.StringIO()
    cfg = SessionConfig(experiment_name="w", root=str(root / "again"), drive_sync_every=0, live_view="off",
                        handle_signals=False, total_episodes=12, save_every_episodes=4)
    session = TrainingSession(cfg, environment=local_env, stream=out)
    session.finish()
    assert f"took over the run folder from {os.uname().nodename} (pid {worker.pid}): its process is gone" \
        in out.getvalue()


def test_after_a_kill_the_run_log_holds_each_episode_once(tmp_path):
    root = tmp_path / "root"
    worker = _start_worker(root, "--hold-at", "7")  # checkpoints at 4; episodes 4, 5, 6 logged after it
    seen = _read_until(worker, "HOLD 7")
    if "COMMIT 4" not in seen:  # the checkpoint is written in the background: wait for it, then kill
        _read_until(worker, "COMMIT 4")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    metrics = root / "logs" / "w" / "metrics.jsonl"
    assert [r["episode"] for r in read_jsonl(metrics)] == list(range(7))

    resumed = _start_worker(root)
    lines = _read_until(resumed, "END")
    resumed.wait()
    assert any("resumed from ckpt-0000000004.pt (local copy, verified) at episode 4/12, session 2 of this run; "
               "3 episodes recorded after that checkpoint were not saved and will be redone" in ln for ln in lines), lines
    records = read_jsonl(metrics)
    assert [r["episode"] for r in records] == list(range(12))
    assert [r["done"] for r in records] == list(range(1, 13))
    # The uninterrupted run's parameters at the end (another fresh process).
    ref = _start_worker(tmp_path / "ref")
    ref_end = _read_until(ref, "END")[-1]
    ref.wait()
    assert lines[-1] == ref_end


# ------------------------------------------------------------------------------------------ config


def test_a_parameter_one_edit_from_a_setting_is_reported(capsys):
    cfg = SessionConfig.from_params({"TOTAL_EPISODE": 50, "SMOKE": True, "np": object()})
    assert cfg.total_episodes == 1000  # not taken: it is not the setting's name
    out = capsys.readouterr().out
    assert "TOTAL_EPISODE is not a setting and is ignored; did you mean TOTAL_EPISODES?" in out
    assert "SMOKE" not in out


@pytest.mark.parametrize(("field", "value"), [("root", 3), ("remote", ["/content/drive"]), ("root", "  ")])
def test_root_and_remote_of_the_wrong_type_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        SessionConfig(**{field: value})


def test_json_progress_is_not_left_running_by_a_refused_start(tmp_path, local_env):
    # A start refused by the lease leaves the holder's run log alone (progress.json unchanged).
    root = tmp_path / "root"
    worker = _start_worker(root, "--hold-at", "2")
    try:
        _read_until(worker, "HOLD 2")
        progress = root / "logs" / "w" / "progress.json"
        before = progress.read_bytes()
        cfg = SessionConfig(experiment_name="w", root=str(root), drive_sync_every=0, live_view="off",
                            handle_signals=False)
        with pytest.raises(LeaseHeldError):
            TrainingSession(cfg, environment=local_env, stream=io.StringIO())
        assert progress.read_bytes() == before and json.loads(before)["pid"] == worker.pid
    finally:
        worker.kill()
        worker.wait()


# ------------------------------------------------------------------------------------------ remote


def _remote_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_remote_unreadable_at_a_new_vms_start_stops_the_session_and_the_next_start_resumes_from_it(
        tmp_path, other_fs_dir, local_env):
    from fsspec.implementations.local import LocalFileSystem

    from atheria_kit.session import RemoteUnavailableError
    from atheria_kit.sync import FsspecTarget
    from tests.fakes.faulty_fs import FaultyFileSystem

    remote_dir = other_fs_dir / "remote"
    cfg = config(tmp_path / "vm1", max_training_seconds=10_000, drive_sync_every=2, save_every_episodes=2)
    clock = ManualClock(T0)
    session = TrainingSession(cfg, environment=local_env, clock=clock, stream=io.StringIO(),
                              remote=FsspecTarget(str(remote_dir)))
    objects = make_objects()
    model, opt, sched, gens = objects
    session.restore(model=model, optimizer=opt, scheduler=sched, generators=gens)
    _train(session, clock, objects, hook=lambda ep: ep == 5 and session.budget.request_stop("VM recycled"))
    assert session.finish().remote.complete
    before = _remote_bytes(remote_dir)
    assert any(k.startswith("ckpt-0000000006") for k in before)

    # A new VM: empty local disk, and the Drive mount is not answering (every call fails with Errno 107).
    vm2 = config(tmp_path / "vm2", max_training_seconds=10_000, drive_sync_every=2, save_every_episodes=2,
                 remote_retry_seconds=0)
    dead = FsspecTarget(str(remote_dir), fs=FaultyFileSystem(LocalFileSystem(), disconnected=lambda: True))
    with pytest.raises(RemoteUnavailableError) as err:
        TrainingSession(vm2, environment=local_env, clock=ManualClock(T0), stream=io.StringIO(), remote=dead)
    text = str(err.value)
    assert str(remote_dir) in text and "Nothing was trained" in text and "REMOTE_UNAVAILABLE='ignore'" in text
    assert _remote_bytes(remote_dir) == before  # not pruned, not overwritten, not "taken over"
    assert not list((tmp_path / "vm2" / "root" / "checkpoints" / "t").glob("ckpt-*"))

    # Run all again once Drive answers: the run continues from the remote history, as if never interrupted.
    out = io.StringIO()
    clock = ManualClock(T0)
    session = TrainingSession(vm2, environment=local_env, clock=clock, stream=out, remote=FsspecTarget(str(remote_dir)))
    objects = make_objects()
    model, opt, sched, gens = objects
    assert session.restore(model=model, optimizer=opt, scheduler=sched, generators=gens) == 6
    # Episode 6 was the session's last: its save carried the end of the session, and finish() wrote no second copy.
    assert f"resumed from ckpt-0000000006.pt (copy in {remote_dir}, verified) at episode 6/12, session 2" \
        in out.getvalue()
    assert not list(remote_dir.glob("ckpt-*-r*.pt"))
    _train(session, clock, objects)
    assert session.finish().end_reason == "done"

    ref_clock = ManualClock(T0)
    ref, ref_objects = _session(config(tmp_path / "ref", max_training_seconds=10_000, save_every_episodes=2),
                                local_env, ref_clock, io.StringIO())
    _train(ref, ref_clock, ref_objects)
    ref.finish()
    for a, b in zip(model.parameters(), ref_objects[0].parameters(), strict=True):
        assert a.detach().equal(b.detach())


def test_start_over_keeps_the_previous_run_under_an_archive_name_here_and_on_the_remote(tmp_path, local_env):
    from atheria_kit.sync import FsspecTarget

    remote_dir = tmp_path / "remote"
    cfg = config(tmp_path / "vm", max_training_seconds=10_000, drive_sync_every=2, save_every_episodes=2,
                 total_episodes=4)
    first, objects = _session_with_remote(cfg, local_env, remote_dir)
    _train(first, first._clock, objects)
    first.finish()
    old_remote = _remote_bytes(remote_dir)
    old_local = _remote_bytes(tmp_path / "vm" / "root" / "checkpoints" / "t")

    out = io.StringIO()
    again = SessionConfig(**{**cfg.to_dict(), "start_over": True, "export_formats": ()})
    session = TrainingSession(again, environment=local_env, clock=ManualClock(T0), stream=out,
                              remote=FsspecTarget(str(remote_dir)))
    model, opt, sched, gens = make_objects()
    assert session.restore(model=model, optimizer=opt, scheduler=sched, generators=gens) == 0
    session.finish()
    said = out.getvalue()
    assert "starting over (START_OVER=True): the previous run is kept in" in said
    assert "Set START_OVER=False now" in said
    archived = [p for p in (tmp_path / "vm" / "root" / "checkpoints").iterdir() if p.name.startswith("t.archived-")]
    assert len(archived) == 1 and _remote_bytes(archived[0]) == old_local
    remote_archive = [k for k in _remote_bytes(remote_dir) if k.startswith("archive/")]
    assert {k.split("/", 2)[2] for k in remote_archive} >= {k for k in old_remote if k.startswith("ckpt-")}
    for key, data in old_remote.items():
        if key.startswith("ckpt-"):
            match = [k for k in remote_archive if k.endswith("/" + key)]
            assert match and (remote_dir / match[0]).read_bytes() == data


def _session_with_remote(cfg: SessionConfig, env, remote_dir: Path) -> tuple[TrainingSession, tuple]:
    from atheria_kit.sync import FsspecTarget

    session = TrainingSession(cfg, environment=env, clock=ManualClock(T0), stream=io.StringIO(),
                              remote=FsspecTarget(str(remote_dir)))
    objects = make_objects()
    model, opt, sched, gens = objects
    session.restore(model=model, optimizer=opt, scheduler=sched, generators=gens)
    return session, objects
