"""The lines a session prints at its boundaries, as a user reads them."""

from __future__ import annotations

import math

from atheria_kit import session_messages as msg


def test_durations_read_at_a_glance():
    assert [msg.fmt_duration(s) for s in (0.2, 41, 119, 600, 3 * 3600 + 1, math.inf, None)] == \
        ["<1 s", "41 s", "119 s", "10 min", "3.0 h", "unlimited", "unlimited"]


def test_the_budget_stop_line_gives_the_numbers_and_what_to_do():
    line = msg.budget_stop_line(93, 41.0, 6.0, 0.0, 38.0, "saved (ckpt-0000000093.pt)", 3)
    assert line == ("stopped before episode 93: the next episode (~41 s) and the final save (~6 s) would not fit in "
                    "the 38 s left; saved (ckpt-0000000093.pt); about 3 more sessions at this pace; press Run all in "
                    "the next session to continue")


def test_a_sub_second_figure_is_a_bound_not_an_estimate():
    line = msg.budget_stop_line(17, 0.2, 0.1, 0.0, 0.3, "saved (ckpt-0000000017.pt)", 6)
    assert "the next episode (<1 s) and the final save (<1 s) would not fit in the <1 s left" in line


def test_the_final_sync_is_named_when_a_remote_needs_it():
    line = msg.budget_stop_line(10, 30.0, 5.0, 12.0, 20.0, "saved", None)
    assert "the next episode (~30 s), the final save (~5 s) and the final sync (~12 s) would not fit" in line
    assert "more session" not in line


def test_a_budget_used_up_by_start_up_says_so_instead_of_an_unmeasured_episode():
    line = msg.budget_stop_line(0, None, 0.2, 0.0, 0.4, "nothing saved yet", None, budget_seconds=4.0)
    assert line.startswith("stopped before episode 0: only <1 s of this session's 4 s budget is left, too little to "
                           "start an episode whose duration is not known yet and still save (start-up used the rest)")
    assert "~0 s" not in line


def test_sessions_left_at_the_measured_pace():
    assert msg.sessions_left(300, 40.0, 3600.0) == 4  # 90 episodes fit in a session: 300 / 90 -> 4 sessions
    assert msg.sessions_left(0, 40.0, 3600.0) == 0
    assert msg.sessions_left(10, None, 3600.0) is None
    assert msg.sessions_left(10, 40.0, math.inf) is None


def test_resume_new_run_and_complete_lines():
    assert msg.resume_line("ckpt-0000000210.pt", "Drive copy", 3, 210, 400, 3) == (
        "resumed from ckpt-0000000210.pt (Drive copy, verified) at episode 210/400, session 3 of this run; "
        "3 episodes recorded after that checkpoint were not saved and will be redone")
    assert msg.resume_line("ckpt-0000000210.pt", "local copy", 2, 210, 400, 0).endswith("session 2 of this run")
    assert msg.new_run_line(["/content/atheria/checkpoints/x", "Google Drive: MyDrive/atheria/checkpoints/x"],
                            400, 11.5 * 3600) == (
        "no checkpoint found in /content/atheria/checkpoints/x, Google Drive: MyDrive/atheria/checkpoints/x: "
        "starting a new run of 400 episodes (this session's budget: 11.5 h)")
    assert msg.complete_line(400, 400) == "this run is already complete (400/400): nothing to train; outputs below"


def test_episodes_logged_before_any_checkpoint_are_said_to_be_redone():
    assert msg.unsaved_redo_line(3) == ("3 episodes recorded by an earlier session that saved no checkpoint were "
                                        "discarded and will be redone")
    assert msg.unsaved_redo_line(1).startswith("1 episode recorded by an earlier session")
