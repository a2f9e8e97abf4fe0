"""`make run`: run notebook 01 headless twice, the way a user meets the product.

Session 1 gets a time budget too small for the whole run, so it stops part way by itself, with everything saved.
Session 2 is a second "Run all" of the same notebook: it resumes from the checkpoint and finishes, then writes the
report, plots and exports. Prints where they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent / "01_progressive_training.ipynb"

#: The lines a session prints at its boundaries (start, resume, stop, end), repeated after each session.
BOUNDARY = re.compile(r"^(?:\[rank \d+\] )?(?:[⚠✗] )?(?:looking for checkpoints|no checkpoint found|resumed from|this run is already "
                      r"complete|skipped ckpt|starting over|stopped before|stopped at|training stopped|finished:)")

#: A small but real run: about 0.1-0.3 s per episode on 2 CPU cores.
DEMO_PARAMS = {"EXPERIMENT_NAME": "demo", "TOTAL_EPISODES": 100, "WINDOW": 32, "BATCH_SIZE": 128,
               "STEPS_PER_EPISODE": 10, "SAVE_EVERY_EPISODES": 5, "DRIVE_SYNC_EVERY": 0, "LIVE_VIEW": "text"}


def run_demo(out_dir: Path, *, first_budget_s: float = 4.0, params: dict | None = None,
             timeout_s: int = 600) -> dict:
    """Run the notebook twice into ``out_dir``; return the run's summary (the second session's)."""
    import papermill

    os.environ.setdefault("ATHERIA_HEADLESS", "1")  # text progress and one final figure in the saved notebook
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {**DEMO_PARAMS, **(params or {}), "OUTPUT_ROOT": str(out_dir / "runs")}
    for i, budget in enumerate((first_budget_s, 3600.0), start=1):
        t0 = time.monotonic()
        papermill.execute_notebook(
            str(NOTEBOOK), str(out_dir / f"01_progressive_training.session{i}.ipynb"),
            parameters={**base, "MAX_TRAINING_SECONDS": budget}, kernel_name="python3", cwd=str(out_dir),
            execution_timeout=timeout_s, progress_bar=False,
        )
        print(f"session {i}: ran in {time.monotonic() - t0:.1f} s (budget {budget:g} s)")
        for line in boundary_lines(out_dir / f"01_progressive_training.session{i}.ipynb"):
            print(f"  {line}")
    summary_path = out_dir / "runs" / "logs" / base["EXPERIMENT_NAME"] / "summary.json"
    return json.loads(summary_path.read_text())


def boundary_lines(notebook: Path) -> list[str]:
    """The start, resume and stop lines that an executed notebook printed, in order."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    text = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")
    return [line for line in text.splitlines() if BOUNDARY.match(line)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="where the executed notebooks and the run go")
    parser.add_argument("--first-budget", type=float, default=4.0, help="session 1's time budget in seconds")
    args = parser.parse_args(argv)
    summary = run_demo(Path(args.out), first_budget_s=args.first_budget)
    print()
    for s in summary["sessions"]:
        print(f"session {s['index']}: episodes {s['first_episode']}-{s['last_episode']}, "
              f"{s['duration_seconds']:.1f} s, ended: {s['end_reason']}")
    print(f"report:  {summary['report']}")
    for caption, path in summary["plots"].items():
        print(f"plot:    {path}  ({caption})")
    for e in summary["exports"]:
        print(f"export:  {e['path'] or '-'}  [{e['format']}: {e['status']}]")
    return 0 if summary["end_reason"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
