"""A committed checkpoint file is immutable, and a kill at any instant of a save leaves the newest complete state.

Saving a step that already has a checkpoint (what a session's final save does) writes a new name,
``ckpt-<step>-r<n>.pt``; the manifest then lists it instead of the old file, and only then is the old file
removed. Every instant of such a save is reproduced here:

- in-process, deterministically: a storage subclass copies the whole directory at each file event (what a
  process killed at that instant leaves on disk: the copy includes half-written temporary files), and a
  fresh manager is opened on each copy;
- with real processes: a worker forks one child per instant, the child blocks at that file event, and the
  test SIGKILLs it there and opens the directory it left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from atheria_kit._manifest import MANIFEST_NAME, parse_checkpoint_name
from atheria_kit.checkpoint import CheckpointManager, DiskStorage
from atheria_kit.retention import LatestN

#: The file events of one save, in the order they happen.
EVENTS = ("chunk", "sealed", "renamed", "committed", "removed", "done")
N = 1_500_000  # 6 MB of float32: the checkpoint takes two 4 MiB chunks, so "chunk" is a half-written file


def state_for(value: int) -> dict:
    return {"w": torch.full((N,), float(value)), "meta": {"value": value}}


def value_of(loaded) -> int:
    state = loaded.state
    assert torch.equal(state["w"], torch.full((N,), float(state["meta"]["value"])))  # complete, not mixed
    return state["meta"]["value"]


class EventStorage(DiskStorage):
    """Real disk writes; ``on_event(event)`` runs at each file event of a save once ``armed``.

    chunk: a piece of the new checkpoint's temporary file is on disk; sealed: its integrity sidecar is
    durable, the checkpoint is not renamed yet; renamed: the checkpoint has its name, the manifest does not
    list it yet; committed: the manifest lists it; removed: a superseded or dropped checkpoint is deleted,
    its sidecar not yet.
    """

    def __init__(self, directory: Path, on_event: Callable[[str], None]) -> None:
        super().__init__(directory)
        self.on_event = on_event
        self.armed = False

    def _event(self, event: str) -> None:
        if self.armed:
            self.on_event(event)

    def write_chunk(self, name, fh, chunk) -> None:
        super().write_chunk(name, fh, chunk)
        if parse_checkpoint_name(name) is not None:
            fh.flush()  # the half-written temporary file is really in the file, as a killed process leaves it
            self._event("chunk")

    def write_integrity(self, name, result, **fields) -> None:
        super().write_integrity(name, result, **fields)
        self._event("sealed")

    def write(self, name, chunks):
        result = super().write(name, chunks)
        if parse_checkpoint_name(name) is not None:
            self._event("renamed")
        elif name == MANIFEST_NAME:
            self._event("committed")
        return result

    def remove(self, name) -> None:
        super().remove(name)
        if parse_checkpoint_name(name) is not None:
            self._event("removed")


# The two saves whose every instant is checked: (steps and values saved before, the save, expected outcome).
SCENARIOS = {
    # the final save of a session rewrites the newest step: old ckpt-5 (value 50) -> ckpt-5-r1 (value 51)
    "same step again": {"before": [(1, 10), (5, 50)], "save": (5, 51), "old": 50, "new": 51},
    # a new step, and retention (latest 2) drops step 1 after the manifest is written
    "new step": {"before": [(1, 10), (5, 50)], "save": (9, 90), "old": 50, "new": 90},
}
#: Events from which on the new state is the newest complete one (before: the old one).
NEW_FROM = EVENTS.index("renamed")


def run_scenario(directory: Path, scenario: dict, on_event: Callable[[str], None]) -> None:
    storage = EventStorage(directory, on_event)
    mgr = CheckpointManager(directory, policy=LatestN(2), async_save=False, storage=storage)
    for step, value in scenario["before"]:
        mgr.save(state_for(value), step=step)
    storage.armed = True
    step, value = scenario["save"]
    mgr.save(state_for(value), step=step)
    on_event("done")


def check_directory(directory: Path, scenario: dict, event: str) -> None:
    """A fresh manager on what a kill at ``event`` left: the newest complete state, and a clean directory."""
    expected = scenario["new"] if EVENTS.index(event) >= NEW_FROM else scenario["old"]
    fresh = CheckpointManager(directory, policy=LatestN(2))
    loaded = fresh.load("latest")
    assert value_of(loaded) == expected, f"kill at {event!r}: resumed value {value_of(loaded)}, expected {expected}"
    names = sorted(os.listdir(directory))
    assert not [n for n in names if n.startswith(".tmp-")], names
    checkpoints = [n for n in names if parse_checkpoint_name(n) is not None]
    sidecars = [n for n in names if n.endswith(".integrity.json")]
    assert sorted(sidecars) == sorted(n + ".integrity.json" for n in checkpoints), names  # no orphan, none missing
    steps = [parse_checkpoint_name(n)[0] for n in checkpoints]
    assert len(steps) == len(set(steps)), f"two files for one step left behind: {names}"
    listed = [c["file"] for c in json.loads((directory / MANIFEST_NAME).read_text())["checkpoints"]]
    assert sorted(listed) == sorted(checkpoints), (listed, names)
    # and the directory keeps working: the next save of the same step again gets a name never used before
    fresh.save(state_for(expected + 1000), step=loaded.record.step)
    fresh.close()
    assert value_of(CheckpointManager(directory).load("latest")) == expected + 1000


# ------------------------------------------------------------------------------------------ revisions


def test_saving_a_step_again_writes_a_new_name_and_never_rewrites_a_committed_file(tmp_path: Path) -> None:
    written: list[str] = []

    class Recording(DiskStorage):
        def write(self, name, chunks):
            written.append(name)
            return super().write(name, chunks)

    mgr = CheckpointManager(tmp_path, async_save=False, storage=Recording(tmp_path))
    mgr.save(state_for(1), step=5, metrics={"loss": 0.5})
    first = (tmp_path / "ckpt-0000000005.pt").read_bytes()
    mgr.save(state_for(2), step=5, metrics={"loss": 0.4})
    mgr.save(state_for(3), step=5, metrics={"loss": 0.3})
    checkpoint_writes = [n for n in written if n != MANIFEST_NAME]
    assert checkpoint_writes == ["ckpt-0000000005.pt", "ckpt-0000000005-r1.pt", "ckpt-0000000005-r2.pt"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000000005-r2.pt", "ckpt-0000000005-r2.pt.integrity.json",
                                            "manifest.json"]
    (entry,) = json.loads((tmp_path / MANIFEST_NAME).read_text())["checkpoints"]
    assert (entry["file"], entry["step"], entry["metrics"]) == ("ckpt-0000000005-r2.pt", 5, {"loss": 0.3})
    assert [(r.step, r.revision) for r in mgr.records()] == [(5, 2)]
    assert value_of(mgr.load()) == 3
    assert torch.load(tmp_path / "ckpt-0000000005-r2.pt", weights_only=True)["revision"] == 2
    assert first != (tmp_path / "ckpt-0000000005-r2.pt").read_bytes()


def test_a_foreign_file_under_the_next_name_is_neither_written_over_nor_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.save(state_for(1), step=5)
    stranger = tmp_path / "ckpt-0000000005-r1.pt"
    stranger.write_bytes(b"not ours, no sidecar")
    with caplog.at_level(logging.WARNING, logger="atheria_kit.checkpoint"):
        mgr = CheckpointManager(tmp_path, async_save=False)  # warns: unlisted, no sidecar, not adopted
    assert any(stranger.name in r.getMessage() and "sidecar" in r.getMessage() for r in caplog.records)
    mgr.save(state_for(2), step=5)
    assert stranger.read_bytes() == b"not ours, no sidecar"
    assert [r.file for r in mgr.records()] == ["ckpt-0000000005-r2.pt"]
    assert value_of(CheckpointManager(tmp_path).load()) == 2


def test_of_two_records_for_one_step_in_a_manifest_the_newest_revision_wins(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.save(state_for(1), step=5)
    plain = json.loads((tmp_path / MANIFEST_NAME).read_text())["checkpoints"][0]
    mgr.save(state_for(2), step=5)
    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    # a merged manifest (e.g. written by a resume that copied another session's entries) lists both
    shutil.copy(tmp_path / "ckpt-0000000005-r1.pt", tmp_path / "keep")
    (tmp_path / "ckpt-0000000005.pt").write_bytes((tmp_path / "keep").read_bytes())
    (tmp_path / "keep").unlink()
    doc["checkpoints"].insert(0, dict(plain, file="ckpt-0000000005.pt"))
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(doc))
    fresh = CheckpointManager(tmp_path)
    assert [r.file for r in fresh.records()] == ["ckpt-0000000005-r1.pt"]
    assert value_of(fresh.load()) == 2
    assert not (tmp_path / "ckpt-0000000005.pt").exists()  # superseded: removed once the manifest says so


def test_an_unlisted_older_revision_is_not_adopted_over_a_listed_newer_one(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.save(state_for(1), step=5)
    kept = {n: (tmp_path / n).read_bytes() for n in ("ckpt-0000000005.pt", "ckpt-0000000005.pt.integrity.json")}
    mgr.save(state_for(2), step=5)
    for n, data in kept.items():  # a kill after the manifest listed r1, before the old file was removed
        (tmp_path / n).write_bytes(data)
    fresh = CheckpointManager(tmp_path)
    assert [r.file for r in fresh.records()] == ["ckpt-0000000005-r1.pt"] and value_of(fresh.load()) == 2
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000000005-r1.pt", "ckpt-0000000005-r1.pt.integrity.json",
                                            "manifest.json"]


def test_an_unlisted_newer_revision_is_adopted_over_a_listed_older_one(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    mgr.save(state_for(1), step=5)
    old_manifest = (tmp_path / MANIFEST_NAME).read_bytes()
    kept = {n: (tmp_path / n).read_bytes() for n in ("ckpt-0000000005.pt", "ckpt-0000000005.pt.integrity.json")}
    mgr.save(state_for(2), step=5)
    for n, data in kept.items():  # a kill after r1 got its name, before the manifest listed it
        (tmp_path / n).write_bytes(data)
    (tmp_path / MANIFEST_NAME).write_bytes(old_manifest)
    fresh = CheckpointManager(tmp_path)
    assert [r.file for r in fresh.records()] == ["ckpt-0000000005-r1.pt"] and value_of(fresh.load()) == 2
    assert not (tmp_path / "ckpt-0000000005.pt").exists()


# ----------------------------------------------------------------------- every instant, in process


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_a_kill_at_each_file_event_leaves_the_newest_complete_state(tmp_path: Path, scenario: str) -> None:
    spec = SCENARIOS[scenario]
    live = tmp_path / "live"
    frozen: dict[str, Path] = {}

    def freeze(event: str) -> None:  # the disk as a process killed right now leaves it
        if event not in frozen:
            frozen[event] = tmp_path / f"at-{event}"
            shutil.copytree(live, frozen[event])

    run_scenario(live, spec, freeze)
    assert list(frozen) == list(EVENTS)  # each instant happened, in this order
    assert any(n.startswith(".tmp-") for n in os.listdir(frozen["chunk"]))
    sealed = os.listdir(frozen["sealed"])
    new_name = "ckpt-0000000005-r1.pt" if scenario == "same step again" else "ckpt-0000000009.pt"
    assert new_name + ".integrity.json" in sealed and new_name not in sealed  # the proof lands before the name
    for event, directory in frozen.items():
        check_directory(directory, spec, event)


# --------------------------------------------------------------------- every instant, real SIGKILL


def _worker(base: Path, scenario: str, events: list[str]) -> None:
    """Fork one child per event; the child blocks at that event until the driver SIGKILLs it."""
    spec = SCENARIOS[scenario]
    for target in events:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                torch.set_num_threads(1)

                def block_at(event: str, target: str = target) -> None:
                    if event == target:
                        print(f"AT {event} {os.getpid()}", flush=True)
                        while True:
                            signal.pause()  # until SIGKILL

                run_scenario(base / target, spec, block_at)
                print(f"MISSED {target}", flush=True)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"EXIT {target} {os.waitstatus_to_exitcode(status)}", flush=True)


@pytest.mark.timeout(240)
def test_a_real_process_sigkilled_at_each_file_event_leaves_the_newest_complete_state(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                       *filter(None, [os.environ.get("PYTHONPATH")])]))
    worker = subprocess.Popen(
        [sys.executable, __file__, "--worker", str(tmp_path), "same step again", *EVENTS[:-1]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    killed, exits = [], {}
    assert worker.stdout is not None
    for line in worker.stdout:
        kind, event, value = line.split()
        if kind == "AT":
            os.kill(int(value), signal.SIGKILL)  # no cleanup, no flush, no atexit
            killed.append(event)
        elif kind == "EXIT":
            exits[event] = int(value)
    err = worker.stderr.read() if worker.stderr else ""
    assert worker.wait() == 0, err
    assert killed == list(EVENTS[:-1]) and all(code == -signal.SIGKILL for code in exits.values()), (exits, err)
    for event in killed:
        check_directory(tmp_path / event, SCENARIOS["same step again"], event)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
