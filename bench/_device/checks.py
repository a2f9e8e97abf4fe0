"""The checks of ``bench/device_check.py``, one function per row group, each run in its own process.

    python -m bench._device.checks NAME --workdir DIR --seconds S [--quick]

prints one ``@@row`` line per finished row (see :mod:`bench._device.protocol`). ``--seconds`` is the time this
check has: a part that would not fit in what is left is reported as skipped instead of started, and every
subprocess a check starts is killed at the deadline. GPU-only rows say ``no GPU`` (and why) on a machine without
a CUDA device; the CPU rows run everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._device.protocol import Row, emit, finish, kill, seconds, size_name, start, torch_cuda_build

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
MB, GB = 2**20, 2**30


@dataclass
class Ctx:
    quick: bool
    workdir: Path
    deadline: float  # time.monotonic() by which the check must be done

    def left(self) -> float:
        return self.deadline - time.monotonic()


def gpu_state() -> tuple[bool, str]:
    """(CUDA usable, why not): the reason a GPU row reads "no GPU"."""
    import torch

    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"
    return True, ""


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------ 1 bit-exact resume


def _bits_equal(a: Any, b: Any) -> bool:
    """Same dtype, shape and bytes (NaN payloads and -0.0 included; any dtype, bfloat16 too)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _compare(a: dict, b: dict) -> tuple[list[str], float]:
    """Names of what differs between two worker results, and the largest parameter difference."""
    diffs = [f"param {k}" for k in a["params"] if not _bits_equal(a["params"][k], b["params"][k])]
    diffs += [f"optimizer {k}" for k in a["optimizer"] if k not in b["optimizer"]
              or not _bits_equal(a["optimizer"][k], b["optimizer"][k])]
    if a["scaler"] != b["scaler"]:
        diffs.append(f"GradScaler {a['scaler']} != {b['scaler']}")
    if a["losses"] != b["losses"]:
        first = next((i for i, (x, y) in enumerate(zip(a["losses"], b["losses"], strict=False)) if x != y),
                     min(len(a["losses"]), len(b["losses"])))
        diffs.append(f"loss history (first difference at step {first + 1})")
    worst = max(float((a["params"][k].double() - b["params"][k].double()).abs().max()) for k in a["params"])
    return diffs, worst


def resume_trial(ctx: Ctx, device: str, amp: bool, name: str, *, steps: int, save_every: int, kill_after: int,
                 batch: int) -> Row:
    """Uninterrupted run vs SIGKILL after a commit + resume in a fresh process, compared bit for bit."""
    base = ctx.workdir / f"resume_{device}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    env = child_env(CUBLAS_WORKSPACE_CONFIG=":4096:8", OMP_NUM_THREADS="1")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # this process runs the reference: before cuBLAS starts
    cmd = [sys.executable, "-u", str(HERE / "resume_worker.py"), "--device", device, "--steps", str(steps),
           "--batch", str(batch), "--save-every", str(save_every)] + (["--amp"] if amp else [])
    deadline = ctx.deadline - 1.0
    victim, victim_lines = start(cmd + ["--ckpt", str(base / "killed"), "--hold"], env=env, stdin=True)
    # the process that resumes starts now too (its imports overlap the victim's training); it opens the
    # checkpoint folder only when told, after the kill
    res, res_lines = start(cmd + ["--ckpt", str(base / "killed"), "--resume", "--wait-go",
                                  "--out", str(base / "resumed.pt")], env=env, stdin=True)
    killed_after = None
    try:
        for line in victim_lines.until(deadline):
            if line.startswith("COMMIT ") and int(line.split()[1]) >= kill_after:
                os.kill(victim.pid, signal.SIGKILL)  # a real kill: no handler, no flush, no atexit
                killed_after = int(line.split()[1])
                break
    finally:
        kill(victim)
    if killed_after is None:
        kill(res)
        why = "timed out" if time.monotonic() >= deadline else "ended"
        return Row("1", name, "timeout" if why == "timed out" else "error",
                   detail=f"the run to kill {why} before committing step {kill_after}: "
                   f"{victim_lines.tail() or 'no output yet'}")
    assert res.stdin is not None
    try:
        res.stdin.write("go\n")
        res.stdin.close()
    except OSError:  # it died already: its exit status and output say why
        pass
    # meanwhile the uninterrupted run, in this process (one interpreter start less), with the workers' settings
    import torch

    from bench._device import resume_worker

    torch.set_num_threads(1)
    with contextlib.redirect_stdout(io.StringIO()):
        rc_ref = resume_worker.main(cmd[3:] + ["--ckpt", str(base / "ref"), "--out", str(base / "ref.pt")])
    rc_res, lines = finish(res, res_lines, deadline)
    if rc_res != 0 or rc_ref != 0:
        result = "timeout" if time.monotonic() >= deadline else "error"
        return Row("1", name, result, detail=f"resumed run exit {rc_res}: {res_lines.tail()}; uninterrupted run "
                   f"exit {rc_ref}")
    resumed_from = next((int(ln.split()[1]) for ln in lines if ln.startswith("RESUMED ")), -1)
    a = torch.load(base / "ref.pt", weights_only=True)["result"]
    got = torch.load(base / "resumed.pt", weights_only=True)
    b, control = got["result"], got["control"]
    diffs, worst = _compare(a, b)
    control_diffs, control_worst = _compare(a, control)
    n_values = sum(t.numel() for t in a["params"].values())
    scale = f"; GradScaler scale {a['scaler'].get('scale')} = {b['scaler'].get('scale')}" if amp else ""
    detail = (f"SIGKILL right after the commit of step {killed_after} (the process trained on); another process "
              f"(its own interpreter; it opened the checkpoint folder after the kill) resumed from step "
              f"{resumed_from} and trained to {steps}; loss history, "
              f"optimizer state{' and GradScaler state' if amp else ''} compared too. Control (same checkpoint "
              f"restored without its RNG states): {len(control_diffs)} differences, max abs dparam {control_worst:.2e}")
    if diffs:
        return Row("1", name, "FAIL", f"{len(diffs)} differences, max abs dparam {worst:.2e}",
                   f"uninterrupted run, {steps} steps", detail + f"; differs: {', '.join(diffs[:4])}")
    if not control_diffs:
        return Row("1", name, "FAIL", "identical, but so is the control", f"uninterrupted run, {steps} steps",
                   detail + "; the control should differ (dropout masks): the comparison proves nothing")
    return Row("1", name, "ok", f"bit-identical: {len(a['params'])} tensors, {n_values} values{scale}",
               f"uninterrupted run, {steps} steps", detail)


def check_resume(ctx: Ctx) -> None:
    cpu_steps = (20, 5, 5) if ctx.quick else (60, 5, 25)
    emit(resume_trial(ctx, "cpu", False, "bit-exact resume after SIGKILL, CPU, dropout, no AMP",
                      steps=cpu_steps[0], save_every=cpu_steps[1], kill_after=cpu_steps[2], batch=128))
    cuda, reason = gpu_state()
    name = "bit-exact resume after SIGKILL, CUDA, dropout, AMP (float16 + GradScaler)"
    if not cuda:
        emit(Row("1", name, "no GPU", detail=reason))
        return
    emit(resume_trial(ctx, "cuda", True, name, steps=400, save_every=20, kill_after=140, batch=512))


# ------------------------------------------------------------------------------------------- 2 checkpoint stall


def _make_state(nbytes: int, device: str) -> dict[str, Any]:
    import torch

    n = max(1, nbytes // (64 * MB))  # layers of <= 64 MB, like a model's weight matrices
    per = nbytes // n // 4
    g = torch.Generator(device=device).manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(per, device=device, generator=g) for i in range(n)}
    state["step"] = 1  # plain values travel along, as in a training state
    return state


def _touch(state: dict[str, Any]) -> None:
    """What a training step does between two saves: every tensor changes in place."""
    for v in state.values():
        if hasattr(v, "add_"):
            v.add_(1.0)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _stall_torch_save(state: dict[str, Any], path: Path) -> float:
    import torch

    _sync()
    t0 = time.perf_counter()
    torch.save(state, path)
    return time.perf_counter() - t0


def _stall_dcp(state: dict[str, Any], folder: Path, pg: Any) -> tuple[list[float], list[float], str]:
    """Blocked seconds of two ``async_save`` calls (until the training loop may change the tensors again),
    seconds until each is durable, and how DCP staged."""
    import torch.distributed.checkpoint as dcp

    blocked, durable, how = [], [], "Future"
    for i in range(2):
        _touch(state)
        _sync()
        t0 = time.perf_counter()
        resp = dcp.async_save(state, checkpoint_id=str(folder / f"save{i}"), process_group=pg)
        if hasattr(resp, "staging_completion"):  # staged in the background: the tensors are free only after it
            how = "AsyncSaveResponse (staging awaited)"
            resp.staging_completion.result()
            upload = resp.upload_completion
        else:
            upload = resp
        blocked.append(time.perf_counter() - t0)
        upload.result()
        durable.append(time.perf_counter() - t0)
        shutil.rmtree(folder / f"save{i}", ignore_errors=True)
    return blocked, durable, how


def _stall_kit(state: dict[str, Any], folder: Path) -> tuple[list[float], list[float]]:
    """Blocked seconds of two ``CheckpointManager.save`` calls (the second reuses the first's pinned buffers) and
    seconds until each is committed (written, hashed, fsynced, listed)."""
    from atheria_kit.checkpoint import CheckpointManager

    blocked, durable = [], []
    with CheckpointManager(folder, keep_best=1) as mgr:
        for i in range(2):
            _touch(state)
            _sync()
            t0 = time.perf_counter()
            mgr.save(state, step=i + 1)
            blocked.append(time.perf_counter() - t0)
            mgr.wait()
            durable.append(time.perf_counter() - t0)
    shutil.rmtree(folder, ignore_errors=True)
    return blocked, durable


def _init_single_rank_group(workdir: Path, cuda: bool) -> Any:
    """A 1-rank default group as a training job has (NCCL for CUDA tensors, gloo for CPU ones), and the gloo
    group DCP's tutorial recommends for ``async_save`` (its background thread must not share NCCL with training)."""
    import torch.distributed as dist

    init_file = workdir / "pg_init"
    init_file.unlink(missing_ok=True)
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=0, world_size=1)
    return dist.new_group(backend="gloo") if cuda else dist.group.WORLD


def check_stall(ctx: Ctx) -> None:
    import torch
    import torch.distributed as dist

    cuda, reason = gpu_state()
    device = "cuda" if cuda else "cpu"
    if cuda:
        sizes = [100 * MB, GB] if ctx.quick else [100 * MB, GB, 4 * GB]
    else:
        emit(Row("2", "checkpoint stall, GPU tensors (100 MB, 1 GB, 4 GB)", "no GPU",
                 detail=f"{reason}; the same measured on CPU tensors below"))
        sizes = [100 * MB] if ctx.quick else [100 * MB, GB]
    folder = ctx.workdir / "stall"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        pg = _init_single_rank_group(ctx.workdir, cuda)
    except Exception as exc:  # DCP's rows say so; the others still run
        pg, pg_error = None, f"{type(exc).__name__}: {exc}"
    kit_way = f"kit save ({'pinned, ' if cuda else ''}reused buffers)"
    rate = None  # seconds per byte of one whole size (all three ways), from the sizes done so far
    for nbytes in sizes:
        label = f"{size_name(nbytes)} on {device}"
        if rate is not None and rate * nbytes * 1.3 > ctx.left():
            for way in ("torch.save", "DCP async_save", kit_way):
                emit(Row("2", f"stall {label}: {way}", "skipped",
                         detail=f"would take ~{rate * nbytes:.0f} s; {ctx.left():.0f} s of this check left"))
            continue
        t_size = time.perf_counter()
        state = _make_state(nbytes, device)
        ts = _stall_torch_save(state, folder / "torch_save.pt")
        (folder / "torch_save.pt").unlink(missing_ok=True)
        emit(Row("2", f"stall {label}: torch.save", "info", seconds(ts), "",
                 "the training loop waits for the whole write (no fsync)"))
        if pg is None:
            dcp_warm = math.inf
            emit(Row("2", f"stall {label}: DCP async_save", "error", detail=f"1-rank process group: {pg_error}"))
        else:
            try:
                blocked, durable, how = _stall_dcp(state, folder / "dcp", pg)
                dcp_warm = blocked[1]
                emit(Row("2", f"stall {label}: DCP async_save", "info", f"{seconds(blocked[1])} (2nd save)",
                         f"1st save {seconds(blocked[0])}",
                         f"until durable {seconds(durable[0])} / {seconds(durable[1])}; returned {how}; "
                         f"1-rank {dist.get_backend(pg)} group (default group {dist.get_backend()})"))
            except Exception as exc:
                dcp_warm = math.inf
                emit(Row("2", f"stall {label}: DCP async_save", "error", detail=f"{type(exc).__name__}: {exc}"))
        blocked, durable = _stall_kit(state, folder / "kit")
        best_other = min(ts, dcp_warm)
        verdict = "ok" if blocked[1] <= best_other else "WARN"
        emit(Row("2", f"stall {label}: {kit_way}", verdict,
                 f"{seconds(blocked[1])} (2nd save)",
                 f"torch.save {seconds(ts)}; DCP {seconds(dcp_warm) if math.isfinite(dcp_warm) else 'n/a'}",
                 f"1st save (allocates {'pinned ' if cuda else ''}buffers) {seconds(blocked[0])}; until committed "
                 f"(serialized, hashed, fsynced, listed) {seconds(durable[0])} / {seconds(durable[1])}"))
        del state
        if cuda:
            torch.cuda.empty_cache()
        rate = (time.perf_counter() - t_size) / nbytes
    if pg is not None:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- 3 NVML vs nvidia-smi


SMI_FIELDS = ("utilization.gpu", "memory.used", "temperature.gpu", "power.draw")


def _nvml_read(nvml: Any, handle: Any) -> dict[str, float | None]:
    def get(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            return None

    util = get(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    mem = get(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    temp = get(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    power = get(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    return {
        "utilization.gpu": None if util is None else float(util.gpu),
        "memory.used": None if mem is None else mem.used / MB,
        "temperature.gpu": None if temp is None else float(temp),
        "power.draw": None if power is None else power / 1000.0,
    }


def _smi_read(index: int) -> tuple[dict[str, float | None], float]:
    t0 = time.perf_counter()
    out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(SMI_FIELDS)}",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30, check=True)
    took = time.perf_counter() - t0
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    parsed: dict[str, float | None] = {}
    for key, v in zip(SMI_FIELDS, values, strict=True):
        try:
            parsed[key] = float(v)
        except ValueError:  # "[N/A]", "[Not Supported]"
            parsed[key] = None
    return parsed, took


def _gpu_load(stop: threading.Event) -> None:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def check_nvml(ctx: Ctx) -> None:
    from atheria_kit.monitor import ResourceMonitor

    name = "NVML vs nvidia-smi vs ResourceMonitor"
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:
        monitor = ResourceMonitor(interval=1.0)
        mon = monitor.snapshot()
        monitor.close()
        smi = shutil.which("nvidia-smi")
        emit(Row("3", name, "no GPU", detail=f"pynvml: {type(exc).__name__}: {exc}; nvidia-smi: "
                 f"{smi or 'not found'}; ResourceMonitor sees {len(mon.gpus)} GPUs (CPU {mon.cpu_percent:.0f} %, "
                 f"RAM {mon.ram_used_bytes / GB:.1f} of {mon.ram_total_bytes / GB:.1f} GB)"))
        return
    if count == 0:
        emit(Row("3", name, "no GPU", detail="NVML works but sees no GPU"))
        return
    if shutil.which("nvidia-smi") is None:
        emit(Row("3", name, "skipped", detail=f"NVML sees {count} GPUs but nvidia-smi is not on PATH: nothing to "
                 "compare with"))
        return
    cuda, _ = gpu_state()
    stop = threading.Event()
    load = threading.Thread(target=_gpu_load, args=(stop,), daemon=True) if cuda else None
    if load is not None:
        load.start()
        time.sleep(2.0)  # NVML's utilization is an average over the last ~1 s: let the load fill a window
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    monitor = ResourceMonitor(interval=1.0)
    try:
        t0 = time.perf_counter()
        before = _nvml_read(pynvml, handle)
        nvml_seconds = time.perf_counter() - t0
        smi, smi_seconds = _smi_read(0)
        after = _nvml_read(pynvml, handle)
        snap = monitor.snapshot().gpus[0]
        try:
            v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            v2_used: float | None = v2.used / MB
            reserved = f"; NVML v2 (what newer nvidia-smi shows): used {v2.used / MB:.0f} MiB, reserved " \
                       f"{v2.reserved / MB:.0f} MiB"
        except Exception as exc:
            v2_used, reserved = None, f"; NVML v2 memory info unavailable ({type(exc).__name__})"
    finally:
        stop.set()
        monitor.close()
        if load is not None:
            load.join(timeout=30)  # a thread still in a CUDA call at interpreter exit can crash the process
    mon = {"utilization.gpu": snap.utilization_percent,
           "memory.used": None if snap.memory_used_bytes is None else snap.memory_used_bytes / MB,
           "temperature.gpu": snap.temperature_c, "power.draw": snap.power_w}
    tolerance = {"utilization.gpu": lambda v: 10.0, "memory.used": lambda v: 64.0,
                 "temperature.gpu": lambda v: 2.0, "power.draw": lambda v: max(25.0, 0.1 * v)}
    unit = {"utilization.gpu": "%", "memory.used": "MiB", "temperature.gpu": "C", "power.draw": "W"}
    for key in SMI_FIELDS:
        ref = smi[key]
        ours = [before[key], after[key], mon[key]]
        if ref is None or any(v is None for v in ours):
            emit(Row("3", f"NVML vs nvidia-smi: {key} ({unit[key]})", "WARN", f"pynvml {before[key]} / {after[key]}, monitor "
                     f"{mon[key]}", f"nvidia-smi {ref}", "a reading is missing on one side"))
            continue
        lo, hi = min(before[key], after[key]), max(before[key], after[key])
        tol = tolerance[key](ref)
        ok = lo - tol <= ref <= hi + tol and abs(mon[key] - ref) <= tol + (hi - lo)
        detail = f"tolerance {tol:g} {unit[key]}; pynvml read before and after nvidia-smi ran"
        if key == "memory.used":
            detail += reserved
            if not ok and v2_used is not None and abs(v2_used - ref) <= tol:
                detail += ("; nvidia-smi matches NVML's v2 figure, while pynvml's default call (and so "
                           "ResourceMonitor) includes the reserved memory")
        if key == "utilization.gpu":
            detail += f"; under a bf16 matmul load: {'yes' if load is not None else 'no (no CUDA in torch)'}"
        emit(Row("3", f"NVML vs nvidia-smi: {key} ({unit[key]})", "ok" if ok else "WARN",
                 f"pynvml {before[key]:.0f}/{after[key]:.0f}, monitor {mon[key]:.0f}", f"nvidia-smi {ref:.0f}",
                 detail))
    emit(Row("3", "NVML vs nvidia-smi: cost of one reading", "info", f"pynvml {seconds(nvml_seconds)} (4 fields)",
             f"nvidia-smi {seconds(smi_seconds)} (a process)", f"GPU 0: {snap.name}"))


# ------------------------------------------------------------------------------------------ 4 monitor overhead


def _workload(cuda: bool) -> Callable[[], None]:
    import torch

    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        dev, width, batch = torch.device("cuda"), 2048, 4096
    else:
        torch.set_num_threads(1)
        dev, width, batch = torch.device("cpu"), 256, 256
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())])
    model.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width, device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    return step


def _phase(step: Callable[[], None], duration: float) -> float:
    """Mean seconds per step over ``duration`` seconds."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        step()
        n += 1
    return (time.perf_counter() - t0) / n


def check_overhead(ctx: Ctx) -> None:
    from atheria_kit.monitor import ResourceMonitor

    cuda, reason = gpu_state()
    where = "GPU training step" if cuda else "CPU training step"
    phase = 5.0 if cuda else (1.0 if ctx.quick else 4.0)
    step = _workload(cuda)
    _phase(step, min(1.0, phase / 2))  # warm-up: allocator, kernels, caches
    monitor = ResourceMonitor(interval=1.0)
    monitor.sample_once()  # NVML's one-time initialisation is not part of the steady cost
    t0 = time.perf_counter()
    for _ in range(5):
        monitor.snapshot()
    snapshot_cost = (time.perf_counter() - t0) / 5
    off, on, samples = [], [], 0
    for _ in range(2):
        off.append(_phase(step, phase))
        before = len(monitor.history)
        monitor.start()
        on.append(_phase(step, phase))
        monitor.stop()
        samples += len(monitor.history) - before
    monitor.close()
    base, with_monitor = statistics.mean(off), statistics.mean(on)
    overhead = 100 * (with_monitor - base) / base
    noise = 100 * abs(off[0] - off[1]) / base
    # a machine whose own step time moves by more than 5 % between two identical runs cannot judge 1 %
    verdict = "info" if noise > 5.0 else ("ok" if overhead <= max(1.0, 2 * noise) else "WARN")
    gpus = len(monitor.last().gpus) if monitor.last() is not None else 0
    emit(Row("4", f"monitor overhead at 1 Hz, {where}", verdict, f"{seconds(with_monitor)}/step ({overhead:+.2f} %)",
             f"{seconds(base)}/step without", f"{samples} samples in {2 * phase:.0f} s with it ({gpus} GPUs read); "
             f"runs without it differ by {noise:.2f} % (noise{', too much to judge' if noise > 5.0 else ''}); "
             f"one snapshot {seconds(snapshot_cost)}"
             + ("" if cuda else f"; {reason}")))


# ------------------------------------------------------------------------------------------ 5 walkforward --use-gpu


def _walkforward(ctx: Ctx, flags: list[str], model: str, out: Path, limit: float) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "atheria_kit", "walkforward", "--mode", "count", "--n-splits", "3",
           "--no-early-stopping", "--out", str(out), *flags]
    t0 = time.monotonic()
    proc, reader = start(cmd, env=child_env(), cwd=str(REPO_ROOT))
    rc, lines = finish(proc, reader, min(ctx.deadline, t0 + limit))
    wall = time.monotonic() - t0
    if rc != 0:
        raise RuntimeError(f"atheria walkforward {' '.join(flags)} exit {rc} after {wall:.0f} s: {reader.tail(4)}")
    dirs = sorted((out / "direction").iterdir())
    run_dir = next((d for d in dirs if f"_{model}_" in d.name), dirs[0])
    folds = json.loads((run_dir / "fold_metrics.json").read_text())["folds"]
    import joblib

    model = joblib.load(run_dir / f"{run_dir.name}.joblib")
    # the runner's line "RUN: <what the resolver said>" (the resolver's own warning, if any, comes first)
    said = [ln for ln in lines if "walkforward.runner" in ln and ("--use-gpu:" in ln or " on CPU" in ln)]
    note = said[0].split(": ", 2)[-1] if said else ""
    return {"wall": wall, "folds": folds, "fit": sum(f.get("seconds", 0.0) for f in folds), "run": run_dir.name,
            "device": getattr(model, "device_used_", "cpu (scikit-learn)"),
            "batch": getattr(model, "batch_size_used_", None), "note": note}


def _auc(r: dict[str, Any]) -> str:
    return f"AUC {statistics.mean(f['auc'] for f in r['folds']):.4f}"


def check_walkforward(ctx: Ctx) -> None:
    from atheria_kit.walkforward.models import resolve_model

    cuda, reason = gpu_state()
    model, message = resolve_model("logreg", True)
    if not cuda:
        emit(Row("5", "atheria walkforward --use-gpu vs the CPU model", "no GPU", "", "",
                 f"{reason}; the resolver says: '{message}'"))
        return
    runs: dict[str, dict[str, Any]] = {}
    plan = [("gpu", ["--use-gpu"], model, f"--use-gpu ({model} on CUDA)"),
            ("cpu", ["--model", model], model, f"--model {model} (same model on CPU)"),
            ("sk", ["--model", "logreg"], "logreg", "--model logreg (scikit-learn, the CPU default)")]
    for i, (key, flags, trained, title) in enumerate(plan):
        limit = ctx.left() / (len(plan) - i)
        try:
            r = runs[key] = _walkforward(ctx, flags, trained, ctx.workdir / f"wf_{key}", limit)
        except Exception as exc:
            emit(Row("5", f"walkforward {title}", "error", detail=str(exc)))
            continue
        emit(Row("5", f"walkforward {title}", "info", f"{_auc(r)}, fits {seconds(r['fit'])}",
                 f"wall {seconds(r['wall'])}", f"{len(r['folds'])} folds; trained on {r['device']}"
                 + (f", batch {r['batch']}" if r["batch"] else "") + (f"; says: {r['note']}" if r["note"] else "")))
    if "gpu" in runs and "cpu" in runs:
        g, c = runs["gpu"], runs["cpu"]
        same_folds = [(f["fold"], f["train_size"], f["test_size"]) for f in g["folds"]] == \
                     [(f["fold"], f["train_size"], f["test_size"]) for f in c["folds"]]
        worst = max(abs(a["auc"] - b["auc"]) for a, b in zip(g["folds"], c["folds"], strict=False))
        on_gpu = str(g["device"]).startswith("cuda")
        ok = same_folds and on_gpu and worst <= 0.02
        sk = f"; scikit-learn logreg {_auc(runs['sk'])}, fits {seconds(runs['sk']['fit'])}" if "sk" in runs else ""
        emit(Row("5", "walkforward --use-gpu vs CPU, same folds", "ok" if ok else "WARN",
                 f"GPU {_auc(g)}, fits {seconds(g['fit'])}", f"CPU {_auc(c)}, fits {seconds(c['fit'])}",
                 f"folds identical: {same_folds}; max abs dAUC per fold {worst:.4f} (the GPU batch is sized to free "
                 f"memory, so the runs differ in batches, not in data); GPU model on {g['device']}{sk}"))


# ------------------------------------------------------------------------------------------ 6 DDP under torchrun


def _torchrun(ctx: Ctx, backend: str, nproc: int, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(HERE / "ddp_worker.py"), backend]
    t0 = time.monotonic()
    # its own process group: on a timeout torchrun and every rank it started are killed together
    proc, reader = start(cmd, env=child_env(OMP_NUM_THREADS="1"), cwd=str(REPO_ROOT), own_group=True)
    rc, lines = finish(proc, reader, min(ctx.deadline, t0 + limit), group=True)
    kill(proc, group=True)  # ranks left behind by a torchrun that ended
    wall = time.monotonic() - t0
    found = [json.loads(ln.split("@@ddp ", 1)[1]) for ln in lines if "@@ddp " in ln]
    if rc != 0 or not found:
        what = "timed out" if rc is None else f"exit {rc}"
        raise RuntimeError(f"torchrun {backend} x{nproc} {what} after {wall:.0f} s: {reader.tail(6)}")
    return {**found[0], "wall": wall}


def _ddp_row(ctx: Ctx, backend: str, nproc: int, name: str) -> Row:
    try:
        r = _torchrun(ctx, backend, nproc, ctx.left())
    except Exception as exc:
        return Row("6", name, "error", detail=str(exc))
    ok = r["allreduce_ok"] and r["ranks_equal"] and r["max_diff_vs_single"] <= 1e-4
    return Row("6", name, "ok" if ok else "FAIL",
               f"all_reduce sum {r['allreduce_value']:g} (expected {r['allreduce_expected']:g}); "
               f"ranks equal: {r['ranks_equal']}",
               f"1 process on all ranks' batches: max abs diff {r['max_diff_vs_single']:.1e}",
               f"{r['world']} ranks on {r['device_name']}; init {r['init_seconds']:.1f} s, wall {r['wall']:.1f} s; "
               f"all_reduce {r['allreduce_mb']:.0f} MB in {r['allreduce_ms']:.1f} ms ({r['bus_gbs']:.1f} GB/s bus); "
               f"{r['steps']} DDP steps")


def _cuda_without_torch() -> tuple[bool, str]:
    """Whether a CUDA device may be usable, decided without importing torch when it is not (a CPU build, or no
    GPU for NVML): the coordinating process then stays light, since torchrun and every rank import torch anyway."""
    try:
        build = torch_cuda_build()
    except (LookupError, OSError, ValueError, SyntaxError):
        build = "unknown"
    if build is None:
        return False, "torch is a CPU-only build"
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except Exception as exc:
        return False, f"NVML: {type(exc).__name__}: {exc}"
    if count == 0:
        return False, "NVML sees no GPU"
    return gpu_state()


def check_ddp(ctx: Ctx) -> None:
    cuda, reason = _cuda_without_torch()
    name = "DDP + NCCL under torchrun, one rank per GPU"
    if cuda:
        import torch

        n = torch.cuda.device_count()
        emit(_ddp_row(ctx, "nccl", n, f"{name} ({n})"))
    else:
        emit(Row("6", name, "no GPU", detail=reason))
    emit(_ddp_row(ctx, "gloo", 2, "DDP + gloo under torchrun, 2 CPU ranks"))


CHECKS: dict[str, tuple[str, Callable[[Ctx], None]]] = {
    "resume": ("1", check_resume),
    "stall": ("2", check_stall),
    "nvml": ("3", check_nvml),
    "overhead": ("4", check_overhead),
    "walkforward": ("5", check_walkforward),
    "ddp": ("6", check_ddp),
}


#: Test hook: a check named in this variable prints one row, then hangs in a subprocess it waits on forever, as a
#: collective waiting for a dead rank does. Only tests set it (the driver must kill the whole process group).
HANG_HOOK = "ATHERIA_DEVICE_CHECK_HANG"


def _hang(number: str) -> None:
    emit(Row(number, "hook: a row finished before the hang", "info"))
    subprocess.run([sys.executable, "-c", "import time; time.sleep(3600)"], check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one check of bench/device_check.py")
    p.add_argument("name", choices=sorted(CHECKS))
    p.add_argument("--workdir", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    ctx = Ctx(args.quick, Path(args.workdir), time.monotonic() + args.seconds)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    number, fn = CHECKS[args.name]
    if os.environ.get(HANG_HOOK) == args.name:
        _hang(number)
    try:
        fn(ctx)
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        emit(Row(number, args.name, "error", detail=f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:"
                 f"{last.lineno})"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
