"""The kit inside a Hugging Face ``transformers.Trainer``: one line gives a run the time budget, verified checkpoint
folders, a remote copy and the resume on a fresh VM.

::

    trainer.train(resume_from_checkpoint=prepare(trainer, remote="/content/drive/MyDrive/my-run"))

:func:`prepare` attaches an :class:`AtheriaCallback` and returns what to resume from: the newest *verified*
``checkpoint-N`` folder in ``output_dir``, else the newest verified remote copy (downloaded first: a fresh VM), else
None (a new run). What the callback does at the Trainer's events:

- ``on_step_end``: the kit's :class:`~atheria_kit.budget.TimeBudget` (one optimizer step is one unit) decides whether
  the next step, an evaluation due then, the final save and the final copy still fit in the session; when not, it
  sets ``should_save`` and ``should_training_stop``, so the run ends with a saved checkpoint and a printed line;
- ``on_save``: writes the callback's own small state (:data:`STATE_NAME`) into the folder the Trainer just finished,
  seals the folder (:func:`~atheria_kit.integrations.checkpoint_folders.seal_folder`), and hands it to the
  background uploader; remote copies of folders the Trainer's rotation (``save_total_limit``) removed are pruned;
- ``on_log``: loss and eval curves in the live view; ``on_train_end``: waits (bounded) for the copy and prints
  where the run stands.

The Trainer's checkpoint writing is left as it is (including PEFT adapters, where only the adapter is saved): the
seal is what makes a folder trustworthy, not the way it was written.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atheria_kit._validation import require_positive
from atheria_kit.budget import TimeBudget
from atheria_kit.integrations import require
from atheria_kit.integrations.checkpoint_folders import (
    FolderCheck,
    FolderPusher,
    list_folders,
    list_remote_folders,
    new_lineage,
    newest_verified_folder,
    remote_target,
    restore_newest_remote,
    seal_folder,
)
from atheria_kit.live import LivePoint, LiveView
from atheria_kit.monitor import MIN_INTERVAL, Alert, ResourceMonitor
from atheria_kit.platform import detect_environment
from atheria_kit.say import Say, UserError
from atheria_kit.session_messages import fmt_duration, sessions_left
from atheria_kit.sync.resume import RemoteUnavailableError
from atheria_kit.sync.targets import SourceUnavailableError, SyncTarget
from atheria_kit.sync.worker import run_bounded

_transformers = require("transformers", integration="huggingface")
TrainerCallback = _transformers.TrainerCallback

__all__ = ["STATE_NAME", "AtheriaCallback", "make_budget", "prepare", "remote_target"]

logger = logging.getLogger(__name__)

#: The callback's own state inside each checkpoint folder (budget forecast, sessions, curves, what was pushed).
STATE_NAME = "atheria-state.json"
_STATE_VERSION = 1
_CURVE_POINTS = 2000  # loss/eval points kept in the state for the live figure of the next session


def make_budget(max_training_hours: float | None = None, max_training_seconds: float | None = None, *,
                environment: Any = None, clock: Callable[[], float] = time.monotonic,
                wall_clock: Callable[[], float] = time.time) -> TimeBudget:
    """This session's :class:`TimeBudget`, as a kit session builds it: the given cap (seconds win over hours),
    never beyond the platform's limit (Colab, Kaggle: counted from the runtime's start); none given: the platform's
    limit (unlimited locally). Short budgets scale the fixed reserve and the first save estimate down."""
    env = environment if environment is not None else detect_environment()
    given = (float(max_training_seconds) if max_training_seconds is not None
             else None if max_training_hours is None else float(max_training_hours) * 3600.0)
    limit = min(given if given is not None else math.inf, env.session_limit_seconds or math.inf)
    scale = {} if math.isinf(limit) else {"reserve_seconds": min(60.0, 0.02 * limit),
                                           "initial_save_seconds": min(60.0, 0.05 * limit)}
    return TimeBudget(given, environment=env, clock=clock, wall_clock=wall_clock, **scale)


class AtheriaCallback(TrainerCallback):
    """Budget stop, sealed checkpoint folders, remote copy, live view and report for a ``transformers.Trainer``.

    ``remote``: where verified copies go (folder, fsspec URL or :class:`~atheria_kit.sync.SyncTarget`; None: none).
    ``max_training_hours``/``max_training_seconds``/``budget``: this session's time (default: the platform's limit).
    ``remote_retry_seconds``: how long an unreachable remote is retried at the start.
    ``remote_unavailable``: "stop" (default) refuses to start a new run when the remote cannot be read and no local
    checkpoint exists (it may hold this run); "ignore" goes on with what is local. ``save_at_end`` saves the final
    step (so "Run all" after the end finds the run complete). ``live_view``: "auto", "widget", "text" or "off".
    """

    def __init__(self, *, remote: SyncTarget | str | os.PathLike | None = None,
                 max_training_hours: float | None = None, max_training_seconds: float | None = None,
                 budget: TimeBudget | None = None, environment: Any = None, save_at_end: bool = True,
                 remote_unavailable: str = "stop", remote_timeout: float = 60.0,
                 remote_retry_seconds: float = 60.0,
                 final_sync_timeout: float | None = None, live_view: str = "auto", monitor: bool = True,
                 handle_signals: bool = True, say: Say | None = None, stream: Any = None, display: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if remote_unavailable not in ("stop", "ignore"):
            raise ValueError(f"remote_unavailable={remote_unavailable!r} is invalid; expected 'stop' or 'ignore'")
        if budget is not None and not isinstance(budget, TimeBudget):
            raise ValueError(f"budget={budget!r} is invalid; expected an atheria_kit.budget.TimeBudget or None")
        self.budget = budget if budget is not None else make_budget(
            max_training_hours, max_training_seconds, environment=environment)
        self.target = None if remote is None else remote_target(remote)
        self.say = say if say is not None else Say(stream)
        self.save_at_end = bool(save_at_end)
        self.remote_unavailable = remote_unavailable
        self.remote_timeout = require_positive("remote_timeout", remote_timeout)
        self.remote_retry_seconds = require_positive("remote_retry_seconds", remote_retry_seconds, allow_zero=True)
        self.final_sync_timeout = final_sync_timeout
        self.live_view, self.use_monitor, self.handle_signals = live_view, bool(monitor), bool(handle_signals)
        self._stream, self._display, self._clock = stream, display, clock
        self.lineage: str | None = None
        self.sessions = 0
        self.pusher: FolderPusher | None = None
        self.monitor: ResourceMonitor | None = None
        self.live: LiveView | None = None
        self.curve: list[tuple[int, float]] = []  # (step, loss) across sessions
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.resumed_from: FolderCheck | None = None
        self.resumed_source: str | None = None
        self.output_dir: Path | None = None
        self.stop: dict[str, Any] | None = None  # the numbers behind a budget stop
        self.last_saved: str | None = None
        self.end_line: str | None = None
        self.trained: str | None = None  # the model's class and trainable parameters, for the report
        self._eval_seconds = 0.0
        self._mark = clock()
        self._local_names: set[str] = set()
        self._state_loaded = False
        self._session_start_step = 0
        self._folder_bytes = 0
        self._in_step = False
        self._target_closed = False
        self._pusher_state: dict[str, Any] | None = None
        if self.target is not None:
            self.budget.final_sync_estimate = lambda: (self.pusher.estimate_seconds(self._folder_bytes)
                                                       if self.pusher is not None else 0.0)

    # ------------------------------------------------------------------------------------------ wiring
    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> AtheriaCallback:
        """Create the callback and add it to ``trainer`` (one per trainer: an existing one is returned)."""
        found = cls.of(trainer)
        if found is not None:
            return found
        cb = cls(**kwargs)
        trainer.add_callback(cb)
        cb._guard(trainer)
        return cb

    def _guard(self, trainer: Any) -> None:
        """Wrap the Trainer's training loop so that a run that raises still stops the monitor thread, gives the
        signal handlers back, sends what is sealed (bounded) and says which checkpoint is kept (the Trainer calls
        no callback when training fails), and so that a run already complete trains no further step.

        The loop (``_inner_training_loop``, private to transformers) is wrapped, not ``trainer.train``: in the
        one-line idiom ``trainer.train(resume_from_checkpoint=prepare(trainer))`` Python looks ``trainer.train``
        up before ``prepare`` runs, so a wrapped ``train`` would never be the one called; ``train`` looks the loop
        up when it calls it, after loading the checkpoint's weights."""
        loop = trainer._inner_training_loop

        @functools.wraps(loop)  # accelerate's auto_find_batch_size reads the loop's signature
        def guarded_loop(*args: Any, **kwargs: Any) -> Any:
            done = self._already_complete(trainer, kwargs.get("resume_from_checkpoint"))
            if done is not None:
                return done
            try:
                return loop(*args, **kwargs)
            except BaseException as exc:
                self._after_error(trainer.state, exc)
                raise

        trainer._inner_training_loop = guarded_loop

    def _already_complete(self, trainer: Any, resume: Any) -> Any:
        """When ``resume`` is the verified folder :meth:`resume` chose and it already holds the last step
        (``max_steps``), train nothing: "Run all" after the end finds the run complete, its final weights loaded
        (``train`` loaded them before its loop). The Trainer alone would run one more step past ``max_steps``
        when ``max_steps`` ends inside an epoch (it checks the limit only after a step), and one more on every
        later "Run all" until the epoch ends."""
        chosen = self.resumed_from
        max_steps = int(getattr(trainer.args, "max_steps", -1) or -1)
        if (chosen is None or max_steps <= 0 or not isinstance(resume, (str, os.PathLike))
                or Path(resume).absolute() != chosen.folder.absolute() or (chosen.step or 0) < max_steps):
            return None
        if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
            return None  # those load the weights only inside the loop: let it run (one extra step, its behaviour)
        trainer.state = _transformers.TrainerState.load_from_json(str(chosen.folder / "trainer_state.json"))
        trainer.is_in_train = False
        self.last_saved = chosen.folder.name
        self.end_line = (f"the run is already complete: {chosen.folder.name} (verified) holds step "
                         f"{chosen.step}/{max_steps}; nothing left to train, the model holds its final weights")
        self.say(self.end_line)
        losses = [e["train_loss"] for e in trainer.state.log_history if "train_loss" in e]
        return _transformers.trainer_utils.TrainOutput(trainer.state.global_step,
                                                        float(losses[-1]) if losses else math.nan, {})

    @classmethod
    def of(cls, trainer: Any) -> AtheriaCallback | None:
        """The callback attached to ``trainer``, if any."""
        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, cls):
                return cb
        return None

    # ------------------------------------------------------------------------------------------ resume
    def resume(self, output_dir: str | os.PathLike) -> str | None:
        """What to pass as ``resume_from_checkpoint``: the newest verified local folder, else the newest verified
        remote copy (downloaded into ``output_dir``), else None. Prints where the run continues from."""
        out = Path(output_dir)
        self.output_dir = out
        local = newest_verified_folder(out, warn=self.say.warning)
        remote_step, problem = None, None
        if self.target is not None:
            try:
                sealed = [f for f in self._list_remote_with_retries() if f.sealed]
                remote_step = sealed[0].step if sealed else None
            except SourceUnavailableError as exc:
                problem = str(exc)
        chosen, source = local, "local copy"
        if problem is not None:
            if local is None and self.remote_unavailable == "stop":
                err = RemoteUnavailableError([self.target.name], problem, self.remote_retry_seconds)
                raise UserError(f"{err} Nothing was trained.") from None
            self.say.warning(f"{self.target.name} cannot be read ({problem}); continuing from what is here")
        elif remote_step is not None and (local is None or remote_step > (local.step or 0)):
            try:
                got = restore_newest_remote(self.target, out, warn=self.say.warning, timeout=self.remote_timeout)
            except SourceUnavailableError as exc:
                if local is None and self.remote_unavailable == "stop":
                    err = RemoteUnavailableError([self.target.name], str(exc), self.remote_retry_seconds)
                    raise UserError(f"{err} Nothing was trained.") from None
                self.say.warning(f"{self.target.name} failed during the download ({exc}); continuing from what is here")
                got = None
            if got is not None and (local is None or (got.step or 0) > (local.step or 0)):
                chosen, source = got, self._remote_label()
        self._local_names = {p.name for p in list_folders(out)}
        if chosen is None:
            self.lineage = new_lineage()
            places = [str(out)] + ([self.target.name] if self.target is not None else [])
            self.say(f"no verified checkpoint in {', '.join(places)}: starting a new run "
                     f"(this session's budget: {fmt_duration(self.budget.limit_seconds)})")
            return None
        self.resumed_from, self.resumed_source = chosen, source
        self.lineage = chosen.lineage
        self._load_folder_state(chosen.folder)
        self.say(f"resumed from {chosen.folder.name} ({source}, verified) at step {chosen.step}, "
                 f"session {self.sessions + 1} of this run")
        return str(chosen.folder)

    def _list_remote_with_retries(self) -> list[Any]:
        """The remote's folders; an unreachable remote (a Drive mount still coming up, a timeout) is retried with
        backoff for ``remote_retry_seconds`` before :class:`SourceUnavailableError` is raised."""
        deadline, delay = self._clock() + self.remote_retry_seconds, 1.0
        while True:
            try:
                return list_remote_folders(self.target, timeout=self.remote_timeout)
            except SourceUnavailableError as exc:
                left = deadline - self._clock()
                if left <= 0:
                    raise
                logger.info("remote %s unreachable (%s); retrying in %.0f s", self.target.name, exc, min(delay, left))
                time.sleep(min(delay, left))
                delay = min(delay * 2.0, 30.0)

    def _remote_label(self) -> str:
        name = self.target.name if self.target is not None else ""
        return "Drive copy" if "Google Drive" in name else f"copy in {name}"

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume: the budget's measurements, the session count, the curves, what was pushed."""
        return {"version": _STATE_VERSION, "lineage": self.lineage, "sessions": self.sessions,
                "budget": self.budget.state_dict(), "eval_seconds": self._eval_seconds,
                "curve": [list(p) for p in self.curve[-_CURVE_POINTS:]],
                "evals": [[s, m] for s, m in self.evals[-_CURVE_POINTS:]],
                "pusher": self.pusher.state_dict() if self.pusher is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"{STATE_NAME}: version={state.get('version')!r} is invalid; expected {_STATE_VERSION}")
        self.lineage = state.get("lineage") or self.lineage
        self.sessions = int(state.get("sessions", 0))
        self.budget.load_state_dict(state["budget"])
        self._eval_seconds = float(state.get("eval_seconds", 0.0))
        self.curve = [(int(s), float(v)) for s, v in state.get("curve", [])]
        self.evals = [(int(s), dict(m)) for s, m in state.get("evals", [])]
        self._pusher_state = state.get("pusher")

    def _load_folder_state(self, folder: Path) -> None:
        path = folder / STATE_NAME
        if path.is_file():
            try:
                self.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.say.warning(f"{path} cannot be read ({exc}); the time forecast starts afresh")
        self._state_loaded = True

    # ------------------------------------------------------------------------------------------ events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        out = Path(args.output_dir)
        if self.output_dir is None:
            self.output_dir = out
            self._local_names = {p.name for p in list_folders(out)}
        if not self._state_loaded and state.global_step > 0:  # resumed without resume(): read the folder's state
            folder = out / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                self._load_folder_state(folder)
        self.lineage = self.lineage or new_lineage()
        self.sessions += 1
        if getattr(args, "save_total_limit", None) == 1 and state.is_world_process_zero:
            self.say.once("save_total_limit", "save_total_limit=1: the Trainer deletes the previous checkpoint "
                                              "before the kit can seal the new one, so a session killed in between "
                                              "leaves no verified checkpoint here (only the remote copy, if any); "
                                              "save_total_limit=2 keeps one to fall back on", kind="warning")
        model = kwargs.get("model")
        if model is not None:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            self.trained = f"{type(model).__name__} ({trainable:,} trainable parameters)"
        self._session_start_step = state.global_step
        if self._target_closed:
            self.say.warning(f"{self.target.name} was closed when the previous train() stopped: this run is not "
                             f"copied; call prepare() on a new Trainer with a new remote to copy it")
        elif self.target is not None and state.is_world_process_zero and (self.pusher is None or self.pusher.closed):
            self.pusher = FolderPusher(self.target, self.lineage, on_alert=self._on_push_alert)
            if self._pusher_state:
                self.pusher.load_state_dict(self._pusher_state)
        if self.use_monitor and self.monitor is None:
            # An unlimited budget (local runs) has no time line to show (and an infinite "left" cannot be printed).
            timed = self.budget if math.isfinite(self.budget.limit_seconds) else None
            self.monitor = ResourceMonitor(interval=max(1.0, MIN_INTERVAL), budget=timed)
            self.monitor.add_alert_callback(self._on_monitor_alert)
            self.monitor.start()
        if state.is_world_process_zero and self.live_view != "off":
            # Points arrive every logging_steps: the refresh rhythms are multiples of it, or they would never match.
            every = max(1, int(state.logging_steps or 1))
            total = state.max_steps or 100
            self.live = LiveView(state.max_steps or None, initial=state.global_step, mode=self.live_view,
                                 update_every=every * max(1, math.ceil(total / 50 / every)),
                                 text_every=every * max(1, math.ceil(total / 20 / every)), title="training",
                                 metric_name=None, display=self._display, stream=self._stream)
            for step, loss in self.curve:
                self.live.points.append(_point(step, loss))
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            self.budget.install_signal_handlers()
        self._mark = self._clock()
        self._restart_unit()

    # A unit is one optimizer step including the loading of its batches: it runs from the end of the previous
    # step (or of the log, evaluation or save that followed it) to this step's end. Logs, evaluations and saves
    # restart it, so their time is not taken for step time (saves and evaluations have their own estimates).
    def _restart_unit(self) -> None:
        if self._in_step:
            self.budget.abandon_unit()
        self.budget.start_unit()
        self._in_step = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._in_step:
            self.budget.end_unit()
            self._in_step = False
        self._mark = self._clock()
        try:
            self._decide(args, state, control)
        finally:
            self._restart_unit()

    def _decide(self, args: Any, state: Any, control: Any) -> None:
        if state.max_steps and state.global_step >= state.max_steps:
            if self.save_at_end:
                control.should_save = True
            return
        if self.budget.stop_requested or not self._next_step_fits(args, state):
            self.stop = {"step": state.global_step, "next": self.budget.unit_forecast,
                         "save": self.budget.save_estimate, "sync": self.budget.final_sync_seconds,
                         "left": self.budget.remaining, "reason": self.budget.stop_reason}
            control.should_save = True
            control.should_training_stop = True
            logger.info("budget stop after step %d (%.1f s left)", state.global_step, self.budget.remaining)

    def _next_step_fits(self, args: Any, state: Any) -> bool:
        if not self.budget.can_start():
            return False
        eval_steps = getattr(state, "eval_steps", None)
        strategy = str(getattr(args, "eval_strategy", "no"))
        due = (self._eval_seconds > 0 and "steps" in strategy and eval_steps
               and (state.global_step + 1) % max(1, int(eval_steps)) == 0)
        if not due:
            return True
        forecast = self.budget.unit_forecast or 0.0
        return self.budget.remaining - self.budget.end_reserve - forecast >= self._eval_seconds

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" in logs and isinstance(logs["loss"], (int, float)):
            self.curve.append((state.global_step, float(logs["loss"])))
            if self.live is not None:
                status = self.monitor.status_line() if self.monitor is not None and self.live.mode != "text" else ""
                self.live.update(state.global_step - 1, float(logs["loss"]), status=status,
                                 extra={k: float(v) for k, v in logs.items()
                                        if k not in ("loss", "epoch") and isinstance(v, (int, float))})
        self._mark = self._clock()
        self._restart_unit()

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        now = self._clock()
        self._eval_seconds = max(self._eval_seconds, now - self._mark)
        self.evals.append((state.global_step, {k: float(v) for k, v in (metrics or {}).items()
                                               if isinstance(v, (int, float))}))
        self._mark = now
        self._restart_unit()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        folder = out / f"checkpoint-{state.global_step}"
        if not folder.is_dir():  # a hyperparameter search writes into run folders: not handled here
            logger.warning("on_save: %s is not there; nothing sealed", folder)
            return
        (folder / STATE_NAME).write_text(json.dumps(self.state_dict(), indent=1), encoding="utf-8")
        seal = seal_folder(folder, lineage=self.lineage or new_lineage(), step=state.global_step,
                           extra={"max_steps": state.max_steps, "epoch": state.epoch})
        self.budget.record_save(max(0.0, self._clock() - self._mark))
        self._folder_bytes = sum(f["size"] for f in seal["files"])
        self.last_saved = folder.name
        now_names = {p.name for p in list_folders(out)}
        rotated = self._local_names - now_names  # removed by the Trainer's save_total_limit during this save
        self._local_names = now_names
        if self.pusher is not None:
            # The new folder first: the pusher sends pending folders before it prunes, so the remote never lacks
            # both the rotated folder and its successor (with save_total_limit=1 that would leave it empty).
            self.pusher.submit(folder)
            if rotated:
                self.pusher.prune(rotated)
        self._mark = self._clock()
        self._restart_unit()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synced = self._wind_down("stopped" if self.stop is not None else "done")
        self.end_line = self._end_line(state, synced)
        self.say(self.end_line)
        self.say(self.report_line(state))
        if self.stop is not None and self.target is not None:
            self._close_target()

    def _close_target(self) -> None:
        """After a stop the session is about to end: close the remote (Drive: ``flush_and_unmount``, which is what
        forces writes through the mount to Drive), waiting at most ``remote_timeout``."""
        problem = run_bounded(self.target.close, self.remote_timeout, f"closing {self.target.name}")
        self._target_closed = True
        if problem is not None:
            self.say.warning(f"{problem}; the local checkpoint is complete and verified")

    def _wind_down(self, outcome: str) -> bool | None:
        """Send what is sealed (bounded wait), stop the monitor, restore signal handlers, close the live view.
        Returns whether the copy is complete (None without a remote)."""
        if self._in_step:
            self.budget.abandon_unit()
            self._in_step = False
        synced = None
        if self.pusher is not None and not self.pusher.closed:
            timeout = self.final_sync_timeout
            if timeout is None:
                timeout = max(30.0, 3.0 * self.budget.final_sync_seconds)
                if math.isfinite(self.budget.remaining):  # waiting past the session's end helps nobody
                    timeout = min(timeout, max(5.0, self.budget.remaining - 1.0))
            synced = self.pusher.close(timeout)
            self._pusher_state = self.pusher.state_dict()
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        self.budget.uninstall_signal_handlers()
        if self.live is not None:
            self.live.close(outcome=outcome)
            self.live = None
        return synced

    def _after_error(self, state: Any, exc: BaseException) -> None:
        synced = self._wind_down("error")
        kept = f"the last verified checkpoint ({self.last_saved or self._resumed_name()}) is kept" \
            if (self.last_saved or self.resumed_from) else "no checkpoint had been saved yet"
        remote = self.remote_line(synced)
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        self.end_line = (f"training stopped at step {state.global_step}: {what}; {kept}"
                         + (f"; {remote}" if remote else "") + ". Fix the cause, then Run all again to continue")
        self.say.error(self.end_line)

    def _resumed_name(self) -> str | None:
        return self.resumed_from.folder.name if self.resumed_from is not None else None

    # ------------------------------------------------------------------------------------------ lines
    def remote_line(self, synced: bool | None = None) -> str | None:
        """What the remote holds, as a person reads it (None without a remote)."""
        if self.target is None or self.pusher is None:
            return None
        if self.pusher.last_error and synced is False:
            return (f"the copy on {self.target.name} is behind: {self.pusher.last_error}; the local checkpoint is "
                    f"complete and verified")
        newest = self.pusher.pushed[-1] if self.pusher.pushed else None
        if newest is None:
            return f"nothing copied to {self.target.name} yet"
        behind = "" if synced is not False and newest == self.last_saved else f" ({self.last_saved} still copying)"
        return f"{self._remote_label().replace('copy in ', 'copy on ')} holds {newest} (verified){behind}"

    def _end_line(self, state: Any, synced: bool | None) -> str:
        saved = f"saved {self.last_saved} (sealed and verified)" if self.last_saved else "no checkpoint was saved"
        remote = self.remote_line(synced)
        if remote:
            saved += f"; {remote}"
        if self.stop is None:
            return f"training finished at step {state.global_step}/{state.max_steps}; {saved}"
        step, total = self.stop["step"], state.max_steps
        if self.stop.get("reason"):
            why = f"stop requested ({self.stop['reason']})"
        elif self.stop.get("next"):
            parts = [f"the next step ({_about(self.stop['next'])})",
                     f"the final save ({_about(self.stop['save'])})"]
            if self.stop.get("sync"):
                parts.append(f"the final copy ({_about(self.stop['sync'])})")
            why = f"{', '.join(parts[:-1])} and {parts[-1]} would not fit in the {fmt_duration(self.stop['left'])} left"
        else:
            why = f"only {fmt_duration(self.stop['left'])} of this session's budget is left"
        line = f"stopped before step {step + 1}/{total}: {why}; {saved}"
        more = sessions_left(total - step, self.budget.unit_forecast,
                             self.budget.limit_seconds - self.budget.end_reserve) if total else None
        if more:
            line += f"; about {more} more session{'s' if more != 1 else ''} at this pace"
        return line + "; press Run all in the next session to continue"

    def report_line(self, state: Any) -> str:
        """A short report: steps this session and in all, loss at the start and end, eval, time used."""
        done = state.global_step - self._session_start_step
        parts = [f"report: {self.trained or 'model'}: {done} step(s) this session ({self.sessions} session(s) in "
                 f"all), step {state.global_step}/{state.max_steps}"]
        if self.curve:
            parts.append(f"loss {self.curve[0][1]:.4g} -> {self.curve[-1][1]:.4g}")
        if self.evals:
            last = {k: v for k, v in self.evals[-1][1].items() if k.startswith("eval_") and "runtime" not in k
                    and "per_second" not in k}
            if last:
                parts.append("eval " + ", ".join(f"{k[5:]}={v:.4g}" for k, v in sorted(last.items())))
        parts.append(f"time used {fmt_duration(self.budget.elapsed)} of {fmt_duration(self.budget.limit_seconds)}")
        return "; ".join(parts)

    # ------------------------------------------------------------------------------------------ alerts
    def _on_push_alert(self, kind: str, text: str) -> None:
        if kind == "failing":
            self.say.warning(text)
        else:
            self.say(text)

    def _on_monitor_alert(self, alert: Alert) -> None:
        if alert.metric == "budget_fraction":
            self.say.once("budget_fraction", f"{alert.value:.0%} of this session's time is used; training saves and "
                                             f"stops on its own before the limit")
        elif self.live is not None:
            self.live.alert(alert.metric, alert.message)


def _about(seconds: float) -> str:
    """``~41 s``, or ``<1 s`` (no "about" in front of a bound), as the session's stop line writes it."""
    text = fmt_duration(seconds)
    return text if text.startswith("<") else f"~{text}"


def _point(step: int, loss: float) -> LivePoint:
    return LivePoint(step - 1, loss, None, {})


def prepare(trainer: Any, **kwargs: Any) -> str | None:
    """Attach an :class:`AtheriaCallback` (``kwargs`` are its settings) and return ``resume_from_checkpoint``:
    ``trainer.train(resume_from_checkpoint=prepare(trainer, remote=...))``."""
    if not isinstance(trainer, _transformers.Trainer):
        raise ValueError(f"trainer={trainer!r} is invalid; expected a transformers.Trainer, built before prepare: "
                         f"trainer.train(resume_from_checkpoint=prepare(trainer, remote=...))")
    return AtheriaCallback.attach(trainer, **kwargs).resume(trainer.args.output_dir)
