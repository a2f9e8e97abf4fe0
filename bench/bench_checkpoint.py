"""Checkpoint benchmark: training-loop stall per save, end-to-end overhead, verification and resume cost.

Every figure is printed next to a baseline measured in the same run, as a ratio:
  1. stall per checkpoint (~100 MB and ~500 MB states): our async save vs copying the state to CPU memory,
     plain torch.save into the same directory, and PyTorch Lightning's ModelCheckpoint
     (``pip install pytorch-lightning``; its row says "not installed" otherwise);
     goals: ours <= 1.2x the copy, and >= 5x smaller than torch.save's;
  2. end-to-end overhead of an async checkpoint every 10 s in a real training loop vs no checkpoints (goal <= 2 %),
     from alternating segments of one loop;
  3. verification throughput (BLAKE3 and SHA-256 of a checkpoint) vs reading the file, and a verified resume
     (open the manager, verify and load the latest checkpoint) vs a plain torch.load of the same bytes;
     goal: verified resume <= 1.5x torch.load. The previous method (read the file, SHA-256 it, torch.load
     the bytes) is timed in the same run.

Usage: .venv/bin/python bench/bench_checkpoint.py [--quick] [--only {stall,e2e,verify}]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atheria_kit import _io  # noqa: E402
from atheria_kit.checkpoint import CheckpointManager  # noqa: E402
from atheria_kit.retention import LatestN  # noqa: E402

MB = 1_000_000


def make_state(megabytes: int) -> dict:
    """A model-like state: 4 MB float32 tensors adding up to ``megabytes``, plus counters."""
    n = max(1, megabytes // 4)
    model = {f"layer{i}.weight": torch.randn(1000, 1000) for i in range(n)}
    return {"model": model, "step": 0, "history": [0.1] * 100}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def lightning_stall(state: dict, directory: Path, repeats: int) -> float | None:
    """Median time ModelCheckpoint blocks the training loop per save (its ``_save_checkpoint``)."""
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import ModelCheckpoint
    except ImportError:
        try:
            import lightning.pytorch as pl
            from lightning.pytorch.callbacks import ModelCheckpoint
        except ImportError:
            return None
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tensors = list(state["model"].values())

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.params = torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in tensors])
            self.head = torch.nn.Linear(4, 1)

        def training_step(self, batch, _idx):
            return self.head(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.head.parameters(), lr=0.01)  # no per-parameter state: ~state size

    times: list[float] = []

    class Timed(ModelCheckpoint):
        def _save_checkpoint(self, trainer, filepath):  # what the training loop waits for
            t0 = time.perf_counter()
            super()._save_checkpoint(trainer, filepath)
            times.append(time.perf_counter() - t0)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(repeats, 4)), batch_size=1)
    cb = Timed(dirpath=str(directory), every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(max_steps=repeats, callbacks=[cb], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Module(), data)
    del trainer
    return statistics.median(times) if times else None


def bench_stall(megabytes: int, base: Path, repeats: int) -> list[tuple[str, float | None]]:
    """Stall per save; the contenders take turns within each repeat so machine noise hits all alike."""
    state = make_state(megabytes)
    d = base / f"stall-{megabytes}"
    d.mkdir()
    mgr = CheckpointManager(d / "ours", policy=LatestN(1))
    plain = d / "plain.pt"
    times: dict[str, list[float]] = {"copy": [], "ours": [], "save": [], "save_fsync": []}

    def timed(key: str, fn) -> None:
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times[key].append(time.perf_counter() - t0)

    def save_fsync() -> None:
        with open(plain, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())

    for step in range(1, repeats + 1):
        timed("copy", lambda: {k: v.clone() for k, v in state["model"].items()})
        timed("ours", lambda step=step: mgr.save(state, step=step))
        mgr.wait()  # the next save starts after this one is on disk (as with saves 10 s apart)
        timed("save", lambda: torch.save(state, plain))
        timed("save_fsync", save_fsync)
    mgr.close()
    light_t = lightning_stall(state, d / "lightning", repeats)
    state.clear()
    gc.collect()
    shutil.rmtree(d)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [("copy to CPU memory (baseline)", med["copy"]), ("ours: async save()", med["ours"]),
            ("plain torch.save", med["save"]), ("torch.save + fsync", med["save_fsync"]),
            ("Lightning ModelCheckpoint", light_t)]


class MLP(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                       torch.nn.ReLU(), torch.nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x)


def bench_overhead(base: Path, segments: int, every: float) -> tuple[float, float, float, int, float]:
    """One real training loop cut into ``every``-second segments that alternate: none, checkpoint, none, ...

    A checkpoint segment starts with an async save (the background write runs during the segment), so it
    measures exactly "a checkpoint every ``every`` s". Alternating short segments inside one loop, and
    comparing each checkpoint segment with the mean of its two neighbours, cancels the slow drift of a
    shared machine that made separate runs differ by more than the effect being measured.
    Returns (median steps/s without, median steps/s with, median paired overhead %, saves, state MB).
    """
    torch.manual_seed(0)
    model = MLP(1024)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 1024), torch.randn(256, 1)
    rates: list[float] = []
    saves = 0
    with CheckpointManager(base / "e2e", policy=LatestN(1)) as mgr:
        step = 0
        for seg in range(segments):
            t0 = time.perf_counter()
            n = 0
            if seg % 2 == 1:
                mgr.save({"model": model.state_dict(), "opt": opt.state_dict()}, step=step)
                saves += 1
            while time.perf_counter() - t0 < every:
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += 1
                step += 1
            rates.append(n / (time.perf_counter() - t0))
    state_mb = sum(p.numel() for p in model.parameters()) * 12 / MB  # weights + Adam's two moments
    shutil.rmtree(base / "e2e", ignore_errors=True)
    none = rates[0::2]
    ckpt = rates[1::2]
    paired = [(1 - c / ((none[i] + none[i + 1]) / 2)) * 100 for i, c in enumerate(ckpt) if i + 1 < len(none)]
    return statistics.median(none), statistics.median(ckpt), statistics.median(paired), saves, state_mb


def bench_verify_resume(base: Path, megabytes: int, repeats: int) -> list[tuple[str, float, str]]:
    """Hash throughput and resume time; every contender reads the same file, alternating within each repeat."""
    d = base / "verify"
    state = make_state(megabytes)
    with CheckpointManager(d, async_save=False) as mgr:
        mgr.save(state, step=1)
    del state
    rec = mgr.records()[-1]
    size = rec.size / MB

    def read_all() -> None:
        with open(rec.path, "rb") as fh:
            while fh.read(4 * 1024 * 1024):
                pass

    def previous_method() -> None:  # what load() did before: read all, sha256 the bytes, torch.load the bytes
        data = rec.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec.sha256
        torch.load(io.BytesIO(data), weights_only=True)

    contenders = {
        "read": read_all,
        "blake3": lambda: _io.file_digest(rec.path, "blake3"),
        "sha256": lambda: _io.file_digest(rec.path, "sha256"),
        "plain": lambda: torch.load(rec.path, weights_only=True),
        "resume": lambda: CheckpointManager(d).load("latest"),
        "previous": previous_method,
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for key, fn in contenders.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    shutil.rmtree(d)
    return [
        ("read file (baseline), MB/s", size / med["read"], ""),
        ("blake3 verify, MB/s", size / med["blake3"], f"{med['read'] / med['blake3']:.2f}x read speed"),
        ("sha256 verify, MB/s", size / med["sha256"], f"{med['read'] / med['sha256']:.2f}x read speed"),
        ("torch.load plain file (baseline), s", med["plain"], ""),
        ("resume: open manager + verified load('latest'), s", med["resume"],
         f"{med['resume'] / med['plain']:.2f}x torch.load   goal <= 1.5x: "
         f"{'met' if med['resume'] <= 1.5 * med['plain'] else 'MISSED'}"),
        ("previous method: read + sha256 + torch.load bytes, s", med["previous"],
         f"{med['previous'] / med['plain']:.2f}x torch.load"),
    ]


def fmt(v: float | None) -> str:
    return "not installed" if v is None else f"{v * 1000:9.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller states, shorter training loop")
    ap.add_argument("--only", choices=("stall", "e2e", "verify"), help="run one section")
    args = ap.parse_args()
    run = {args.only} if args.only else {"stall", "e2e", "verify"}
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    sizes = [100] if args.quick else [100, 500]
    repeats = 3
    segments, every = (7, 3.0) if args.quick else (13, 10.0)
    base = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=os.environ.get("BENCH_DIR")))
    try:
        print(f"checkpoint benchmark ({'quick' if args.quick else 'full'}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, dir {base}")
        if "stall" in run:
            print(f"\n1. training-loop stall per checkpoint (median of {repeats})")
        for mb in sizes if "stall" in run else []:
            rows = bench_stall(mb, base, repeats)
            copy_t, ours_t, save_t = rows[0][1], rows[1][1], rows[2][1]
            print(f"  state ~{mb} MB")
            for name, t in rows:
                ratio = "" if t is None else f"{t / copy_t:6.2f}x copy   {t / ours_t:6.2f}x ours"
                print(f"    {name:<32} {fmt(t)}   {ratio}")
            ok1 = ours_t <= 1.2 * copy_t
            ok2 = save_t >= 5 * ours_t
            print(f"    goal ours <= 1.2x copy: {'met' if ok1 else 'MISSED'} ({ours_t / copy_t:.2f}x); "
                  f"torch.save >= 5x ours: {'met' if ok2 else 'MISSED'} ({save_t / ours_t:.1f}x)")

        if "e2e" in run:
            print(f"\n2. end-to-end: one training loop in {segments} alternating {every:g}-s segments, an async "
                  f"checkpoint at the start of every other one")
            none_r, ckpt_r, overhead, saves, state_mb = bench_overhead(base, segments, every)
            print(f"    no checkpoints (baseline)        {none_r:9.2f} steps/s (median)")
            print(f"    checkpoint every {every:g} s{'':<13}{ckpt_r:9.2f} steps/s "
                  f"(median; {saves} saves of ~{state_mb:.0f} MB)")
            print(f"    overhead {overhead:+.2f} % (median of each checkpoint segment vs its two neighbours)   "
                  f"goal <= 2 %: {'met' if overhead <= 2 else 'MISSED'}")

        if "verify" in run:
            verify_repeats = 5
            print(f"\n3. verification and resume (~{sizes[-1]} MB checkpoint, median of {verify_repeats}; "
                  f"{os.cpu_count()} CPUs)")
            for name, v, note in bench_verify_resume(base, sizes[-1], verify_repeats):
                print(f"    {name:<56} {v:9.2f}   {note}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
