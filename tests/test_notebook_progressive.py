"""Notebook 01 as `make run` drives it: the first "Run all" stops part way by itself, the second resumes and
finishes; the report records both sessions, the plots exist, and each export loads and matches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests._paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("run_demo", REPO_ROOT / "notebooks" / "run_demo.py")
run_demo_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_demo_module)


@pytest.mark.notebook
def test_stop_then_resume_and_finish(tmp_path):
    # Enough episodes that even a fast machine cannot finish them within the first session's budget.
    total = 150
    # (each episode is ~10 optimizer steps plus a validation pass: about 0.1 s on a quiet 2-core machine, so the
    # 150 episodes need well over the first session's 4 s, and the second session finishes them in under a minute)
    summary = run_demo_module.run_demo(tmp_path, first_budget_s=4.0,
                                       params={"TOTAL_EPISODES": total, "STEPS_PER_EPISODE": 10, "BATCH_SIZE": 128})
    sessions = summary["sessions"]
    assert [s["end_reason"] for s in sessions] == ["budget", "done"]
    assert 0 < sessions[0]["last_episode"] < total
    assert sessions[1]["first_episode"] == sessions[0]["last_episode"]
    assert summary["episodes_done"] == total

    report = Path(summary["report"]).read_text()
    assert "2 session(s)" in report
    for caption in ("Loss evolution", "Monitored metric", "Checkpoint timeline", "Loss distribution",
                    "Resource use"):
        assert Path(summary["plots"][caption]).stat().st_size > 1000, caption
        assert Path(summary["plots"][caption]).name in report

    exports = {e["format"]: e for e in summary["exports"]}
    assert exports["torchscript"]["status"] == "ok" and exports["torch_export"]["status"] == "ok"
    x = torch.randn(5, 32, 4)
    ts = torch.jit.load(exports["torchscript"]["path"])
    pt2 = torch.export.load(exports["torch_export"]["path"]).module()
    torch.testing.assert_close(ts(x), pt2(x), rtol=1e-4, atol=1e-5)
    assert ts(x).shape == (5,)
