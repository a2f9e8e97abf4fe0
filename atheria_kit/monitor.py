"""ResourceMonitor: CPU, RAM, GPU and time-budget readings, sampled cheaply in the background.

Why: a run that walks away for hours needs to know what it uses (is the GPU busy? is RAM about to run out?)
and to warn once when a limit approaches, without costing the training loop anything. Machine and
process-tree figures come from psutil; GPU figures from NVML through ``pynvml`` (nvidia-ml-py), initialised
once and never by spawning ``nvidia-smi`` (each spawn costs tens of milliseconds: Lightning's 10x slowdown, #189).

Units: bytes for memory (``*_bytes``), percent 0-100 for ``*_percent``, watts for power (NVML reports
milliwatts), degrees Celsius for temperature, seconds for time, a fraction 0-1 for ``budget_fraction``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from atheria_kit._validation import require_fraction, require_int, require_positive
from atheria_kit.platform import nvml_devices

logger = logging.getLogger(__name__)

#: NVML's utilization counters are averaged over about a second; sampling faster yields no new information.
MIN_INTERVAL = 0.2
_GIB = 1024**3
_STATE_VERSION = 1
_SUMMARY_KEYS = ("count", "sum", "min", "max", "last")


@dataclass(frozen=True)
class GpuSample:
    """One GPU's readings; a field is None when the device does not support it."""

    index: int
    name: str
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return 100.0 * self.memory_used_bytes / self.memory_total_bytes


@dataclass(frozen=True)
class ResourceSnapshot:
    """Readings at one instant. ``process_*`` cover this process and all its descendants."""

    time: float  # epoch seconds
    cpu_percent: float  # whole machine, 0-100
    process_cpu_percent: float  # process tree, percent of ONE core (4 busy cores = 400)
    process_rss_bytes: int  # process tree (shared pages of forked workers are counted once per process)
    ram_used_bytes: int
    ram_total_bytes: int
    ram_percent: float
    gpus: tuple[GpuSample, ...] = ()
    elapsed_seconds: float | None = None
    remaining_seconds: float | None = None
    budget_fraction: float | None = None
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat numeric view (``gpu{i}_*`` per GPU); missing readings are left out."""
        out: dict[str, float] = {
            "cpu_percent": self.cpu_percent,
            "process_cpu_percent": self.process_cpu_percent,
            "process_rss_bytes": self.process_rss_bytes,
            "ram_used_bytes": self.ram_used_bytes,
            "ram_total_bytes": self.ram_total_bytes,
            "ram_percent": self.ram_percent,
        }
        for g in self.gpus:
            for key, value in (
                ("utilization_percent", g.utilization_percent),
                ("memory_used_bytes", g.memory_used_bytes),
                ("memory_total_bytes", g.memory_total_bytes),
                ("memory_percent", g.memory_percent),
                ("temperature_c", g.temperature_c),
                ("power_w", g.power_w),
            ):
                if value is not None:
                    out[f"gpu{g.index}_{key}"] = value
        for key in ("elapsed_seconds", "remaining_seconds", "budget_fraction"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class Alert:
    """A threshold crossing, passed to alert callbacks."""

    metric: str  # "ram_percent", "gpu{i}_memory_percent" or "budget_fraction"
    value: float
    threshold: float
    time: float  # epoch seconds
    message: str


class _ProcessTreeCpu:
    """CPU use of a process and all its descendants, from CPU-time deltas over an injectable clock.

    Why not ``Process.cpu_percent`` per process: children that start and end between two samples (data-loader
    workers, ``subprocess.run``) would be missed; their time reaches the parent's ``children_*`` times when reaped.
    """

    def __init__(self, psutil_mod: Any, pid: int, clock: Callable[[], float]) -> None:
        self._psutil = psutil_mod
        self._root = psutil_mod.Process(pid)
        self._clock = clock
        self._last: dict[Any, float] = {}
        self._last_time: float | None = None
        self.sample()

    def _tree(self) -> list[Any]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except self._psutil.Error:
            return [self._root]

    def sample(self) -> tuple[float | None, int]:
        """(percent of one core since the previous call or None on the first, summed RSS bytes)."""
        now = self._clock()
        totals: dict[Any, float] = {}
        rss = 0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    rss += proc.memory_info().rss
            except self._psutil.Error:  # exited between listing and reading
                continue
            # children_* hold reaped children's time, so a finished child's work still counts
            totals[proc] = t.user + t.system + t.children_user + t.children_system
        delta = 0.0
        for proc, total in totals.items():
            delta += total - self._last.get(proc, 0.0 if self._last_time is not None else total)
        for proc, total in self._last.items():
            if proc not in totals:  # exited: its time reappears in its parent's children_* times
                delta -= total
        percent = None
        if self._last_time is not None:
            span = now - self._last_time
            percent = max(0.0, 100.0 * delta / span) if span > 0 else 0.0
        self._last, self._last_time = totals, now
        return percent, rss


class _Summary:
    __slots__ = _SUMMARY_KEYS

    def __init__(self, count: int = 0, sum: float = 0.0, min: float = math.inf, max: float = -math.inf,
                 last: float = math.nan) -> None:
        self.count, self.sum, self.min, self.max, self.last = count, sum, min, max, last

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.last = value

    def view(self) -> dict[str, float]:
        return {"last": self.last, "mean": self.sum / self.count if self.count else math.nan,
                "min": self.min, "max": self.max, "count": self.count}


def _read(budget: Any, name: str) -> float | None:
    value = getattr(budget, name, None)
    if callable(value):
        value = value()
    return None if value is None else float(value)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):  # an unlimited budget has no time left to count
        return "no limit" if seconds > 0 else "-"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ResourceMonitor:
    """Samples CPU, RAM, GPUs and the attached time budget; keeps a bounded history and per-metric summaries.

    ``budget`` is anything with ``elapsed``, ``remaining`` and ``fraction_used`` (a ``TimeBudget``).
    ``nvml`` is a pynvml-like module (default: ``import pynvml``); ``psutil_module``, ``clock`` (monotonic,
    for CPU rates) and ``wall_clock`` (timestamps) are injectable for tests. Thresholds set to None are off.
    """

    def __init__(
        self,
        interval: float = 1.0,
        history: int = 3600,
        budget: Any = None,
        nvml: Any = None,
        *,
        ram_percent_threshold: float | None = 85.0,
        gpu_memory_percent_threshold: float | None = 95.0,
        budget_fraction_threshold: float | None = 0.90,
        psutil_module: Any = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        require_positive("interval", interval)
        if interval < MIN_INTERVAL:
            raise ValueError(f"interval={interval!r} is invalid; expected seconds >= {MIN_INTERVAL} "
                             "(NVML utilization is averaged over about 1 s; faster sampling adds cost, not data)")
        require_int("history", history, minimum=1)
        for name, value in (("ram_percent_threshold", ram_percent_threshold),
                            ("gpu_memory_percent_threshold", gpu_memory_percent_threshold)):
            if value is not None:
                require_positive(name, value)
                if value > 100:
                    raise ValueError(f"{name}={value!r} is invalid; expected a percentage in (0, 100] or None")
        if budget_fraction_threshold is not None:
            require_fraction("budget_fraction_threshold", budget_fraction_threshold, inclusive_high=True)
        if psutil_module is None:
            import psutil as psutil_module
        self.interval = float(interval)
        self.budget = budget
        self.thresholds: dict[str, float | None] = {
            "ram_percent": ram_percent_threshold,
            "gpu_memory_percent": gpu_memory_percent_threshold,
            "budget_fraction": budget_fraction_threshold,
        }
        self._psutil = psutil_module
        self._clock = clock
        self._wall_clock = wall_clock
        self._nvml = nvml
        self._nvml_lock = threading.Lock()
        self._nvml_state = "new"  # "new" -> "ready" | "unavailable"
        self._handles: list[tuple[int, Any, str]] = []
        self._logged: set[tuple[Any, ...]] = set()
        self._lock = threading.RLock()
        self._history: deque[ResourceSnapshot] = deque(maxlen=history)
        self._summaries: dict[str, _Summary] = {}
        self._armed: dict[str, bool] = {}
        self._alert_callbacks: list[Callable[[Alert], Any]] = []
        self._providers: dict[str, Callable[[], Mapping[str, Any]]] = {}
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._tree = _ProcessTreeCpu(psutil_module, os.getpid() if pid is None else pid, clock)
        self._tree_lock = threading.Lock()
        psutil_module.cpu_percent(interval=None)  # sets the baseline, so the first snapshot has a real value

    # ------------------------------------------------------------------ NVML
    def _log_once(self, key: tuple[Any, ...], level: int, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.log(level, msg, *args)

    def _ensure_nvml(self) -> bool:
        """Initialise NVML once (thread-safe); False when there is no NVML or no GPU."""
        if self._nvml_state != "new":
            return self._nvml_state == "ready"
        with self._nvml_lock:
            if self._nvml_state != "new":
                return self._nvml_state == "ready"
            nvml = self._nvml
            try:
                if nvml is None:
                    import pynvml as nvml
                    self._nvml = nvml
                nvml.nvmlInit()
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
                self._log_once(("nvml",), logging.INFO, "NVML unavailable (%s: %s); GPU fields will be empty",
                               type(exc).__name__, exc)
                self._nvml_state = "unavailable"
                return False
            try:
                handles = nvml_devices(nvml)
            except Exception as exc:
                self._log_once(("nvml",), logging.INFO, "NVML device query failed (%s); GPU fields will be empty",
                               exc)
                self._shutdown_nvml_locked()
                self._nvml_state = "unavailable"
                return False
            if not handles:
                self._log_once(("nvml",), logging.INFO, "NVML reports no GPU; GPU fields will be empty")
            self._handles = handles
            self._nvml_state = "ready"
            return True

    def _shutdown_nvml_locked(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:
            logger.debug("nvmlShutdown failed: %s", exc)

    def _gpu_field(self, index: int, fn_name: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, fn_name)(*args)
        except Exception as exc:  # NVMLError_NotSupported (e.g. power on some GPUs), GpuIsLost, ...
            self._log_once(("gpu", index, fn_name), logging.DEBUG, "GPU %d: %s failed (%s); field left empty",
                           index, fn_name, exc)
            return None

    def _read_gpus(self) -> tuple[GpuSample, ...]:
        if not self._ensure_nvml():
            return ()
        nvml = self._nvml
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        out = []
        for index, handle, name in self._handles:
            util = self._gpu_field(index, "nvmlDeviceGetUtilizationRates", handle)
            mem = self._gpu_field(index, "nvmlDeviceGetMemoryInfo", handle)
            temp = self._gpu_field(index, "nvmlDeviceGetTemperature", handle, sensor)
            power_mw = self._gpu_field(index, "nvmlDeviceGetPowerUsage", handle)
            limit_mw = self._gpu_field(index, "nvmlDeviceGetPowerManagementLimit", handle)
            out.append(GpuSample(
                index=index,
                name=name,
                utilization_percent=None if util is None else float(util.gpu),
                memory_used_bytes=None if mem is None else int(mem.used),
                memory_total_bytes=None if mem is None else int(mem.total),
                temperature_c=None if temp is None else float(temp),
                power_w=None if power_mw is None else power_mw / 1000.0,  # NVML reports milliwatts
                power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            ))
        return tuple(out)

    # ------------------------------------------------------------------ sampling
    def snapshot(self) -> ResourceSnapshot:
        """Read everything now (does not record it; :meth:`sample_once` does)."""
        vm = self._psutil.virtual_memory()
        with self._tree_lock:
            tree_percent, tree_rss = self._tree.sample()
        elapsed = remaining = fraction = None
        if self.budget is not None:
            elapsed = _read(self.budget, "elapsed")
            remaining = _read(self.budget, "remaining")
            fraction = _read(self.budget, "fraction_used")
        extra = {}
        for name, provider in list(self._providers.items()):
            try:
                extra[name] = dict(provider())
            except Exception as exc:
                self._log_once(("provider", name), logging.WARNING, "status provider %r failed: %r", name, exc)
                extra[name] = {"error": repr(exc)}
        return ResourceSnapshot(
            time=self._wall_clock(),
            cpu_percent=float(self._psutil.cpu_percent(interval=None)),
            process_cpu_percent=0.0 if tree_percent is None else tree_percent,
            process_rss_bytes=int(tree_rss),
            ram_used_bytes=int(vm.total - vm.available),  # what psutil's percent is computed from
            ram_total_bytes=int(vm.total),
            ram_percent=float(vm.percent),
            gpus=self._read_gpus(),
            elapsed_seconds=elapsed,
            remaining_seconds=remaining,
            budget_fraction=fraction,
            extra=extra,
        )

    def sample_once(self) -> ResourceSnapshot:
        """Take a snapshot, record it in the history and summaries, and check the alert thresholds."""
        snap = self.snapshot()
        with self._lock:
            self._history.append(snap)
            for key, value in snap.metrics().items():
                self._summaries.setdefault(key, _Summary()).add(float(value))
            alerts = self._crossings(snap)
        for alert in alerts:  # outside the lock: callbacks may read the monitor or take their time
            # With a callback someone shows the alert (the session's live view): log it below WARNING, or an
            # unconfigured logger prints it to stderr a second time.
            logger.log(logging.INFO if self._alert_callbacks else logging.WARNING, "resource alert: %s", alert.message)
            for callback in list(self._alert_callbacks):
                try:
                    callback(alert)
                except Exception:  # a faulty callback must not kill the sampler
                    logger.exception("alert callback %r failed", callback)
        return snap

    def _crossings(self, snap: ResourceSnapshot) -> list[Alert]:
        """Alerts for thresholds reached since they were last re-armed (called under the lock)."""
        checks: list[tuple[str, float | None, float | None, str]] = [
            ("ram_percent", snap.ram_percent, self.thresholds["ram_percent"], "RAM use {v:.1f}% >= {t:g}%"),
            ("budget_fraction", snap.budget_fraction, self.thresholds["budget_fraction"],
             "time budget {v:.1%} used >= {t:.0%}"),
        ]
        for g in snap.gpus:
            checks.append((f"gpu{g.index}_memory_percent", g.memory_percent, self.thresholds["gpu_memory_percent"],
                           f"GPU {g.index} memory {{v:.1f}}% >= {{t:g}}%"))
        due: list[Alert] = []
        for metric, value, threshold, template in checks:
            if value is None or threshold is None:
                continue
            if value < threshold:
                self._armed[metric] = True  # re-arm once the value is back below the threshold
                continue
            if not self._armed.get(metric, True):
                continue
            self._armed[metric] = False
            due.append(Alert(metric, float(value), float(threshold), snap.time,
                             template.format(v=value, t=threshold)))
        return due

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while True:
            try:
                self.sample_once()
            except Exception:
                if ("sampler",) not in self._logged:  # log the first failure with its traceback, then stay quiet
                    self._logged.add(("sampler",))
                    logger.warning("resource sampling failed", exc_info=True)
            if self._stop_event.wait(self.interval):  # an Event, so stop() returns at once
                return

    def start(self) -> ResourceMonitor:
        """Start the background sampler (a daemon thread); no-op if it runs already."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="atheria-resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the sampler and wait for it (it wakes at once); NVML stays initialised for later snapshots."""
        self._stop_event.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the sampler and release NVML (it is initialised again if used later)."""
        self.stop()
        with self._nvml_lock:
            if self._nvml_state == "ready":
                self._shutdown_nvml_locked()
            self._nvml_state = "new" if self._nvml_state == "ready" else self._nvml_state
            self._handles = []

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ callbacks
    def add_alert_callback(self, fn: Callable[[Alert], Any]) -> None:
        """``fn(alert)`` is called (from the sampler thread) once per threshold crossing."""
        if not callable(fn):
            raise ValueError(f"fn={fn!r} is invalid; expected a callable taking an Alert")
        self._alert_callbacks.append(fn)

    def add_status_provider(self, name: str, fn: Callable[[], Mapping[str, Any]]) -> None:
        """``fn() -> dict`` is called at each snapshot; its dict appears as ``snapshot.extra[name]``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name={name!r} is invalid; expected a non-empty string")
        if not callable(fn):
            raise ValueError(f"fn={fn!r} is invalid; expected a callable returning a dict")
        self._providers[name] = fn

    # ------------------------------------------------------------------ views
    @property
    def history(self) -> list[ResourceSnapshot]:
        with self._lock:
            return list(self._history)

    def last(self) -> ResourceSnapshot | None:
        with self._lock:
            return self._history[-1] if self._history else None

    def summary(self) -> dict[str, dict[str, float]]:
        """Per metric: last, mean, min, max and count over every recorded sample (not only the history window)."""
        with self._lock:
            return {key: s.view() for key, s in self._summaries.items()}

    def to_dataframe(self):
        """The history as a pandas DataFrame: one row per sample, a ``time`` column (UTC) and one per metric."""
        import pandas as pd

        rows = [{"time": s.time, **s.metrics()} for s in self.history]
        frame = pd.DataFrame.from_records(rows, columns=None if rows else ["time"])
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame

    def plot(self, ax: Any = None, metrics: list[str] | None = None):
        """Plot percentage metrics (CPU, RAM, GPU utilization and memory) over time; returns the axes."""
        import matplotlib.pyplot as plt

        frame = self.to_dataframe()
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3))
        columns = metrics or [c for c in frame.columns
                              if c == "cpu_percent" or c == "ram_percent" or c.endswith(("utilization_percent",
                                                                                         "memory_percent"))]
        for column in columns:
            if column not in frame.columns:
                raise ValueError(f"metrics={metrics!r} is invalid; {column!r} is not among {list(frame.columns)}")
            ax.plot(frame["time"], frame[column], label=column)
        ax.set_ylabel("%")
        ax.set_xlabel("time (UTC)")
        if columns:
            ax.legend(loc="upper left", fontsize="small")
        return ax

    def status_line(self, snap: ResourceSnapshot | None = None) -> str:
        """One line: GPU utilization and memory, RAM, CPU, time used/left, then each status provider.

        Uses ``snap``, else the sampler's latest sample while it runs, else a fresh snapshot.
        """
        if snap is None:
            snap = (self.last() if self.running else None) or self.snapshot()
        parts = []
        for g in snap.gpus:
            text = f"GPU{g.index} "
            text += "?%" if g.utilization_percent is None else f"{g.utilization_percent:.0f}%"
            if g.memory_used_bytes is not None and g.memory_total_bytes:
                text += f" {g.memory_used_bytes / _GIB:.1f}/{g.memory_total_bytes / _GIB:.1f} GiB"
            parts.append(text)
        if not snap.gpus:
            parts.append("GPU none")
        parts.append(f"RAM {snap.ram_used_bytes / _GIB:.1f}/{snap.ram_total_bytes / _GIB:.1f} GiB "
                     f"({snap.ram_percent:.0f}%)")
        parts.append(f"CPU {snap.cpu_percent:.0f}%")
        if snap.elapsed_seconds is not None:
            text = f"time {_fmt_duration(snap.elapsed_seconds)} used"
            if snap.remaining_seconds is not None and math.isfinite(snap.remaining_seconds):
                text += f", {_fmt_duration(snap.remaining_seconds)} left"
            elif snap.remaining_seconds is not None:
                text += " (no time limit)"
            parts.append(text)
        for name, status in snap.extra.items():
            parts.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in status.items()))
        return " | ".join(parts)

    # ------------------------------------------------------------------ resumable state
    def state_dict(self) -> dict[str, Any]:
        """The summaries (plain types), so peaks and means span sessions."""
        with self._lock:
            return {"version": _STATE_VERSION,
                    "summaries": {k: {f: getattr(s, f) for f in _SUMMARY_KEYS} for k, s in self._summaries.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"state={state!r:.200} is invalid; expected a ResourceMonitor state_dict "
                             f"with version {_STATE_VERSION}")
        summaries = state.get("summaries")
        if not isinstance(summaries, Mapping):
            raise ValueError(f"state['summaries']={summaries!r:.200} is invalid; expected a dict of metric summaries")
        loaded = {}
        for key, entry in summaries.items():
            if not isinstance(entry, Mapping) or set(entry) != set(_SUMMARY_KEYS):
                raise ValueError(f"state['summaries'][{key!r}]={entry!r} is invalid; "
                                 f"expected a dict with keys {list(_SUMMARY_KEYS)}")
            loaded[key] = _Summary(int(entry["count"]), float(entry["sum"]), float(entry["min"]),
                                   float(entry["max"]), float(entry["last"]))
        with self._lock:
            self._summaries = loaded
