"""RunLog: the run-directory contract (progress.json, metrics.jsonl, resources.jsonl, summary.json)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atheria_kit.runlog import RunLog, RunLogError, read_jsonl, read_progress, read_summary
from tests._paths import REPO_ROOT
from tests.fakes.clock import PairedClock

CONTRACT_FIELDS = {
    "kind", "run_id", "status", "started_at", "updated_at", "done", "total", "unit",
    "eta_seconds", "metrics", "memory_rss_bytes", "message", "pid",
}


@pytest.fixture
def clocks() -> PairedClock:
    return PairedClock(mono=100.0, wall=1_700_000_000.0)


def make(run_dir: Path, clocks: PairedClock, **kw) -> RunLog:
    kw.setdefault("kind", "walkforward")
    return RunLog(run_dir, clock=clocks.monotonic, wall_clock=clocks.time, **kw)


def strict_load(text: str):
    """Parse as a strict JSON parser would: NaN/Infinity tokens are errors."""
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=reject)


def test_progress_file_follows_the_contract_and_eta_follows_the_pace(tmp_path, clocks):
    rl = make(tmp_path, clocks, total=10, unit="fold")
    p = read_progress(tmp_path)
    assert CONTRACT_FIELDS <= set(p)
    assert p["status"] == "running" and p["done"] == 0 and p["total"] == 10 and p["unit"] == "fold"
    assert p["eta_seconds"] is None  # no unit finished yet: no pace
    for auc in (0.50, 0.52, 0.51):
        clocks.advance(10.0)
        rl.log({"auc": auc})
    p = read_progress(tmp_path)
    assert p["done"] == 3 and p["metrics"] == {"auc": 0.51}
    assert p["eta_seconds"] == pytest.approx(7 * 10.0)  # 7 folds left at 10 s each
    assert p["updated_at"] == clocks.wall and p["started_at"] == clocks.wall - 30.0
    assert p["memory_rss_bytes"] > 0
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["done"] for r in lines] == [1, 2, 3]
    assert [r["unit_seconds"] for r in lines] == [10.0, 10.0, 10.0]
    assert [r["auc"] for r in lines] == [0.50, 0.52, 0.51]
    rl.close()


def test_non_finite_values_are_strict_json_and_read_back_as_floats(tmp_path, clocks):
    rl = make(tmp_path, clocks, total=2)
    rl.log({"loss": float("nan"), "grad": float("inf"), "low": -math.inf, "np": np.float32(0.25),
            "t": torch.tensor(1.5), "n": np.int64(7)})
    for name in ("metrics.jsonl", "progress.json"):
        text = (tmp_path / name).read_text()
        for chunk in text.strip().splitlines() if name.endswith("jsonl") else [text]:
            strict_load(chunk)
    raw = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert (raw["loss"], raw["grad"], raw["low"]) == ("NaN", "Infinity", "-Infinity")
    rec = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert math.isnan(rec["loss"]) and rec["grad"] == math.inf and rec["low"] == -math.inf
    assert (rec["np"], rec["t"], rec["n"]) == (0.25, 1.5, 7)
    assert math.isnan(read_progress(tmp_path)["metrics"]["loss"])
    rl.close()


def test_another_process_reads_the_logs_while_the_run_goes_on(tmp_path, clocks):
    rl = make(tmp_path, clocks, total=5)
    rl.log({"loss": 1.0})
    rl.log({"loss": 0.5})
    rl.log_resources({"gpu_util": 90})
    reader = (
        "import sys; from atheria_kit.runlog import read_jsonl, read_progress;"
        "d = sys.argv[1]; print(len(read_jsonl(d + '/metrics.jsonl')), len(read_jsonl(d + '/resources.jsonl')),"
        " read_progress(d)['done'])"
    )
    out = subprocess.run([sys.executable, "-c", reader, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["2", "1", "2"]  # the files are still open in this process
    rl.close()


def test_a_torn_last_line_is_ignored_by_readers_and_cut_by_the_next_writer(tmp_path, clocks):
    rl = make(tmp_path, clocks)
    rl.log({"loss": 1.0})
    rl.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"loss": 0.9, "do')  # a writer killed in the middle of a line
    assert [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0]
    rl2 = make(tmp_path, clocks)
    rl2.log({"loss": 0.8})
    rl2.close()
    assert [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 0.8]


def test_a_malformed_complete_line_is_reported_as_corruption(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(RunLogError, match="line 2"):
        read_jsonl(path)
    (tmp_path / "progress.json").write_text("{trunc")
    with pytest.raises(RunLogError, match="progress.json"):
        read_progress(tmp_path)


def test_missing_files_read_as_absent(tmp_path):
    assert read_progress(tmp_path) is None and read_summary(tmp_path) is None
    assert read_jsonl(tmp_path / "metrics.jsonl") == []


def test_finish_writes_the_summary_and_closes(tmp_path, clocks):
    rl = make(tmp_path, clocks, total=2, unit="cycle")
    clocks.advance(5.0)
    rl.log({"pnl": 1.0})
    clocks.advance(5.0)
    rl.log({"pnl": 2.0})
    summary = rl.finish("finished", "all cycles done")
    assert read_progress(tmp_path)["status"] == "finished"
    on_disk = read_summary(tmp_path)
    assert on_disk == summary
    assert on_disk["status"] == "finished" and on_disk["message"] == "all cycles done"
    assert on_disk["duration_seconds"] == pytest.approx(10.0) and on_disk["done"] == 2
    assert on_disk["peak_rss_bytes"] > 0 and on_disk["eta_seconds"] == 0.0
    with pytest.raises(RuntimeError, match="closed"):
        rl.log({"pnl": 3.0})


def test_a_new_session_continues_the_run(tmp_path, clocks):
    rl = make(tmp_path, clocks, total=10)
    for _ in range(4):
        rl.log({"loss": 1.0})
    rl.finish("stopped", "budget")
    first = read_progress(tmp_path)
    clocks.advance(3600.0)
    rl2 = make(tmp_path, clocks, total=10)
    p = read_progress(tmp_path)
    assert (p["run_id"], p["started_at"], p["done"]) == (first["run_id"], first["started_at"], 4)
    assert p["status"] == "running" and p["sessions"] == 2
    rl2.log({"loss": 0.5})
    assert read_progress(tmp_path)["done"] == 5
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 5
    rl2.close()


def test_context_manager_records_an_error(tmp_path, clocks):
    with pytest.raises(KeyError), make(tmp_path, clocks):
        raise KeyError("boom")
    p = read_progress(tmp_path)
    assert p["status"] == "error" and "KeyError" in p["message"]


def test_resource_samples_default_to_this_process(tmp_path, clocks):
    rl = make(tmp_path, clocks)
    rl.log_resources()
    rl.close()
    (rec,) = read_jsonl(tmp_path / "resources.jsonl")
    assert rec["rss_bytes"] > 0 and rec["time"] == clocks.wall


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unit": "epoch"}, "unit='epoch'"),
        ({"total": -1}, "total=-1"),
        ({"total": 2.5}, "total=2.5"),
        ({"kind": ""}, "kind=''"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path, clocks, kwargs, message):
    with pytest.raises(ValueError, match="expected") as err:
        make(tmp_path, clocks, **kwargs)
    assert message in str(err.value)


def test_finish_rejects_unknown_status(tmp_path, clocks):
    rl = make(tmp_path, clocks)
    with pytest.raises(ValueError, match="status='running'"):
        rl.finish("running")
    rl.close()
