"""Integration benchmarks: what the kit's framework callbacks cost, next to the bare framework in the same run.

Hugging Face section (``huggingface``):

1. Per-step overhead of :class:`AtheriaCallback` (budget, monitor thread, live view to a buffer) against the bare
   ``transformers.Trainer`` on the same tiny GPT-2: the median interval between optimizer steps, runs interleaved.
   The tiny model's step (a few ms on CPU) is far shorter than a real fine-tune's, so the same comparison is repeated
   with each step padded to 50 ms (a sleep in a callback present in both runs), and the callback's own time per
   step is measured directly (its event handlers, timed) and put next to both step times.
2. The stall of a checkpoint save: the Trainer's own ``_save_checkpoint`` against what the kit adds in ``on_save``
   (state file, sealing: fsync + sha256 of every file, hand-off to the background uploader), for the tiny model and
   a larger one (about 50 MB per checkpoint folder).

Goal: at most 1 % per-step overhead at a realistic step time.

    .venv/bin/python bench/bench_integrations.py [--quick] [--section huggingface]

``SECTIONS`` maps a section name to its function; other integrations add theirs there.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

torch.set_num_threads(1)  # two shared cores: the same setting for both sides of every comparison


# ----------------------------------------------------------------------------------------------- huggingface
def _hf_trainer(out: Path, *, max_steps: int, save_steps: int | None, n_embd: int = 32, n_layer: int = 2,
                callbacks: list | None = None):
    import transformers

    transformers.set_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64 if n_embd <= 64 else 2048, n_positions=16, n_embd=n_embd,
                                  n_layer=n_layer, n_head=2, bos_token_id=0, eos_token_id=0)
    ids = (torch.randint(0, cfg.vocab_size, (64, 1), generator=torch.Generator().manual_seed(0))
           + torch.arange(16)) % cfg.vocab_size
    data = [{"input_ids": r, "labels": r} for r in ids]
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=10, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(cfg), args=args, train_dataset=data,
                                   callbacks=callbacks)
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer


def _step_clock():
    import transformers

    class StepClock(transformers.TrainerCallback):
        """Timestamps of each step's end; with ``pad`` each step also sleeps that long (a slower model)."""

        def __init__(self, pad: float = 0.0) -> None:
            self.pad, self.ends = pad, []

        def on_step_end(self, args, state, control, **kwargs):
            if self.pad:
                time.sleep(self.pad)
            self.ends.append(time.perf_counter())

    return StepClock


def _timed(obj, names: tuple[str, ...], box: dict[str, float]) -> None:
    """Wrap ``obj``'s methods so the seconds spent in them add up in ``box``."""
    for name in names:
        fn = getattr(obj, name)

        def wrapper(*a, _fn=fn, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                box[_name] = box.get(_name, 0.0) + time.perf_counter() - t0
                box[_name + "#"] = box.get(_name + "#", 0) + 1

        setattr(obj, name, wrapper)


def _median_step(tmp: Path, pad: float, steps: int, with_kit: bool) -> tuple[float, float | None]:
    """Median seconds between step ends; with the kit also its handlers' seconds per step."""
    from atheria_kit.integrations.huggingface import AtheriaCallback
    from atheria_kit.say import Say

    clock = _step_clock()(pad)
    trainer = _hf_trainer(tmp / f"run-{time.perf_counter_ns()}", max_steps=steps, save_steps=None,
                          callbacks=[clock])
    per_step = None
    box: dict[str, float] = {}
    if with_kit:
        sink = io.StringIO()
        cb = AtheriaCallback(max_training_hours=10, live_view="text", stream=sink, say=Say(sink),
                             handle_signals=False)
        _timed(cb, ("on_step_begin", "on_step_end", "on_log"), box)
        trainer.add_callback(cb)
    trainer.train()
    if with_kit:
        per_step = sum(v for n, v in box.items() if not n.endswith("#")) / steps
    gaps = [b - a for a, b in zip(clock.ends[5:-1], clock.ends[6:], strict=True)]  # the first steps warm up
    return statistics.median(gaps), per_step


def _monitor_cost() -> tuple[float, float]:
    """Seconds one sample of the resource monitor takes (median of 20) and its sampling interval."""
    from atheria_kit.monitor import ResourceMonitor

    mon = ResourceMonitor(interval=1.0)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        mon.sample_once()
        times.append(time.perf_counter() - t0)
    mon.close()
    return statistics.median(times), mon.interval


def bench_step_overhead(tmp: Path, quick: bool) -> None:
    print("1. per-step overhead: AtheriaCallback vs bare Trainer (tiny GPT-2, CPU, 1 thread; runs interleaved, "
          "each run's median step; min and median over the runs)")
    for pad, steps, reps in ((0.0, 150 if quick else 300, 3 if quick else 5), (0.05, 40 if quick else 60, 3)):
        bare, kit, handlers = [], [], []
        for _ in range(reps):
            bare.append(_median_step(tmp, pad, steps, False)[0])
            k, h = _median_step(tmp, pad, steps, True)
            kit.append(k)
            handlers.append(h)
        b, k, h = statistics.median(bare), statistics.median(kit), statistics.median(handlers)
        bmin, kmin = min(bare), min(kit)
        label = "tiny model's own step (unrealistically short)" if not pad else f"step padded with a {pad * 1e3:.0f} ms sleep"
        print(f"   {label}:")
        print(f"     bare Trainer   min {bmin * 1e3:8.3f}  median {b * 1e3:8.3f} ms/step")
        print(f"     with the kit   min {kmin * 1e3:8.3f}  median {k * 1e3:8.3f} ms/step   difference of the minima "
              f"{100 * (kmin - bmin) / bmin:+6.2f} %, of the medians {100 * (k - b) / b:+6.2f} % (end to end; "
              f"2 cores shared with other jobs)")
        print(f"     kit handlers   {h * 1e3:8.3f} ms/step = {100 * h / b:.3f} % of the bare step (timed directly)")
    sample, interval = _monitor_cost()
    print(f"   resource monitor thread: {sample * 1e3:.2f} ms per sample every {interval:.0f} s = "
          f"{100 * sample / interval:.2f} % of one core (runs beside the steps, not inside them)")


def bench_save_stall(tmp: Path, quick: bool) -> None:
    from atheria_kit.integrations.huggingface import AtheriaCallback
    from atheria_kit.say import Say
    from atheria_kit.sync import DirectoryTarget

    print("2. checkpoint save stall: the Trainer's own save vs what the kit adds in on_save "
          "(state + seal: fsync and sha256 of every file + hand-off to the uploader)")
    sizes = [("tiny GPT-2", 32, 2)] + ([] if quick else [("GPT-2 256x4", 256, 4)])
    for label, n_embd, n_layer in sizes:
        out = tmp / f"save-{n_embd}"
        trainer = _hf_trainer(out, max_steps=30, save_steps=5, n_embd=n_embd, n_layer=n_layer)
        sink = io.StringIO()
        cb = AtheriaCallback(max_training_hours=10, live_view="off", monitor=False, stream=sink, say=Say(sink),
                             handle_signals=False, remote=DirectoryTarget(tmp / f"remote-{n_embd}"))
        kit: dict[str, float] = {}
        framework: dict[str, float] = {}
        _timed(cb, ("on_save",), kit)
        _timed(trainer, ("_save_checkpoint",), framework)
        trainer.add_callback(cb)
        trainer.train(resume_from_checkpoint=cb.resume(out))
        size = sum(p.stat().st_size for p in (out / "checkpoint-30").rglob("*") if p.is_file())
        f = framework["_save_checkpoint"] / framework["_save_checkpoint#"]
        k = kit["on_save"] / kit["on_save#"]
        print(f"   {label} ({size / 1e6:.1f} MB per folder): Trainer save {f * 1e3:8.1f} ms, kit on_save "
              f"{k * 1e3:7.1f} ms (+{100 * k / f:.0f} % of the Trainer's save); upload in the background: "
              f"{cb.pusher.bytes_sent / max(cb.pusher.seconds_sending, 1e-9) / 1e6:.0f} MB/s to a local folder")


def run_huggingface(quick: bool) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar at every save: not a figure
    print("== Hugging Face transformers.Trainer ==")
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        bench_step_overhead(Path(tmp), quick)
        bench_save_stall(Path(tmp), quick)


def run_lightning(quick: bool) -> None:
    """The Lightning section (bench/_integrations_lightning.py): the callback + plugin against the bare Trainer."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _integrations_lightning import measure

    print("\n== Lightning lightning.Trainer ==")
    for line in measure(quick=quick):
        print(line)


#: Sections of this benchmark, by name; each takes ``quick`` and prints its own figures and baselines.
SECTIONS: dict[str, Callable[[bool], None]] = {"huggingface": run_huggingface, "lightning": run_lightning}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions, small model only")
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable); default: all")
    ns = parser.parse_args()
    for name in ns.section or list(SECTIONS):
        SECTIONS[name](ns.quick)


if __name__ == "__main__":
    main()
