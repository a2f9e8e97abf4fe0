"""Notebook 05 as a user runs it: the first "Run all" stops at its time budget with a sealed checkpoint copied to
the remote; the second "Run all" on a fresh VM (local output deleted) resumes from the remote copy and finishes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests._paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "05_finetune_with_trainer.ipynb"


def run_all(tmp_path: Path, name: str, **parameters) -> str:
    """Execute the notebook with papermill in SMOKE mode; return its printed text (error outputs fail the test)."""
    papermill = pytest.importorskip("papermill")
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(tmp_path),
                               execution_timeout=240, progress_bar=False,
                               parameters={"SMOKE": True, **parameters})
    cells = json.loads(out.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))


@pytest.mark.notebook
@pytest.mark.slow  # two papermill runs of a real Trainer: ~55 s on 2 shared cores
def test_run_all_stops_at_the_budget_and_run_all_again_on_a_fresh_vm_continues_to_the_end(tmp_path):
    root, remote = tmp_path / "runs", tmp_path / "drive"
    output = root / "hf" / "finetune_trainer"
    first = run_all(tmp_path, "first", OUTPUT_ROOT=str(root), REMOTE=str(remote), MAX_TRAINING_SECONDS=2.0)
    assert "no verified checkpoint in" in first and "starting a new run" in first
    assert "stopped before step" in first and "press Run all in the next session to continue" in first
    assert "stopped before the end: press Run all in the next session" in first
    stopped_at = max(int(p.name.split("-")[1]) for p in output.iterdir() if p.name.startswith("checkpoint-"))
    assert 0 < stopped_at < 200
    assert f"checkpoint-{stopped_at}: verified" in first

    shutil.rmtree(root)  # a fresh VM: only the remote copy is left
    second = run_all(tmp_path, "second", OUTPUT_ROOT=str(root), REMOTE=str(remote))
    assert f"resumed from checkpoint-{stopped_at} (copy in {remote}, verified) at step {stopped_at}" in second
    assert "training finished at step 200/200" in second and "\nfinished\n" in second
    assert "2 session(s) in all" in second
