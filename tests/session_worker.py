"""A real training process around TrainingSession, for tests that kill it or run two at once.

    python tests/session_worker.py --root R [--total 12] [--save-every 4] [--hold-at N] [--gate-finish]

It trains a small seeded model and prints one flushed line per event:

    READY <first episode>          restore() returned (after the session's own printed lines)
    EPISODE <n> <digest>           episode n was logged (digest: sha256 of the parameters, 16 hex digits)
    HOLD <n>                       with --hold-at n: waits for a line on stdin before training episode n
    COMMIT <step>                  checkpoint <step> and the manifest are on disk (from the writer thread)
    FINISH-BEGIN                   finish() is called
    WRITE-BEGIN <file>             with --gate-finish: during finish(), before a checkpoint file or the manifest is
                                   written; waits for a line on stdin (the driver may SIGKILL it instead)
    WRITE-END <file>               with --gate-finish: that file was renamed into place; waits for a line on stdin
    END <reason> <episode> <digest>  finish() returned

Everything the session itself prints (its status lines) goes to stdout too, unprefixed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_lock = threading.Lock()


def emit(line: str) -> None:
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def digest(model) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def seeded_training():
    """The worker's model, optimizer and generators, seeded: every life starts from the same objects."""
    import torch

    from atheria_kit.state import SeededGenerators, seed_everything

    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), SeededGenerators(0)


def train_episode(model, opt, gens) -> float:
    """One episode: a batch drawn from the checkpointed generator, one optimizer step; returns the loss."""
    import torch

    x = torch.randn(64, 5, generator=gens.torch)
    y = (x.sum(1, keepdim=True) > 0).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--total", type=int, default=12)
    ap.add_argument("--save-every", type=int, default=4)
    ap.add_argument("--hold-at", type=int, default=None)
    ap.add_argument("--stop-after", type=int, default=None, help="request a stop after this many episodes")
    ap.add_argument("--gate-finish", action="store_true")
    ap.add_argument("--take-over", action="store_true")
    args = ap.parse_args(argv)

    from atheria_kit.checkpoint import DiskStorage
    from atheria_kit.platform import detect_environment
    from atheria_kit.session import TrainingSession
    from atheria_kit.session_config import SessionConfig

    class GatedStorage(DiskStorage):
        """During finish(), each file write waits for the driver before it starts and after its rename."""

        armed = False

        def write(self, name, chunks):
            if self.armed:
                emit(f"WRITE-BEGIN {name}")
                sys.stdin.readline()
            result = super().write(name, chunks)
            if self.armed:
                emit(f"WRITE-END {name}")
                sys.stdin.readline()
            return result

    root = Path(args.root)
    env = detect_environment({}, shell=None, kind="local", cwd=root, nvml=None, torch_module=None)
    cfg = SessionConfig(experiment_name="w", total_episodes=args.total, save_every_episodes=args.save_every,
                        drive_sync_every=0, live_view="off", root=str(root), export_formats=(),
                        handle_signals=False, monitor_interval=5.0, max_training_seconds=3600,
                        take_over_lease=args.take_over)
    storage = GatedStorage(root / "checkpoints" / "w")
    session = TrainingSession(cfg, environment=env, storage=storage)
    session.checkpoints.subscribe(lambda record, _manifest: emit(f"COMMIT {record.step}"))
    model, opt, gens = seeded_training()
    first = session.restore(model=model, optimizer=opt, generators=gens)
    emit(f"READY {first}")
    for ep in session.episodes():
        if args.hold_at is not None and ep == args.hold_at:
            emit(f"HOLD {ep}")
            sys.stdin.readline()
        session.log(loss=train_episode(model, opt, gens))
        emit(f"EPISODE {ep} {digest(model)}")
        if args.stop_after is not None and ep + 1 >= args.stop_after:
            session.budget.request_stop("worker --stop-after")
    emit("FINISH-BEGIN")
    session.checkpoints.wait()  # saves queued by log() land first: the gates below see finish()'s writes only
    storage.armed = args.gate_finish
    result = session.finish()
    storage.armed = False
    emit(f"END {result.end_reason} {result.episodes_done} {digest(model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
