"""The live view shows one figure updated in place, prints sparse text headless, and shows each alert once."""

from __future__ import annotations

import io

import pytest

from atheria_kit.live import LiveView, resolve_mode, smooth


class RecordingDisplay:
    """Stands in for IPython's ``display``: records new outputs and in-place updates."""

    def __init__(self) -> None:
        self.outputs: list[object] = []
        self.updates = 0

    def __call__(self, obj, display_id=None):
        self.outputs.append(obj)
        rec = self

        class Handle:
            def update(self, new):
                rec.updates += 1

        return Handle() if display_id else None


@pytest.mark.parametrize(
    ("mode", "environ", "expected"),
    [
        ("auto", {"ATHERIA_HEADLESS": "1"}, "text"),
        ("auto", {"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, "text"),
        ("auto", {}, "text"),  # pytest is not a Jupyter kernel
        ("widget", {"ATHERIA_HEADLESS": "1"}, "widget"),
        ("off", {}, "off"),
    ],
)
def test_mode_resolution(mode, environ, expected):
    assert resolve_mode(mode, environ) == expected


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="live_view='fancy'"):
        resolve_mode("fancy")


def test_widget_mode_updates_one_figure_in_place():
    disp = RecordingDisplay()
    view = LiveView(40, mode="widget", update_every=10, metric_name="acc", display=disp, stream=io.StringIO())
    for ep in range(40):
        view.update(ep, loss=1.0 / (ep + 1), metric=ep / 40, status=f"ep {ep}")
    view.close("done")
    images = [o for o in disp.outputs if type(o).__name__ == "Image"]
    assert len(images) == 1, "the figure must be one output, updated in place"
    assert disp.updates >= 4  # later figure and status refreshes went through the handles


def test_text_mode_prints_about_twenty_lines_and_one_final_figure():
    out = io.StringIO()
    disp = RecordingDisplay()
    view = LiveView(200, mode="text", display=disp, stream=out)
    for ep in range(200):
        view.update(ep, loss=1.0, status="ok")
    png = view.close("finished")
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("[training] episode")]
    assert len(lines) == 20
    assert lines[-1].startswith("[training] episode 200/200 100.0%")
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(disp.outputs) == 1


def test_alert_is_shown_once_until_rearmed_and_never_twice_through_stderr(caplog, capsys):
    caplog.set_level("INFO", logger="atheria_kit.live")
    out = io.StringIO()
    view = LiveView(10, mode="text", stream=out)
    for _ in range(3):
        view.alert("time", "90 % of the time budget used")
    view.rearm("time")
    view.alert("time", "90 % of the time budget used")
    assert out.getvalue().count("⚠ 90 % of the time budget used\n") == 2
    # Logged for log files, below WARNING: unconfigured logging would print a WARNING to stderr again.
    assert [r.levelname for r in caplog.records if "90 %" in r.getMessage()] == ["INFO", "INFO"]
    assert capsys.readouterr().err == ""


class Bar:
    """Stands in for tqdm's notebook bar: a container widget, closed once."""

    container = "<the bar widget>"

    def __init__(self) -> None:
        self.closed = 0
        self.n = 90

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize(("outcome", "colour", "words"), [
    ("stopped", "#1565c0", "stopped; resumes in the next session"),
    ("done", "#2e7d32", "finished"),
    ("error", "#c62828", "stopped by an error"),
])
def test_at_the_end_the_live_bar_is_replaced_by_a_static_one_coloured_by_outcome(monkeypatch, outcome, colour,
                                                                                  words):
    bar = Bar()
    monkeypatch.setattr("atheria_kit.live._notebook_bar", lambda total, initial, desc: bar)
    replaced = []

    class Handle:
        def update(self, new):
            replaced.append(new)

    shown = []

    def display(obj, display_id=None):
        shown.append(obj)
        return Handle() if display_id else None

    view = LiveView(400, initial=90, mode="widget", display=display, stream=io.StringIO(), title="demo")
    assert shown[0] == "<the bar widget>"  # the live widget, through a handle of ours
    for ep in range(90, 93):
        view.update(ep, loss=0.5)
    view.close("status", outcome=outcome)
    assert bar.closed == 1
    static = replaced[0]
    assert type(static).__name__ == "HTML"
    assert f"episode 93/400 (23 %), {words}" in static.data and f"background:{colour}" in static.data
    assert "#c62828" not in static.data or outcome == "error"  # a planned stop is never red


def test_smooth_is_a_trailing_average():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([1.0, float("nan"), 3.0], 3) == [1.0, 1.0, 2.0]
