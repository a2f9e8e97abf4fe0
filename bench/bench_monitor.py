"""CPU cost of ResourceMonitor (psutil + pynvml in-process) against shelling out for the same figures.

Prints one table: the CPU time of one ``snapshot()`` and the CPU share of the 1 Hz background sampler, each next
to a baseline measured in the same run that gets the same information from subprocesses (``ps`` for the process'
CPU and memory, ``free`` for the machine's RAM, plus ``nvidia-smi`` when it exists), as monitors that call
``nvidia-smi`` do. CPU time includes child processes (``getrusage``), so the cost of spawning counts.

    .venv/bin/python bench/bench_monitor.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import threading
import time

from atheria_kit.monitor import ResourceMonitor

GOAL_SNAPSHOT_MS = 1.0
GOAL_SAMPLER_PERCENT = 0.5


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (user + system, microsecond resolution)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def subprocess_probe() -> None:
    """The baseline: the same figures from external commands."""
    pid = str(os.getpid())
    subprocess.run(["ps", "-o", "%cpu=,rss=", "-p", pid], capture_output=True, check=True)
    subprocess.run(["free", "-b"], capture_output=True, check=True)
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total,temperature.gpu,"
                        "power.draw", "--format=csv,noheader,nounits"], capture_output=True, check=False)


def per_call_ms(fn, calls: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call."""
    fn()  # warm-up: imports, NVML initialisation
    c0, w0 = cpu_seconds(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (cpu_seconds() - c0) / calls * 1e3, (time.perf_counter() - w0) / calls * 1e3


def sampler_share(start, stop, window: float) -> float:
    """CPU time used while a 1 Hz sampler runs for ``window`` seconds, as % of one core."""
    idle = threading.Event()
    c0, w0 = cpu_seconds(), time.perf_counter()
    start()
    idle.wait(window)  # the main thread does nothing meanwhile
    stop()
    return 100.0 * (cpu_seconds() - c0) / (time.perf_counter() - w0)


class SubprocessSampler:
    """A 1 Hz background sampler built on the subprocess probe (the baseline)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            subprocess_probe()
            if self._stop.wait(1.0):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and a 5 s sampling window")
    args = parser.parse_args()
    calls, base_calls, window = (200, 20, 5.0) if args.quick else (2000, 100, 30.0)

    monitor = ResourceMonitor(interval=1.0)
    snap = monitor.snapshot()
    gpu_note = f"{len(snap.gpus)} GPU(s) via NVML" if snap.gpus else "no GPU/NVML here: psutil figures only"
    smi_note = "ps + free + nvidia-smi" if shutil.which("nvidia-smi") else "ps + free (no nvidia-smi here)"

    snap_cpu, snap_wall = per_call_ms(monitor.snapshot, calls)
    base_cpu, base_wall = per_call_ms(subprocess_probe, base_calls)

    share = sampler_share(monitor.start, monitor.stop, window)
    baseline = SubprocessSampler()
    base_share = sampler_share(baseline.start, baseline.stop, window)
    monitor.close()

    print(f"bench_monitor: {gpu_note}; baseline = {smi_note}; {os.cpu_count()} CPUs; "
          f"{calls} snapshots, {base_calls} probes, {window:.0f} s sampler windows")
    rows = [
        ("snapshot() CPU per call (ms)", snap_cpu, base_cpu, f"<= {GOAL_SNAPSHOT_MS} ms", snap_cpu <= GOAL_SNAPSHOT_MS),
        ("snapshot() wall per call (ms)", snap_wall, base_wall, "-", None),
        ("1 Hz sampler CPU (% of one core)", share, base_share, f"< {GOAL_SAMPLER_PERCENT} %",
         share < GOAL_SAMPLER_PERCENT),
    ]
    header = f"{'figure':<34} {'ResourceMonitor':>16} {'subprocess':>12} {'ratio':>8}  {'goal':<10} met"
    print(header)
    print("-" * len(header))
    for name, ours, theirs, goal, met in rows:
        ratio = theirs / ours if ours > 0 else float("inf")
        print(f"{name:<34} {ours:>16.3f} {theirs:>12.3f} {ratio:>7.0f}x  {goal:<10} "
              f"{'-' if met is None else ('yes' if met else 'NO')}")


if __name__ == "__main__":
    main()
