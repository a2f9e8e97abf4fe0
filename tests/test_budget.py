"""TimeBudget: limits from every source, decisions on worked examples, resumable learning, signals."""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atheria_kit.budget import DurationForecaster, TimeBudget
from tests.fakes.clock import PairedClock

MONO0 = 5000.0  # monotonic clocks have an arbitrary origin
WALL0 = 1_700_000_000.0  # an arbitrary epoch for the fake wall clock


@dataclass(frozen=True)
class Env:
    """Duck-typed stand-in with the fields of ``atheria_kit.platform.Environment`` the budget reads."""

    kind: str
    session_limit_seconds: float | None
    runtime_started_at: float | None


@pytest.fixture
def clock() -> PairedClock:
    return PairedClock(MONO0, WALL0)


def make(clock: PairedClock, *args, **kwargs) -> TimeBudget:
    return TimeBudget(*args, clock=clock.monotonic, wall_clock=clock.time, **kwargs)


# ------------------------------------------------------------------ limits and counting
@pytest.mark.parametrize(
    ("kwargs", "limit"),
    [
        ({"seconds": 90.0}, 90.0),
        ({"hours": 1.5}, 5400.0),
        ({"deadline": WALL0 + 600.0}, 600.0),
        ({"deadline": dt.datetime.fromtimestamp(WALL0 + 7200.0, tz=dt.timezone.utc)}, 7200.0),
    ],
)
def test_limit_is_set_by_seconds_hours_or_deadline(clock, kwargs, limit):
    b = make(clock, **kwargs)
    assert b.limit_seconds == pytest.approx(limit)
    assert b.elapsed == 0.0
    clock.advance(30.0)
    assert b.elapsed == pytest.approx(30.0)
    assert b.remaining == pytest.approx(limit - 30.0)
    assert b.fraction_used == pytest.approx(30.0 / limit)


@pytest.mark.parametrize("kind", ["colab", "kaggle"])
def test_notebook_platforms_count_from_the_runtime_start(clock, kind):
    # The VM started 3 h ago; earlier cells used that time, so 9 h of the 12 h limit are left.
    env = Env(kind, 12 * 3600.0, WALL0 - 3 * 3600.0)
    b = make(clock, environment=env)
    assert b.limit_seconds == 12 * 3600.0
    assert b.elapsed == pytest.approx(3 * 3600.0)
    assert b.remaining == pytest.approx(9 * 3600.0)
    assert b.fraction_used == pytest.approx(0.25)


def test_local_counts_from_construction_and_has_no_default_limit(clock):
    b = make(clock, environment=Env("local", None, WALL0 - 3600.0))
    clock.advance(10.0)
    assert b.elapsed == pytest.approx(10.0)
    assert math.isinf(b.limit_seconds) and math.isinf(b.remaining)
    assert b.fraction_used == 0.0
    assert b.can_start() and not b.should_save_now()


def test_explicit_limit_on_colab_still_counts_from_runtime_start_and_is_capped_by_the_platform(clock):
    env = Env("colab", 12 * 3600.0, WALL0 - 1800.0)
    assert make(clock, hours=10, environment=env).remaining == pytest.approx(10 * 3600.0 - 1800.0)
    assert make(clock, hours=14, environment=env).limit_seconds == 12 * 3600.0


def test_started_at_overrides_the_origin(clock):
    b = make(clock, seconds=1000.0, started_at=WALL0 - 400.0, environment=Env("kaggle", 43200.0, WALL0 - 9000))
    assert b.elapsed == pytest.approx(400.0)
    b2 = make(clock, seconds=1000.0, started_at=dt.datetime.fromtimestamp(WALL0 - 100.0))
    assert b2.elapsed == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seconds": 0}, "seconds=0"),
        ({"seconds": -5.0}, "seconds=-5.0"),
        ({"hours": float("nan")}, "hours=nan"),
        ({"seconds": 10, "save_share": 1.0}, "save_share=1.0"),
        ({"seconds": 10, "save_share": 0}, "save_share=0"),
        ({"seconds": 10, "cold_start_share": 1.5}, "cold_start_share=1.5"),
        ({"seconds": 10, "reserve_seconds": -1}, "reserve_seconds=-1"),
        ({"environment": Env("sagemaker", 3600.0, None)}, "environment.kind='sagemaker'"),
        ({"environment": Env("colab", 0.0, None)}, "environment.session_limit_seconds=0.0"),
        ({"deadline": WALL0 - 1}, "deadline="),
        ({"seconds": 10, "hours": 1}, "seconds/hours"),
        ({"seconds": 10, "started_at": WALL0 + 60}, "started_at="),
    ],
)
def test_bad_input_names_field_value_and_what_is_allowed(clock, kwargs, field):
    with pytest.raises(ValueError, match="expected") as err:
        make(clock, **kwargs)
    assert field in str(err.value)


# ------------------------------------------------------------------ decisions
def run_session(b: TimeBudget, clock: PairedClock, durations, final_save: float) -> tuple[int, float]:
    """The loop a notebook runs: units while the guard allows, then a final save. Returns (units, end time)."""
    n = 0
    for d in durations:
        if not b.can_start():
            break
        with b.unit():
            clock.advance(d)
        n += 1
    clock.advance(final_save)
    return n, b.elapsed


def test_constant_units_use_the_session_up_to_the_last_unit_that_fits(clock):
    # Limit 10 000 s, units of 100 s, saves of 20 s, reserve 10 s. Worked by hand: after k units
    # 10 000 - 100 k is left; the next starts only if that minus 30 s covers the forecast (>= 100 s, and
    # below 170 s for constant units), so the 99th unit starts (170 s left after 98) and the 100th cannot
    # (70 s left). The fixed-90 % rule would have stopped after 90.
    b = make(clock, seconds=10_000.0, reserve_seconds=10.0, initial_save_seconds=20.0, save_margin=0.0)
    units, end = run_session(b, clock, [100.0] * 200, final_save=20.0)
    assert units == 99
    assert end == pytest.approx(9920.0) and end <= b.limit_seconds


def test_measured_save_time_is_kept_free(clock):
    b = make(clock, seconds=1000.0, reserve_seconds=0.0, initial_save_seconds=0.0, save_margin=0.0)
    for _ in range(5):
        with b.unit():
            clock.advance(100.0)
    # 500 s left: a 100 s unit (forecast ~ 100-150 s) fits with no save to keep ...
    assert b.can_start()
    # ... but not once saves are known to take 400 s.
    b.record_save(120.0)
    b.record_save(400.0)
    assert b.save_estimate == pytest.approx(400.0)
    assert not b.can_start()


def test_noisy_units_are_forecast_above_the_longest_recent_one(clock):
    b = make(clock, seconds=100_000.0)
    for d in [50.0, 150.0] * 10:
        with b.unit():
            clock.advance(d)
    assert b.unit_forecast >= 150.0


def test_cold_start_allows_the_first_unit_only_while_a_generous_share_is_left(clock):
    env = Env("colab", 1000.0, WALL0 - 700.0)  # 300 s left of 1000 s
    kw = {"reserve_seconds": 0.0, "initial_save_seconds": 10.0, "cold_start_share": 0.25}
    assert make(clock, environment=env, **kw).can_start()  # 300 - 10 >= 250
    clock.advance(50.0)
    assert not make(clock, environment=env, **kw).can_start()  # 250 - 10 < 250


def test_a_partial_unit_teaches_a_lower_bound_that_survives_a_restart(clock):
    b = make(clock, seconds=10_000.0)
    b.start_unit()
    clock.advance(300.0)
    assert not b.must_save_now()
    state = b.state_dict()
    fresh = make(clock, seconds=10_000.0)
    assert fresh.unit_forecast is None
    fresh.load_state_dict(state)
    assert fresh.unit_forecast >= 300.0


def test_stop_request_blocks_new_units_and_asks_for_a_save(clock):
    b = make(clock, seconds=10_000.0)
    assert b.can_start() and not b.stop_requested
    b.request_stop("user")
    b.request_stop("second reason is ignored")
    assert b.stop_requested and b.stop_reason == "user"
    assert not b.can_start() and b.must_save_now() and b.should_save_now()


def test_should_save_now_past_the_share_must_save_now_only_at_the_save_time(clock):
    b = make(clock, seconds=1000.0, reserve_seconds=20.0, initial_save_seconds=30.0, save_margin=0.0, save_share=0.8)
    clock.advance(799.0)
    assert not b.should_save_now()
    clock.advance(1.0)
    assert b.should_save_now() and not b.must_save_now()
    clock.advance(149.0)  # 51 s left > 30 + 20
    assert not b.must_save_now()
    clock.advance(1.0)  # 50 s left: only the save and the reserve remain
    assert b.must_save_now()


def test_unit_protocol_errors_and_failed_units(clock):
    b = make(clock, seconds=1000.0)
    with pytest.raises(RuntimeError, match="without start_unit"):
        b.end_unit()
    b.start_unit()
    with pytest.raises(RuntimeError, match="already running"):
        b.start_unit()
    b.abandon_unit()
    with pytest.raises(ZeroDivisionError), b.unit():
        clock.advance(5.0)
        1 / 0  # noqa: B018
    assert b.forecaster.count == 0  # a failed unit says nothing about how long units take
    with b.unit():
        clock.advance(5.0)
    assert b.forecaster.count == 1


# ------------------------------------------------------------------ resume
def test_learned_statistics_resume_but_elapsed_time_does_not(clock, tmp_path: Path):
    b = make(clock, hours=1)
    for i in range(40):
        with b.unit():
            clock.advance(30.0 + (i % 3))
    b.record_save(12.0)
    assert b.elapsed > 1000.0
    path = tmp_path / "budget.pt"
    torch.save(b.state_dict(), path)
    state = torch.load(path, weights_only=True)

    nxt = PairedClock(MONO0, WALL0)
    nxt.advance(12345.0)  # another session, another clock origin
    b2 = make(nxt, hours=1)
    b2.load_state_dict(state)
    assert b2.elapsed == 0.0 and b2.remaining == 3600.0
    assert b2.unit_forecast == pytest.approx(b.unit_forecast)
    assert b2.save_estimate == pytest.approx(b.save_estimate)
    assert b2.forecaster.count == 40


def test_load_state_dict_rejects_unknown_versions(clock):
    b = make(clock, seconds=10.0)
    state = b.state_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version=99"):
        b.load_state_dict(state)


# ------------------------------------------------------------------ signals
def test_sigterm_requests_a_stop_instead_of_killing_and_handlers_are_restored(clock):
    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    b = make(clock, seconds=1000.0)
    b.install_signal_handlers()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert b.stop_requested and "SIGTERM" in b.stop_reason
        assert not b.can_start()
        # A second Ctrl-C after a stop was requested still interrupts.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        b.uninstall_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is before_term
    assert signal.getsignal(signal.SIGINT) is before_int


# ------------------------------------------------------------------ property: never overrun
@settings(max_examples=300, deadline=None)
@given(
    limit=st.floats(min_value=600.0, max_value=50_000.0),
    first=st.floats(min_value=0.5, max_value=1.0),
    ratios=st.lists(st.floats(min_value=0.3, max_value=1.05), min_size=1, max_size=300),
    saves=st.lists(st.floats(min_value=1.0, max_value=120.0), min_size=1, max_size=5),
    final_save_ratio=st.floats(min_value=0.0, max_value=1.25),
    reserve=st.floats(min_value=0.0, max_value=120.0),
)
def test_sessions_within_the_forecast_assumptions_never_overrun(
    limit, first, ratios, saves, final_save_ratio, reserve
):
    """Assumptions: the first unit takes at most the cold-start share of the limit; each later unit takes
    at most 5 % more than the longest of the five before it (bounded noise, slow drift); the final save
    takes at most the longest measured save plus the 25 % save margin."""
    clock = PairedClock(MONO0, WALL0)
    b = make(clock, seconds=limit, reserve_seconds=reserve, initial_save_seconds=0.0)
    for s in saves:
        b.record_save(s)
    durations = [first * 0.25 * limit]
    for r in ratios:
        durations.append(r * max(durations[-5:]))
    _, end = run_session(b, clock, durations, final_save=final_save_ratio * max(saves))
    assert end <= limit + 1e-6


def test_forecaster_parameters_are_validated():
    with pytest.raises(ValueError, match="alpha=1.5"):
        DurationForecaster(alpha=1.5)
    with pytest.raises(ValueError, match="recent=0"):
        DurationForecaster(recent=0)


def test_repr_is_informative(clock):
    text = repr(make(clock, seconds=60.0))
    assert "limit=60s" in text and "kind='local'" in text
