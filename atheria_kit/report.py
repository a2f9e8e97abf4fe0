"""The Markdown report of a progressive-training run: what was run, where, for how long, and what came out."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atheria_kit._io import atomic_write_bytes


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _fmt_num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}"


def _fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt_num(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(
    *,
    title: str,
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
    sessions: Sequence[Mapping[str, Any]],
    best_checkpoints: Sequence[Mapping[str, Any]],
    final_metrics: Mapping[str, Any],
    plots: Mapping[str, str],
    exports: Sequence[Mapping[str, Any]],
    monitor: str | None = None,
    status: str | None = None,
    exports_pending: str | None = None,
    remote: str | None = None,
) -> str:
    """Markdown text of the report. ``plots`` maps a caption to a path relative to the report.

    ``status``: one line on where the run stands; ``exports_pending``: why nothing was exported yet (exports wait
    for the run to complete); ``remote``: what the persistent copy holds.
    """
    parts = [f"# {title}", ""]
    total = sum(s.get("duration_seconds") or 0 for s in sessions)
    if status:
        parts += [f"**{status}**", ""]
    parts += [f"{len(sessions)} session(s), {_fmt_duration(total)} of training in all.", ""]
    if remote:
        parts += [f"Persistent copy: {remote}.", ""]

    parts += ["## Sessions", ""]
    parts.append(_table(
        ["#", "started", "duration", "episodes", "ended because"],
        [[s["index"], _fmt_time(s.get("started_at")), _fmt_duration(s.get("duration_seconds")),
          f"{s.get('first_episode', '-')}–{s.get('last_episode', '-')}", s.get("end_reason", "-")]
         for s in sessions],
    ))

    parts += ["", "## Final metrics", ""]
    parts.append(_table(["metric", "value"], [[k, v] for k, v in final_metrics.items()]) if final_metrics
                 else "No episode finished.")

    parts += ["", "## Best checkpoints", ""]
    if best_checkpoints:
        parts.append(_table(["rank", "episode", "step", monitor or "metric", "file", "sha256"],
                            [[i + 1, c.get("episode"), c.get("step"), (c.get("metrics") or {}).get(monitor, "-"),
                              c.get("file"), str(c.get("sha256", ""))[:12]]
                             for i, c in enumerate(best_checkpoints)]))
    else:
        parts.append("No checkpoint was kept.")

    parts += ["", "## Exports", ""]
    if exports:
        parts.append(_table(
            ["format", "status", "method", "max abs error", "tolerance", "file"],
            [[e["format"], e["status"], e.get("method", ""), _fmt_num(e.get("max_abs_err")),
              f"rtol={e.get('rtol')}, atol={e.get('atol')}", Path(e["path"]).name if e.get("path") else "-"]
             for e in exports],
        ))
        notes = [(e["format"], w) for e in exports for w in e.get("warnings", [])]
        failures = [(e["format"], e["message"]) for e in exports if e.get("message")]
        if notes:
            parts += ["", "Warnings raised while exporting (captured here, not shown in the notebook):", ""]
            parts += [f"- {fmt}: {w}" for fmt, w in notes]
        if failures:
            parts += ["", "Notes:", ""] + [f"- {fmt}: {m}" for fmt, m in failures]
        parts += ["", "Each export was loaded in a fresh Python process and its output compared with the eager "
                      "model's on the same example input; it passes when max|a-b| <= atol + rtol·max|y|."]
    elif exports_pending:
        parts.append(exports_pending)
    else:
        parts.append("No export was requested.")

    parts += ["", "## Plots", ""]
    parts += [f"![{caption}]({path})\n" for caption, path in plots.items()]

    parts += ["## Configuration", ""]
    parts.append(_table(["setting", "value"], [[k, v] for k, v in config.items()]))
    parts += ["", "## Environment and hardware", ""]
    parts.append(_table(["item", "value"], [[k, v] for k, v in environment.items()]))
    parts.append("")
    return "\n".join(parts)


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """Render and write the report atomically; returns its path."""
    p = Path(path)
    atomic_write_bytes(p, render_report(**kwargs).encode("utf-8"))
    return p
