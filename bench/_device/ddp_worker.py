"""One rank of row 6 of the device check, started by ``torchrun``: a collective, its bandwidth, and a DDP loop.

    python -m torch.distributed.run --standalone --nproc_per_node=N bench/_device/ddp_worker.py {nccl|gloo}

Every rank: ``all_reduce`` of ``rank + 1`` (the sum ``N (N + 1) / 2`` is known), a timed ``all_reduce`` of a large
buffer, then 8 steps of ``DistributedDataParallel`` on a linear model with different data on each rank. Rank 0
checks that all ranks hold the same parameters (``all_gather``) and that they match one process trained on the
union of the ranks' batches (DDP averages the gradients: equal up to the reduction order), and prints one line
``@@ddp {json}``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist

STEPS, DIM, BATCH = 8, 256, 64


def batch(rank: int, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(BATCH, DIM, generator=g)
    return x.to(device), x.sum(1, keepdim=True).mul(0.1).to(device)


def fresh_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(DIM, 1).to(device)


def main() -> int:
    backend = sys.argv[1] if len(sys.argv) > 1 else "gloo"
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    timeout = datetime.timedelta(seconds=60)
    t0 = time.perf_counter()
    if backend == "nccl":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        try:
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        except TypeError:  # torch before 2.3 has no device_id
            dist.init_process_group("nccl", timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    init_seconds = time.perf_counter() - t0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(t)
    expected = world * (world + 1) / 2
    allreduce_ok = bool((t == expected).all().item())

    nbytes = (512 if device.type == "cuda" else 8) * 2**20
    buf = torch.ones(nbytes // 4, device=device)
    dist.all_reduce(buf)  # warm-up (NCCL builds its communicator on the first call)
    sync()
    reps = 5
    t1 = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(buf)
    sync()
    per_call = (time.perf_counter() - t1) / reps
    # bus bandwidth as nccl-tests defines it for all_reduce; with one rank nothing crosses a link: data / time
    factor = 2 * (world - 1) / world if world > 1 else 1.0
    bus_gbs = factor * nbytes / per_call / 1e9

    model = fresh_model(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for s in range(STEPS):
        x, y = batch(rank, s, device)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    ranks_equal = all(torch.equal(gathered[0], g) for g in gathered)

    if rank == 0:
        ref = fresh_model(device)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
        for s in range(STEPS):
            xs, ys = zip(*(batch(r, s, device) for r in range(world)), strict=True)
            ref_opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(ref(torch.cat(xs)), torch.cat(ys)).backward()
            ref_opt.step()
        ref_flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
        max_diff = float((ref_flat - flat).abs().max().item())
        print("@@ddp " + json.dumps({
            "backend": backend, "world": world, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "init_seconds": init_seconds, "allreduce_ok": allreduce_ok, "allreduce_value": float(t[0].item()),
            "allreduce_expected": expected, "allreduce_mb": nbytes / 2**20, "allreduce_ms": per_call * 1000,
            "bus_gbs": bus_gbs, "ranks_equal": ranks_equal, "max_diff_vs_single": max_diff, "steps": STEPS,
        }), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
