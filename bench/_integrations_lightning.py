"""Lightning integration benchmark: what the kit's plugin and callback cost next to the bare ``lightning.Trainer``.

1. Per-step overhead of :class:`~atheria_kit.integrations.lightning.AtheriaCallback` (time budget, live view in
   text mode to a buffer, the resource monitor thread) plus :class:`AtheriaCheckpointIO` against the bare Trainer,
   on the same tiny MLP in one process: the median interval between training batch ends, runs interleaved
   (bare, kit, bare, kit). The tiny step (about a millisecond on CPU) is far shorter than a real step, so the same
   comparison is repeated with every step padded to 50 ms (a sleep inside ``training_step``, in both runs), and the
   callback's own time per step (its batch hooks, timed) is put next to both step times.
2. The stall of one checkpoint save, ``trainer.save_checkpoint(path)``: through the plugin (atomic write with
   fsync, hashes, integrity sidecar, manifest, a second hash check when it is listed, the hard link at
   Lightning's path) against Lightning's default ``TorchCheckpointIO``, for the tiny model and a ~50 MB model.

Goal: at most 1 % per-step overhead at a realistic step time.

    .venv/bin/python bench/bench_integrations_lightning.py [--quick]

``measure(quick)`` returns the printed lines, for bench/bench_integrations.py to fold in.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

torch.set_num_threads(1)  # two shared cores: the same setting for both sides of every comparison


def _quiet() -> None:
    import lightning  # noqa: F401  (it sets its loggers' levels on import: quiet them afterwards)

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "atheria_kit"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _model(width: int, pad: float):
    import lightning as L
    from torch import nn

    class Mlp(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, width), nn.Tanh(), nn.Linear(width, 1))

        def training_step(self, batch, batch_idx):
            if pad:
                time.sleep(pad)
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Mlp()


def _data(n: int):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n * 8, 16, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class _StepClock:
    """A callback (in both runs) that records the time of every training batch end."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class Clock(Callback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self.cpu: list[float] = []

            def on_train_batch_end(self, *args, **kwargs) -> None:
                self.times.append(time.perf_counter())
                self.cpu.append(time.thread_time())

        return Clock()


def _trainer(root: Path, steps: int, callbacks: list, plugins: list | None = None, checkpointing: bool = False):
    import lightning as L

    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=checkpointing, default_root_dir=str(root),
                     callbacks=callbacks, plugins=plugins or [], num_sanity_val_steps=0)


def _kit(store: Path):
    from atheria_kit.budget import TimeBudget
    from atheria_kit.integrations.lightning import AtheriaCallback, AtheriaCheckpointIO
    from atheria_kit.live import LiveView
    from atheria_kit.monitor import ResourceMonitor
    from atheria_kit.say import Say

    budget = TimeBudget(1e6)
    plugin = AtheriaCheckpointIO(store, budget=budget)
    monitor = ResourceMonitor(interval=5.0, budget=budget).start()
    live = LiveView(None, mode="text", stream=io.StringIO(), title="bench")
    callback = AtheriaCallback(plugin, budget=budget, say=Say(stream=io.StringIO()), live=live, monitor=monitor)
    return plugin, callback


def _hook_timer(callback, box: dict[str, float]) -> None:
    """Time the callback's per-step hooks (what it adds to every step), in this thread's CPU time, into ``box``."""
    for name in ("on_train_batch_start", "on_train_batch_end"):
        fn = getattr(callback, name)

        def timed(*args, _fn=fn, **kwargs):
            t0 = time.thread_time()
            try:
                return _fn(*args, **kwargs)
            finally:
                box["seconds"] += time.thread_time() - t0
                box["calls"] += 0.5

        setattr(callback, name, timed)


def _median_step(tmp: Path, pad: float, steps: int, with_kit: bool, box: dict[str, float]) -> tuple[float, float]:
    """Median wall and main-thread CPU seconds between training batch ends."""
    clock = _StepClock()
    callbacks: list = [clock]
    plugins = None
    if with_kit:
        plugin, callback = _kit(tmp / f"store-{time.perf_counter_ns()}")
        _hook_timer(callback, box)
        callbacks.insert(0, callback)
        plugins = [plugin]
    tr = _trainer(tmp, steps, callbacks, plugins)
    tr.fit(_model(32, pad), _data(steps))
    def gaps(xs: list[float]) -> float:
        xs = xs[5:]  # the first steps warm up
        return statistics.median(b - a for a, b in zip(xs[:-1], xs[1:], strict=True))

    return gaps(clock.times), gaps(clock.cpu)


def bench_step_overhead(tmp: Path, quick: bool) -> list[str]:
    lines = ["Per-step overhead (median interval between training batch ends, runs interleaved; wall time, and the"
             " training thread's CPU time, which other processes on a shared machine do not inflate):"]
    for pad, steps, rounds in ((0.0, 200 if quick else 600, 2 if quick else 5), (0.05, 40 if quick else 100,
                                                                                  2 if quick else 3)):
        bare, kit = [], []
        box = {"seconds": 0.0, "calls": 0.0}
        for _ in range(rounds):
            bare.append(_median_step(tmp, pad, steps, False, box))
            kit.append(_median_step(tmp, pad, steps, True, box))
        own = box["seconds"] / max(box["calls"], 1.0)
        label = "tiny step (unrealistically short)" if pad == 0 else f"step padded to {pad * 1000:.0f} ms (sleep)"
        for i, what in ((0, "wall"), (1, "CPU ")):
            b, k = statistics.median(r[i] for r in bare), statistics.median(r[i] for r in kit)
            lines.append(f"  {label:36s} {what} bare {b * 1e3:8.3f} ms | kit {k * 1e3:8.3f} ms | ratio {k / b:6.3f} "
                         f"({(k / b - 1) * 100:+.2f} %)")
        b_wall = statistics.median(r[0] for r in bare)
        lines.append(f"  {label:36s} callback's own hooks {own * 1e6:6.1f} us/step (CPU) = {own / b_wall * 100:.3f} % "
                     "of the bare step's wall time")
    return lines


def _save_stall(tmp: Path, width: int, repeats: int, with_kit: bool) -> tuple[float, float, int]:
    callbacks: list = []
    plugins = None
    if with_kit:
        plugin, callback = _kit(tmp / f"store-{time.perf_counter_ns()}")
        callbacks, plugins = [callback], [plugin]
    tr = _trainer(tmp, 1, callbacks, plugins)
    tr.fit(_model(width, 0.0), _data(1))
    out = tmp / f"ckpts-{time.perf_counter_ns()}"
    times, size = [], 0
    for i in range(repeats):
        path = out / f"save-{i}.ckpt"
        t0 = time.perf_counter()
        tr.save_checkpoint(str(path))
        times.append(time.perf_counter() - t0)
        size = path.stat().st_size
        tr.strategy.remove_checkpoint(str(path))  # keep the disk flat: the plugin's store releases it too
    return statistics.median(times), min(times), size


def bench_save_stall(tmp: Path, quick: bool) -> list[str]:
    lines = ["Checkpoint save stall (trainer.save_checkpoint, wall time: median / min of the repeats):"]
    for width, repeats in ((32, 10 if quick else 20), (800_000 if not quick else 200_000, 3 if quick else 7)):
        bare, bare_min, size = _save_stall(tmp, width, repeats, False)
        kit, kit_min, _ = _save_stall(tmp, width, repeats, True)
        lines.append(f"  {size / 1e6:8.2f} MB checkpoint: Lightning TorchCheckpointIO {bare * 1e3:7.1f} / "
                     f"{bare_min * 1e3:7.1f} ms | AtheriaCheckpointIO {kit * 1e3:7.1f} / {kit_min * 1e3:7.1f} ms | "
                     f"ratio of medians {kit / bare:5.2f}x")
    return lines


def measure(quick: bool = False) -> list[str]:
    """Run both benchmarks; return the printed lines."""
    _quiet()
    import lightning

    lines = [f"Lightning integration (lightning {lightning.__version__}, torch {torch.__version__}, "
             f"{os.cpu_count()} CPUs, 1 torch thread)"]
    with tempfile.TemporaryDirectory(prefix="atheria-bench-lightning-") as d:
        lines += bench_step_overhead(Path(d), quick)
        lines += bench_save_stall(Path(d), quick)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats, a smaller large model")
    args = parser.parse_args(argv)
    for line in measure(args.quick):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
