"""``atheria monitor RUN_DIR``: show a running or finished run's progress from its run log.

Reads what :mod:`atheria_kit.runlog` writes (any kind of run: walk-forward, progressive training, replay)
and prints progress, the latest metrics, ETA, memory and how long ago the run last wrote. A run whose
status is still ``running`` is flagged **stalled** when it has not written for longer than
``max(5 min, 3 x its typical unit time)``, and **stopped/crashed** when its recorded process is gone.
Given a directory holding several runs, it lists them. Output fits a notebook cell (:data:`WIDTH` columns):
metrics wrap, the recent-units table keeps the columns that change and names the rest, counts print as
integers, fractions (returns, drawdowns, rates) as percentages and bytes in MiB/GiB. Exit status: 0, 1 when no readable run is found,
3 when a run is stalled or crashed.
"""

from __future__ import annotations

import argparse
import math
import socket
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

from atheria_kit._validation import require_positive
from atheria_kit.runlog import METRICS_FILE, PROGRESS_FILE, RunLogError, read_jsonl, read_progress

#: A run is stalled after max(STALL_MIN_SECONDS, STALL_UNITS x typical unit time) without an update.
STALL_MIN_SECONDS = 300.0
STALL_UNITS = 3.0
EXIT_OK, EXIT_NO_RUN, EXIT_UNHEALTHY = 0, 1, 3
_TABLE_ROWS = 10
#: The widest line the monitor prints by default: a notebook cell shows about 100 columns without wrapping.
WIDTH = 100
_MAX_CELL = 16
_MAX_HEADER = 14


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class RunView:
    """What the monitor knows about one run directory at one instant."""

    path: Path
    progress: dict[str, Any] | None
    records: list[dict[str, Any]] = field(default_factory=list)
    since_update: float | None = None
    typical_unit_seconds: float | None = None
    stall_after: float = STALL_MIN_SECONDS
    state: str = "unknown"  # running | stalled | crashed | finished | stopped_early | stopped | error | unreadable
    problem: str = ""

    @property
    def healthy(self) -> bool:
        return self.state not in ("stalled", "crashed", "unreadable")

    @property
    def active(self) -> bool:
        return self.state in ("running", "stalled")


def inspect_run(
    run_dir: Path,
    *,
    now: float | None = None,
    is_alive: Callable[[int], bool] = pid_alive,
    hostname: str | None = None,
) -> RunView:
    """Read one run directory and judge its state (pure apart from reading files and the pid check)."""
    now = time.time() if now is None else now
    try:
        progress = read_progress(run_dir)
        records = read_jsonl(run_dir / METRICS_FILE)
    except RunLogError as exc:
        return RunView(run_dir, None, state="unreadable", problem=str(exc))
    if progress is None:
        return RunView(run_dir, None, state="unreadable", problem=f"no {PROGRESS_FILE} in {run_dir}")
    view = RunView(run_dir, progress, records)
    durations = [r["unit_seconds"] for r in records[-20:] if _is_number(r.get("unit_seconds"))]
    view.typical_unit_seconds = statistics.median(durations) if durations else None
    view.stall_after = max(STALL_MIN_SECONDS, STALL_UNITS * (view.typical_unit_seconds or 0.0))
    updated = progress.get("updated_at")
    view.since_update = max(0.0, now - updated) if _is_number(updated) else None
    status = progress.get("status", "unknown")
    view.state = status
    if status == "running":
        pid = progress.get("pid")
        same_host = progress.get("host") in (None, hostname or socket.gethostname())
        if isinstance(pid, int) and same_host and not is_alive(pid):
            view.state = "crashed"
            view.problem = f"STOPPED/CRASHED: process {pid} is gone but the run never recorded its end"
        elif view.since_update is not None and view.since_update > view.stall_after:
            view.state = "stalled"
            view.problem = (
                f"STALLED: no update for {_duration(view.since_update)} "
                f"(threshold {_duration(view.stall_after)})"
            )
    return view


def find_runs(path: Path) -> list[Path]:
    """``path`` itself when it is a run directory, else the run directories up to two levels below it."""
    if (path / PROGRESS_FILE).is_file():
        return [path]
    found = sorted({p.parent for p in path.glob(f"*/{PROGRESS_FILE}")} | {p.parent for p in path.glob(f"*/*/{PROGRESS_FILE}")})
    return found


# ------------------------------------------------------------------ formatting
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


#: Metric names whose values are fractions of one, shown as percentages (returns, drawdowns, rates, coverage).
_FRACTION_HINTS = ("drawdown", "return", "_rate", "progress", "coverage")


def _value(key: str, v: Any, limit: int = _MAX_CELL) -> str:
    """One metric value as a person reads it: counts as integers, fractions as percentages, bytes in MiB/GiB,
    seconds as a duration; long text shortened to ``limit`` characters."""
    if isinstance(v, bool) or not _is_number(v):
        return _shorten("" if v is None else str(v), limit)
    k = key.lower()
    if k.endswith("_bytes") or k == "bytes":
        return _bytes(v)
    if (k.endswith("_seconds") or k == "seconds") and math.isfinite(v):
        return _duration(v) if v >= 60 else f"{v:.3g}s"
    if isinstance(v, float) and math.isfinite(v) and any(h in k for h in _FRACTION_HINTS):
        return f"{100 * v:.2f} %"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    if math.isfinite(v) and 1e3 <= abs(v) < 1e12:  # money and prices: digits grouped, not 1.011e+04
        return f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:,.1f}"
    return f"{v:.4g}"


def _shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (both ends of a name or path are telling)."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return text[:limit]
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def _wrap_items(prefix: str, items: Sequence[str], width: int, sep: str = "  ") -> list[str]:
    """``prefix`` and ``items``, continued on indented lines so that no line is wider than ``width``."""
    indent = " " * min(len(prefix), 12)
    lines, line, fresh = [], prefix, True  # fresh: nothing after the prefix or indent yet
    for item in items:
        item = _shorten(item, width - len(indent))
        joiner = " " if fresh else sep
        if not fresh and len(line) + len(joiner) + len(item) > width - len(sep.rstrip()):
            lines.append(line + sep.rstrip())  # a list separated by commas keeps its comma at the break
            line, joiner = indent, ""
        elif fresh and line == prefix and len(line) + 1 + len(item) > width:
            lines.append(line)
            line, joiner = indent, ""
        line, fresh = line + joiner + item, False
    lines.append(line)
    return lines


def _prose(text: str, first: str, rest: str, width: int) -> list[str]:
    """A sentence wrapped to ``width``; nothing is cut (a long path is split across lines, not shortened)."""
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False) or [first]


def _bytes(n: Any) -> str:
    if not _is_number(n):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _progress_text(p: dict[str, Any]) -> str:
    done, total, unit = p.get("done", 0), p.get("total"), p.get("unit", "unit")
    if _is_number(total) and total > 0:
        return f"{done}/{total} {unit}s ({100.0 * done / total:.1f} %)"
    return f"{done} {unit}s"


def format_run(view: RunView, *, table: bool = True, width: int = WIDTH) -> str:
    """A block of lines describing one run, none wider than ``width`` (a notebook cell shows ~100 columns)."""
    if view.progress is None:
        return "\n".join(_prose(f"{view.path}: {view.problem}", "", "  ", width))
    p = view.progress
    unit = p.get("unit", "unit")
    tail = f"  [{p.get('kind', '?')}] {p.get('run_id', '?')}  status: {view.state}"
    lines = [_shorten(str(view.path), max(20, width - len(tail))) + tail]
    if view.problem:
        lines.extend(_prose(view.problem, "  !! ", "     ", width))
    eta = p.get("eta_seconds")
    eta_text = f"   ETA {_duration(eta)}" if view.state == "running" and _is_number(eta) else ""
    lines.append(f"  progress  {_progress_text(p)}{eta_text}")
    metrics = p.get("metrics") or {}
    if "folds_planned" in metrics:  # a finished walk-forward stage: its summary over all folds
        lines.extend(_stage_lines(metrics, width))
    elif metrics:
        label = f"last {unit}" + (" (the stage summary comes when it ends)" if p.get("kind") == "walkforward" else "")
        lines.extend(_wrap_items(f"  metrics   {label}:", [f"{k}={_value(k, v)}" for k, v in metrics.items()],
                                 width))
    lines.append(f"  memory    {_bytes(p.get('memory_rss_bytes'))} RSS (pid {p.get('pid', '?')})")
    typical = f", typical {unit} {_duration(view.typical_unit_seconds)}" if view.typical_unit_seconds else ""
    lines.append(f"  updated   {_duration(view.since_update)} ago{typical}")
    if p.get("sessions", 1) != 1:
        lines.append(f"  sessions  {p.get('sessions')}")
    if p.get("message"):
        lines.extend(_prose(str(p["message"]), "  message   ", " " * 12, width))
    if table and view.records:
        lines.append(f"  last {min(len(view.records), _TABLE_ROWS)} of {len(view.records)} {unit}s:")
        rows, hidden = _table(view.records[-_TABLE_ROWS:], width - 4)
        lines.extend("    " + row for row in rows)
        if hidden:
            lines.extend(_wrap_items(f"    not shown (no room; all in {METRICS_FILE}):", hidden, width, ", "))
    return "\n".join(lines)


_STATS = ("mean", "median", "std", "min", "max")


def _stage_lines(m: dict[str, Any], width: int = WIDTH) -> list[str]:
    """A walk-forward stage summary (``<metric>_<stat>`` keys, baselines' means, money) as an aligned block."""
    done, planned, cover = m.get("folds_completed"), m.get("folds_planned"), m.get("test_coverage")
    cover_text = f", {100 * cover:.1f} % of the test period" if _is_number(cover) else ""
    lines = [f"  stage     summary over {done} of {planned} planned folds{cover_text}"]
    names = [k[: -len("_mean")] for k in m if k.endswith("_mean")]
    names = [n for n in names if all(f"{n}_{s}" in m for s in _STATS)]  # the baselines have means only
    if names:
        label = min(max(len(n) for n in names), width - 12 - 9 * len(_STATS))
        lines.append("            " + " " * label + "".join(f"{s:>9}" for s in _STATS))
        for n in names:
            lines.append(f"            {_shorten(n, label):<{label}}"
                         + "".join(f"{_num(m[f'{n}_{s}']):>9}" for s in _STATS))
    bases = [(label, m[key]) for key, label in (("last_bar_auc_mean", "last-bar"), ("majority_auc_mean", "majority"))
             if key in m]
    if bases:
        lines.append("  baselines mean AUC " + ", ".join(f"{label} {_num(v)}" for label, v in bases))
    money = [(k[: -len("_sharpe")], m[k]) for k in m if k.endswith("_sharpe")]
    if money:
        lines.extend(_wrap_items("  money     after costs:", [
            f"{name} {_pct(m.get(f'{name}_total_return'))} (Sharpe {_num(v)})" for name, v in money], width, ", "))
    if "dsr" in m:
        lines.append(f"  real?     PSR {_num(m.get('psr'))}, DSR {_num(m['dsr'])} after {m.get('trials')} trials")
    return lines


def _pct(v: Any) -> str:
    return f"{100 * v:+.1f} %" if _is_number(v) and math.isfinite(v) else "?"


def _table(records: list[dict[str, Any]], width: int = WIDTH) -> tuple[list[str], list[str]]:
    """The recent units as a table no wider than ``width``, and the metric names left out for want of room.

    ``done`` comes first; then the columns that change between the rows shown (the ones worth a table), then
    constant ones; ``unit_seconds`` is shown as ``took``. A column that repeats ``done`` (a cycle counter) is
    dropped. Long names are shortened in the header.
    """
    keys: list[str] = []
    for r in records:
        keys.extend(k for k in r if k not in keys and k not in ("time", "done"))
    done = [r.get("done") for r in records]
    columns = [k for k in keys if [r.get(k) for r in records] != done]
    varying = [k for k in columns if len({repr(r.get(k)) for r in records}) > 1]
    ordered = ["done"] + varying + [k for k in columns if k not in varying]
    header = {"done": "done", "unit_seconds": "took"}
    chosen, hidden, used = [], [], 0
    for k in ordered:
        title = header.get(k, _shorten(k, _MAX_HEADER))
        cells = [_value(k, r.get(k)) for r in records]
        w = max(len(title), *(len(c) for c in cells))
        if used + w + (2 if chosen else 0) > width:
            hidden.append(k)
            continue
        used += w + (2 if chosen else 0)
        chosen.append((title, w, cells))
    out = ["  ".join(title.rjust(w) for title, w, _ in chosen)]
    out += ["  ".join(cells[i].rjust(w) for _, w, cells in chosen) for i in range(len(records))]
    return out, hidden


def format_listing(views: Sequence[RunView], *, width: int = WIDTH) -> str:
    """One line per run (a problem on an indented line below it), for a directory holding several."""
    lines = []
    name_w = min(24, max((len(v.path.name) for v in views), default=0))
    for v in views:
        name = _shorten(v.path.name, name_w).ljust(name_w)
        if v.progress is None:
            lines.extend(_prose(f"{name} unreadable: {v.problem}", "", "  ", width))
            continue
        p = v.progress
        eta = p.get("eta_seconds")
        eta_text = f"  ETA {_duration(eta)}" if v.state == "running" and _is_number(eta) else ""
        line = (f"{name} {_shorten(str(p.get('kind', '?')), 11):<11} {v.state:<9} {_progress_text(p)}{eta_text}"
                f"  updated {_duration(v.since_update)} ago")
        lines.append(_shorten(line, width))
        if v.problem:
            lines.extend(_prose(v.problem, "  !! ", "     ", width))
    return "\n".join(lines)


# ------------------------------------------------------------------ command
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``monitor`` on the ``atheria`` command's sub-parsers."""
    parser = subparsers.add_parser(
        "monitor",
        help="watch a running or finished run",
        description="Show a run's progress, metrics, ETA and memory from its run directory; flag a stalled run.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory, or a folder of runs")
    parser.add_argument("--refresh", type=float, default=None, metavar="SECONDS",
                        help="redraw every SECONDS until the run ends (Ctrl-C to stop watching)")
    parser.add_argument("--summary", action="store_true", help="the overview only, without the recent-units table")


def run(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    wall_clock: Callable[[], float] = time.time,
) -> int:
    """Print the run(s) once, or every ``--refresh`` seconds until no run is active; return the exit status."""
    out = out if out is not None else sys.stdout
    refresh = args.refresh
    if refresh is not None:
        require_positive("--refresh", refresh)
    root = Path(args.run_dir)
    if not root.is_dir():
        print(f"atheria monitor: {root} is not a directory", file=out)
        return EXIT_NO_RUN
    try:
        while True:
            runs = find_runs(root)
            if not runs:
                print(f"atheria monitor: no run found in {root} (no {PROGRESS_FILE} here or below)", file=out)
                return EXIT_NO_RUN
            now = wall_clock()
            views = [inspect_run(r, now=now) for r in runs]
            if refresh is not None:
                print(f"--- {time.strftime('%H:%M:%S', time.localtime(now))}", file=out)
            if len(views) == 1 and views[0].path == root:
                print(format_run(views[0], table=not args.summary), file=out)
            else:
                print(format_listing(views), file=out)
            out.flush()
            if refresh is None or not any(v.active for v in views):
                break
            sleep(refresh)
    except KeyboardInterrupt:
        print("stopped watching", file=out)
        return EXIT_OK
    if any(v.state == "unreadable" for v in views) and all(v.progress is None for v in views):
        return EXIT_NO_RUN
    return EXIT_OK if all(v.healthy for v in views) else EXIT_UNHEALTHY


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atheria_kit.watch RUN_DIR ...`` (the same as ``atheria monitor``)."""
    parser = argparse.ArgumentParser(prog="atheria monitor", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"atheria monitor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
