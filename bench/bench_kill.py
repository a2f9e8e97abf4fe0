"""Long kill test and fault table: SIGKILL a training process N times (default 200), then break it at the edges.

Phase 1 (the original kill test): half of the kills land while a checkpoint or the manifest is half-written (the
worker's writes are held open piece by piece), half between writes. After every kill the next life must resume
from the newest complete checkpoint on disk, with parameters equal to an uninterrupted run's at that step; the
final parameters must equal the uninterrupted run's. Kills are split between a directory in the system temp dir
and one on another filesystem (/dev/shm) when there is one.

Phases 2-8 (issue 13, ``bench/_faults``) run a real ``TrainingSession`` process and break it at chosen instants,
driven by its printed events (never by sleeps):

    2  SIGKILL at every write instant of finish() (stop on a saved episode and on an unsaved one)
    3  the remote (a folder with a checkpoint history) unreachable at a new VM's start-up, then back
    4  one bit flipped at a random position of the newest checkpoint, manifest.json deleted
    5  the remote dead (hanging, or failing with Errno 107) at the end: finish() within its bound, says what is missing
    6  a tmpfs run folder that fills up mid-run, then space is freed
    7  two processes on one run folder; the holder SIGKILLed, a third takes over
    8  SIGKILLs after random episodes: the run log holds each episode once

and prints one fault table: ``fault | trials | survived | nothing lost | steps lost (max)``. survived: the next
start resumed (or refused) as specified, with a clear message; nothing lost: the final parameters equal the
uninterrupted run's, the remote and local histories are intact and no committed episode was redone; steps lost:
committed episodes that had to be redone (the most in one trial).

    .venv/bin/python bench/bench_kill.py            # 200 kills, the full fault phases
    .venv/bin/python bench/bench_kill.py --quick    # 20 kills, a few trials per phase (about 3 minutes)
    .venv/bin/python bench/bench_kill.py --kills 50 --cold   # every phase-1 life a cold `python` start
    .venv/bin/python bench/bench_kill.py --phases 2,5 --trials 3
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._faults.harness import ForkServer, PhaseResult, reference_run  # noqa: E402
from bench._faults.phases import PHASES, Ctx  # noqa: E402
from tests._paths import other_filesystem  # noqa: E402
from tests.kill_worker import ColdLauncher, ForkLauncher, KillReport, run_with_kills  # noqa: E402
from tests.kill_worker import reference_run as kill_reference_run  # noqa: E402

STEPS, SAVE_EVERY = 40, 4
_BEHIND_RE = re.compile(r"resumed from (\d+) although step (\d+) was committed")


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


def kill_row(reports: list[KillReport], seconds: float) -> PhaseResult:
    """Phase 1 as a row of the fault table.

    survived: kills whose next life started where it had to (fresh on an empty folder, else from the newest
    complete checkpoint, never a partial one); nothing lost: kills in rounds whose every step and final parameters
    equal the uninterrupted run's, minus resumes behind a committed checkpoint; steps lost: the most committed
    steps one resume went back behind (the harness's "max lost steps" figure counts uncommitted steps too).
    """
    row = PhaseResult("1 SIGKILL mid-training and mid-write", seconds=seconds)
    for r in reports:
        wrong_start = (r.resumes - r.resumed_from_newest) + r.partial_loads
        row.trials += r.kills
        row.survived += max(0, r.kills - wrong_start)
        clean = r.final_equal and r.step_mismatches == 0 and r.partial_loads == 0
        row.nothing_lost += max(0, r.kills - r.resumed_behind_commit) if clean else 0
        for failure in r.failures:
            if m := _BEHIND_RE.search(failure):
                row.steps_lost_max = max(row.steps_lost_max, int(m.group(2)) - int(m.group(1)))
        row.failures += r.failures
    row.notes.append(f"{STEPS} steps per run, a checkpoint every {SAVE_EVERY}; uncommitted steps redone after a kill "
                     f"are in 'max lost steps' above")
    return row


def run_kill_phase(args: argparse.Namespace, kills: int, tmp: Path, shm: Path | None) -> tuple[PhaseResult, bool]:
    """The original kill test: prints its figures, returns its row and whether it passed."""
    places = [("tmp", tmp)] + ([("/dev/shm", shm)] if shm else [])
    t0 = time.perf_counter()
    ref = kill_reference_run(tmp / "reference", steps=STEPS, save_every=SAVE_EVERY)
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
    print(f"bench_kill phase 1: {kills} SIGKILLs, {STEPS} steps per run, checkpoint every {SAVE_EVERY} steps, "
          f"lives {'cold-started' if args.cold else 'forked from a warm server'}")
    width = max(len(k) for k, _v in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    problems = [f for r in [baseline, *reports] for f in r.failures]
    for problem in problems[:20]:
        print(f"  FAILURE: {problem}")
    ok = not problems and counts["partial loads (must be 0)"] == 0 and counts["final params equal"] == "yes"
    print("  result:", "OK" if ok else "FAILED", flush=True)
    return kill_row(reports, wall), ok


def print_table(rows: list[PhaseResult]) -> None:
    print()
    print("fault table (issue 13): survived = the next start resumed (or refused) as specified, with a clear message;")
    print("  nothing lost = final parameters equal an uninterrupted run's, remote and local histories intact, no")
    print("  committed episode redone;")
    print("  steps lost = committed episodes (steps in phase 1) that had to be redone, the most in one trial")
    width = max(len("fault"), *(len(r.fault) for r in rows))
    head = f"  {'fault':<{width}} | trials | survived | nothing lost | steps lost (max) | time"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in rows:
        if r.not_run is not None:
            print(f"  {r.fault:<{width}} | not run: {r.not_run}")
            continue
        print(f"  {r.fault:<{width}} | {r.trials:>6} | {r.survived:>8} | {r.nothing_lost:>12} | "
              f"{r.steps_lost_max:>16} | {r.seconds:5.0f} s")
    for r in rows:
        for note in r.notes:
            print(f"  [{r.fault.split()[0]}] {note}")
    for r in rows:
        for failure in r.failures[:10]:
            print(f"  FAILURE [{r.fault.split()[0]}] {failure[:3000]}")
        if len(r.failures) > 10:
            print(f"  FAILURE [{r.fault.split()[0]}] ... and {len(r.failures) - 10} more")


def parse_phases(text: str) -> list[int]:
    try:
        chosen = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        chosen = []
    if not chosen or any(p not in (1, *PHASES) for p in chosen):
        raise argparse.ArgumentTypeError(f"--phases={text!r} is invalid; expected numbers from 1 to 8, e.g. 1,2,5")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="phase 1 kills (default 200)")
    parser.add_argument("--quick", action="store_true", help="20 kills and a few trials per fault phase")
    parser.add_argument("--cold", action="store_true", help="start every phase-1 life with a cold `python` (slow)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--phases", type=parse_phases, default=[1, *PHASES], help="which phases, e.g. 1,2,5")
    parser.add_argument("--trials", type=int, default=None, help="trials per fault phase (default: by --quick)")
    args = parser.parse_args()
    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials={args.trials} is invalid; expected an integer >= 1")
    kills = 20 if args.quick else args.kills

    tmp = Path(tempfile.mkdtemp(prefix="atheria-bench-kill-"))
    shm = other_filesystem(tmp, prefix="atheria-bench-kill-")
    rows: list[PhaseResult] = []
    ok = True
    server = ForkServer() if any(p in PHASES for p in args.phases) else None  # warms up during phase 1
    try:
        if 1 in args.phases:
            row, ok = run_kill_phase(args, kills, tmp, shm)
            rows.append(row)
        if server is not None:
            t0 = time.perf_counter()
            ref = reference_run(server, tmp / "faults")
            ctx = Ctx(server, tmp / "faults", ref, random.Random(args.seed), args.quick, args.trials)
            print(f"\nfault phases: a TrainingSession of 12 episodes, a checkpoint every 4; uninterrupted run "
                  f"{time.perf_counter() - t0:.1f} s (incl. the fork server's warm-up), finish() {ref.finish_seconds:.2f} s",
                  flush=True)
            for number in args.phases:
                if number == 1:
                    continue
                t0 = time.perf_counter()
                row = PHASES[number](ctx)
                row.seconds = time.perf_counter() - t0
                if row.not_run is not None:
                    status = f"not run: {row.not_run}"
                else:
                    status = f"{row.survived}/{row.trials} survived, {row.nothing_lost}/{row.trials} nothing lost"
                print(f"  {row.fault}: {status} ({row.seconds:.0f} s)", flush=True)
                rows.append(row)
        print_table(rows)
        ok = ok and all(r.ok or r.not_run is not None for r in rows if not r.fault.startswith("1 "))
        print("  result:", "OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if shm:
            shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
