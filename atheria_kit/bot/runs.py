"""The runs the bot controls: real ``atheria replay`` / ``atheria live`` subprocesses, one of each kind at a time.

Each kind has a fixed run folder (``RUNS_DIR/hist``, ``RUNS_DIR/live``) so that starting it again continues from
the last checkpoint, the way the command lines resume. A run's output goes to ``train_hist.log`` /
``train_live.log`` in its folder. Runs get their own session (a Ctrl-C in the bot's terminal does not reach
them) and outlive the bot: the bot's state keeps each run's pid and process start time, so a restarted bot
finds its runs again and never mistakes a recycled pid for one. Stopping sends SIGTERM, which both command lines
turn into a clean stop with a checkpoint, and waits a bounded time; the reply says which checkpoint was saved,
as :class:`~atheria_kit.checkpoint.CheckpointManager` verifies it. Status reuses ``atheria monitor``'s reading
of the run log (:func:`~atheria_kit.watch.inspect_run`, :func:`~atheria_kit.watch.format_run`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from atheria_kit._io import read_yaml_mapping
from atheria_kit._validation import require_positive
from atheria_kit.bot.commands import CommandError
from atheria_kit.notify import redact
from atheria_kit.runlog import PROGRESS_FILE, RunLogError, read_progress
from atheria_kit.watch import format_run, inspect_run

logger = logging.getLogger(__name__)

KINDS = ("hist", "live")
COMMAND_OF = {"hist": "train_hist", "live": "train_live"}
CLI_OF = {"hist": "replay", "live": "live"}
REPLAY_CONFIG = "replay_config.yaml"
#: Width of status blocks: a phone shows about this many monospace columns.
STATUS_WIDTH = 60
_LOG_TAIL_LINES = 12


class RunRefused(Exception):
    """A run cannot be started or stopped as asked; the text is the reply."""


@dataclass
class RunRecord:
    """One run the bot started: enough to find it again after the bot restarts."""

    kind: str
    pid: int
    create_time: float  # the process's start time: tells our process from a later one with the same pid
    run_dir: str
    log_file: str
    chat_id: int
    started_at: float
    argv: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    stop_requested: bool = False

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunRecord:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class StopReport:
    """What ``stop`` did: whether the run ended, how it ended and what was saved (``text`` is the reply)."""

    kind: str
    stopped: bool
    exit_code: int | None
    text: str


def available_commands() -> set[str]:
    """The ``atheria`` sub-commands this build has (a command whose module is absent is not available)."""
    from atheria_kit.cli import COMMANDS

    found = set()
    for name, module, _ in COMMANDS:
        try:
            if importlib.util.find_spec(module) is not None:
                found.add(name)
        except ModuleNotFoundError:
            continue
    return found


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16_384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return redact("\n".join(text.splitlines()[-lines:]))


def saved_checkpoint(run_dir: Path) -> str:
    """The newest checkpoint of a stopped run, verified against its manifest, in one line."""
    from atheria_kit.checkpoint import CheckpointManager

    progress = _progress(run_dir)
    unit = (progress or {}).get("unit", "step")
    candidates = [run_dir / "checkpoints"] + sorted(p.parent for p in run_dir.glob("*/manifest.json"))
    directory = next((d for d in candidates if (d / "manifest.json").is_file()), None)
    if directory is None:
        return "no checkpoint yet: the next run starts from the beginning"
    try:  # rank as the run did (no warning about a different ranking; nothing is saved here anyway)
        manifest = json.loads((directory / "manifest.json").read_text())
        ranking = {"monitor": str(manifest["monitor"]), "mode": str(manifest["mode"])}
    except (OSError, ValueError, KeyError, TypeError):
        ranking = {}
    manager = CheckpointManager(directory, async_save=False, **ranking)
    try:
        record = manager.latest()
    finally:
        manager.close()
    if record is None:
        return f"no valid checkpoint in {directory}: the next run starts from the beginning"
    metrics = ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.metrics.items())
    return f"checkpoint {unit} {record.step} saved and verified" + (f" ({metrics})" if metrics else "")


def _progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_progress(run_dir)
    except RunLogError:
        return None


def _live_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "live_status.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _kpi_line(status: Mapping[str, Any], now: float) -> str:
    parts = []
    for key, fmt in (("equity", "equity {:.2f}"), ("trades", "trades {}"), ("win_rate", "win rate {:.1%}"),
                     ("max_drawdown", "max drawdown {:.2%}"), ("latency_ms", "latency {:.0f} ms")):
        value = status.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(fmt.format(value))
    updated = status.get("updated_at")
    when = f" ({_duration(now - updated)} ago)" if isinstance(updated, (int, float)) else ""
    return f"now{when}: " + ", ".join(parts) if parts else ""


class RunManager:
    """Starts, watches and stops the bot's runs.

    ``runs_dir`` holds one folder per kind. ``replay_config`` / ``live_config`` are YAML files the runs start
    from (the bot's options override their values); ``live_args`` are extra ``atheria live`` arguments (e.g.
    ``--ws-url``). ``stop_timeout`` bounds the wait for a stopped run to exit. ``commands`` is the set of
    ``atheria`` sub-commands available (default: what this build has).
    """

    def __init__(self, runs_dir: str | os.PathLike, *, python: str = sys.executable,
                 replay_config: str | os.PathLike | None = None, live_config: str | os.PathLike | None = None,
                 live_args: Sequence[str] = (), stop_timeout: float = 60.0, commands: Iterable[str] | None = None,
                 env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.runs_dir = Path(runs_dir)
        self.python = python
        self.replay_config = Path(replay_config) if replay_config else None
        self.live_config = Path(live_config) if live_config else None
        for name, path in (("replay_config", self.replay_config), ("live_config", self.live_config)):
            if path is not None and not path.is_file():
                raise ValueError(f"{name}={str(path)!r}: file not found; expected an existing YAML file")
        self.live_args = [str(a) for a in live_args]
        self.stop_timeout = float(require_positive("stop_timeout", stop_timeout))
        self.commands = set(available_commands() if commands is None else commands)
        self.env = dict(os.environ if env is None else env)
        self._clock = clock
        self.records: dict[str, RunRecord] = {}
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"runs": {k: asdict(r) for k, r in self.records.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Adopt the runs a previous bot started: those still running, and those that ended while no bot was
        watching (the next :meth:`reap` reports how they ended, without an exit code: they were not our children)."""
        self.records = {}
        for kind, raw in dict(state.get("runs") or {}).items():
            if kind not in KINDS:
                continue
            record = RunRecord.from_json(raw)
            self.records[kind] = record  # one that ended meanwhile is reported by the next reap()
            if self._alive(record):
                logger.info("found the %s run started earlier (pid %d) still running", kind, record.pid)

    def run_dir(self, kind: str) -> Path:
        return self.runs_dir / kind

    # ------------------------------------------------------------------ processes
    def _alive(self, record: RunRecord) -> bool:
        proc = self._procs.get(record.kind)
        if proc is not None and proc.pid == record.pid:
            return proc.poll() is None
        try:
            p = psutil.Process(record.pid)
            return abs(p.create_time() - record.create_time) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def running(self, kind: str) -> RunRecord | None:
        record = self.records.get(kind)
        return record if record is not None and self._alive(record) else None

    def _exit_code(self, kind: str) -> int | None:
        proc = self._procs.get(kind)
        return proc.poll() if proc is not None else None

    def wait(self, kind: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the run of ``kind`` to end; whether none runs now. How it ended is
        reported by the next :meth:`reap` (with its exit status when this manager started it)."""
        record = self.records.get(kind)
        return record is None or self._wait(record, timeout)

    def _wait(self, record: RunRecord, timeout: float) -> bool:
        proc = self._procs.get(record.kind)
        try:
            if proc is not None and proc.pid == record.pid:
                proc.wait(timeout)
            else:
                psutil.Process(record.pid).wait(timeout)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            return False
        except psutil.NoSuchProcess:
            pass
        return True

    # ------------------------------------------------------------------ start
    def start(self, kind: str, options: Mapping[str, Any], chat_id: int) -> RunRecord:
        """Launch a run of ``kind`` with the command's options; raises :class:`RunRefused` with the reply."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is invalid; expected one of {KINDS}")
        current = self.running(kind)
        if current is not None:
            raise RunRefused(
                f"refused: a {COMMAND_OF[kind]} run is already running (pid {current.pid}, started "
                f"{_duration(self._clock() - current.started_at)} ago, folder {current.run_dir}). One run of each "
                f"kind at a time: send /stop_training {kind} first.")
        run_dir = self.run_dir(kind)
        if kind == "live":  # the options are checked first: a mistake is answered as such
            argv, settings = self._live_argv(options, run_dir)
        if CLI_OF[kind] not in self.commands:
            raise RunRefused(f"refused: this installation has no `atheria {CLI_OF[kind]}` command, so "
                             f"/{COMMAND_OF[kind]} cannot start a run.")
        run_dir.mkdir(parents=True, exist_ok=True)
        if kind == "hist":
            argv, settings = self._hist_argv(options, run_dir)
        log_file = run_dir / f"{COMMAND_OF[kind]}.log"
        env = dict(self.env, PYTHONUNBUFFERED="1")
        with open(log_file, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self._clock()))
            log.write(f"=== {stamp}: started by the Telegram bot: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:  # it ended at once: the reaper reports how
            create_time = 0.0
        record = RunRecord(kind, proc.pid, create_time, str(run_dir), str(log_file), int(chat_id), self._clock(),
                           argv, settings)
        self.records[kind] = record
        self._procs[kind] = proc
        logger.info("started %s run pid %d: %s", kind, proc.pid, " ".join(argv))
        return record

    def _cli(self, name: str) -> list[str]:
        return [self.python, "-m", "atheria_kit", name]

    def _hist_argv(self, options: Mapping[str, Any], run_dir: Path) -> tuple[list[str], dict[str, Any]]:
        from atheria_kit.replay.config import ReplayConfig  # pandas/torch: only when a replay starts

        restart = bool(options.get("restart"))
        previous_file = run_dir / REPLAY_CONFIG
        has_checkpoint = (run_dir / "checkpoints" / "manifest.json").is_file()
        continuing = has_checkpoint and previous_file.is_file() and not restart
        if continuing:  # settings not given are those of the run being continued
            source = read_yaml_mapping(previous_file)
        elif self.replay_config is not None:
            source = read_yaml_mapping(self.replay_config)
        else:
            source = {}
        section = dict(source.get("historical", source)) if isinstance(source, dict) else {}
        given = {"cycle_size_bars": options.get("cycle_size"), "update_every_bars": options.get("update_every"),
                 "symbols": list(options["symbols"]) if options.get("symbols") else None}
        given = {k: v for k, v in given.items() if v is not None}
        if continuing:
            changed = {k: (section.get(k), v) for k, v in given.items() if section.get(k) != v}
            if changed:
                what = ", ".join(f"{k}={old!r} -> {new!r}" for k, (old, new) in changed.items())
                raise RunRefused(
                    f"refused: the replay in {run_dir} continues only with its own settings ({what}). Send "
                    "/train_hist without those options to continue it, or add --restart to start over with the new "
                    "ones (its results are replaced).")
        section.update(given)
        defaults = ReplayConfig()
        cycle = section.get("cycle_size_bars", defaults.cycle_size_bars)
        every = section.get("update_every_bars", defaults.update_every_bars)
        if isinstance(cycle, int) and isinstance(every, int) and every > cycle:
            raise CommandError(f"--update_every={every} is invalid; expected an integer <= the cycle size "
                               f"({cycle} bars)")
        try:
            config = ReplayConfig.from_mapping({"historical": section})
        except ValueError as exc:
            raise RunRefused(f"refused: the replay settings are invalid: {exc}") from None
        if continuing and (run_dir / "replay_summary.json").is_file():
            raise RunRefused(f"the replay in {run_dir} has already finished; send /train_hist --restart to run it "
                             "again (its results are replaced), or /training_status for its results.")
        import yaml

        (run_dir / REPLAY_CONFIG).write_text(yaml.safe_dump({"historical": section}, sort_keys=True))
        argv = self._cli("replay") + ["--config", str(run_dir / REPLAY_CONFIG), "--out", str(run_dir)]
        if restart:
            argv.append("--no-resume")
        if options.get("max_cycles"):
            argv += ["--max-cycles", str(options["max_cycles"])]
        settings = {"cycle_size_bars": config.cycle_size_bars, "update_every_bars": config.update_every_bars,
                    "symbols": list(config.symbols), "resumed": continuing}
        return argv, settings

    def _check_live_settings(self, options: Mapping[str, Any]) -> None:
        """The settings the run will have (its YAML file with these options) are valid, or a refusal naming why."""
        from atheria_kit.live_trading.config import LiveConfig  # pandas: only when a live run starts

        given = {"cycle_minutes": options.get("cycle_minutes"), "update_every_seconds": options.get("update_every"),
                 "max_cycles": options.get("max_cycles"), "symbols": options.get("symbols")}
        try:
            source = read_yaml_mapping(self.live_config) if self.live_config is not None else {}
            LiveConfig.from_mapping(source, **given)
        except ValueError as exc:
            raise RunRefused(f"refused: the live settings are invalid: {exc}") from None

    def _live_argv(self, options: Mapping[str, Any], run_dir: Path) -> tuple[list[str], dict[str, Any]]:
        minutes, every = options.get("cycle_minutes"), options.get("update_every")
        if minutes is not None and every is not None and every > minutes * 60:
            raise CommandError(f"--update_every={every} is invalid; expected seconds <= the cycle "
                               f"({minutes} minutes = {minutes * 60} s)")
        if "live" in self.commands:  # a build without `atheria live` is refused as such by start()
            self._check_live_settings(options)
        argv = self._cli("live") + ["--output-dir", str(run_dir)]
        if self.live_config is not None:
            argv += ["--config", str(self.live_config)]
        settings: dict[str, Any] = {}
        for key, flag in (("cycle_minutes", "--cycle-minutes"), ("update_every", "--update-every"),
                          ("max_cycles", "--max-cycles")):
            if options.get(key) is not None:
                argv += [flag, str(options[key])]
                settings[key] = options[key]
        if options.get("symbols"):
            argv += ["--symbols", ",".join(options["symbols"])]
            settings["symbols"] = list(options["symbols"])
        if options.get("restart"):
            argv.append("--no-resume")
        settings["resumed"] = not options.get("restart") and (run_dir / "checkpoints" / "manifest.json").is_file()
        return argv + self.live_args, settings

    # ------------------------------------------------------------------ stop
    def stop(self, kind: str, *, kill: bool = False) -> StopReport:
        """SIGTERM (or SIGKILL with ``kill``) the run of ``kind`` and wait up to ``stop_timeout`` for it."""
        record = self.running(kind)
        if record is None:
            return StopReport(kind, False, None, f"no {COMMAND_OF[kind]} run is running.")
        record.stop_requested = True
        sig = signal.SIGKILL if kill else signal.SIGTERM
        started = self._clock()
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            pass
        if not self._wait(record, self.stop_timeout):
            return StopReport(kind, False, None, (
                f"the {COMMAND_OF[kind]} run (pid {record.pid}) has not stopped within {self.stop_timeout:.0f} s "
                f"of {sig.name}; it may still be saving. Send /training_status to follow it, or "
                f"/stop_training {kind} --kill to end it at once (its last checkpoint is kept)."))
        code = self._exit_code(kind)
        self.records.pop(kind, None)
        run_dir = Path(record.run_dir)
        how = "killed (SIGKILL)" if kill else "stopped cleanly"
        if not kill and code == -signal.SIGTERM:  # the command line did not handle SIGTERM: no stop of its own
            how = "ended by SIGTERM without a clean stop of its own"
        # 130: the command lines' exit status after a stop by signal (Ctrl-C's convention)
        unusual = code is not None and code not in (0, 130)
        ended = f"{how} after {_duration(self._clock() - started)}" + (f", exit code {code}" if unusual else "")
        last = _log_tail(Path(record.log_file), 1).strip()
        said = f" Its last line: {last}" if last and last != "interrupted" else ""
        return StopReport(kind, True, code, f"{COMMAND_OF[kind]} {ended}. {saved_checkpoint(run_dir)}. "
                                            f"{self._progress_line(run_dir)}{said} /{COMMAND_OF[kind]} continues "
                                            "from it.")

    @staticmethod
    def _progress_line(run_dir: Path) -> str:
        p = _progress(run_dir)
        if not p:
            return ""
        total = f"/{p['total']}" if p.get("total") else ""
        return f"Run log: {p.get('status', '?')} at {p.get('unit', 'unit')} {p.get('done', 0)}{total}."

    # ------------------------------------------------------------------ watch
    def reap(self) -> list[tuple[RunRecord, str]]:
        """Runs that ended by themselves since the last call, each with a message saying how."""
        ended = []
        for kind, record in list(self.records.items()):
            if self._alive(record):
                continue
            code = self._exit_code(kind)
            del self.records[kind]
            self._procs.pop(kind, None)
            if record.stop_requested:
                continue  # the stop reply said it
            run_dir = Path(record.run_dir)
            progress = _progress(run_dir) or {}
            status = progress.get("status", "unknown")
            failed = (code not in (None, 0)) or status in ("error", "running", "unknown")
            head = (f"{COMMAND_OF[kind]} ended after {_duration(self._clock() - record.started_at)}: "
                    f"{'FAILED' if failed else status}" + ("" if code in (None, 0) else f" (exit code {code})") + ".")
            text = f"{head} {self._progress_line(run_dir)}"
            if failed:
                text += f"\nLast lines of {record.log_file}:\n{_log_tail(Path(record.log_file))}"
            else:
                text += f" {saved_checkpoint(run_dir)}."
            ended.append((record, text.strip()))
        return ended

    def status(self, kind: str) -> str:
        """A short block for /training_status: state, progress, latest KPIs (``atheria monitor``'s reading)."""
        now = self._clock()
        record = self.running(kind)
        run_dir = self.run_dir(kind)
        name = COMMAND_OF[kind]
        if record is not None:
            head = f"{name}: running (pid {record.pid}, started {_duration(now - record.started_at)} ago)"
        elif (run_dir / PROGRESS_FILE).is_file():
            head = f"{name}: not running; its last run:"
        else:
            available = "" if CLI_OF[kind] in self.commands else f" (no `atheria {CLI_OF[kind]}` here)"
            return f"{name}: no run yet{available}"
        lines = [head]
        if (run_dir / PROGRESS_FILE).is_file():
            lines.append(format_run(inspect_run(run_dir, now=now), table=False, width=STATUS_WIDTH))
        elif record is not None:
            lines.append("  starting (no run log yet)")
        live = _live_status(run_dir)
        if record is not None and live:
            kpis = _kpi_line(live, now)
            if kpis:
                lines.append("  " + kpis)
        return "\n".join(lines)
