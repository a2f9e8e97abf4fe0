"""The lines a session prints at its boundaries (start, resume, stop, error): pure functions of what happened.

Why here: the wording is the product's interface at the moments that matter most (a new VM, the last seconds of
a session), so it is composed in one place, from numbers, and tested as text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "budget_stop_line",
    "complete_line",
    "error_stop_line",
    "fmt_duration",
    "new_run_line",
    "resume_line",
    "sessions_left",
    "unsaved_redo_line",
]


def fmt_duration(seconds: float | None) -> str:
    """``41 s``, ``12 min``, ``3.5 h``: the precision a person reads at a glance."""
    if seconds is None or not math.isfinite(seconds):
        return "unlimited"
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return "<1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _about(seconds: float | None) -> str:
    """``~41 s``, or ``<1 s`` (no "about" in front of a bound)."""
    text = fmt_duration(seconds)
    return text if text.startswith("<") else f"~{text}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def resume_line(file: str, source: str, session_index: int, episode: int, total: int, redo: int) -> str:
    """The resume line: "resumed from ckpt-0000000210.pt (Drive copy, verified) at episode 210/400, session 3 ..."."""
    line = (f"resumed from {file} ({source}, verified) at episode {episode}/{total}, "
            f"session {session_index} of this run")
    if redo:
        line += (f"; {_plural(redo, 'episode')} recorded after that checkpoint "
                 f"{'was' if redo == 1 else 'were'} not saved and will be redone")
    return line


def unsaved_redo_line(redo: int) -> str:
    """After a new-run line, when a session that died before its first checkpoint had logged episodes."""
    return (f"{_plural(redo, 'episode')} recorded by an earlier session that saved no checkpoint "
            f"{'was' if redo == 1 else 'were'} discarded and will be redone")


def new_run_line(places: Sequence[str], total: int, budget_seconds: float) -> str:
    where = ", ".join(places) if places else "this folder"
    return (f"no checkpoint found in {where}: starting a new run of {total} episodes "
            f"(this session's budget: {fmt_duration(budget_seconds)})")


def complete_line(done: int, total: int) -> str:
    return f"this run is already complete ({done}/{total}): nothing to train; outputs below"


def sessions_left(episodes_left: int, seconds_per_episode: float | None, usable_seconds: float) -> int | None:
    """How many more sessions like this one the rest of the run needs at the measured pace (None: unknown)."""
    if episodes_left <= 0:
        return 0
    if not seconds_per_episode or not math.isfinite(usable_seconds) or usable_seconds <= 0:
        return None
    per_session = max(1, int(usable_seconds // seconds_per_episode))
    return math.ceil(episodes_left / per_session)


def budget_stop_line(
    episode: int,
    next_episode_seconds: float | None,
    save_seconds: float,
    sync_seconds: float,
    left_seconds: float,
    saved: str,
    more_sessions: int | None,
    budget_seconds: float | None = None,
) -> str:
    """The stop at the time limit, with its numbers: "stopped before episode 93: the next episode (~41 s) and the
    final save (~6 s) would not fit in the 38 s left; saved ...; about 3 more sessions at this pace; press Run all
    in the next session to continue"."""
    if next_episode_seconds:
        parts = [f"the next episode ({_about(next_episode_seconds)})",
                 f"the final save ({_about(save_seconds)})"]
        if sync_seconds > 0:
            parts.append(f"the final sync ({_about(sync_seconds)})")
        needed = ", ".join(parts[:-1]) + " and " + parts[-1]
        why = f"{needed} would not fit in the {fmt_duration(left_seconds)} left"
    else:  # nothing measured yet: the budget went on start-up (imports, data, a download from Drive)
        of = f" of this session's {fmt_duration(budget_seconds)} budget" if budget_seconds else ""
        why = (f"only {fmt_duration(left_seconds)}{of} is left, too little to start an episode whose duration is "
               f"not known yet and still save (start-up used the rest)")
    line = f"stopped before episode {episode}: {why}; {saved}"
    if more_sessions:
        line += f"; about {_plural(more_sessions, 'more session')} at this pace"
    return line + "; press Run all in the next session to continue"


def error_stop_line(episode: int, what: str, kept: str | None, todo: str) -> str:
    keep = f"the last good checkpoint ({kept}) is kept" if kept else "no checkpoint had been saved yet"
    return f"training stopped at episode {episode}: {what}; {keep}. {todo}"
