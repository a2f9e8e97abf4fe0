"""Notebook 01 on two processes (CPU, gloo), as on Kaggle's "GPU T4 x2": the first "Run all" stops by itself at
the budget on every rank together, the second resumes and finishes, and the weights equal those of a two-process
run that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "01_progressive_training.ipynb"
PARAMS = {"EXPERIMENT_NAME": "ddp", "TOTAL_EPISODES": 120, "WINDOW": 24, "BATCH_SIZE": 64, "STEPS_PER_EPISODE": 4,
          "SAVE_EVERY_EPISODES": 5, "DRIVE_SYNC_EVERY": 0, "LIVE_VIEW": "text", "NPROCS": 2, "DATA": "synthetic"}


def run(out: Path, name: str, budget: float) -> str:
    """One "Run all" of notebook 01 into ``out``; the text it printed."""
    import papermill

    out.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOK), str(out / f"{name}.ipynb"),
                               parameters={**PARAMS, "OUTPUT_ROOT": str(out / "runs"), "MAX_TRAINING_SECONDS": budget},
                               kernel_name="python3", cwd=str(out), execution_timeout=600, progress_bar=False)
    cells = json.loads((out / f"{name}.ipynb").read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def final_model(out: Path) -> dict[str, torch.Tensor]:
    from atheria_kit import CheckpointManager

    with CheckpointManager(out / "runs" / "checkpoints" / PARAMS["EXPERIMENT_NAME"]) as mgr:
        loaded = mgr.load("latest")
        return loaded.state["objects"]["model"], loaded.state["extra"]["run"]


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_01_on_two_processes_stops_together_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("ATHERIA_HEADLESS", "1")
    reference = run(tmp_path / "ref", "ref", 3600.0)
    assert "[rank 0] finished: 120/120 episodes" in reference
    first = run(tmp_path / "run", "session1", 10.0)  # ~0.2 s an episode quiet: stops near 40 of 120
    assert "[rank 0] stopped before episode" in first  # the budget stop, said once, by rank 0
    assert "[rank 1] stopped" not in first
    second = run(tmp_path / "run", "session2", 3600.0)
    assert "[rank 0] resumed from" in second and "[rank 0] finished: 120/120 episodes" in second

    got, run_state = final_model(tmp_path / "run")
    want, _ = final_model(tmp_path / "ref")
    assert [s["end_reason"] for s in run_state["sessions"]] == ["budget", "done"]
    assert 0 < run_state["sessions"][0]["last_episode"] < 120
    assert run_state["world_size"] == 2 and len(run_state["ranks"]) == 2  # every rank's streams were saved
    for name in want:
        assert torch.equal(got[name], want[name]), name
