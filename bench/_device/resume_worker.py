"""A training process for row 1 of the device check: dropout, AMP (on CUDA), checkpoints through the kit.

The loop draws batches from a :class:`~atheria_kit.state.SeededGenerators` torch stream, adds noise from its NumPy
stream, flips a Python ``random`` coin, and masks activations with dropout (the global torch generator: the CUDA
generator on a GPU). With ``--amp`` the forward pass runs under ``torch.autocast`` (float16 on CUDA) and the loss
goes through ``torch.amp.GradScaler`` with a short growth interval, so its scale changes during the run. Every
``--save-every`` steps the state is saved the way ``TrainingSession`` saves it: ``collect_state`` of the objects
with the RNG state captured at the end of the step, then an asynchronous ``CheckpointManager.save``.

Modes:

* default: train ``--steps`` steps from scratch, write the result to ``--out``.
* ``--hold``: the same, but after the last step wait on stdin instead of writing a result: the driver SIGKILLs it
  (after the ``COMMIT <step>`` line it waits for), so the process always ends by the kill.
* ``--resume``: load the newest verified checkpoint of ``--ckpt``, restore everything, train to ``--steps`` and
  write the result. With ``--wait-go`` the process starts ahead (imports, objects, CUDA) and opens ``--ckpt`` only
  after a line arrives on stdin: the driver sends it once the killed process is gone. Then, as a control that the comparison can fail, restore the same checkpoint *without* the RNG
  states and train to the end again: those parameters must differ (dropout masks and batches change).

Printed lines: ``COMMIT <step>`` when a checkpoint is committed, ``RESUMED <step>`` after a restore, ``DONE``.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO_ROOT))

from atheria_kit.checkpoint import CheckpointManager  # noqa: E402
from atheria_kit.state import SeededGenerators, TrainingProgress, collect_state, restore_state  # noqa: E402

FEATURES, WIDTH, ROWS = 64, 256, 4096


def build(device: torch.device, amp: bool, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)  # the initial weights
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, WIDTH), torch.nn.GELU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(WIDTH, 1),
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
        # growth every 8 good steps from 2**14: the scale grows, overflows at float16's limit and backs off
        "scaler": torch.amp.GradScaler(device.type, enabled=amp, init_scale=2.0**14, growth_interval=8),
        "gens": SeededGenerators(seed + 1),
        "progress": TrainingProgress(),
    }


def dataset(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    w = rng.standard_normal(FEATURES).astype(np.float32)
    y = np.tanh(x @ w / 4) + 0.1 * np.sin(3 * x[:, 0])
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))[:, None]


def step(objs: dict, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool, batch: int) -> float:
    gens: SeededGenerators = objs["gens"]
    idx = torch.randint(0, len(x), (batch,), generator=gens.torch)
    xb = x[idx] + torch.from_numpy(gens.numpy.normal(0.0, 0.01, (batch, FEATURES)).astype(np.float32))
    if random.random() < 0.25:  # Python's generator takes part too
        xb = xb.flip(1)
    xb, yb = xb.to(device), y[idx].to(device)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        loss = torch.nn.functional.mse_loss(objs["model"](xb).float(), yb)
    objs["optimizer"].zero_grad(set_to_none=True)
    scaler = objs["scaler"]
    scaler.scale(loss).backward()
    scaler.step(objs["optimizer"])
    scaler.update()
    objs["scheduler"].step()
    value = float(loss.item())
    progress: TrainingProgress = objs["progress"]
    progress.step += 1
    progress.record(loss=value)
    return value


def train(objs: dict, data: tuple, args: argparse.Namespace, device: torch.device,
          mgr: CheckpointManager | None) -> None:
    x, y = data
    progress: TrainingProgress = objs["progress"]
    while progress.step < args.steps:
        loss = step(objs, x, y, device, args.amp, args.batch)
        if mgr is not None and progress.step % args.save_every == 0:
            mgr.save(collect_state(objs), step=progress.step, metrics={"loss": loss})


def result(objs: dict) -> dict:
    opt_state = objs["optimizer"].state_dict()["state"]
    return {
        "params": {name: p.detach().cpu().clone() for name, p in objs["model"].named_parameters()},
        "optimizer": {f"{i}.{k}": v.detach().cpu().clone() for i, s in opt_state.items() for k, v in s.items()
                      if isinstance(v, torch.Tensor)},
        "scaler": dict(objs["scaler"].state_dict()),
        "losses": list(objs["progress"].history.get("loss", [])),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--hold", action="store_true")
    mode.add_argument("--resume", action="store_true")
    p.add_argument("--wait-go", action="store_true", help="wait for a line on stdin before opening --ckpt")
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")  # a step skipped by GradScaler
    device = torch.device(args.device)
    if device.type == "cuda":  # cuBLAS picks reproducible kernels (with CUBLAS_WORKSPACE_CONFIG from the driver);
        torch.use_deterministic_algorithms(True)  # not on the CPU, where importing its checks costs ~2 s
    data = dataset(args.seed)
    objs = build(device, args.amp, args.steps, args.seed)
    # the global generators start from the same seed in every process; a resume overwrites them
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed + 2)

    if args.wait_go:  # started ahead (imports, CUDA set up); the checkpoint folder is read only after the kill
        print("READY", flush=True)
        sys.stdin.readline()
    mgr = CheckpointManager(args.ckpt, monitor="loss", keep_best=2)
    mgr.subscribe(lambda rec, _manifest: print(f"COMMIT {rec.step}", flush=True))
    control = None
    if args.resume:
        loaded = mgr.load("latest")
        if loaded is None:
            print("NOCHECKPOINT", flush=True)
            return 3
        saved = copy.deepcopy(loaded.state)  # restoring may alias its tensors (optimizer state on the CPU)
        restore_state(objs, loaded.state)
        print(f"RESUMED {objs['progress'].step}", flush=True)
        train(objs, data, args, device, None)
        out = result(objs)
        # control: the same checkpoint without its RNG states (the generators go on from wherever they are)
        objs2 = build(device, args.amp, args.steps, args.seed)
        restore_state(objs2, saved, rng=False)  # batches as saved (gens is an object): dropout and coin differ
        train(objs2, data, args, device, None)
        control = result(objs2)
    else:
        train(objs, data, args, device, mgr)
        mgr.close()
        out = result(objs)
        if args.hold:
            print("HOLDING", flush=True)
            sys.stdin.read()  # the driver SIGKILLs this process; it never writes a result
            return 4
    if args.out:
        torch.save({"result": out, "control": control}, args.out)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
