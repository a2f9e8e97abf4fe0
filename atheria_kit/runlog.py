"""Run logs that another process can read while the run goes on: progress, per-unit metrics, resources.

Every run directory (walk-forward, progressive training, replay) holds:

- ``progress.json``: replaced atomically at each update (a reader never sees half a file) with
  ``kind, run_id, status, started_at, updated_at, done, total, unit, eta_seconds, metrics,
  memory_rss_bytes, message, pid`` (plus ``host`` and ``sessions``);
- ``metrics.jsonl``: one JSON object per finished unit (episode, fold, cycle), appended and flushed;
- ``resources.jsonl``: resource samples, appended and flushed;
- ``summary.json``: written by :meth:`RunLog.finish`.

JSON written here never contains the ``NaN``/``Infinity`` tokens that strict parsers (JavaScript, jq,
most JSON libraries other than Python's) reject: non-finite floats are written as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"``, so a diverging loss stays visible as such. :func:`read_jsonl` and
:func:`read_progress` turn those strings back into floats.

A JSONL line is written with one ``write`` and flushed; a reader may still catch the last line half
written, so :func:`read_jsonl` ignores an unterminated last line. A writer that was killed mid-line
leaves such a tail; the next :class:`RunLog` on the directory cuts it off before appending.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import psutil

from atheria_kit._io import atomic_write_bytes, atomic_write_json
from atheria_kit._validation import require_choice, require_int

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.jsonl"
RESOURCES_FILE = "resources.jsonl"
SUMMARY_FILE = "summary.json"
UNITS = ("episode", "fold", "cycle")
STATUSES = ("running", "finished", "stopped", "error", "stopped_early")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class RunLogError(ValueError):
    """A run-log file exists but cannot be read (corrupt JSON, a malformed line in the middle)."""


def to_json_safe(obj: Any) -> Any:
    """Plain JSON types with non-finite floats as strings; numpy/torch scalars become Python numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)  # numpy scalars, one-element torch tensors
    if callable(item):
        try:
            return to_json_safe(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def _decode(obj: Any) -> Any:
    if isinstance(obj, str):
        return _NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _dumps_line(obj: Any) -> str:
    return json.dumps(to_json_safe(obj), allow_nan=False, separators=(",", ":")) + "\n"


def read_jsonl(path: str | os.PathLike, *, decode_nonfinite: bool = True) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (missing file: empty list).

    An unterminated last line is a write in progress and is ignored; a malformed *complete* line is
    corruption and raises :class:`RunLogError` naming the file and line.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    lines.pop()  # text after the last newline: empty, or a torn line still being written
    out: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunLogError(f"{p}: line {number} is not valid JSON ({exc}): {raw[:80]!r}") from exc
        out.append(_decode(rec) if decode_nonfinite else rec)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunLogError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise RunLogError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return _decode(obj)


def read_progress(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``progress.json`` as a dict, or None when the directory holds no run log."""
    return _read_json(Path(run_dir) / PROGRESS_FILE)


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``summary.json`` (written when it finished), or None."""
    return _read_json(Path(run_dir) / SUMMARY_FILE)


def _cut_torn_tail(path: Path) -> None:
    """Drop an unterminated last line left by a writer killed mid-write, so appends start on a fresh line."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
    log.warning("%s: removed a torn last line (%d bytes) left by an interrupted write", path, size - keep)


class RunLog:
    """Writes a run directory's progress, metrics and resource logs.

    On a directory that already holds a run of the same ``kind`` it continues it (a resumed session):
    the run id, start time and ``done`` count carry on and ``sessions`` grows by one. ETA comes from this
    session's pace.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        kind: str,
        total: int | None = None,
        unit: str = "episode",
        *,
        run_id: str | None = None,
        resume: bool = True,
        summary_name: str = SUMMARY_FILE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(kind, str) or not kind.strip():
            raise ValueError(f"kind={kind!r} is invalid; expected a non-empty string such as 'walkforward'")
        self.unit = require_choice("unit", unit, UNITS)
        if total is not None:
            require_int("total", total, minimum=0)
        self.kind = kind
        self.total = total
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.summary_name = summary_name
        self._clock = clock
        self._wall_clock = wall_clock
        self._process = psutil.Process()
        self._peak_rss = 0

        previous = read_progress(self.run_dir) if resume else None
        if previous is not None and previous.get("kind") != kind:
            previous = None
        now = wall_clock()
        self.run_id = run_id or (previous or {}).get("run_id") or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.started_at = float((previous or {}).get("started_at", now))
        self.done = int((previous or {}).get("done", 0)) if previous else 0
        self.sessions = int((previous or {}).get("sessions", 0)) + 1
        self.metrics: dict[str, Any] = dict((previous or {}).get("metrics", {})) if previous else {}
        self.status = "running"
        self.message = ""
        self._session_start = clock()
        self._session_units = 0
        self._last_unit_end = self._session_start

        for name in (METRICS_FILE, RESOURCES_FILE):
            _cut_torn_tail(self.run_dir / name)
        # Line-buffered appends: each record reaches the file (and other readers) when its line ends.
        self._metrics_fh: IO[str] | None = open(self.run_dir / METRICS_FILE, "a", buffering=1, encoding="utf-8")
        self._resources_fh: IO[str] | None = open(self.run_dir / RESOURCES_FILE, "a", buffering=1, encoding="utf-8")
        self._write_progress()

    # ---------------------------------------------------------------- paths
    @property
    def progress_path(self) -> Path:
        return self.run_dir / PROGRESS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def resources_path(self) -> Path:
        return self.run_dir / RESOURCES_FILE

    # -------------------------------------------------------------- writing
    def log(self, metrics: Mapping[str, Any], *, done: int | None = None, message: str | None = None) -> None:
        """Record one finished unit: append its metrics line and update the progress file.

        ``done`` is the number of units finished so far (default: one more than before). The line holds
        the metrics plus ``done``, ``unit_seconds`` and ``time`` (epoch; a ``time`` in ``metrics`` is kept).
        """
        now = self._clock()
        self.done = self.done + 1 if done is None else require_int("done", done, minimum=0)
        self._session_units += 1
        record = dict(metrics)
        record.setdefault("time", self._wall_clock())
        record["done"] = self.done
        record["unit_seconds"] = max(0.0, now - self._last_unit_end)
        self._last_unit_end = now
        self.metrics = {k: v for k, v in metrics.items()}
        if message is not None:
            self.message = message
        self._append(self._metrics_fh, record)
        self._write_progress()

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Refresh the progress file without logging a unit (a heartbeat, a new message, a new total)."""
        if done is not None:
            self.done = require_int("done", done, minimum=0)
        if total is not None:
            self.total = require_int("total", total, minimum=0)
        if metrics is not None:
            self.metrics = dict(metrics)
        if message is not None:
            self.message = message
        self._write_progress()

    def rewind(self, done: int) -> int:
        """Forget the units recorded after unit ``done`` (a resume from a checkpoint older than the log).

        Why: a session that died after its last checkpoint logged episodes that the next session redoes; without
        this the log would hold them twice and describe a history that never produced the weights. The metrics
        file is rewritten atomically (a reader sees the old or the new file). Returns how many records were dropped.
        """
        require_int("done", done, minimum=0)
        path = self.metrics_path
        records = read_jsonl(path, decode_nonfinite=False)
        keep = [r for r in records if not isinstance(r.get("done"), int) or r["done"] <= done]
        dropped = len(records) - len(keep)
        if dropped:
            if self._metrics_fh is not None:
                self._metrics_fh.close()
            atomic_write_bytes(path, "".join(_dumps_line(r) for r in keep).encode("utf-8"))
            self._metrics_fh = open(path, "a", buffering=1, encoding="utf-8")
            log.info("%s: dropped %d record(s) after unit %d (they are redone from the checkpoint)", path, dropped, done)
        if self.done != done:
            self.done = done
            self._write_progress()
        return dropped

    def log_resources(self, sample: Mapping[str, Any] | None = None) -> None:
        """Append one resource sample (default: this process's RSS and CPU %), stamped with ``time``."""
        record = dict(sample) if sample is not None else self._own_sample()
        record.setdefault("time", self._wall_clock())
        self._append(self._resources_fh, record)

    def finish(self, status: str = "finished", message: str = "") -> dict[str, Any]:
        """Mark the run ended (``finished``, ``stopped`` or ``error``), write the summary and close the files."""
        require_choice("status", status, STATUSES[1:])
        self.status = status
        self.message = message
        progress = self._write_progress()
        summary = {
            **progress,
            "finished_at": progress["updated_at"],
            "duration_seconds": progress["updated_at"] - self.started_at,
            "session_seconds": self._clock() - self._session_start,
            "units_this_session": self._session_units,
            "peak_rss_bytes": self._peak_rss,
        }
        atomic_write_json(self.run_dir / self.summary_name, to_json_safe(summary))
        self.close()
        return summary

    def close(self) -> None:
        for fh in (self._metrics_fh, self._resources_fh):
            if fh is not None:
                fh.close()
        self._metrics_fh = self._resources_fh = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._metrics_fh is None:
            return
        if exc_type is None:
            self.finish("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped", "interrupted")
        else:
            self.finish("error", f"{exc_type.__name__}: {exc}")

    # -------------------------------------------------------------- helpers
    @property
    def eta_seconds(self) -> float | None:
        """Seconds to finish ``total`` at this session's pace; None without a total or a finished unit."""
        if self.total is None:
            return None
        left = max(0, self.total - self.done)
        if left == 0:
            return 0.0
        if self._session_units == 0:
            return None
        pace = (self._last_unit_end - self._session_start) / self._session_units
        return left * pace

    def _rss(self) -> int:
        try:
            rss = int(self._process.memory_info().rss)
        except psutil.Error:
            return 0
        self._peak_rss = max(self._peak_rss, rss)
        return rss

    def _own_sample(self) -> dict[str, Any]:
        try:
            cpu = self._process.cpu_percent(interval=None)
        except psutil.Error:
            cpu = None
        return {"rss_bytes": self._rss(), "cpu_percent": cpu}

    def _append(self, fh: IO[str] | None, record: Mapping[str, Any]) -> None:
        if fh is None:
            raise RuntimeError(f"RunLog for {self.run_dir} is closed")
        fh.write(_dumps_line(record))
        fh.flush()

    def _write_progress(self) -> dict[str, Any]:
        progress = to_json_safe(
            {
                "kind": self.kind,
                "run_id": self.run_id,
                "status": self.status,
                "started_at": self.started_at,
                "updated_at": self._wall_clock(),
                "done": self.done,
                "total": self.total,
                "unit": self.unit,
                "eta_seconds": self.eta_seconds,
                "metrics": self.metrics,
                "memory_rss_bytes": self._rss(),
                "message": self.message,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "sessions": self.sessions,
            }
        )
        atomic_write_json(self.progress_path, progress)
        return progress
