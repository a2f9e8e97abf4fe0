"""Long kill test: SIGKILL a training process N times (default 200), mid-write and between saves.

Half of the kills land while a checkpoint or the manifest is half-written (the worker's writes are
held open piece by piece), half between writes. After every kill the next life must resume from the
newest complete checkpoint on disk, with parameters equal to an uninterrupted run's at that step;
the final parameters must equal the uninterrupted run's. Kills are split between a directory in the
system temp dir and one on another filesystem (/dev/shm) when there is one.

    .venv/bin/python bench/bench_kill.py            # 200 kills
    .venv/bin/python bench/bench_kill.py --quick    # 20 kills
    .venv/bin/python bench/bench_kill.py --kills 50 --cold   # every life a cold `python` start
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests._paths import other_filesystem  # noqa: E402
from tests.kill_worker import (  # noqa: E402
    ColdLauncher,
    ForkLauncher,
    KillReport,
    reference_run,
    run_with_kills,
)

STEPS, SAVE_EVERY = 40, 4


def merge(reports: list[KillReport]) -> dict[str, object]:
    return {
        "kills": sum(r.kills for r in reports),
        "kills during a write": sum(r.kills_during_write for r in reports),
        "  of which in the manifest write": sum(r.kills_during_manifest_write for r in reports),
        "kills between writes": sum(r.kills - r.kills_during_write for r in reports),
        "lives (processes)": sum(r.lives for r in reports),
        "resumes": sum(r.resumes for r in reports),
        "resumed from newest complete": sum(r.resumed_from_newest for r in reports),
        "  of which not yet in the manifest": sum(r.resumed_unlisted for r in reports),
        "partial loads (must be 0)": sum(r.partial_loads for r in reports),
        "steps differing from reference": sum(r.step_mismatches for r in reports),
        "temporary files left behind": sum(r.temp_files_left for r in reports),
        "max lost steps": max((r.max_lost_steps for r in reports), default=0),
        "runs finished / started": f"{sum(r.finished_rounds for r in reports)} / {sum(r.rounds for r in reports)}",
        "final params equal": "yes" if all(r.final_equal for r in reports) else "no",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 kills")
    parser.add_argument("--cold", action="store_true", help="start every life with a cold `python` (slow)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    kills = 20 if args.quick else args.kills

    tmp = Path(tempfile.mkdtemp(prefix="atheria-bench-kill-"))
    shm = other_filesystem(tmp, prefix="atheria-bench-kill-")
    places = [("tmp", tmp)] + ([("/dev/shm", shm)] if shm else [])
    try:
        t0 = time.perf_counter()
        ref = reference_run(tmp / "reference", steps=STEPS, save_every=SAVE_EVERY)
        reference_seconds = time.perf_counter() - t0

        launcher = ColdLauncher() if args.cold else ForkLauncher()
        reports: list[KillReport] = []
        per_place: list[tuple[str, float, KillReport]] = []
        t_all = time.perf_counter()
        try:
            # Baseline: a gated run with no kills, through the same launcher (the second one: the
            # first also pays the fork server's warm-up).
            for attempt in range(2):
                t0 = time.perf_counter()
                baseline = run_with_kills(tmp / f"baseline-{attempt}", kills=0, seed=0, ref=ref, steps=STEPS,
                                          save_every=SAVE_EVERY, launcher=launcher)
                baseline_seconds = time.perf_counter() - t0
            for i, (label, base) in enumerate(places):
                share = kills // len(places) + (1 if i < kills % len(places) else 0)
                t0 = time.perf_counter()
                report = run_with_kills(base / "kills", kills=share, seed=args.seed + i, ref=ref, steps=STEPS,
                                        save_every=SAVE_EVERY, launcher=launcher)
                per_place.append((label, time.perf_counter() - t0, report))
                reports.append(report)
        finally:
            launcher.close()
        wall = time.perf_counter() - t_all

        counts = merge(reports)
        lives = sum(r.lives for r in reports)
        rows = [(key, str(value)) for key, value in counts.items()]
        rows += [(label, f"{report.kills} kills, {report.lives} lives, {seconds:.1f} s") for label, seconds, report in per_place]
        rows += [
            ("wall time (incl. server warm-up)", f"{wall:.1f} s ({wall / max(lives, 1):.3f} s per life)"),
            ("baseline: gated run, no kills", f"{baseline_seconds:.2f} s per whole run"),
            ("baseline: cold uninterrupted run", f"{reference_seconds:.2f} s"),
        ]
        print(f"bench_kill: {kills} SIGKILLs, {STEPS} steps per run, checkpoint every {SAVE_EVERY} steps, "
              f"lives {'cold-started' if args.cold else 'forked from a warm server'}")
        width = max(len(k) for k, _v in rows)
        for key, value in rows:
            print(f"  {key:<{width}}  {value}")
        problems = [f for r in [baseline, *reports] for f in r.failures]
        for problem in problems[:20]:
            print(f"  FAILURE: {problem}")
        ok = not problems and counts["partial loads (must be 0)"] == 0 and counts["final params equal"] == "yes"
        print("  result:", "OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if shm:
            shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
