"""bench/device_check.py: one table at the end, a "no GPU" verdict where there is none, and no check outlives its
time limit (it is killed with everything it started, reported as a timeout, and the table is still printed)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench._device.checks import HANG_HOOK
from bench._device.protocol import Row

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "device_check.py"


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def table_rows(out: str) -> list[list[str]]:
    """The cells of the closing table's rows (header and rule excluded)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Device check table"))
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[start + 1:] if line.startswith("| ")]
    assert cells[0] == ["#", "check", "result", "measured", "reference", "detail"]
    return cells[1:]


def nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def test_a_cheap_row_prints_versions_first_and_the_table_last() -> None:
    done = run_script("--quick", "--only", "nvml")
    assert done.returncode == 0, done.stdout + done.stderr
    head = done.stdout.splitlines()[:4]
    assert any(f"torch {importlib.metadata.version('torch')}" in line for line in head), head
    assert any("NVIDIA driver" in line or "NVML: no GPU" in line for line in head), head
    rows = table_rows(done.stdout)
    assert rows and all(r[0] == "3" for r in rows), rows
    if not nvml_works():
        assert [r[2] for r in rows] == ["no GPU"], rows
        assert "NVML" in rows[0][5] or "pynvml" in rows[0][5]


def test_an_unknown_row_is_refused_by_name() -> None:
    done = run_script("--only", "1,gpu-magic", timeout=60)
    assert done.returncode != 0
    assert "'gpu-magic'" in done.stderr and "expected numbers 1-6" in done.stderr


def processes_under(folder: Path) -> list[int]:
    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if any(str(folder) in part for part in (p.info["cmdline"] or []))]


def test_a_check_short_of_time_stops_its_training_processes_and_says_timeout(tmp_path: Path) -> None:
    # 6 s for the check leaves its own deadline at 1 s: the training process it starts cannot commit in time
    done = run_script("--quick", "--only", "resume", "--timeout-per-check", "6", "--workdir", str(tmp_path),
                      timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    assert "timeout" in [r[2] for r in rows], rows
    assert all(r[2] != "ok" for r in rows), rows
    assert processes_under(tmp_path) == []


def test_a_hung_check_is_killed_at_its_limit_keeping_its_finished_rows(tmp_path: Path) -> None:
    env = dict(os.environ, **{HANG_HOOK: "nvml"})
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", "nvml,walkforward", "--timeout-per-check", "6",
                           "--workdir", str(tmp_path), "--quick"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    nvml = [(r[1], r[2]) for r in rows if r[0] == "3"]
    assert nvml == [("hook: a row finished before the hang", "info"), ("nvml", "timeout")]
    assert "killed at its limit of 6 s" in next(r[5] for r in rows if r[2] == "timeout")
    assert [r[0] for r in rows if r[0] == "5"], "the next check still ran"
    assert processes_under(tmp_path) == []


def test_a_row_has_one_of_the_known_results() -> None:
    row = Row("2", "stall 1 GB", "ok", "20 ms", "torch.save 1 s")
    assert Row.parse("noise before " + row.line()) is None  # only whole lines count
    assert Row.parse(row.line()) == row
    with pytest.raises(ValueError, match="result='passed'"):
        Row("2", "stall", "passed")
