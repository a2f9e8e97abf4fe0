"""What a finished (or stopped) session leaves behind: plots, the Markdown report and a summary JSON.

It reads an :class:`OutputsInput` (plain data the session hands over), not the session itself, so it stands below
the session in the import graph.
"""

from __future__ import annotations

import logging
import platform as _pyplatform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from atheria_kit import __version__, plots
from atheria_kit._io import atomic_write_json
from atheria_kit.checkpoint import CheckpointRecord
from atheria_kit.platform import Environment
from atheria_kit.report import write_report
from atheria_kit.retention import rank_best
from atheria_kit.runlog import to_json_safe
from atheria_kit.session_config import SessionConfig

log = logging.getLogger(__name__)


@dataclass
class OutputsInput:
    """What the outputs are made of: the run's history, sessions and checkpoints, and where the session stands."""

    config: SessionConfig
    environment: Environment
    device: str
    root: Path
    logs: Path
    history: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    records: list[CheckpointRecord]
    saved: list[dict[str, Any]]
    episode: int
    end_reason: str | None
    error: str | None = None
    resource_rows: list[dict[str, Any]] = field(default_factory=list)


def environment_table(session: OutputsInput) -> dict[str, Any]:
    env = session.environment
    gpus = ", ".join(f"{g.name} ({g.memory_total_bytes / 2**30:.0f} GiB)" for g in env.gpus) or "none"
    return {
        "platform": env.kind,
        "session limit": "none" if env.session_limit_seconds is None else f"{env.session_limit_seconds / 3600:g} h",
        "device": str(session.device),
        "GPUs": gpus,
        "CPU cores": psutil.cpu_count(logical=True),
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": _pyplatform.python_version(),
        "torch": torch.__version__,
        "atheria_kit": __version__,
        "root": str(session.root),
    }


def write_outputs(session: OutputsInput, exports: list[dict[str, Any]],
                  run_summary: dict[str, Any] | None = None, *, remote: str | None = None,
                  plots_made: dict[str, Path] | None = None) -> tuple[dict[str, Path], Path, Path]:
    """Write the plots, the report and the summary (the run log's summary plus the session's own fields);
    a failing plot is logged and left out, never fatal. ``plots_made`` reuses plots already drawn (the report is
    written again once the final sync says what the remote holds: ``remote``)."""
    logs = session.logs
    history = session.history
    cfg = session.config
    made: dict[str, Path] = dict(plots_made or {})
    records = session.records
    kept = {r.step for r in records}
    jobs = {
        "Loss evolution": lambda p: plots.plot_loss(history, p),
        "Loss distribution": lambda p: plots.plot_loss_distribution(history, p),
        "Checkpoint timeline": lambda p: plots.plot_checkpoint_timeline(session.saved, kept, p),
        "Resource use": lambda p: plots.plot_resources(session.resource_rows, p),
    }
    if cfg.monitor != "loss" and "loss" not in cfg.monitor:  # a monitored loss is on the loss plot already
        jobs["Monitored metric"] = lambda p: plots.plot_metric(history, cfg.monitor, p)
    others = plots.other_metric_keys(history, skip=(cfg.monitor,))
    if others:
        jobs["Other metrics"] = lambda p: plots.plot_metrics(history, others, p)
    for caption, job in ({} if plots_made is not None else jobs).items():
        path = logs / (caption.lower().replace(" ", "_") + ".png")
        try:
            made[caption] = job(path)
        except Exception as exc:
            log.warning("plot %r failed: %s", caption, exc)

    by_step = {r.step: r for r in records}
    ranked = rank_best([r.info() for r in records], cfg.monitor, cfg.mode)  # the manager's ranking: NaN never best
    best = [by_step[i.step].to_json() for i in ranked[: cfg.keep_best_n]]
    final = {k: v for k, v in (history[-1].items() if history else ()) if k not in ("session", "time")}
    report = write_report(
        logs / "report.md",
        title=f"Training report: {cfg.experiment_name}",
        config=cfg.to_dict(),
        environment=environment_table(session),
        sessions=session.sessions,
        best_checkpoints=best,
        final_metrics=final,
        plots={c: p.name for c, p in made.items()},
        exports=exports,
        monitor=cfg.monitor,
        status=_status(session),
        remote=remote,
        exports_pending=None if exports or not cfg.export_formats or session.episode >= cfg.total_episodes else
        f"Exported ({', '.join(cfg.export_formats)}) when training completes: {session.episode} of "
        f"{cfg.total_episodes} episodes so far.",
    )
    summary = logs / "summary.json"
    atomic_write_json(summary, to_json_safe({
        **(run_summary or {}),
        "experiment": cfg.experiment_name,
        "end_reason": session.end_reason,
        "episodes_done": session.episode,
        "total_episodes": cfg.total_episodes,
        "sessions": session.sessions,
        "final_metrics": final,
        "best_checkpoints": best,
        "exports": exports,
        "plots": {c: str(p) for c, p in made.items()},
        "report": str(report),
        "remote": remote,
    }))
    return made, report, summary


def _status(session: OutputsInput) -> str:
    """Where the run stands, for the top of the report."""
    cfg, reason = session.config, session.end_reason
    done = f"{session.episode}/{cfg.total_episodes} episodes"
    if reason == "done":
        return f"Finished: {done}."
    if reason == "budget":
        return f"Stopped at this session's time limit after {done}; the next session continues from there."
    if reason in ("error", "nan"):
        what = session.error or ("the loss became non-finite" if reason == "nan" else "an error")
        return f"Stopped by an error after {done}: {what}."
    return f"Stopped after {done}; the next session continues from there."


def resource_rows(snapshots: Sequence[Any]) -> list[dict[str, Any]]:
    """Monitor samples flattened to the keys the resource plot reads."""
    rows = []
    for snap in snapshots:
        m = snap.metrics()
        rows.append({"time": snap.time, "ram_percent": m.get("ram_percent"), "cpu_percent": m.get("cpu_percent"),
                     "gpu_util_percent": m.get("gpu0_utilization_percent"),
                     "gpu_mem_percent": m.get("gpu0_memory_percent")})
    return rows
