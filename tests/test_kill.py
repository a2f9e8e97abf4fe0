"""Kill tests: a real training process is SIGKILLed at random moments, including mid-write, and resumed.

The worker (tests/kill_worker.py) checkpoints through CheckpointManager with a storage whose writes
are held open piece by piece until this test lets them go, so a kill can land while a checkpoint or
the manifest is provably half-written. After every kill the test looks at the directory itself:
the newest complete checkpoint is the highest-numbered ``ckpt-*.pt`` (a file only gets that name by
a rename after it is fully written). The next life must resume exactly from it, with parameters
equal to the uninterrupted run's at that step, and every later step and the final parameters must
equal the uninterrupted run's too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import make_checkpoints
from tests.kill_worker import (
    ColdLauncher,
    ForkLauncher,
    Reference,
    reference_run,
    run_with_kills,
    scan_directory,
)

STEPS, SAVE_EVERY = 40, 4
KILLS_PER_FILESYSTEM = 10


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """An uninterrupted run of the same worker, in a cold process of its own."""
    return reference_run(tmp_path_factory.mktemp("reference"), steps=STEPS, save_every=SAVE_EVERY)


@pytest.fixture(scope="module")
def launcher():
    """Lives are forked from a warm server: real processes, without paying torch's import per kill."""
    server = ForkLauncher()
    yield server
    server.close()


@pytest.mark.parametrize("filesystem", ["tmp_path", "other_fs_dir"])
def test_sigkill_at_random_moments_always_resumes_from_the_newest_complete_checkpoint(
    request: pytest.FixtureRequest, reference: Reference, launcher: ForkLauncher, filesystem: str
):
    base: Path = request.getfixturevalue(filesystem)
    report = run_with_kills(
        base / "kills", kills=KILLS_PER_FILESYSTEM, seed=20240611, ref=reference,
        steps=STEPS, save_every=SAVE_EVERY, launcher=launcher,
    )
    assert report.failures == []
    assert report.kills == KILLS_PER_FILESYSTEM
    # Half of the kills are planned inside a write; the disk shows a temporary file after exactly those.
    assert report.kills_during_write == KILLS_PER_FILESYSTEM // 2
    assert report.temp_files_left == 0
    assert report.resumes >= 1
    assert report.resumed_from_newest == report.resumes
    assert report.partial_loads == 0 and report.step_mismatches == 0 and report.resumed_behind_commit == 0
    assert report.finished_rounds == report.rounds and report.final_equal


def test_the_harness_detects_a_resume_that_does_not_match_the_uninterrupted_run(
    tmp_path: Path, reference: Reference, launcher: ForkLauncher
):
    # The checks above can fail: against a tampered reference every resume counts as a partial load.
    tampered = Reference({step: "0" * 16 for step in reference.steps}, reference.final)
    report = run_with_kills(tmp_path, kills=4, seed=1, ref=tampered, steps=STEPS, save_every=SAVE_EVERY,
                            launcher=launcher)
    assert report.step_mismatches > 0
    assert report.resumes >= 1 and report.partial_loads == report.resumes


def test_scan_directory_finds_the_newest_complete_checkpoint_and_leftover_temporary_files(tmp_path: Path):
    (tmp_path / "ckpt-0000000004.pt").write_bytes(b"a")
    (tmp_path / "ckpt-0000000012.pt").write_bytes(b"b")
    (tmp_path / ".tmp-ckpt-0000000016.pt.x1y2").write_bytes(b"half")
    assert scan_directory(tmp_path) == (12, [".tmp-ckpt-0000000016.pt.x1y2"], [], False)  # no manifest yet


@pytest.mark.parametrize(("listed", "newest_listed"), [([4], False), ([4, 12], True)])
def test_scan_directory_says_whether_the_manifest_lists_the_newest_file(tmp_path: Path, listed, newest_listed):
    make_checkpoints(tmp_path, [4, 12])
    manifest = tmp_path / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["checkpoints"] = [c for c in doc["checkpoints"] if c["step"] in listed]  # 12 renamed into place, maybe unlisted
    manifest.write_text(json.dumps(doc))
    assert scan_directory(tmp_path) == (12, [], [], newest_listed)


@pytest.mark.slow
def test_sigkill_cold_started_processes(tmp_path: Path, reference: Reference):
    # The same check with every life a fresh `python tests/kill_worker.py` (seconds per life).
    report = run_with_kills(tmp_path, kills=4, seed=7, ref=reference, steps=STEPS, save_every=SAVE_EVERY,
                            launcher=ColdLauncher())
    assert report.failures == []
    assert report.kills == 4 and report.kills_during_write == 2
    assert report.resumed_from_newest == report.resumes and report.final_equal
