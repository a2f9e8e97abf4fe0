"""What a session leaves behind: plots of every logged number, and a report that says where the run stands."""

from __future__ import annotations

from pathlib import Path

from atheria_kit import plots
from atheria_kit.platform import detect_environment
from atheria_kit.session_config import SessionConfig
from atheria_kit.session_outputs import OutputsInput, write_outputs

HISTORY = [  # training loss falls while validation loss rises: overfitting that must be visible
    {"episode": 0, "session": 1, "time": 1.0, "loss": 0.69, "val_loss": 0.69, "acc": 0.50, "lr": 1e-3},
    {"episode": 1, "session": 1, "time": 2.0, "loss": 0.60, "val_loss": 0.74, "acc": 0.55, "lr": 1e-3},
    {"episode": 2, "session": 2, "time": 3.0, "loss": 0.52, "val_loss": 0.83, "acc": 0.58, "lr": 5e-4},
]


def _inputs(tmp_path: Path, episode: int, end_reason: str, total: int = 10) -> OutputsInput:
    env = detect_environment({}, shell=None, kind="local", cwd=tmp_path, nvml=None, torch_module=None)
    cfg = SessionConfig(experiment_name="o", total_episodes=total, export_formats=("torchscript",))
    sessions = [{"index": 1, "started_at": 1.0, "duration_seconds": 60.0, "first_episode": 0, "last_episode": 2,
                 "end_reason": "interrupted"},
                {"index": 2, "started_at": 100.0, "duration_seconds": 30.0, "first_episode": 2, "last_episode": 3,
                 "end_reason": end_reason}]
    return OutputsInput(config=cfg, environment=env, device="cpu", root=tmp_path, logs=tmp_path / "logs",
                        history=HISTORY, sessions=sessions, records=[], saved=[], episode=episode,
                        end_reason=end_reason)


def test_every_logged_loss_goes_on_the_loss_plot_and_every_other_number_gets_a_panel():
    assert plots.loss_keys(HISTORY) == ["val_loss"]
    assert plots.other_metric_keys(HISTORY) == ["acc", "lr"]
    assert plots.other_metric_keys(HISTORY, skip=("acc",)) == ["lr"]


def test_a_stopped_run_says_where_it_stands_and_that_exports_wait_for_the_end(tmp_path):
    made, report, summary = write_outputs(_inputs(tmp_path, 3, "budget"), [], {},
                                          remote="remote copy is up to date: ckpt-0000000003.pt")
    text = report.read_text()
    assert "**Stopped at this session's time limit after 3/10 episodes; the next session continues from there.**" \
        in text
    assert "Exported (torchscript) when training completes: 3 of 10 episodes so far." in text
    assert "No export was requested" not in text
    assert "Persistent copy: remote copy is up to date: ckpt-0000000003.pt." in text
    assert "| 1 |" in text and "interrupted" in text
    assert set(made) >= {"Loss evolution", "Other metrics"}
    for path in made.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_run_with_no_export_formats_says_none_was_requested(tmp_path):
    inputs = _inputs(tmp_path, 10, "done")
    inputs.config = SessionConfig(experiment_name="o", total_episodes=10, export_formats=())
    _, report, _ = write_outputs(inputs, [], {})
    text = report.read_text()
    assert "**Finished: 10/10 episodes.**" in text and "No export was requested." in text
