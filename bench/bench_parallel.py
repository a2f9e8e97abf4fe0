"""Benchmark: ParallelStrategyTrainer's speed-up over serial for 6 CPU-bound tasks, and its overhead per task.

Run: .venv/bin/python bench/bench_parallel.py [--quick]
Baselines are measured in the same run: the same tasks called one after another in this process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atheria_kit.trainers.parallel import ParallelStrategyTrainer, Task  # noqa: E402


def cpu_task(n: int) -> dict:
    """A pure-Python CPU-bound loop (holds the GIL, so threads would not help)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return {"metrics": {"acc": acc}}


def trivial_task(i: int) -> int:
    return i


def _serial(tasks: list[Task]) -> float:
    t0 = time.perf_counter()
    for t in tasks:
        t.fn(*t.args)
    return time.perf_counter() - t0


def _parallel(tasks: list[Task], workers: int) -> float:
    t0 = time.perf_counter()
    results = ParallelStrategyTrainer(max_workers=workers).run(tasks)
    elapsed = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smaller tasks (10 million loop steps per task instead of 30 million)")
    args = parser.parse_args()
    import joblib

    cores = joblib.cpu_count()
    n = 10_000_000 if args.quick else 30_000_000  # long enough that start-up does not dominate
    heavy = [Task(f"cpu-{i}", cpu_task, (n,)) for i in range(6)]
    light = [Task(f"nop-{i}", trivial_task, (i,)) for i in range(60)]

    serial = _serial(heavy)
    par = _parallel(heavy, cores)
    serial_light = _serial(light)
    light_1 = _parallel(light, 1)
    light_n = _parallel(light, cores)
    start_1 = _parallel(light[:1], 1)

    print(f"ParallelStrategyTrainer (loky, one worker per slot), {cores} usable cores, "
          f"{serial / 6:.2f} s per CPU-bound task")
    print(f"{'measure':<46}{'parallel':>12}{'serial baseline':>18}{'ratio':>10}")
    print(f"{'6 CPU-bound tasks, wall time (s)':<46}{par:>12.2f}{serial:>18.2f}{serial / par:>9.2f}x")
    print(f"{'60 trivial tasks, 1 worker, per task (ms)':<46}{1e3 * light_1 / 60:>12.2f}"
          f"{1e3 * serial_light / 60:>18.4f}{'':>10}")
    print(f"{f'60 trivial tasks, {cores} workers, per task (ms)':<46}{1e3 * light_n / 60:>12.2f}"
          f"{1e3 * serial_light / 60:>18.4f}{'':>10}")
    print(f"{'1 trivial task incl. worker start-up (s)':<46}{start_1:>12.2f}{serial_light / 60:>18.6f}{'':>10}")
    print(f"ideal speed-up on {cores} cores: {min(cores, 6):.2f}x; load average during the run: "
          f"{os.getloadavg()[0]:.2f} (other processes compete for the same cores)")


if __name__ == "__main__":
    main()
