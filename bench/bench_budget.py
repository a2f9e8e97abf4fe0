"""Time-budget guard against the fixed-90 % rule: thousands of simulated sessions on a fake clock.

Each simulated session has a 12 h limit, units whose mean duration is drawn from 1-10 min, periodic
asynchronous checkpoints (every 20 min; their measured durations are reported to the guard) and a
blocking final save of 10-60 s (+-20 % per save). Per distribution of unit durations it prints:

- overruns: sessions whose final save did not finish before the limit (the run would be killed);
- late: sessions where a unit ate into the time kept for the save and reserve (the guard's forecast failed);
- utilisation: time in completed units / limit (mean and 5th percentile).

Run: ``.venv/bin/python bench/bench_budget.py [--quick] [--sessions N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fakes when run as a script

from atheria_kit.budget import TimeBudget  # noqa: E402
from tests.fakes.clock import ManualClock  # noqa: E402

LIMIT = 12 * 3600.0
MEAN_UNIT = (60.0, 600.0)  # per-session mean unit duration, seconds
SAVE = (10.0, 60.0)  # per-session save duration, seconds
SAVE_JITTER = 0.2  # each save takes base * U(1 - j, 1 + j)
CHECKPOINT_EVERY = 20 * 60.0  # periodic asynchronous checkpoints
RESERVE = 60.0
STEP = 30.0  # mid-unit check granularity (must stay below the reserve)
MAX_UNITS = 4000


def draw_units(dist: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit durations for one session (the session's time is used for drift after the fact)."""
    m = rng.uniform(*MEAN_UNIT)
    if dist == "constant":
        return np.full(n, m)
    if dist == "normal":
        cv = rng.uniform(0.05, 0.2)
        return m * np.clip(rng.normal(1.0, cv, n), 0.05, None)
    if dist == "lognormal":
        sigma = 0.5
        return m * np.exp(rng.normal(-sigma**2 / 2, sigma, n))
    if dist == "drift":
        return m * np.clip(rng.normal(1.0, 0.05, n), 0.05, None)  # scaled by the drift factor at run time
    if dist == "spikes":
        base = m * np.clip(rng.normal(1.0, 0.05, n), 0.05, None)
        spike = rng.random(n) < 0.01
        return np.where(spike, base * rng.uniform(5.0, 20.0, n), base)
    raise ValueError(dist)


def simulate(dist: str, rule: str, rng: np.random.Generator) -> tuple[bool, bool, float]:
    """One session; returns (overrun, late, utilisation)."""
    units = draw_units(dist, rng, MAX_UNITS)
    drift = rng.uniform(-0.5, 1.0) if dist == "drift" else 0.0  # relative change over the session
    save_base = rng.uniform(*SAVE)
    saves = save_base * rng.uniform(1 - SAVE_JITTER, 1 + SAVE_JITTER, MAX_UNITS)
    clock = ManualClock(0.0)
    budget = TimeBudget(LIMIT, reserve_seconds=RESERVE, clock=clock, wall_clock=clock)
    done = 0.0
    i = 0
    next_ckpt = CHECKPOINT_EVERY
    late = False
    mid_unit = rule == "ours+mid"
    while True:
        if rule == "fixed90":
            if clock.t >= 0.9 * LIMIT:
                break
        elif not budget.can_start():
            break
        d = units[i] * (1.0 + drift * clock.t / LIMIT)
        i += 1
        start = clock.t
        if rule != "fixed90":
            budget.start_unit()
        if mid_unit:
            stopped = False
            while clock.t < start + d:
                clock.t = min(clock.t + STEP, start + d)
                if clock.t < start + d and budget.must_save_now():
                    stopped = True
                    break
            if stopped:
                budget.abandon_unit()
                late = True
                break
        else:
            clock.t = start + d
        if rule != "fixed90":
            budget.end_unit()
            if LIMIT - clock.t < budget.save_estimate + budget.reserve_seconds - 1e-9:
                late = True
        done += d
        if clock.t >= next_ckpt:  # asynchronous checkpoint: the loop does not wait, the guard learns its time
            budget.record_save(saves[i])
            next_ckpt = clock.t + CHECKPOINT_EVERY
    clock.t += saves[0]  # final, blocking save
    return clock.t > LIMIT, late, done / LIMIT


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 sessions per distribution")
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    n = 200 if a.quick else a.sessions
    print(
        f"limit {LIMIT / 3600:.0f} h; unit mean U{MEAN_UNIT} s per session; saves U{SAVE} s +-{SAVE_JITTER:.0%}; "
        f"checkpoints every {CHECKPOINT_EVERY / 60:.0f} min (async); reserve {RESERVE:.0f} s; "
        f"{n} sessions per row"
    )
    print(
        "normal: cv U(0.05,0.2); lognormal: sigma 0.5; drift: x(1+U(-0.5,1.0)*t/limit), cv 0.05; "
        f"spikes: 1 % of units x U(5,20), cv 0.05; mid-unit checks every {STEP:.0f} s"
    )
    header = (
        f"{'distribution':<11} {'rule':<26} {'overruns':>8} {'late':>6} {'util mean':>10} {'util p5':>8} {'ms/sess':>7}"
    )
    print(header)
    print("-" * len(header))
    rules = [("fixed90", "fixed 90 % (baseline)"), ("ours", "TimeBudget")]
    for dist in ("constant", "normal", "lognormal", "drift", "spikes"):
        rows = rules + ([("ours+mid", "TimeBudget + mid-unit save")] if dist == "spikes" else [])
        for rule, label in rows:
            rng = np.random.default_rng([a.seed, sum(map(ord, dist))])  # same sessions for every rule
            t0 = time.perf_counter()
            res = [simulate(dist, rule, rng) for _ in range(n)]
            dt = (time.perf_counter() - t0) / n
            over = sum(r[0] for r in res)
            late = sum(r[1] for r in res)
            util = np.array([r[2] for r in res])
            print(
                f"{dist:<11} {label:<26} {over:>8d} {late:>6d} {util.mean():>10.2%} "
                f"{np.percentile(util, 5):>8.2%} {dt * 1e3:>7.1f}"
            )


if __name__ == "__main__":
    main()
