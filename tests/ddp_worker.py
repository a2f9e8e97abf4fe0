"""One rank of a real data-parallel training job around TrainingSession (gloo on CPU), for the distributed tests.

    python tests/ddp_worker.py --root R --world W --rank r --port P [--total 12] [--batch 8] [--budget-episodes K]
                               [--hold-at N] [--dropout 0.2]

Each rank is its own process (``RANK``/``WORLD_SIZE`` as torchrun sets them); with ``--world 1`` no process group
is made. A model with dropout is trained with DistributedDataParallel on a shuffling, sharded ResumableLoader; an
episode is two batches per rank, with input noise drawn from each rank's own generator (registered with
``PerRank``: every rank's state is saved). With ``--budget-episodes K`` rank 0's session clock advances 10 s per episode and
the budget is ``10 K + 12`` s, so rank 0's budget stops the run after about K episodes while the other ranks'
(real-clock) budgets would go on: they must stop because rank 0 says so. Printed, flushed lines:

    READY <rank> <first episode>
    SAMPLES <rank> <episode> <i,j,...>   the dataset indices this rank trained on in that episode
    EPISODE <rank> <episode> <digest>     after log() (digest: sha256 of the parameters, 16 hex digits)
    HOLD <rank> <episode>                 with --hold-at: waits for a line on stdin before that episode
    END <rank> <reason> <episode> <digest>
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.session_worker import digest, emit  # noqa: E402  (the same lines and digests as the session worker)

N_SAMPLES = 96
BATCHES_PER_EPISODE = 2


class Clock:
    """Rank 0's session clock: advanced by the worker, 10 s per episode (a deterministic budget stop)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--total", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--budget-episodes", type=int, default=None)
    ap.add_argument("--hold-at", type=int, default=None)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--noise", type=float, default=0.01, help="input noise from each rank's own generator")
    args = ap.parse_args(argv)

    import torch

    from atheria_kit import SessionConfig, TrainingSession
    from atheria_kit.distributed import PerRank
    from atheria_kit.resumable import ResumableLoader
    from atheria_kit.state import seed_everything

    os.environ.update(RANK=str(args.rank), LOCAL_RANK=str(args.rank), WORLD_SIZE=str(args.world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    if args.world > 1:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    seed_everything(0)
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(N_SAMPLES, 5, generator=gen)
    y = (x.sum(1, keepdim=True) > 0).float()
    dataset = [(x[i], y[i], i) for i in range(N_SAMPLES)]
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Dropout(args.dropout),
                                torch.nn.Linear(16, 1))
    if args.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = ResumableLoader(dataset, batch_size=args.batch, seed=7)
    noise = torch.Generator().manual_seed(1000 + args.rank)  # differs per rank: saved for every rank

    clock = Clock()
    budget = 10.0 * args.budget_episodes + 12.0 if args.budget_episodes else 3600.0
    cfg = SessionConfig(experiment_name="ddp", root=args.root, total_episodes=args.total, save_every_episodes=3,
                        max_training_seconds=budget, live_view="off", drive_sync_every=0, handle_signals=False)
    session_clock = clock if args.rank == 0 and args.budget_episodes else None
    kw = {"clock": session_clock} if session_clock is not None else {}
    inner = model.module if args.world > 1 else model
    with TrainingSession(cfg, **kw) as session:
        start = session.restore(model=model, optimizer=opt, loader=loader, noise=PerRank(noise))
        emit(f"READY {args.rank} {start}")
        batches = iter(loader)
        for ep in session.episodes():
            if args.hold_at is not None and ep == args.hold_at:
                emit(f"HOLD {args.rank} {ep}")
                sys.stdin.readline()
            seen, total_loss = [], 0.0
            for _ in range(BATCHES_PER_EPISODE):
                try:
                    xb, yb, ib = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    xb, yb, ib = next(batches)
                xb = xb + args.noise * torch.randn(xb.shape, generator=noise)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                seen += ib.tolist()
                total_loss += loss.item()
            emit(f"SAMPLES {args.rank} {ep} {','.join(map(str, seen))}")
            clock.t += 10.0
            session.log(loss=total_loss / BATCHES_PER_EPISODE)
            emit(f"EPISODE {args.rank} {ep} {digest(inner)}")
        result = session.finish()
    emit(f"END {args.rank} {result.end_reason} {result.episodes_done} {digest(inner)}")
    if args.world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
