"""A kill at any instant of finish() loses nothing that was committed.

finish() is when platforms kill VMs (the end of a session). A real training process runs until a stop, then, in
finish(), every file write waits for the test before it starts and after its rename; the test SIGKILLs the
process at each of those instants in turn. The next process must resume from the newest complete state: the
final save's state if its file was renamed into place, else the newest checkpoint before it; and it must end
with exactly the parameters of a run that was never stopped, with each episode once in the run log.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from atheria_kit.runlog import read_jsonl
from tests._paths import REPO_ROOT

WORKER = REPO_ROOT / "tests" / "session_worker.py"


def _run(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), "--root", str(root), *args], cwd=REPO_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_events(root: Path, stop_after: int) -> list[str]:
    """The gated writes of finish(), in order, from a life that is let through every gate."""
    proc = _run(root, "--stop-after", str(stop_after), "--gate-finish")
    events = []
    for line in proc.stdout:
        if line.startswith(("WRITE-BEGIN", "WRITE-END")):
            events.append(line.strip())
            proc.stdin.write("go\n")
            proc.stdin.flush()
    proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr.read()
    return events


def _kill_at(root: Path, stop_after: int, k: int) -> list[str]:
    """Run to the stop, let finish() through k gates, SIGKILL it at the next; return the events seen."""
    proc = _run(root, "--stop-after", str(stop_after), "--gate-finish")
    seen = []
    for line in proc.stdout:
        if line.startswith(("WRITE-BEGIN", "WRITE-END")):
            seen.append(line.strip())
            if len(seen) > k:
                proc.send_signal(signal.SIGKILL)
                break
            proc.stdin.write("go\n")
            proc.stdin.flush()
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    return seen


def _resume_to_the_end(root: Path) -> tuple[int, str]:
    proc = _run(root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    ready = next(int(ln.split()[1]) for ln in lines if ln.startswith("READY"))
    return ready, lines[-1]


@pytest.fixture(scope="module")
def reference_end(tmp_path_factory) -> str:
    _, end = _resume_to_the_end(tmp_path_factory.mktemp("reference"))
    return end


@pytest.mark.parametrize(("stop_after", "saved_before"), [
    (8, 8),  # the stop falls on a saved episode: finish() saves the same episode again (under a new name)
    # the final save is the only copy of episodes 4-5 (`make test-slow`; bench/bench_kill.py covers six stops)
    pytest.param(6, 4, marks=pytest.mark.slow),
])
def test_a_kill_at_any_instant_of_finish_resumes_from_the_newest_complete_state(
        tmp_path, reference_end, stop_after, saved_before):
    events = _finish_events(tmp_path / "probe", stop_after)
    final = next(e.split()[1] for e in events if e.startswith("WRITE-BEGIN ckpt-") and e.endswith(".pt"))
    assert final != f"ckpt-{stop_after:010d}.pt" or saved_before != stop_after, \
        "finish() must not rewrite a committed checkpoint under its own name"
    assert len(events) >= 4  # at least the final checkpoint and the manifest, each before and after
    for k in range(len(events)):
        root = tmp_path / f"kill{k}"
        seen = _kill_at(root, stop_after, k)
        assert seen == events[: k + 1]  # the same writes, in the same order, up to the kill
        final_in_place = f"WRITE-END {final}" in seen
        ready, end = _resume_to_the_end(root)
        expected = stop_after if final_in_place else saved_before
        assert ready == expected, f"killed at {seen[-1]!r}: resumed at {ready}, expected {expected}"
        assert end == reference_end, f"killed at {seen[-1]!r}: the resumed run ended differently"
        episodes = [r["episode"] for r in read_jsonl(root / "logs" / "w" / "metrics.jsonl")]
        assert episodes == list(range(12)), f"killed at {seen[-1]!r}: run log {episodes}"
