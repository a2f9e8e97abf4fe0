"""Overhead of the progressive-training session against the same bare training loop, in one run.

The session adds: the run log (JSONL + progress file), the live view (text mode), the resource monitor thread,
the checkpoint policy (async saves every SAVE_EVERY episodes), sync scheduling to a folder, and the time budget.
Goal: <= 2 % of wall time for episodes of 1 s or more. Both loops train the same real model for the same steps;
the runs alternate (bare, session, bare, ...) and the medians are compared, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atheria_kit.platform import detect_environment  # noqa: E402
from atheria_kit.session import TrainingSession  # noqa: E402
from atheria_kit.session_config import SessionConfig  # noqa: E402


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def calibrate_steps(target_s: float) -> int:
    model, opt = make()
    x, y = torch.randn(256, 256), torch.randn(256, 1)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        episode(model, opt, x, y, 5)
        n += 5
    return max(1, int(n * target_s / (time.perf_counter() - t0)))


def episode(model, opt, x, y, steps: int) -> float:
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def bare(episodes: int, steps: int) -> float:
    model, opt = make()
    x, y = torch.randn(256, 256), torch.randn(256, 1)
    t0 = time.perf_counter()
    for _ in range(episodes):
        episode(model, opt, x, y, steps)
    return time.perf_counter() - t0


def with_session(episodes: int, steps: int, root: Path) -> float:
    model, opt = make()
    x, y = torch.randn(256, 256), torch.randn(256, 1)
    env = detect_environment({}, shell=None, kind="local", cwd=root)
    cfg = SessionConfig(experiment_name="bench", total_episodes=episodes, save_every_episodes=5,
                        drive_sync_every=10, remote=str(root / "remote"), root=str(root / "local"),
                        max_training_seconds=3600, live_view="text", handle_signals=False, auto_resume=False)
    t0 = time.perf_counter()
    session = TrainingSession(cfg, environment=env, stream=io.StringIO())
    session.restore(model=model, optimizer=opt)
    for _ in session.episodes():
        session.log(loss=episode(model, opt, x, y, steps))
    session.checkpoints.wait()
    elapsed = time.perf_counter() - t0
    if session.episode != episodes:
        raise SystemExit(f"the session ran {session.episode} of {episodes} episodes; the comparison is void")
    session.finish()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--episode-seconds", type=float, default=1.0)
    args = ap.parse_args()
    episodes, repeats = (8, 2) if args.quick else (20, 3)
    steps = calibrate_steps(args.episode_seconds)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bare_t, sess_t = [], []
    for r in range(repeats):
        bare_t.append(bare(episodes, steps))
        with tempfile.TemporaryDirectory() as d:
            sess_t.append(with_session(episodes, steps, Path(d)))
        print(f"  repeat {r + 1}: bare {bare_t[-1]:.2f} s, session {sess_t[-1]:.2f} s", flush=True)
    b, s = statistics.median(bare_t), statistics.median(sess_t)
    print(f"\nsession overhead: {episodes} episodes of ~{args.episode_seconds:g} s ({steps} steps), "
          f"checkpoint every 5, sync every 10 to a folder, live view text, monitor at 1 Hz; median of {repeats}")
    print(f"{'loop':<28}{'wall (s)':>10}{'per episode (s)':>18}")
    print(f"{'bare training loop':<28}{b:>10.2f}{b / episodes:>18.3f}")
    print(f"{'TrainingSession loop':<28}{s:>10.2f}{s / episodes:>18.3f}")
    print(f"overhead: {100 * (s - b) / b:+.2f} % of wall time (goal <= 2 %)")
    print("(the session's time includes its set-up and the final wait for the background writer; the export, "
          "plots and report at finish() are one-off and not counted)")


if __name__ == "__main__":
    main()
