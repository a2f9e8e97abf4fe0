"""Benchmark: the data-parallel session's cost per episode against a bare DDP loop, in one run (CPU, gloo).

Two processes train the same DistributedDataParallel MLP for the same episodes twice: a bare loop (forward, backward,
all-reduce, step), and the same loop inside a ``TrainingSession`` (rank 0's decisions broadcast before and after
each episode, the logged figures averaged over ranks, a checkpoint every 10 episodes with every rank's RNG streams
gathered, the run log). Printed: the median episode time of each, the difference per episode in milliseconds and as
a share of the bare episode; and that difference against a 10 s episode (a realistic episode on a notebook GPU),
where the goal is at most 1 %. The phases alternate (bare, session, bare, session) so drift hits both.

    .venv/bin/python bench/bench_distributed.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS_PER_EPISODE = 20


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_data():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    x = torch.randn(4096, 64)
    return model, x, x.sum(1, keepdim=True)


def _episode(model, opt, x, y, gen) -> float:
    import torch

    total = 0.0
    for _ in range(STEPS_PER_EPISODE):
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    return total / STEPS_PER_EPISODE


def _bare(episodes: int) -> list[float]:
    import torch

    model, x, y = _model_and_data()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(torch.distributed.get_rank())
    times = []
    for _ in range(episodes):
        t0 = time.perf_counter()
        _episode(ddp, opt, x, y, gen)
        times.append(time.perf_counter() - t0)
    return times


def _with_session(episodes: int, root: str) -> list[float]:
    import torch

    from atheria_kit import PerRank, SessionConfig, TrainingSession

    model, x, y = _model_and_data()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(torch.distributed.get_rank())
    cfg = SessionConfig(experiment_name="bench", root=root, total_episodes=episodes, save_every_episodes=10,
                        live_view="off", drive_sync_every=0, handle_signals=False, max_training_hours=1)
    times = []
    with contextlib.redirect_stdout(io.StringIO()), TrainingSession(cfg) as session:
        session.restore(model=ddp, optimizer=opt, generator=PerRank(gen))
        t0 = time.perf_counter()
        for _ in session.episodes():
            session.log(loss=_episode(ddp, opt, x, y, gen))
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
        session.finish()
    return times


def _rank(rank: int, world: int, port: int, episodes: int, rounds: int, out: str) -> None:
    import json

    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=120))
    result: dict[str, list[float]] = {"bare": [], "session": []}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        root = [tmp if rank == 0 else None]  # one run folder for the job: rank 0's
        torch.distributed.broadcast_object_list(root, src=0)
        for r in range(rounds):
            result["bare"] += _bare(episodes)[2:]  # the first episodes warm up allocators and gloo buffers
            result["session"] += _with_session(episodes, f"{root[0]}/round{r}")[2:]
            torch.distributed.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer episodes and rounds")
    args = ap.parse_args(argv)
    import json

    import torch
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        print("torch.distributed is not built in this torch; skipped")
        return 0
    episodes, rounds = (22, 2) if args.quick else (62, 3)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        t0 = time.perf_counter()
        mp.start_processes(_rank, args=(2, _free_port(), episodes, rounds, out), nprocs=2, start_method="spawn")
        wall = time.perf_counter() - t0
        result = json.loads(Path(out).read_text())
    bare, kit = statistics.median(result["bare"]), statistics.median(result["session"])
    diff = kit - bare
    print(f"data-parallel session vs bare DDP loop: 2 processes, gloo on CPU ({os.cpu_count()} cores), "
          f"{STEPS_PER_EPISODE} steps an episode, {len(result['bare'])} episodes each over {rounds} alternating rounds "
          f"({wall:.0f} s)")
    print(f"  bare DDP loop        median {bare * 1e3:8.2f} ms/episode")
    print(f"  TrainingSession      median {kit * 1e3:8.2f} ms/episode   (+{diff * 1e3:.2f} ms, "
          f"{100 * diff / bare:+.1f} % of this tiny episode)")
    realistic = 10.0
    share = 100 * diff / realistic
    print(f"  against a {realistic:.0f} s episode (a realistic one on a notebook GPU): {share:+.3f} % -> goal <= 1 %: "
          f"{'met' if share <= 1 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
