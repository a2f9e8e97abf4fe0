"""A progressive-training session: the few lines a notebook needs to train for hours and survive the session limit.

    session = TrainingSession(SessionConfig(experiment_name="demo", total_episodes=500))
    session.restore(model=model, optimizer=optimizer, scheduler=scheduler)   # resumes when a checkpoint exists
    for episode in session.episodes():          # stops by itself before the time limit
        loss = train_one_episode(model, optimizer)
        session.log(loss=loss)
    session.finish(model=model, example_input=x)  # final save, sync, plots, report, exports

It wires platform detection, the time budget, the resource monitor, checkpoints, persistence, the live view, the
run log and the report. "Run all" again in the next session and it continues from the newest complete checkpoint.

Under ``torch.distributed`` (data-parallel, one process per GPU) every rank runs the same lines. Rank 0 measures,
holds the lease, writes checkpoints and the run log, syncs, shows the live view and speaks; each decision (does the
next episode fit, is this the last one, save now) is made there and broadcast, so all ranks stop at the same
episode; a save gathers every rank's RNG streams into the one checkpoint, and a resume loads that checkpoint on rank 0
and hands it to every rank (see :mod:`atheria_kit.distributed` and ``docs/distributed.md``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from atheria_kit import __version__
from atheria_kit import session_messages as msg
from atheria_kit._io import TMP_PREFIX
from atheria_kit.budget import TimeBudget
from atheria_kit.checkpoint import CheckpointError, CheckpointManager, CheckpointWriteError, DiskStorage
from atheria_kit.distributed import PerRank, RankContext, refuse_sharded, unwrap_model
from atheria_kit.export import export_model
from atheria_kit.lease import FileLeaseStore, Lease
from atheria_kit.live import LivePoint, LiveView
from atheria_kit.monitor import MIN_INTERVAL, Alert, ResourceMonitor
from atheria_kit.notify import RunNotifier, notifier_from_environment
from atheria_kit.platform import Environment, detect_environment
from atheria_kit.runlog import RunLog
from atheria_kit.say import Say, UserError
from atheria_kit.session_config import SessionConfig, SessionPaths
from atheria_kit.session_outputs import OutputsInput, resource_rows, write_outputs
from atheria_kit.session_sync import SessionSync, kaggle_input_sources
from atheria_kit.state import (
    capture_rng_state,
    collect_state,
    restore_state,
    seed_everything,
)
from atheria_kit.sync import RemoteUnavailableError as SyncUnavailable
from atheria_kit.sync import ResumeResult, resume_from_best_source

log = logging.getLogger(__name__)

END_REASONS = ("done", "budget", "stopped", "nan", "error")


class SessionStorageError(UserError):
    """A run folder cannot be created or written (disk full, read-only, permission denied); nothing was trained."""


class RemoteUnavailableError(UserError):
    """The configured remote could not be read at start-up; the session stopped rather than start from zero."""


def _storage_message(path: Path, exc: BaseException, todo: str) -> str:
    errno_ = getattr(exc, "errno", None)
    reason = f"[Errno {errno_}] {os.strerror(errno_)}" if errno_ else f"{type(exc).__name__}: {exc}"
    return f"cannot write {path}: {reason}. {todo}"


def _prepare_folder(path: Path) -> None:
    """Create ``path`` and prove it is writable with a real temporary file (a read-only mount fails here)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SessionStorageError(_storage_message(
            path, exc, "Nothing was trained. Free space or choose a writable folder (ROOT=...), then run again")) from None


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
    #: What the persistent copy holds after the final sync (None without a remote).
    remote: Any = None

    @property
    def finished(self) -> bool:
        return self.episodes_done >= self.total_episodes

    def show(self, display: Callable[..., Any] | None = None) -> list[str]:
        """Show the end-of-run plots in the notebook (they are saved as PNGs beside the report either way).

        Returns the captions shown; outside a notebook (no IPython) it shows nothing and returns the captions
        that were saved, so a script can print where they are.
        """
        if display is None:
            try:
                from IPython.display import display
            except ImportError:
                return []
        from IPython.display import Image, Markdown

        shown = []
        for caption, path in self.plots.items():
            if Path(path).is_file():
                display(Markdown(f"**{caption}**"))
                display(Image(filename=str(path)))
                shown.append(caption)
        return shown


def default_root(env: Environment) -> Path:
    """Fast local disk for the run: /content/atheria on Colab, /kaggle/working/atheria on Kaggle, ./runs locally."""
    if env.kind == "local":
        return env.work_dir / "runs"
    return env.work_dir / "atheria"


def default_device(local_rank: int = 0) -> torch.device:
    """This process's device: its own GPU (``local_rank``) when there is one, else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


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
        storage: DiskStorage | None = None,
    ) -> None:
        self.config = config or SessionConfig()
        cfg = self.config
        self.ranks = RankContext.current()
        # One voice: rank 0 prints; the other ranks' lines are kept (say.lines) but not shown.
        self.say = Say(stream) if self.ranks.is_main else Say(io.StringIO())
        self.environment = environment or detect_environment()
        self._clock, self._wall_clock = clock, wall_clock
        root = Path(cfg.root).expanduser() if cfg.root else default_root(self.environment)
        self.paths = SessionPaths.under(root.resolve(), cfg.experiment_name)
        self.device = default_device(self.ranks.local_rank)
        self.lease: Lease | None = None
        self.sync: Any = None
        self.monitor: ResourceMonitor | None = None
        self._resume: ResumeResult | None = None  # where the resumed checkpoint came from, if a remote was read
        self._places: list[str] = [str(self.paths.checkpoints)]
        try:
            self._start(remote, storage, notifier, display, stream)
        except BaseException as exc:
            self._abort_start()
            # the other ranks wait for rank 0's start: tell them it failed, so none hangs in the first collective
            with contextlib.suppress(Exception):
                self.ranks.broadcast(f"{type(exc).__name__}: {exc}")
            raise
        failed = self.ranks.broadcast(None)
        if failed is not None:
            self._abort_start()
            raise UserError(f"rank 0 could not start the session ({failed}); see rank 0's output")
        log.info("session for %r in %s (%s, device %s, budget %.0f s)", cfg.experiment_name, self.paths.root,
                 self.environment.kind, self.device, self.budget.limit_seconds)

    def _start(self, remote: Any, storage: DiskStorage | None, notifier: Any, display: Any, stream: Any) -> None:
        """Everything before training, in the order that loses nothing: folders, lease, archive, remote, resume."""
        cfg, clock, wall_clock = self.config, self._clock, self._wall_clock
        main = self.ranks.is_main
        self.checkpoints: CheckpointManager | None = None
        self._runlog: RunLog | None = None
        if not main:
            self._start_follower(clock, wall_clock)
            return
        for p in (self.paths.checkpoints, self.paths.logs, self.paths.exports, self.paths.lease.parent):
            _prepare_folder(p)
        # One session per run folder: a second notebook on it refuses before touching anything.
        self.lease = Lease(FileLeaseStore(self.paths.lease, name=f"run folder {self.paths.checkpoints}"), owner_label=f"experiment {cfg.experiment_name!r}",
                           timeout=cfg.lease_timeout_seconds, heartbeat_every=min(30.0, cfg.lease_timeout_seconds / 4),
                           clock=wall_clock)
        try:
            previous = self.lease.acquire(take_over=cfg.take_over_lease)
        except OSError as exc:
            raise SessionStorageError(_storage_message(self.paths.lease, exc, "Choose a writable folder")) from None
        if previous is not None:
            why = self.lease.why_stale(previous) or "TAKE_OVER_LEASE=True"
            self.say.warning(f"took over the run folder from {previous.host} (pid {previous.pid}): {why}")
        self.lease.start_heartbeat()
        if cfg.start_over:
            self._archive_local()

        self.budget = self._make_budget(clock, wall_clock)
        self.monitor = ResourceMonitor(interval=max(cfg.monitor_interval, MIN_INTERVAL), budget=self.budget)
        self.sync = _open_sync(cfg, self.environment, remote, self.paths, self.say)
        if self.sync is not None:
            self._places.append(self.sync.worker.target.name)
            self.budget.final_sync_estimate = self.sync.estimated_final_sync_seconds
            if cfg.start_over:
                self._archive_remote()
        if cfg.auto_resume and not cfg.start_over:
            self._fetch_newest()
        try:
            self.checkpoints = CheckpointManager(
                self.paths.checkpoints, monitor=cfg.monitor, mode=cfg.mode, keep_best=cfg.keep_best_n,
                budget=self.budget, allow_pickle=cfg.allow_pickle, storage=storage,
            )
        except CheckpointWriteError as exc:
            raise SessionStorageError(_storage_message(
                exc.path, exc.__cause__ or exc, "Nothing was trained. Free space or choose a writable folder, "
                "then run again")) from None
        self._saved: list[dict[str, Any]] = []  # every checkpoint this run wrote (for the timeline plot)
        self.checkpoints.subscribe(self._on_commit)
        if self.sync is not None:
            self.sync.attach(self.checkpoints)
            self.monitor.add_status_provider("sync", self.sync.status)
        self.notifier = notifier if notifier is not None else notifier_from_environment()
        # Messages go out from a background thread behind a rate limit: a slow or dead server never holds up
        # an episode, and a burst (many short episodes) arrives as one message.
        self._notes = _run_notifier(self.notifier, cfg)
        self._init_run_state(display, stream)
        try:
            self._runlog = _open_runlog(self.paths.logs, cfg, clock, wall_clock)
        except OSError as exc:
            raise SessionStorageError(_storage_message(
                self.paths.logs, exc, "Nothing was trained. Free space or choose a writable folder, then run again"
            )) from None
        self._alert_lock = threading.Lock()
        self.monitor.add_alert_callback(self._on_monitor_alert)
        if cfg.handle_signals and threading.current_thread() is threading.main_thread():
            self.budget.install_signal_handlers()
        self.monitor.start()

    def _make_budget(self, clock: Callable[[], float], wall_clock: Callable[[], float]) -> TimeBudget:
        # The budget's fixed reserve and first save estimate (60 s each) suit hours-long sessions; a short demo
        # budget scales them down so that it still trains.
        cfg = self.config
        limit = min(cfg.budget_seconds, self.environment.session_limit_seconds or math.inf)
        return TimeBudget(cfg.budget_seconds, environment=self.environment, clock=clock, wall_clock=wall_clock,
                          reserve_seconds=min(60.0, 0.02 * limit), initial_save_seconds=min(60.0, 0.05 * limit))

    def _start_follower(self, clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        """A rank other than 0: no lease, remote, checkpoint files, run log, monitor or messages of its own; it
        follows rank 0's decisions. Its signal handlers turn a SIGTERM into a stop request that rank 0 hears."""
        self.budget = self._make_budget(clock, wall_clock)
        self.notifier = None
        self._notes = _run_notifier(None, self.config)
        self._saved: list[dict[str, Any]] = []
        self._init_run_state(None, None)
        if self.config.handle_signals and threading.current_thread() is threading.main_thread():
            self.budget.install_signal_handlers()

    def _init_run_state(self, display: Any, stream: Any) -> None:
        """Counters and records of the run (restored from the checkpoint by :meth:`restore`)."""
        self._objects: dict[str, Any] = {}
        self._per_rank: dict[str, Any] = {}  # objects registered with PerRank: every rank's state is saved
        self.start_episode = 0
        self.episode = 0  # episodes completed so far (across sessions)
        self.global_step = 0
        self.history: list[dict[str, Any]] = []  # one record per completed episode, across sessions
        self.sessions: list[dict[str, Any]] = []
        self._last_saved_episode: int | None = None
        self._saved_reason: str | None = None  # the end reason the newest save carries (None: mid-session)
        self._unit_open = False
        self._end_reason: str | None = None
        self._error: str | None = None  # what failed, when the end reason is "error"
        self._stop: dict[str, float | None] = {}  # the numbers behind a budget stop, for the stop line
        self._nan_skips = 0
        self._mid_episode = False  # an exception left an episode half done: its parameters are not a saved state
        self._finished = False
        self._last_resource_time: float | None = None
        self._rng_at_episode_end: dict[str, Any] | None = None
        self._live: LiveView | None = None
        self._display, self._stream = display, stream
        self._session_started_at = self._wall_clock()
        self._session_t0 = self._clock()

    def _abort_start(self) -> None:
        """Undo a start that failed: nothing was trained, so nothing is synced; the lease is given back."""
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.stop()
        if self.sync is not None:
            with contextlib.suppress(Exception):
                _abandon_sync(self.sync)
        if self.lease is not None:
            with contextlib.suppress(Exception):
                self.lease.release()

    def _archive_local(self) -> None:
        """``start_over``: move this experiment's folders aside under an archive name (never delete them)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._wall_clock()))
        moved = []
        for folder in (self.paths.checkpoints, self.paths.logs, self.paths.exports):
            if folder.is_dir() and any(folder.iterdir()):
                dest = folder.with_name(f"{folder.name}.archived-{stamp}")
                try:
                    folder.rename(dest)
                    folder.mkdir()
                except OSError as exc:
                    raise SessionStorageError(_storage_message(dest, exc, "Could not archive the previous run; "
                                                               "nothing was changed or trained")) from None
                moved.append(str(dest))
        if moved:
            self.say(f"starting over (START_OVER=True): the previous run is kept in {', '.join(moved)}. "
                     f"Set START_OVER=False now, or the next session starts over again")

    def _archive_remote(self) -> None:
        try:
            where = self.sync.archive_remote("start over")
        except Exception as exc:
            raise RemoteUnavailableError(
                f"START_OVER=True, but the previous run on {self.sync.worker.target.name} could not be archived "
                f"({type(exc).__name__}: {exc}); nothing was trained. Run again when the remote is reachable") from None
        if where:
            self.say(f"the previous run's remote copy is kept under {where} on {self.sync.worker.target.name}")

    def _fetch_newest(self) -> None:
        """Bring the newest verified checkpoint (local, remote, an earlier Kaggle version) into the local folder.

        An unreachable remote is retried for ``remote_retry_seconds``; if it stays unreachable the session stops
        (``remote_unavailable="stop"``) instead of starting from zero beside a remote history it could not see.
        """
        cfg = self.config
        inputs = kaggle_input_sources(self.environment, cfg.experiment_name)
        self._places.extend(src.name for src in inputs)
        sources = ((self.sync.worker.target,) if self.sync is not None else ()) + tuple(inputs)
        if not sources:
            return
        try:
            self._resume = resume_from_best_source(
                self.paths.checkpoints, sources, fetch="all", retry_seconds=cfg.remote_retry_seconds,
                unavailable="raise" if cfg.remote_unavailable == "stop" else "ignore",
                # a read that never answers (a stuck mount) is a failed attempt after this long, so the start-up
                # wait stays near what REMOTE_RETRY_SECONDS promises
                read_timeout=max(10.0, min(60.0, cfg.remote_retry_seconds)),
            )
        except SyncUnavailable as exc:
            raise RemoteUnavailableError(
                f"could not read {', '.join(exc.sources)} for {cfg.remote_retry_seconds:.0f} s ({exc.last_error}). "
                "Nothing was trained and nothing was changed, here or there. Run again when it is reachable, or set "
                "REMOTE_UNAVAILABLE='ignore' to continue from what is reachable here (the remote's newer checkpoints, "
                "if any, would then be ignored)") from None
        if self._resume.unavailable:
            self.say.warning(f"{', '.join(self._resume.unavailable)} could not be read; continuing from what is "
                             f"reachable (REMOTE_UNAVAILABLE='ignore'): a newer checkpoint there is not considered")

    # ------------------------------------------------------------------------------------------ resume
    def restore(self, **objects: Any) -> int:
        """Register the objects to checkpoint (model, optimizer, scheduler, scaler, generators, anything with
        ``state_dict()``) and, with ``auto_resume``, load them from the newest valid checkpoint.

        Returns the episode training starts from: 0 on a first run (nothing to resume is not an error). Prints where
        the run stands: resumed from which checkpoint and copy, a new run, or a run that is already complete.
        """
        if not objects:
            raise ValueError("restore() needs the objects to checkpoint, e.g. restore(model=model, optimizer=opt)")
        for name, obj in objects.items():
            refuse_sharded(name, obj)
        # a DistributedDataParallel model is saved as the module inside, so the checkpoint loads on any GPU count
        self._objects = {name: unwrap_model(obj) for name, obj in objects.items() if not isinstance(obj, PerRank)}
        self._per_rank = {name: obj.obj for name, obj in objects.items() if isinstance(obj, PerRank)}
        cfg = self.config
        loaded, state = self._load_latest() if cfg.auto_resume else (None, None)
        redo = 0
        if state is not None:
            extra = self._restore_everywhere(state)
            run = extra.get("run", {})
            self.episode = int(run.get("episode", 0))
            self.global_step = int(run.get("global_step", 0))
            self.history = list(run.get("history", []))
            self.sessions = [dict(s) for s in run.get("sessions", [])]
            for s in self.sessions:  # a session saved while running never finished: its kernel or VM died
                if s.get("end_reason") in (None, "running"):
                    s["end_reason"] = "interrupted"
            self._saved = list(run.get("saved", []))
            if "budget" in run:
                self.budget.load_state_dict(run["budget"])
            self._last_saved_episode = self.episode
            if self.episode >= cfg.total_episodes:
                self._saved_reason = "done"  # a complete run: its checkpoint needs no second copy
            if loaded is not None:
                self._say_skipped(loaded.record)
        # One history: what the run log recorded after this checkpoint is redone, so it leaves the log.
        if self._runlog is not None:
            redo = self._guard_storage(lambda: self._runlog.rewind(self.episode), "the run log",
                                       self.paths.logs) or 0
        self.start_episode = self.episode
        self.sessions.append({
            "index": len(self.sessions) + 1, "started_at": self._session_started_at, "duration_seconds": None,
            "first_episode": self.episode, "last_episode": None, "end_reason": None,
            "platform": self.environment.kind, "device": str(self.device),
        })
        if state is not None and self.episode >= cfg.total_episodes:
            self.say(msg.complete_line(self.episode, cfg.total_episodes))
        elif loaded is not None:
            self.say(msg.resume_line(loaded.record.file, self._copy_label(loaded.record.file),
                                     len(self.sessions), self.episode, cfg.total_episodes, redo))
        else:
            self.say(msg.new_run_line(self._places, cfg.total_episodes, self.budget.limit_seconds))
            if redo:  # an earlier session logged episodes but died before its first checkpoint
                self.say(msg.unsaved_redo_line(redo))
        if self.ranks.distributed:
            self.say(f"data-parallel: {self.ranks.world_size} processes ({self.ranks.backend}); rank 0 saves, syncs "
                     "and reports, every rank stops at the same episode")
        if not self.ranks.is_main:
            self._live = LiveView(cfg.total_episodes, initial=self.episode, mode="text", stream=io.StringIO())
            return self.episode
        self._live = LiveView(
            cfg.total_episodes, initial=self.episode, mode=cfg.live_view,
            update_every=cfg.plot_every, metric_name=cfg.monitor if cfg.monitor != "loss"
            else None, title=cfg.experiment_name, display=self._display, stream=self._stream,
        )
        for rec in self.history:  # the live figure starts with what earlier sessions did
            self._live.points.append(_live_point(rec, cfg.monitor))
        if self.episode:
            self._notes.message(f"▶ {cfg.experiment_name} resumed at episode {self.episode}/"
                                f"{cfg.total_episodes} on {self.environment.kind}")
        else:
            self._notes.started(total=cfg.total_episodes, platform=self.environment.kind)
        return self.episode

    def _load_latest(self) -> tuple[Any, dict[str, Any] | None]:
        """The newest valid checkpoint: (its LoadedCheckpoint on rank 0, its state on every rank).

        Rank 0 reads and verifies it; under torch.distributed it hands the state to the other ranks, so every rank
        restores the same checkpoint even if a newer file appeared meanwhile."""
        loaded = self.checkpoints.load("latest") if self.checkpoints is not None else None
        state = loaded.state if loaded is not None else None
        if self.ranks.distributed:
            state = self.ranks.broadcast(state)
        return loaded, state

    def _restore_everywhere(self, state: Mapping[str, Any], *, rng: bool = True) -> dict[str, Any]:
        """Load ``state`` into the registered objects; with ``rng``, this rank's RNG streams as saved.

        A checkpoint saved by N processes holds N entries in ``run.ranks`` (each rank's RNG streams and the state of
        its :class:`PerRank` objects); rank r takes entry r. A rank the checkpoint has no entry for (more processes
        than when it was saved) keeps its per-rank objects as constructed and starts new RNG streams seeded from
        the episode and its rank: the run goes on correctly, but not bit-identically to one on the old count."""
        extra = restore_state(self._objects, state, rng=False)
        run = extra.get("run", {})
        entries = run.get("ranks")
        if entries is None:  # one process, no per-rank objects: the state's own RNG streams are rank 0's
            entries = [{"format": state["format"], "version": state["version"], "objects": {}, "rng": state["rng"],
                        "extra": {}}]
        if rng and self.ranks.world_size > len(entries):
            # said by rank 0 (the others' lines are not shown): the user learns why the run is no longer bit-exact
            started = f"{sorted(self._per_rank)} as constructed and " if self._per_rank else ""
            self.say.warning(f"the checkpoint was saved by {len(entries)} process(es) and {self.ranks.world_size} run "
                             f"now: ranks {len(entries)}..{self.ranks.world_size - 1} start {started}with new random "
                             "streams; the run continues correctly, not bit-identically to one on the old count")
        mine = entries[self.ranks.rank] if self.ranks.rank < len(entries) else None
        if mine is not None:
            restore_state(self._per_rank, mine, rng=rng)  # names checked: a mismatch is named, nothing changed
            return extra
        if rng:
            seed_everything(int(run.get("episode", 0)) * 100_003 + self.ranks.rank)
        return extra

    def _copy_label(self, file: str) -> str:
        """Which copy a resumed checkpoint came from: "Drive copy", "local copy", ..."""
        res = self._resume
        if res is not None and res.downloaded and res.file == file:
            source = str(res.source)
            return "Drive copy" if "Google Drive" in source else f"copy in {source}"
        return "local copy"

    def _say_skipped(self, used: Any) -> None:
        """Name every newer checkpoint that was passed over (damaged, unsafe), so a fallback is never silent."""
        if self.checkpoints is None:
            return
        bad = getattr(self.checkpoints, "_bad", {})
        for rec in self.checkpoints.records():
            if rec.step > used.step or (rec.step == used.step and rec.file != used.file and rec.file in bad):
                why = bad.get(rec.file, "not loadable")
                self.say.warning(f"skipped {rec.file}: {why}; using the previous good checkpoint {used.file}")

    # ------------------------------------------------------------------------------------------ loop
    def episodes(self) -> Iterator[int]:
        """Episode numbers still to train, stopping early when the budget says the next one would not fit."""
        if self._live is None:
            raise RuntimeError("call restore(model=..., optimizer=...) before episodes()")
        while self.episode < self.config.total_episodes and self._end_reason is None:
            if self._decide_start() is not None:
                break
            ep = self.episode
            self._logged = False
            self._unit_open = True
            self.budget.start_unit()
            try:
                yield ep
            except GeneratorExit:
                if self._unit_open:
                    self._unit_open = False
                    self.budget.abandon_unit()
                raise
            self._end_unit()  # log() ends it (its duration is known there); this is for a missing log()
            if not self._logged:
                raise RuntimeError(f"episode {ep}: call session.log(loss=...) once per episode")
        if self._end_reason is None:
            self._end_reason = "done"

    def _decide_start(self) -> str | None:
        """Whether the next episode starts (None) or why not; decided on rank 0 and followed by every rank."""
        stop = self.ranks.any(self.budget.stop_requested)  # a SIGTERM may reach any rank first
        reason = None
        if self.ranks.is_main:
            if self.lease is not None and self.lease.error is not None:
                self._fail(f"{self.lease.error}", "Another session now trains this run; stop one of them")
                reason = "error"
            elif stop:
                reason = "stopped"
            elif not self.budget.can_start():
                self._stop_for_budget()
                reason = "budget"
        reason = self.ranks.broadcast(reason)
        if reason is not None and self._end_reason is None:
            self._end_reason = reason
        return reason

    def log(self, loss: float | torch.Tensor, **metrics: float | torch.Tensor) -> None:
        """Record the finished episode's loss and metrics; save, sync and refresh the live view as scheduled.

        A NaN or infinite loss stops the run (``nan_policy="stop"``) or rolls back to the last good checkpoint
        (``"skip"``); either way that episode is not saved. A storage failure (disk full, read-only folder) stops
        the run with end reason ``error``: the last good checkpoint stays, and the next run resumes from it.
        """
        values = {"loss": _to_float(loss), **{k: _to_float(v) for k, v in metrics.items()}}
        values = self.ranks.mean(values)  # data-parallel: the episode's figures over all ranks
        ep = self.episode
        self._end_unit()
        if not math.isfinite(values["loss"]):
            self._logged = True
            self._handle_nan(ep, values["loss"])
            return
        self._logged = True
        if self._end_reason == "error" and not self.ranks.distributed:
            return
        self.episode = ep + 1
        self.global_step += 1
        self._rng_at_episode_end = capture_rng_state()
        record = {"episode": ep, "session": len(self.sessions), "time": self._wall_clock(), **values}
        self.history.append(record)
        self._guard_storage(lambda: self._log_record(record), "the run log", self.paths.logs)
        if self._end_reason == "error" and not self.ranks.distributed:
            return  # the storage failed: no further writes, the last good checkpoint stays as it is
        status = self.status_line()
        if self._live is not None and self.ranks.is_main:
            self._live.update(ep, values["loss"], values.get(self.config.monitor) if self.config.monitor != "loss"
                              else None, status=status,
                              extra={k: v for k, v in values.items() if k not in ("loss", self.config.monitor)})
        # Decide now whether this was the session's last episode, so that its save is the final one (and carries
        # the end reason): finish() then writes no second copy of the same episode.
        stop = self.ranks.any(self.budget.stop_requested)
        if self.ranks.is_main:
            if self._end_reason is not None:
                pass  # an error while writing the run log
            elif self.episode >= self.config.total_episodes:
                self._end_reason = "done"
            elif stop:
                self._end_reason = "stopped"
            elif not self.budget.can_start():
                self._stop_for_budget()
            save = self._end_reason != "error" and (self.episode % self.config.save_every_episodes == 0
                                                    or self._end_reason is not None or self.budget.should_save_now())
            decision = (self._end_reason, save)
        else:
            decision = None
        self._end_reason, save = self.ranks.broadcast(decision) if self.ranks.distributed else decision
        if self._end_reason == "error":
            return  # the storage failed: no further writes, the last good checkpoint stays as it is
        final = self._end_reason is not None
        if save:
            self._guard_storage(lambda: self._save(blocking=final), "a checkpoint")
        self._notes.progress(self.episode, self.config.total_episodes,
                             {k: v for k, v in values.items() if isinstance(v, float)})

    def _end_unit(self) -> None:
        if getattr(self, "_unit_open", False):
            self._unit_open = False
            self.budget.end_unit()

    def _stop_for_budget(self) -> None:
        self._end_reason = "budget"
        self._stop = {"next": self.budget.unit_forecast, "save": self.budget.save_estimate,
                      "sync": self.budget.final_sync_seconds, "left": self.budget.remaining}
        log.info("stopping before episode %d: the next episode and a final save would not fit in the %.0f s left",
                 self.episode, self.budget.remaining)

    def _log_record(self, record: dict[str, Any]) -> None:
        if self._runlog is None:
            return
        self._runlog.log(record, done=self.episode)
        sample = self.monitor.last()
        if sample is not None and sample.time != self._last_resource_time:
            self._last_resource_time = sample.time
            self._runlog.log_resources({"time": sample.time, **sample.metrics()})

    def _guard_storage(self, action: Callable[[], Any], what: str, where: Path | None = None) -> Any:
        """Run a write; a storage failure ends the run cleanly (end reason ``error``) instead of escaping."""
        try:
            return action()
        except (OSError, CheckpointError) as exc:
            cause = exc if isinstance(exc, OSError) else (exc.__cause__ or exc)
            path = getattr(exc, "path", None) or getattr(cause, "filename", None) or where or self.paths.checkpoints
            errno_ = getattr(cause, "errno", None)
            reason = os.strerror(errno_) if errno_ else f"{type(cause).__name__}: {cause}"
            self._fail(f"could not write {what} in {path}: {reason}",
                       "Free space (or make the folder writable) and press Run all", resumes=True)
            return None

    def _fail(self, what: str, todo: str, *, resumes: bool = False) -> None:
        if self._end_reason == "error":
            return
        self._end_reason = "error"
        self._error = what
        if getattr(self, "checkpoints", None) is not None:
            with contextlib.suppress(Exception):  # a save still in flight may yet land: name the newest that did
                self.checkpoints.wait(timeout=60.0)
        kept = self._newest_file()
        if resumes:
            todo += ": the run resumes from " + ("that checkpoint" if kept else "the beginning")
        self.say.error(msg.error_stop_line(self.episode, what, kept, todo))
        if self._live is not None:
            self._live.alert("error", what)

    def _newest_file(self) -> str | None:
        recs = self.checkpoints.records() if getattr(self, "checkpoints", None) is not None else []
        return recs[-1].file if recs else None

    def _handle_nan(self, ep: int, value: float) -> None:
        if self.config.nan_policy == "stop":
            self._end_reason = "nan"
            self.say.error(f"episode {ep}: loss is {value}; training stopped (nan_policy='stop'). The last good "
                           f"checkpoint ({self._newest_file() or 'none yet'}) is kept; lower the learning rate or "
                           f"set NAN_POLICY='skip', then run again")
            if self._live is not None:
                self._live.alert("nan", f"loss became {value} at episode {ep}; run stopped, last good checkpoint kept")
            return
        self._nan_skips += 1
        if self._nan_skips > self.config.max_nan_skips:
            self._end_reason = "nan"
            self.say.error(f"loss was non-finite {self._nan_skips} times; training stopped. The last good "
                           f"checkpoint ({self._newest_file() or 'none yet'}) is kept")
            return
        # the last good state may still be on its way to disk (asynchronous save): let it land, or "latest" is an
        # older checkpoint, or none at all, and the poisoned parameters would stay
        landed = self.checkpoints is None or self._guard_storage(self.checkpoints.wait, "a checkpoint") is not None
        if not self.ranks.broadcast(landed):
            self._end_reason = "error"
            return
        _, state = self._load_latest()
        if state is not None:  # parameters may hold NaN now: go back to the last good state, keep this RNG stream
            self._restore_everywhere(state, rng=False)
        self.say.warning(f"episode {ep}: loss is {value}; skipped and rolled back to the last good checkpoint "
                         f"({self._nan_skips}/{self.config.max_nan_skips})")
        self.episode = ep + 1  # the episode is spent; its results are discarded

    # ------------------------------------------------------------------------------------------ saving
    def _state(self, ranks: list[Any] | None = None) -> dict[str, Any]:
        """The run's state as of the end of the last completed episode (``ranks``: every rank's RNG streams and
        per-rank objects, data-parallel or with PerRank objects)."""
        run = {
            "episode": self.episode, "global_step": self.global_step, "history": self.history,
            "sessions": self._sessions_now(), "saved": self._saved, "budget": self.budget.state_dict(),
            "config": self.config.to_dict(), "atheria_kit": __version__,
        }
        if ranks is not None:
            run["ranks"] = ranks
            run["world_size"] = len(ranks)
        # Code between the last episode and this save (an example input drawn with torch.randn, a plot) may
        # have consumed random numbers; resuming must continue the stream where the episode left it.
        return collect_state(self._objects, rng_state=self._rng_at_episode_end, run=run)

    def _save(self, blocking: bool = False, force: bool = False) -> None:
        if not self._objects or (self._last_saved_episode == self.episode and not force):
            return
        ranks = None
        if self.ranks.distributed or self._per_rank:  # a collective: every rank is here, in the same episode
            rng = self._rng_at_episode_end if self._rng_at_episode_end is not None else capture_rng_state()
            ranks = self.ranks.gather(collect_state(self._per_rank, rng_state=rng))
        error: BaseException | None = None
        if self.checkpoints is not None:
            metrics = {k: v for k, v in self.history[-1].items() if k not in ("episode", "session", "time")} \
                if self.history else {}
            try:
                self.checkpoints.save(self._state(ranks), step=self.episode, episode=self.episode,
                                      metrics=metrics, blocking=blocking)
            except BaseException as exc:  # raised after the other ranks were released, so none waits for ever
                error = exc
        if blocking:
            self.ranks.barrier()  # a blocking save: no rank goes on before the checkpoint is committed
        if error is not None:
            raise error
        self._last_saved_episode = self.episode
        self._saved_reason = self._end_reason

    def _on_commit(self, record: Any, manifest_path: Path) -> None:
        self._saved.append({"step": record.step, "episode": record.episode, "time": record.time})

    def save_now(self) -> None:
        """An emergency save, written (and synced, when a remote is set) before returning."""
        self._guard_storage(lambda: self._save(blocking=True), "a checkpoint")
        if self.sync is not None:
            self.sync.sync_now(timeout=300)
        self._notes.emergency_save(self.episode, reason=self._end_reason or "", metrics=self._final_metrics())

    # ------------------------------------------------------------------------------------------ status
    def status_line(self) -> str:
        """Resources and time (the monitor's line), then where the run stands: episodes, this session's and the
        whole run's ETA at the measured pace."""
        line = self.monitor.status_line() if self.monitor is not None else ""
        total, done = self.config.total_episodes, self.episode
        per_episode = self.budget.unit_forecast
        if per_episode and done < total:
            left = (total - done) * per_episode
            fits = self.budget.remaining - self.budget.end_reserve
            this_session = "until the time limit" if left > fits else f"~{msg.fmt_duration(left)}"
            sessions = msg.sessions_left(total - done, per_episode,
                                         self.budget.limit_seconds - self.budget.end_reserve)
            run = f"~{msg.fmt_duration(left)} of training" + (f" (about {sessions} sessions)" if sessions and
                                                                  sessions > 1 else "")
            line += f" | episode {done}/{total}; this session: {this_session}; rest of the run: {run}"
        return line

    def _on_monitor_alert(self, alert: Alert) -> None:
        if alert.metric == "budget_fraction":
            # Not a problem: the session plans its own stop. Said once, as information.
            self.say.once("budget_fraction", f"{alert.value:.0%} of this session's time is used; training saves and "
                          f"stops on its own before the limit")
            return
        if self._live is None:
            return
        label = "RAM" if alert.metric == "ram_percent" else alert.metric.replace("_percent", "").replace("_", " ")
        with self._alert_lock:
            self._live.alert(label, alert.message)

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

        Safe to call more than once; the second call returns the same result without redoing work. Never raises
        for a storage or remote failure: each step that fails is reported, the others still run, and the last line
        printed says where the run stands and what to do next. A kill at any instant leaves the newest complete
        checkpoint loadable (the final save gets a new file name; nothing committed is rewritten).
        """
        if self._finished:
            return self._result
        reason = self._end_reason or ("done" if self.episode >= self.config.total_episodes else "stopped")
        self._end_reason = reason
        already = self._last_saved_episode == self.episode and self._saved_reason == reason
        if reason not in ("nan", "error") and self._objects and not self._mid_episode and not already:
            # The final save carries the sessions table with this session's end reason, which the next session's
            # report shows; it is written under a new name when this episode was saved already.
            self._guard_storage(lambda: self._save(blocking=True, force=True), "the final checkpoint")
        if not self.ranks.is_main:
            return self._finish_follower()
        with contextlib.suppress(Exception):  # a failed background write was reported when it happened
            self.checkpoints.wait()
        reason = self._end_reason
        self.sessions = self._sessions_now()
        if self.monitor is not None:
            self.monitor.stop()
        with contextlib.suppress(Exception):
            self.budget.uninstall_signal_handlers()

        exports: list[dict[str, Any]] = []
        if model is not None and example_input is not None and self.episode >= self.config.total_episodes:
            try:
                exports = self._export(model, example_input)
            except Exception as exc:
                self.say.warning(f"export failed ({type(exc).__name__}: {exc}); the checkpoints are intact")
        status = "finished" if reason == "done" else ("error" if reason in ("error", "nan") else "stopped")
        run_summary = self._guard_end(lambda: self._runlog.finish(status, self._error or reason), "the run log") or {}
        outputs = self._outputs_input()
        plots, report, summary = self._guard_end(lambda: write_outputs(outputs, exports, run_summary),
                                                 "the report and plots") or ({}, None, None)
        if self._live is not None:
            outcome = "done" if reason == "done" else ("error" if reason in ("error", "nan") else "stopped")
            self._live.close(self.status_line(), outcome=outcome)
        remote = None
        if self.sync is not None:
            remote = self.sync.finish(extra_dirs=(self.paths.logs, self.paths.exports),
                                      timeout=self.config.final_sync_timeout)
            if report is not None and remote is not None:  # the local report also says what the remote holds now
                self._guard_end(lambda: write_outputs(outputs, exports, run_summary, remote=remote.describe(),
                                                      plots_made=plots), "the report")
        with contextlib.suppress(Exception):
            self.checkpoints.close()
        if self.lease is not None:
            with contextlib.suppress(Exception):
                self.lease.release()
        self._say_end(reason, remote, report)
        ended = "finished" if reason == "done" else f"stopped ({reason}) at episode {self.episode}/" \
            f"{self.config.total_episodes}; run again to resume"
        if remote is not None and hasattr(remote, "describe"):
            ended += f"; {remote.describe()}"
        self._notes.finished(self._final_metrics(), status=ended)
        if self._notes is self.notifier:
            self._notes.flush(timeout=30)  # the caller's RunNotifier: theirs to close
        else:
            self._notes.close()
        self._result = SessionResult(reason, self.episode, self.config.total_episodes, self.sessions, report,
                                     plots, exports, summary, remote=remote)
        self._finished = True
        return self._result

    def _finish_follower(self) -> SessionResult:
        """A rank other than 0 after the final save: nothing of its own to write, sync or report."""
        with contextlib.suppress(Exception):
            self.budget.uninstall_signal_handlers()
        self._notes.close()
        self._result = SessionResult(self._end_reason or "stopped", self.episode, self.config.total_episodes,
                                     self._sessions_now(), None, {}, [], None)
        self._finished = True
        return self._result

    def _outputs_input(self) -> OutputsInput:
        return OutputsInput(
            config=self.config, environment=self.environment, device=str(self.device), root=self.paths.root,
            logs=self.paths.logs, history=self.history, sessions=self.sessions, records=self.checkpoints.records(),
            saved=self._saved, episode=self.episode, end_reason=self._end_reason, error=self._error,
            resource_rows=resource_rows(self.monitor.history) if self.monitor is not None else [],
        )

    def _guard_end(self, action: Callable[[], Any], what: str) -> Any:
        """One step of finish(): a failure is said and the remaining steps still run."""
        try:
            return action()
        except Exception as exc:
            self.say.warning(f"could not write {what}: {type(exc).__name__}: {exc}")
            return None

    def _say_end(self, reason: str, remote: Any, report: Path | None) -> None:
        """The session's last line: where the run stands and what to do next."""
        cfg = self.config
        newest = self._newest_file()
        remote_text = remote.describe() if remote is not None and hasattr(remote, "describe") else None
        if reason == "done":
            line = f"finished: {self.episode}/{cfg.total_episodes} episodes"
            if report is not None:
                line += f"; report: {report}"
            self.say(line)
            if remote_text:
                self.say(remote_text)
            return
        if reason in ("error", "nan"):
            if remote_text:
                self.say(remote_text)
            return  # the error line was said when it happened
        saved = f"saved ({newest})" if newest else "nothing saved yet"
        if remote_text:
            saved += f"; {remote_text}"
        if reason == "budget":
            per_ep = self._stop.get("next")
            usable = self.budget.limit_seconds - self.budget.end_reserve
            more = msg.sessions_left(cfg.total_episodes - self.episode, per_ep, usable)
            self.say(msg.budget_stop_line(self.episode, per_ep, float(self._stop.get("save") or 0.0),
                                          float(self._stop.get("sync") or 0.0), float(self._stop.get("left") or 0.0),
                                          saved, more, self.budget.limit_seconds))
        else:
            why = self.budget.stop_reason or "stopped"
            self.say(f"stopped at episode {self.episode}/{cfg.total_episodes} ({why}); {saved}; "
                     f"press Run all to continue from there")

    def _final_metrics(self) -> dict[str, float]:
        if not self.history:
            return {}
        return {k: v for k, v in self.history[-1].items() if k not in ("episode", "session", "time")
                and isinstance(v, (int, float))}

    def _export(self, model: torch.nn.Module, example_input: Any) -> list[dict[str, Any]]:
        source, restore = "final model", None
        model = unwrap_model(model)
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
            self._mid_episode = not getattr(self, "_logged", True)
            if exc_type is KeyboardInterrupt:
                self._end_reason = "stopped"
            else:
                self._fail(f"training raised {exc_type.__name__}: {exc}", "Fix the error and press Run all",
                           resumes=True)
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


def _live_point(rec: Mapping[str, Any], monitor: str) -> LivePoint:
    extra = {k: float(v) for k, v in rec.items()
             if k not in ("episode", "session", "time", "loss", monitor) and isinstance(v, (int, float))}
    return LivePoint(int(rec["episode"]), float(rec["loss"]), rec.get(monitor) if monitor != "loss" else None, extra)


def _open_runlog(logs: Path, cfg: SessionConfig, clock, wall_clock):
    return RunLog(logs, kind="progressive", total=cfg.total_episodes, unit="episode",
                  clock=clock, wall_clock=wall_clock)


def _run_notifier(notifier: Any, cfg: SessionConfig):
    """The session's messages go through a RunNotifier; with no notifier it sends nothing and starts no thread."""
    if isinstance(notifier, RunNotifier):
        return notifier
    return RunNotifier(notifier, run_name=cfg.experiment_name, every=max(1, cfg.total_episodes // 10))


def _abandon_sync(sync: SessionSync) -> None:
    """Stop syncing without a final sync (a start that failed has nothing new to copy)."""
    sync.abandon()


def _open_sync(cfg: SessionConfig, env: Environment, remote: Any, paths: SessionPaths,
               say: Say) -> SessionSync | None:
    """The persistent copy: the given target, ``cfg.remote``, or Drive on Colab; None when sync is off.
    Its alerts (failing, working again) are printed lines."""
    if cfg.drive_sync_every == 0 and remote is None and cfg.remote is None:
        return None
    return SessionSync.open(cfg, env, remote, paths,
                            on_alert=lambda kind, text: say.warning(text) if kind == "failing" else say(text))

