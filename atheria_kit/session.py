"""A progressive-training session: the few lines a notebook needs to train for hours and survive the session limit.

    session = TrainingSession(SessionConfig(EXPERIMENT_NAME="demo", TOTAL_EPISODES=500))
    session.restore(model=model, optimizer=optimizer, scheduler=scheduler)   # resumes when a checkpoint exists
    for episode in session.episodes():          # stops by itself before the time limit
        loss = train_one_episode(model, optimizer)
        session.log(loss=loss)
    session.finish(model=model, example_input=x)  # final save, sync, plots, report, exports

It wires platform detection, the time budget, the resource monitor, checkpoints, persistence, the live view, the
run log and the report. "Run all" again in the next session and it continues from the newest complete checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from atheria_kit import __version__
from atheria_kit.budget import TimeBudget
from atheria_kit.checkpoint import CheckpointManager
from atheria_kit.live import LiveView
from atheria_kit.monitor import MIN_INTERVAL, ResourceMonitor
from atheria_kit.platform import Environment, detect_environment
from atheria_kit.session_config import SessionConfig
from atheria_kit.state import capture_rng_state, collect_state, restore_state

log = logging.getLogger(__name__)

END_REASONS = ("done", "budget", "stopped", "nan", "error")


@dataclass
class SessionPaths:
    """``{root}/checkpoints/{experiment}``, ``{root}/logs/{experiment}``, ``{root}/exports/{experiment}``."""

    root: Path
    checkpoints: Path
    logs: Path
    exports: Path

    @classmethod
    def under(cls, root: Path, experiment: str) -> SessionPaths:
        return cls(root, root / "checkpoints" / experiment, root / "logs" / experiment, root / "exports" / experiment)


@dataclass
class SessionResult:
    """What :meth:`TrainingSession.finish` produced."""

    end_reason: str
    episodes_done: int
    total_episodes: int
    sessions: list[dict[str, Any]]
    report: Path | None
    plots: dict[str, Path] = field(default_factory=dict)
    exports: list[dict[str, Any]] = field(default_factory=list)
    summary: Path | None = None

    @property
    def finished(self) -> bool:
        return self.episodes_done >= self.total_episodes


def default_root(env: Environment) -> Path:
    """Fast local disk for the run: /content/atheria on Colab, /kaggle/working/atheria on Kaggle, ./runs locally."""
    if env.kind == "local":
        return env.work_dir / "runs"
    return env.work_dir / "atheria"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TrainingSession:
    """One training run across as many notebook sessions as it takes. See the module docstring.

    Everything a test needs to control is injectable: ``environment``, ``clock``/``wall_clock``, ``display`` and
    ``stream`` for the live view, ``remote`` (a sync target object) and ``notifier``.
    """

    def __init__(
        self,
        config: SessionConfig | None = None,
        *,
        environment: Environment | None = None,
        remote: Any = None,
        notifier: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        display: Callable[..., Any] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.config = config or SessionConfig()
        cfg = self.config
        self.environment = environment or detect_environment()
        self._clock, self._wall_clock = clock, wall_clock
        root = Path(cfg.root) if cfg.root else default_root(self.environment)
        self.paths = SessionPaths.under(root.resolve(), cfg.experiment_name)
        for p in (self.paths.checkpoints, self.paths.logs, self.paths.exports):
            p.mkdir(parents=True, exist_ok=True)
        self.device = default_device()

        # The budget's fixed reserve and first save estimate (60 s each) suit hours-long sessions; a short demo
        # budget scales them down so that it still trains.
        limit = min(cfg.budget_seconds, self.environment.session_limit_seconds or math.inf)
        self.budget = TimeBudget(cfg.budget_seconds, environment=self.environment, clock=clock,
                                 wall_clock=wall_clock, reserve_seconds=min(60.0, 0.02 * limit),
                                 initial_save_seconds=min(60.0, 0.05 * limit))
        self.monitor = ResourceMonitor(interval=max(cfg.monitor_interval, MIN_INTERVAL), budget=self.budget)
        self.sync = _open_sync(cfg, self.environment, remote, self.paths)
        if cfg.auto_resume:
            # Before the manager reads its folder: on a fresh VM the newest checkpoint may exist only remotely
            # (Drive, a bucket) or in an earlier Kaggle version's output attached as an input.
            from atheria_kit.session_sync import fetch_newest, kaggle_input_sources

            sources = ((self.sync.worker.target,) if self.sync is not None else ()) + \
                kaggle_input_sources(self.environment, cfg.experiment_name)
            if sources:
                fetch_newest(self.paths.checkpoints, sources)
        self.checkpoints = CheckpointManager(
            self.paths.checkpoints, monitor=cfg.monitor, mode=cfg.mode, keep_best=cfg.keep_best_n, budget=self.budget
        )
        self._saved: list[dict[str, Any]] = []  # every checkpoint this run wrote (for the timeline plot)
        self.checkpoints.subscribe(self._on_commit)
        if self.sync is not None:
            self.sync.attach(self.checkpoints)
            self.monitor.add_status_provider("sync", self.sync.status)
        self.notifier = notifier if notifier is not None else _notifier_from_environment()
        # Messages go out from a background thread behind a rate limit: a slow or dead server never holds up
        # an episode, and a burst (many short episodes) arrives as one message.
        self._notes = _run_notifier(self.notifier, cfg)

        self._objects: dict[str, Any] = {}
        self.start_episode = 0
        self.episode = 0  # episodes completed so far (across sessions)
        self.global_step = 0
        self.history: list[dict[str, Any]] = []  # one record per completed episode, across sessions
        self.sessions: list[dict[str, Any]] = []
        self._last_saved_episode: int | None = None
        self._end_reason: str | None = None
        self._nan_skips = 0
        self._finished = False
        self._last_resource_time: float | None = None
        self._rng_at_episode_end: dict[str, Any] | None = None
        self._live: LiveView | None = None
        self._display, self._stream = display, stream
        self._runlog = _open_runlog(self.paths.logs, cfg, clock, wall_clock)
        self._session_started_at = wall_clock()
        self._session_t0 = clock()
        self._alert_lock = threading.Lock()
        self.monitor.add_alert_callback(self._on_monitor_alert)
        if cfg.handle_signals and threading.current_thread() is threading.main_thread():
            self.budget.install_signal_handlers()
        self.monitor.start()
        log.info("session for %r in %s (%s, device %s, budget %.0f s)", cfg.experiment_name, self.paths.root,
                 self.environment.kind, self.device, self.budget.limit_seconds)

    # ------------------------------------------------------------------------------------------ resume
    def restore(self, **objects: Any) -> int:
        """Register the objects to checkpoint (model, optimizer, scheduler, scaler, generators, anything with
        ``state_dict()``) and, with ``auto_resume``, load them from the newest valid checkpoint.

        Returns the episode training starts from: 0 on a first run (nothing to resume is not an error).
        """
        if not objects:
            raise ValueError("restore() needs the objects to checkpoint, e.g. restore(model=model, optimizer=opt)")
        self._objects = dict(objects)
        if self.config.auto_resume:
            loaded = self.checkpoints.load("latest")
            if loaded is not None:
                extra = restore_state(self._objects, loaded.state)
                run = extra.get("run", {})
                self.episode = int(run.get("episode", 0))
                self.global_step = int(run.get("global_step", 0))
                self.history = list(run.get("history", []))
                self.sessions = list(run.get("sessions", []))
                self._saved = list(run.get("saved", []))
                if "budget" in run:
                    self.budget.load_state_dict(run["budget"])
                self._last_saved_episode = self.episode
                log.info("resumed from %s: episode %d of %d", loaded.record.file, self.episode,
                         self.config.total_episodes)
        self.start_episode = self.episode
        self.sessions.append({
            "index": len(self.sessions) + 1, "started_at": self._session_started_at, "duration_seconds": None,
            "first_episode": self.episode, "last_episode": None, "end_reason": None,
            "platform": self.environment.kind, "device": str(self.device),
        })
        self._live = LiveView(
            self.config.total_episodes, initial=self.episode, mode=self.config.live_view,
            update_every=self.config.plot_every, metric_name=self.config.monitor if self.config.monitor != "loss"
            else None, title=self.config.experiment_name, display=self._display, stream=self._stream,
        )
        for rec in self.history:  # the live figure starts with what earlier sessions did
            self._live.points.append(_live_point(rec, self.config.monitor))
        if self.episode:
            self._notes.message(f"▶ {self.config.experiment_name} resumed at episode {self.episode}/"
                                f"{self.config.total_episodes} on {self.environment.kind}")
        else:
            self._notes.started(total=self.config.total_episodes, platform=self.environment.kind)
        return self.episode

    # ------------------------------------------------------------------------------------------ loop
    def episodes(self) -> Iterator[int]:
        """Episode numbers still to train, stopping early when the budget says the next one would not fit."""
        if self._live is None:
            raise RuntimeError("call restore(model=..., optimizer=...) before episodes()")
        while self.episode < self.config.total_episodes and self._end_reason is None:
            if self.budget.stop_requested:
                self._end_reason = "stopped"
                break
            if not self.budget.can_start():
                self._end_reason = "budget"
                log.info("stopping before episode %d: the next episode and a final save would not fit in the "
                         "%.0f s left", self.episode, self.budget.remaining)
                break
            ep = self.episode
            self._logged = False
            self.budget.start_unit()
            try:
                yield ep
            except GeneratorExit:
                self.budget.abandon_unit()
                raise
            self.budget.end_unit()
            if not self._logged:
                raise RuntimeError(f"episode {ep}: call session.log(loss=...) once per episode")
        if self._end_reason is None:
            self._end_reason = "done"

    def log(self, loss: float | torch.Tensor, **metrics: float | torch.Tensor) -> None:
        """Record the finished episode's loss and metrics; save, sync and refresh the live view as scheduled.

        A NaN or infinite loss stops the run (``nan_policy="stop"``) or rolls back to the last good checkpoint
        (``"skip"``); either way that episode is not saved.
        """
        values = {"loss": _to_float(loss), **{k: _to_float(v) for k, v in metrics.items()}}
        ep = self.episode
        if not math.isfinite(values["loss"]):
            self._logged = True
            self._handle_nan(ep, values["loss"])
            return
        self._logged = True
        self.episode = ep + 1
        self.global_step += 1
        self._rng_at_episode_end = capture_rng_state()
        record = {"episode": ep, "session": len(self.sessions), "time": self._wall_clock(), **values}
        self.history.append(record)
        if self._runlog is not None:
            self._runlog.log(record, done=self.episode)
            sample = self.monitor.last()
            if sample is not None and sample.time != self._last_resource_time:
                self._last_resource_time = sample.time
                self._runlog.log_resources({"time": sample.time, **sample.metrics()})
        status = self.status_line()
        if self._live is not None:
            self._live.update(ep, values["loss"], values.get(self.config.monitor) if self.config.monitor != "loss"
                              else None, status=status)
        last = self.episode >= self.config.total_episodes
        if self.episode % self.config.save_every_episodes == 0 or last or self.budget.should_save_now():
            self._save(blocking=last)
        self._notes.progress(self.episode, self.config.total_episodes,
                             {k: v for k, v in values.items() if isinstance(v, float)})

    def _handle_nan(self, ep: int, value: float) -> None:
        if self.config.nan_policy == "stop":
            self._end_reason = "nan"
            log.error("episode %d: loss is %s; stopping (nan_policy='stop'); the last good checkpoint is kept",
                      ep, value)
            if self._live is not None:
                self._live.alert("nan", f"loss became {value} at episode {ep}; run stopped, last good checkpoint kept")
            return
        self._nan_skips += 1
        if self._nan_skips > self.config.max_nan_skips:
            self._end_reason = "nan"
            log.error("loss non-finite %d times; stopping", self._nan_skips)
            return
        # the last good state may still be on its way to disk (asynchronous save): let it land, or "latest" is an
        # older checkpoint, or none at all, and the poisoned parameters would stay
        self.checkpoints.wait()
        loaded = self.checkpoints.load("latest")
        if loaded is not None:  # parameters may hold NaN now: go back to the last good state, keep this RNG stream
            restore_state(self._objects, loaded.state, rng=False)
        log.warning("episode %d: loss is %s; skipped and rolled back to the last good checkpoint (%d/%d)",
                    ep, value, self._nan_skips, self.config.max_nan_skips)
        self.episode = ep + 1  # the episode is spent; its results are discarded

    # ------------------------------------------------------------------------------------------ saving
    def _state(self) -> dict[str, Any]:
        """The run's state as of the end of the last completed episode."""
        run = {
            "episode": self.episode, "global_step": self.global_step, "history": self.history,
            "sessions": self._sessions_now(), "saved": self._saved, "budget": self.budget.state_dict(),
            "config": self.config.to_dict(), "atheria_kit": __version__,
        }
        # Code between the last episode and this save (an example input drawn with torch.randn, a plot) may
        # have consumed random numbers; resuming must continue the stream where the episode left it.
        return collect_state(self._objects, rng_state=self._rng_at_episode_end, run=run)

    def _save(self, blocking: bool = False, force: bool = False) -> None:
        if not self._objects or (self._last_saved_episode == self.episode and not force):
            return
        metrics = {k: v for k, v in self.history[-1].items() if k not in ("episode", "session", "time")} \
            if self.history else {}
        self.checkpoints.save(self._state(), step=self.episode, episode=self.episode, metrics=metrics,
                              blocking=blocking)
        self._last_saved_episode = self.episode

    def _on_commit(self, record: Any, manifest_path: Path) -> None:
        self._saved.append({"step": record.step, "episode": record.episode, "time": record.time})

    def save_now(self) -> None:
        """An emergency save, written (and synced, when a remote is set) before returning."""
        self._save(blocking=True)
        if self.sync is not None:
            self.sync.sync_now(timeout=300)
        self._notes.emergency_save(self.episode, reason=self._end_reason or "", metrics=self._final_metrics())

    # ------------------------------------------------------------------------------------------ status
    def status_line(self) -> str:
        return self.monitor.status_line()

    def _on_monitor_alert(self, alert: Any) -> None:
        if self._live is None:
            return
        key = str(getattr(alert, "kind", getattr(alert, "metric", "alert")))
        with self._alert_lock:
            self._live.alert(key, str(getattr(alert, "message", alert)))

    def _sessions_now(self) -> list[dict[str, Any]]:
        sessions = [dict(s) for s in self.sessions]
        if sessions:
            sessions[-1]["duration_seconds"] = self._clock() - self._session_t0
            sessions[-1]["last_episode"] = self.episode
            sessions[-1]["end_reason"] = self._end_reason or "running"
        return sessions

    # ------------------------------------------------------------------------------------------ end
    def finish(self, model: torch.nn.Module | None = None, example_input: Any = None) -> SessionResult:
        """Final save, sync and flush; plots, report, summary and (when the run is complete) exports.

        Safe to call more than once; the second call returns the same result without redoing work.
        """
        if self._finished:
            return self._result
        reason = self._end_reason or ("done" if self.episode >= self.config.total_episodes else "stopped")
        self._end_reason = reason
        if reason != "nan" and self._objects:
            # Always rewrite the newest checkpoint at the end: it carries the sessions table with this one's
            # end reason, which the next session's report shows.
            self._save(blocking=True, force=True)
        self.checkpoints.wait()
        self.sessions = self._sessions_now()
        self.monitor.stop()
        with contextlib.suppress(Exception):
            self.budget.uninstall_signal_handlers()

        from atheria_kit.session_outputs import write_outputs

        exports: list[dict[str, Any]] = []
        if model is not None and example_input is not None and self.episode >= self.config.total_episodes:
            exports = self._export(model, example_input)
        status = "finished" if reason == "done" else ("error" if reason in ("error", "nan") else "stopped")
        run_summary = self._runlog.finish(status, reason) if self._runlog is not None else {}
        plots, report, summary = write_outputs(self, exports, run_summary)
        if self._live is not None:
            self._live.close(self.status_line())
        if self.sync is not None:
            self.sync.finish(extra_dirs=(self.paths.logs, self.paths.exports))
        self.checkpoints.close()
        ended = "finished" if reason == "done" else f"stopped ({reason}) at episode {self.episode}/" \
            f"{self.config.total_episodes}; run again to resume"
        self._notes.finished(self._final_metrics(), status=ended)
        if self._notes is self.notifier:
            self._notes.flush(timeout=30)  # the caller's RunNotifier: theirs to close
        else:
            self._notes.close()
        self._result = SessionResult(reason, self.episode, self.config.total_episodes, self.sessions, report,
                                     plots, exports, summary)
        self._finished = True
        return self._result

    def _final_metrics(self) -> dict[str, float]:
        if not self.history:
            return {}
        return {k: v for k, v in self.history[-1].items() if k not in ("episode", "session", "time")
                and isinstance(v, (int, float))}

    def _export(self, model: torch.nn.Module, example_input: Any) -> list[dict[str, Any]]:
        from atheria_kit.export import export_model

        source, restore = "final model", None
        name = next((n for n, o in self._objects.items() if o is model), None)
        best = self.checkpoints.load("best") if self.config.export == "best" and name is not None else None
        if best is not None:
            # Export the best weights without disturbing the caller's model.
            restore = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best.state["objects"][name])
            source = f"best checkpoint ({best.record.file})"
        try:
            results = export_model(model, example_input, self.paths.exports, formats=self.config.export_formats)
        finally:
            if restore is not None:
                model.load_state_dict(restore)
        return [dict(r.to_dict(), source=source) for r in results]

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._finished:
            self._end_reason = "stopped" if exc_type is KeyboardInterrupt else "error"
            log.error("training raised %s; saving what was completed", exc_type.__name__)
        if not self._finished:
            self.finish()


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"metric tensor of shape {tuple(v.shape)} is invalid; expected a single value")
        return float(v.detach().cpu().item())
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"metric value {v!r} is invalid; expected a number") from None
    return float(v)


def _live_point(rec: Mapping[str, Any], monitor: str):
    from atheria_kit.live import LivePoint

    return LivePoint(int(rec["episode"]), float(rec["loss"]), rec.get(monitor) if monitor != "loss" else None)


def _open_runlog(logs: Path, cfg: SessionConfig, clock, wall_clock):
    from atheria_kit.runlog import RunLog

    return RunLog(logs, kind="progressive", total=cfg.total_episodes, unit="episode",
                  clock=clock, wall_clock=wall_clock)


def _run_notifier(notifier: Any, cfg: SessionConfig):
    """The session's messages go through a RunNotifier; with no notifier it sends nothing and starts no thread."""
    from atheria_kit.notify import RunNotifier

    if isinstance(notifier, RunNotifier):
        return notifier
    return RunNotifier(notifier, run_name=cfg.experiment_name, every=max(1, cfg.total_episodes // 10))


def _notifier_from_environment():
    try:
        from atheria_kit.notify import notifier_from_environment
    except ImportError:
        return None
    return notifier_from_environment()


def _open_sync(cfg: SessionConfig, env: Environment, remote: Any, paths: SessionPaths):
    """The persistent copy: the given target, ``cfg.remote``, or Drive on Colab; None when sync is off."""
    if cfg.drive_sync_every == 0 and remote is None and cfg.remote is None:
        return None
    from atheria_kit.session_sync import SessionSync

    return SessionSync.open(cfg, env, remote, paths)

