"""Sync benchmarks: training throughput with a slow remote, time to first step on resume, the end of a session.

1. Steps/s of a real small torch loop with no sync vs. with a SyncWorker mirroring every checkpoint to a
   remote that takes LATENCY seconds per upload (injected): the ratio should stay >= 0.98.
2. Time from start to the first training step when the checkpoint is only on the remote (download +
   verify + safe load), by checkpoint size, next to a plain local load of the same checkpoint.
3. The final sync: SessionSync.estimated_final_sync_seconds() (measured upload speed x what is left to send)
   against the measured time of that final sync, and the bound finish() derives from it.
4. A dead remote at the end: finish() with every upload failing returns within its bound (wall time vs bound).

    .venv/bin/python bench/bench_sync.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from atheria_kit.checkpoint import CheckpointManager
from atheria_kit.session_sync import SessionSync
from atheria_kit.sync import DirectoryTarget, FsspecTarget, SyncWorker, resume_from_best_source

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the latency-injecting fs lives in tests/fakes
from tests.fakes.faulty_fs import FaultyFileSystem  # noqa: E402


def train(seconds: float, ckpt_dir: Path | None, target=None, save_every: float = 3.0) -> tuple[float, dict]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 64), torch.randn(128, 1)
    mgr = CheckpointManager(ckpt_dir, keep_best=3) if ckpt_dir is not None else None
    worker = SyncWorker(ckpt_dir, target).attach(mgr) if target is not None else None
    steps, t0, last_save = 0, time.perf_counter(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if mgr is not None and time.perf_counter() - last_save >= save_every:
            mgr.save({"model": model.state_dict(), "opt": opt.state_dict()}, step=steps, metrics={"loss": loss.item()})
            last_save = time.perf_counter()
    rate = steps / (time.perf_counter() - t0)
    status = {}
    if mgr is not None:
        mgr.close()
    if worker is not None:
        status = worker.status()
        worker.close(timeout=30, final_sync=False)
    return rate, status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 4.0 if args.quick else 8.0
    latency = 2.0
    sizes_mb = [10, 50] if args.quick else [10, 100, 500]
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        rounds = 3 if args.quick else 5
        print(f"1) training throughput: {rounds} interleaved rounds of {seconds:.0f} s per condition (medians), "
              f"checkpoint every 3 s, remote latency {latency} s/upload")
        base_rates, sync_rates, sent, failures = [], [], 0, 0
        for r in range(rounds):
            base_rates.append(train(seconds, work / f"c0-{r}")[0])
            slow = FsspecTarget(f"/bench-{uuid.uuid4().hex}",
                                fs=FaultyFileSystem(fsspec.filesystem("memory"), latency=latency))
            rate, st = train(seconds, work / f"c1-{r}", slow)
            sync_rates.append(rate)
            sent, failures = sent + st["files_sent"], failures + st["failures"]
        base, synced = statistics.median(base_rates), statistics.median(sync_rates)
        print(f"   checkpoints, no sync       : {base:9.1f} steps/s")
        print(f"   checkpoints + slow sync    : {synced:9.1f} steps/s   ratio {synced / base:.3f}  "
              f"(files sent {sent}, failures {failures})")

        print("2) start -> first training step from a remote-only checkpoint (download + verify + safe load)")
        print(f"   {'size':>7} | {'remote resume':>13} | {'local load':>10} | ratio")
        remote_dir = work / "drive"
        for mb in sizes_mb:
            src = work / f"src{mb}"
            shutil.rmtree(remote_dir, ignore_errors=True)
            mgr = CheckpointManager(src, async_save=False)
            mgr.save({"w": torch.randn(mb * 1024 * 1024 // 4)}, step=1)
            mgr.close()
            with SyncWorker(src, DirectoryTarget(remote_dir, fs=LocalFileSystem())) as w:
                w.sync_now(600)
            t0 = time.perf_counter()
            CheckpointManager(src).load()
            local_s = time.perf_counter() - t0
            fresh = work / f"fresh{mb}"
            t0 = time.perf_counter()
            resume_from_best_source(fresh, [DirectoryTarget(remote_dir)])
            CheckpointManager(fresh).load()
            remote_s = time.perf_counter() - t0
            print(f"   {mb:5d}MB | {remote_s:11.2f} s | {local_s:8.2f} s | {remote_s / local_s:5.1f}x")
            shutil.rmtree(src)
            shutil.rmtree(fresh)

        print("3) final sync: the estimate the time budget reserves vs the measured final sync (disk remote)")
        print(f"   {'size':>7} | {'estimate':>9} | {'measured':>9} | {'bound':>7}")
        for mb in sizes_mb:
            local = work / f"final{mb}"
            mgr = CheckpointManager(local, keep_best=2, async_save=False)
            sync = SessionSync(SyncWorker(local, DirectoryTarget(work / f"remote{mb}")), {})
            for step in (1, 2):
                mgr.save({"w": torch.randn(mb * 1024 * 1024 // 4)}, step=step, metrics={"loss": 1.0 / step})
            sync.sync_now(600)  # measures the upload speed
            estimate, bound = sync.estimated_final_sync_seconds(), sync.final_sync_timeout()
            mgr.save({"w": torch.randn(mb * 1024 * 1024 // 4)}, step=3, metrics={"loss": 1.0 / 3})  # the final save
            t0 = time.perf_counter()
            state = sync.finish(timeout=600)
            measured = time.perf_counter() - t0
            mgr.close()
            print(f"   {mb:5d}MB | {estimate:7.2f} s | {measured:7.2f} s | {bound:5.0f} s   ({state.describe()})")

        print("4) a dead remote at the end: every upload fails; finish() must return within its bound")
        for bound in (1.0, 5.0):
            local = work / f"dead{bound}"
            mgr = CheckpointManager(local, async_save=False)
            mgr.save({"w": torch.zeros(1000)}, step=1)
            mgr.close()
            dead = FaultyFileSystem(fsspec.filesystem("memory"))
            dead.fail_next("open_write", TimeoutError("upload timed out"), times=10**6)
            sync = SessionSync(SyncWorker(local, FsspecTarget(f"/dead-{uuid.uuid4().hex}", fs=dead)), {})
            t0 = time.perf_counter()
            state = sync.finish(timeout=bound)
            print(f"   bound {bound:4.1f} s: returned after {time.perf_counter() - t0:5.2f} s -- {state.describe()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
