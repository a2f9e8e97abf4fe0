"""Time-budget guard: spend almost all of a session's time limit and never overrun it.

A notebook session on Colab or Kaggle is killed at a hard limit. Before each unit of work (episode, epoch,
fold) the loop asks :meth:`TimeBudget.can_start`; the guard answers from a forecast of the next unit's
duration, the measured duration of a checkpoint save and a small fixed reserve. Stopping at a fixed share
of the limit (the seed's 90 % rule) wastes a tenth of every session; the forecast lets the loop run until
the last unit that still fits.

The forecast (:class:`DurationForecaster`) is an exponentially weighted mean and variance of the *log*
durations (so heavy right tails such as lognormal durations are modelled, and noise scales with the
unit's size), an upper quantile ``exp(mean + z * std)`` with ``z`` inflated while few units have been
seen, never below the longest of the last few units (which follows upward drift and keeps a recent spike
in mind), times a small relative margin. See ``docs/time-budget.md`` for the measured behaviour.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from atheria_kit._validation import require_choice, require_fraction, require_int, require_positive
from atheria_kit.platform import KINDS

log = logging.getLogger(__name__)

#: Platform kinds a budget understands (``atheria_kit.platform.Environment.kind``).
#: Kinds whose limit counts from the start of the runtime rather than from the guard's construction.
_RUNTIME_COUNTED = ("colab", "kaggle")

_STATE_VERSION = 1


class DurationForecaster:
    """Upper forecast of the next unit's duration from the durations seen so far.

    Why log space: unit durations are positive and their noise is multiplicative (a 10-minute unit varies
    by minutes, a 1-minute unit by seconds); a heavy right tail (lognormal) is a normal tail in log space.
    Why EWMA: durations drift (longer sequences, a slowing disk); old units should fade out.
    """

    def __init__(
        self,
        *,
        z: float = 3.5,
        alpha: float = 0.1,
        recent: int = 5,
        margin: float = 0.05,
        min_log_std: float = 0.02,
        cap: float = 3.0,
        history: int = 64,
    ) -> None:
        self.z = require_positive("z", z)
        self.alpha = require_fraction("alpha", alpha)
        self.recent = require_int("recent", recent, minimum=1)
        self.margin = require_positive("margin", margin, allow_zero=True)
        self.min_log_std = require_positive("min_log_std", min_log_std, allow_zero=True)
        self.cap = require_positive("cap", cap)
        self.history = require_int("history", history, minimum=self.recent)
        self.count = 0
        self._mean = 0.0  # EWMA of log durations
        self._var = 0.0  # EW variance of log durations
        self._last: deque[float] = deque(maxlen=self.history)
        self._cached: float | None = None

    def update(self, seconds: float) -> None:
        """Learn one measured unit duration (seconds >= 0)."""
        seconds = require_positive("seconds", float(seconds), allow_zero=True)
        x = math.log(max(seconds, 1e-9))
        self.count += 1
        # Exact running mean/variance for the first 1/alpha units, then exponential forgetting.
        a = max(1.0 / self.count, self.alpha)
        diff = x - self._mean
        incr = a * diff
        self._mean += incr
        self._var = (1.0 - a) * (self._var + diff * incr)
        self._last.append(seconds)
        self._cached = None

    def forecast(self) -> float | None:
        """Seconds the next unit will take, at the forecaster's confidence; None before any unit."""
        if self.count == 0:
            return None
        if self._cached is None:
            std = max(math.sqrt(self._var), self.min_log_std)
            # Few samples: the spread itself is uncertain (Student-t-like inflation of the quantile).
            z = self.z * (1.0 + 1.0 / math.sqrt(self.count))
            # Capped at a multiple of the longest unit remembered: with two or three wild samples the
            # quantile can exceed any sensible value and would stop a session that has hours left.
            model = min(math.exp(self._mean + z * std), self.cap * max(self._last))
            recent_max = max(list(self._last)[-self.recent :])
            self._cached = max(model, recent_max) * (1.0 + self.margin)
        return self._cached

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self._mean, "var": self._var, "last": list(self._last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self._mean = float(state["mean"])
        self._var = float(state["var"])
        self._last = deque((float(v) for v in state["last"]), maxlen=self.history)
        self._cached = None


def _as_epoch(field: str, value: float | _dt.datetime) -> float:
    if isinstance(value, _dt.datetime):
        return value.timestamp()  # naive datetimes are local time, as datetime.timestamp() defines
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{field}={value!r} is invalid; expected epoch seconds (float) or a datetime")


class TimeBudget:
    """How much of this session's time limit is left, and whether the next unit of work still fits.

    Set the limit by exactly one of ``seconds``, ``hours`` or ``deadline`` (epoch seconds or a datetime),
    or leave all three out to use the platform's session limit (``environment``, detected when omitted;
    locally there is none and the budget is unlimited). On Colab and Kaggle the limit counts from the
    start of the runtime (``environment.runtime_started_at``), so time spent in earlier cells counts;
    locally it counts from construction. ``started_at`` (epoch seconds or datetime) overrides both.

    ``clock`` is a monotonic clock for measuring; ``wall_clock`` converts the wall-clock instants
    (deadline, runtime start) to it once, at construction.
    """

    def __init__(
        self,
        seconds: float | None = None,
        *,
        hours: float | None = None,
        deadline: float | _dt.datetime | None = None,
        environment: Any = None,
        started_at: float | _dt.datetime | None = None,
        reserve_seconds: float = 60.0,
        save_share: float = 0.9,
        cold_start_share: float = 0.25,
        initial_save_seconds: float = 60.0,
        save_margin: float = 0.25,
        forecaster: DurationForecaster | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        given = [name for name, v in (("seconds", seconds), ("hours", hours), ("deadline", deadline)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"{'/'.join(given)} are all set; expected at most one of seconds, hours, deadline")
        self.reserve_seconds = require_positive("reserve_seconds", reserve_seconds, allow_zero=True)
        self.save_share = require_fraction("save_share", save_share)
        self.cold_start_share = require_fraction("cold_start_share", cold_start_share)
        self.initial_save_seconds = require_positive("initial_save_seconds", initial_save_seconds, allow_zero=True)
        self.save_margin = require_positive("save_margin", save_margin, allow_zero=True)
        self._clock = clock
        self._wall_clock = wall_clock
        self.forecaster = forecaster if forecaster is not None else DurationForecaster()

        now_mono, now_wall = clock(), wall_clock()
        explicit_start = None if started_at is None else _as_epoch("started_at", started_at)
        if explicit_start is not None and explicit_start > now_wall:
            raise ValueError(f"started_at={started_at!r} is invalid; expected a time not in the future")

        if environment is None and not given:
            # Lazy import: explicit budgets do not need platform detection.
            from atheria_kit.platform import detect_environment

            environment = detect_environment()
        self.kind = "local"
        platform_limit: float | None = None
        runtime_start: float | None = None
        if environment is not None:
            self.kind = require_choice("environment.kind", getattr(environment, "kind", None), KINDS)
            platform_limit = getattr(environment, "session_limit_seconds", None)
            if platform_limit is not None:
                platform_limit = require_positive("environment.session_limit_seconds", platform_limit)
            if self.kind in _RUNTIME_COUNTED:
                runtime_start = getattr(environment, "runtime_started_at", None)
                if runtime_start is not None:
                    runtime_start = _as_epoch("environment.runtime_started_at", runtime_start)

        start_wall = explicit_start if explicit_start is not None else runtime_start
        if start_wall is None:
            start_wall = now_wall
        start_wall = min(start_wall, now_wall)  # a runtime start in the future is a clock skew, not credit
        self._origin = now_mono - (now_wall - start_wall)

        if seconds is not None:
            limit = require_positive("seconds", seconds)
        elif hours is not None:
            limit = require_positive("hours", hours) * 3600.0
        elif deadline is not None:
            end = _as_epoch("deadline", deadline)
            if end <= now_wall:
                raise ValueError(f"deadline={deadline!r} is invalid; expected a time in the future")
            limit = end - start_wall
        else:
            limit = math.inf if platform_limit is None else platform_limit
        if platform_limit is not None and limit > platform_limit:
            log.warning(
                "time budget %.0f s exceeds the %s session limit %.0f s; using the platform limit",
                limit,
                self.kind,
                platform_limit,
            )
            limit = platform_limit
        self._limit = float(limit)

        self._unit_started: float | None = None
        self._partial_seconds = 0.0  # longest unfinished unit seen: a lower bound on a unit's duration
        self._saves: deque[float] = deque(maxlen=32)
        self._stop_reason: str | None = None
        self._previous_handlers: dict[int, Any] = {}
        #: Seconds the final sync to persistent storage is expected to take (set by whoever syncs: the
        #: measured upload time); reserved like the final save, so the session ends with its copy made.
        self.final_sync_estimate: Callable[[], float] | None = None

    # ----------------------------------------------------------------- time
    @property
    def limit_seconds(self) -> float:
        """This session's limit in seconds (``math.inf`` when unlimited)."""
        return self._limit

    @property
    def elapsed(self) -> float:
        """Seconds counted against the limit (including earlier cells on Colab/Kaggle)."""
        return self._clock() - self._origin

    @property
    def remaining(self) -> float:
        return max(0.0, self._limit - self.elapsed)

    @property
    def fraction_used(self) -> float:
        return 0.0 if math.isinf(self._limit) else min(1.0, self.elapsed / self._limit)

    # ------------------------------------------------------------ estimates
    @property
    def save_estimate(self) -> float:
        """Seconds a save is expected to take: the longest recent save plus a margin."""
        if not self._saves:
            return self.initial_save_seconds
        return max(self._saves) * (1.0 + self.save_margin)

    @property
    def final_sync_seconds(self) -> float:
        """Seconds reserved for the final sync (0 without a remote, or when the estimate fails)."""
        if self.final_sync_estimate is None:
            return 0.0
        try:
            value = float(self.final_sync_estimate())
        except Exception:  # an estimate is advice; a failing one must not stop training
            return 0.0
        return value if math.isfinite(value) and value > 0 else 0.0

    @property
    def end_reserve(self) -> float:
        """What must be left at the end: the final save, the final sync and the fixed reserve."""
        return self.save_estimate + self.final_sync_seconds + self.reserve_seconds

    @property
    def unit_forecast(self) -> float | None:
        """Forecast seconds of the next unit (None before the first unit is measured)."""
        f = self.forecaster.forecast()
        if f is None:
            # Cold start with only a partial unit known: it took at least that long; allow twice as long.
            return 2.0 * self._partial_seconds if self._partial_seconds > 0 else None
        return max(f, self._partial_seconds)

    # ------------------------------------------------------------ decisions
    def can_start(self) -> bool:
        """Whether the next unit, a final save and the reserve still fit in the remaining time."""
        if self._stop_reason is not None:
            return False
        remaining = self.remaining
        if math.isinf(remaining):
            return True
        after = remaining - self.end_reserve
        forecast = self.unit_forecast
        if forecast is None:
            # Nothing measured: a unit may take anything; start only while a generous share is left.
            # A unit that runs too long is caught by must_save_now() and teaches the guard on resume.
            return after >= self.cold_start_share * self._limit
        return after >= forecast

    def must_save_now(self) -> bool:
        """Save and stop now whatever the unit's progress: only the save time and reserve are left, or a
        stop was requested. Code that can save inside a unit checks this between its steps."""
        self._note_partial()
        if self._stop_reason is not None:
            return True
        return self.remaining <= self.end_reserve

    def should_save_now(self) -> bool:
        """Whether code that can save inside a unit should save now: past ``save_share`` of the limit,
        or :meth:`must_save_now`."""
        return self.must_save_now() or self.fraction_used >= self.save_share

    # ---------------------------------------------------------------- units
    def start_unit(self) -> None:
        if self._unit_started is not None:
            raise RuntimeError("start_unit() called while a unit is already running; call end_unit() first")
        self._unit_started = self._clock()

    def end_unit(self) -> float:
        """Finish the running unit, learn its duration and return it in seconds."""
        if self._unit_started is None:
            raise RuntimeError("end_unit() called without start_unit()")
        seconds = max(0.0, self._clock() - self._unit_started)
        self._unit_started = None
        self._partial_seconds = 0.0
        self.forecaster.update(seconds)
        return seconds

    def abandon_unit(self) -> None:
        """Forget the running unit without learning from it (it failed; its duration says nothing)."""
        self._unit_started = None

    @contextlib.contextmanager
    def unit(self) -> Iterator[TimeBudget]:
        """``with budget.unit(): ...``: time one unit; a unit that raises is not learned."""
        self.start_unit()
        try:
            yield self
        except BaseException:
            self.abandon_unit()
            raise
        self.end_unit()

    def _note_partial(self) -> None:
        if self._unit_started is not None:
            self._partial_seconds = max(self._partial_seconds, self._clock() - self._unit_started)

    def record_save(self, seconds: float) -> None:
        """Report one checkpoint save's duration (called by the checkpoint code)."""
        self._saves.append(float(require_positive("save seconds", seconds, allow_zero=True)))

    # ----------------------------------------------------------------- stop
    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to save and stop at the next check; the first reason is kept."""
        if self._stop_reason is None:
            self._stop_reason = str(reason)
            log.info("stop requested: %s", reason)

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def install_signal_handlers(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Turn SIGTERM/SIGINT into a save-and-stop request instead of dying (main thread only).

        A second SIGINT after a stop was requested raises ``KeyboardInterrupt``, so Ctrl-C twice still
        interrupts a loop that does not check the budget. Undo with :meth:`uninstall_signal_handlers`.
        """
        for sig in signals:
            sig = signal.Signals(sig)
            previous = signal.signal(sig, self._handle_signal)
            self._previous_handlers.setdefault(int(sig), previous)

    def uninstall_signal_handlers(self) -> None:
        """Restore the handlers that were in place before :meth:`install_signal_handlers`."""
        while self._previous_handlers:
            sig, previous = self._previous_handlers.popitem()
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    def _handle_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self._stop_reason is not None:
            raise KeyboardInterrupt
        self.request_stop(f"signal {name}")

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What the guard has learned (unit and save durations); not the elapsed time, which is per session."""
        self._note_partial()
        return {
            "version": _STATE_VERSION,
            "forecaster": self.forecaster.state_dict(),
            "saves": list(self._saves),
            "partial_unit_seconds": self._partial_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ValueError(f"TimeBudget state version={version!r} is invalid; expected {_STATE_VERSION}")
        self.forecaster.load_state_dict(state["forecaster"])
        self._saves = deque((float(s) for s in state["saves"]), maxlen=self._saves.maxlen)
        self._partial_seconds = float(state.get("partial_unit_seconds", 0.0))

    def __repr__(self) -> str:
        return (
            f"TimeBudget(kind={self.kind!r}, limit={self._limit:.0f}s, elapsed={self.elapsed:.0f}s, "
            f"forecast={self.unit_forecast}, save={self.save_estimate:.1f}s, stop={self._stop_reason!r})"
        )
