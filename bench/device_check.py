"""Device check (issue 17): what only a GPU can prove about the kit, as one table, in under 5 minutes on one GPU.

Rows (``--only`` takes their numbers or names):

1. ``resume``: bit-exact resume. A training loop with dropout (and on CUDA with ``torch.autocast`` float16 and
   ``torch.amp.GradScaler``) saves through ``CheckpointManager`` + ``collect_state`` (CUDA RNG states included) as
   ``TrainingSession`` does, is SIGKILLed after a commit, resumes in a fresh process and finishes; its parameters,
   optimizer state, GradScaler state and loss history must equal an uninterrupted run's bit for bit, while a control
   restored without the RNG states must differ. CPU row (no AMP) everywhere, CUDA row on a GPU.
2. ``stall``: how long the training loop is blocked by a checkpoint of 100 MB, 1 GB and 4 GB of GPU tensors: the
   kit's save (pinned host buffers, reused from the previous save) next to ``torch.save`` and
   ``torch.distributed.checkpoint.async_save`` (1-rank process group), measured on the same state in the same run.
   Without a GPU: 100 MB of CPU tensors (1 GB without ``--quick``).
3. ``nvml``: utilization, memory used, temperature and power from pynvml, from ``nvidia-smi --query-gpu`` at the
   same moment (pynvml read just before and just after) and from ``atheria_kit.monitor.ResourceMonitor``.
4. ``overhead``: a fixed training step's time with and without ``ResourceMonitor`` sampling at 1 Hz.
5. ``walkforward``: ``atheria walkforward --use-gpu`` against the same torch model on the CPU and the
   scikit-learn default, on the same folds: AUC and fit time. Without a GPU: what the ``--use-gpu`` resolver says.
6. ``ddp``: ``torchrun`` with one rank per GPU on NCCL (an ``all_reduce`` with a known sum, its bandwidth, DDP
   steps checked against one process on all ranks' batches), and the same on 2 CPU ranks with gloo.

Each check runs in its own process under a time limit (``--timeout-per-check``, and the whole run under
``--total-seconds``): a check that overruns is killed with its subprocesses, the rows it finished are kept and the
rest is reported as a timeout, so the script never hangs. Rows print as they finish; one table closes the run.
Exit status 1 when a row reads FAIL, error or timeout.

    .venv/bin/python bench/device_check.py              # the GPU machine (estimated ~3 minutes on one H200;
                                                        # every limit together stays under --total-seconds 270)
    .venv/bin/python bench/device_check.py --quick      # the CPU rows: ~45 s of CPU time on 2 cores
    .venv/bin/python bench/device_check.py --only 1,nvml --timeout-per-check 90

Needs nothing beyond the kit and its dependencies (torch, numpy, psutil, nvidia-ml-py; scikit-learn for row 5)
and no network: the GPU machine runs it offline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._device.protocol import BAD_RESULTS, Row, finish, kill, start, torch_cuda_build  # noqa: E402

#: (number, name, what, default time limit in seconds on the GPU machine)
CHECKS: tuple[tuple[str, str, str, float], ...] = (
    ("1", "resume", "bit-exact resume after SIGKILL", 75.0),
    ("2", "stall", "checkpoint stall", 110.0),
    ("3", "nvml", "NVML vs nvidia-smi", 30.0),
    ("4", "overhead", "monitor overhead at 1 Hz", 45.0),
    ("5", "walkforward", "walkforward --use-gpu vs CPU", 80.0),
    ("6", "ddp", "DDP under torchrun", 60.0),
)
#: What each later check is guaranteed of the total when an earlier one may overrun.
FLOOR_SECONDS = 20.0


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torch_cuda_build() -> str:
    try:
        cuda = torch_cuda_build()
    except (LookupError, OSError, ValueError, SyntaxError) as exc:
        return f"CUDA unknown: {exc}"
    return f"CUDA {cuda}" if cuda else "CPU-only build"


def versions() -> list[str]:
    """Versions of everything the checks depend on, and the GPUs NVML sees."""
    import psutil

    import atheria_kit

    lines = [
        f"atheria_kit {atheria_kit.__version__}, Python {platform.python_version()}, torch {_dist_version('torch')} "
        f"({_torch_cuda_build()}), numpy {_dist_version('numpy')}, nvidia-ml-py {_dist_version('nvidia-ml-py')}, "
        f"psutil {_dist_version('psutil')}",
        f"host: {platform.node()}, {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GB RAM, "
        f"{platform.platform()}",
    ]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
            lines.append(f"NVIDIA driver {driver} (supports CUDA {cuda // 1000}.{cuda % 1000 // 10}); "
                         f"nvidia-smi: {shutil.which('nvidia-smi') or 'not found'}")
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                lines.append(f"GPU {i}: {name.decode() if isinstance(name, bytes) else name}, "
                             f"{mem.total / 2**30:.0f} GiB")
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        lines.append(f"NVML: no GPU ({type(exc).__name__}: {exc})")
    return lines


def select(only: str | None) -> list[tuple[str, str, str, float]]:
    if not only:
        return list(CHECKS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {c[0]: c for c in CHECKS} | {c[1]: c for c in CHECKS}
    bad = [w for w in wanted if w not in known]
    if bad:
        raise SystemExit(f"device_check: --only {only!r}: unknown {bad}; expected numbers 1-6 or names "
                         f"{', '.join(c[1] for c in CHECKS)}")
    chosen = {known[w][0] for w in wanted}
    return [c for c in CHECKS if c[0] in chosen]


def show(row: Row) -> None:
    ref = f" (vs {row.reference})" if row.reference else ""
    detail = f" -- {row.detail}" if row.detail else ""
    print(f"  [{row.check}] {row.result:<7} {row.name}: {row.measured or '-'}{ref}{detail}", flush=True)


def run_check(number: str, name: str, limit: float, workdir: Path, quick: bool, verbose: bool) -> list[Row]:
    """Run one check in its own process group for at most ``limit`` seconds; its rows (plus a timeout or error)."""
    cmd = [sys.executable, "-u", "-m", "bench._device.checks", name, "--workdir", str(workdir / name),
           "--seconds", f"{max(1.0, limit - 5.0):.1f}"] + (["--quick"] if quick else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0, cpu0 = time.monotonic(), _children_cpu()
    proc, reader = start(cmd, env=env, cwd=str(REPO_ROOT), own_group=True)
    rows: list[Row] = []
    try:
        for line in reader.until(t0 + limit):
            row = Row.parse(line)
            if row is not None:
                rows.append(row)
                show(row)
            elif verbose:
                print(f"      {line}", flush=True)
        rc, _ = finish(proc, reader, t0 + limit, group=True)
    finally:  # also on Ctrl-C: the check runs in its own session, which the terminal's SIGINT does not reach
        kill(proc, group=True)  # and whatever the check started and left behind
    took = time.monotonic() - t0
    extra = None
    if rc is None:
        extra = Row(number, name, "timeout", detail=f"killed at its limit of {limit:.0f} s with its subprocesses; "
                    f"{len(rows)} rows finished before (above); last output: {reader.tail(3) or 'none'}")
    elif rc != 0 and not any(r.result == "error" for r in rows):
        extra = Row(number, name, "error", detail=f"exit {rc} after {took:.0f} s: {reader.tail(4)}")
    elif not rows:
        extra = Row(number, name, "error", detail=f"printed no row (exit {rc}): {reader.tail(4)}")
    if extra is not None:
        rows.append(extra)
        show(extra)
    print(f"  ({name}: {took:.1f} s, {_children_cpu() - cpu0:.1f} s CPU)", flush=True)
    return rows


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children and theirs (the checks and everything they started)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def table(rows: list[Row]) -> str:
    head = ("#", "check", "result", "measured", "reference", "detail")
    # a "|" inside a cell would split it in Markdown
    cells = [head] + [tuple(c.replace("|", "/") for c in (r.check, r.name, r.result, r.measured, r.reference,
                                                          r.detail)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(c[i].ljust(widths[i]) for i in range(5)) + f" | {c[5]} |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|---|"
    return "\n".join([line(head), sep] + [line(c) for c in cells[1:]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs and smaller states (the CPU run in CI)")
    p.add_argument("--only", metavar="ROW[,ROW]", help="rows by number (1-6) or name: "
                   + ", ".join(c[1] for c in CHECKS))
    p.add_argument("--timeout-per-check", type=float, metavar="SECONDS",
                   help="time limit of every check (default: per check, " + ", ".join(
                       f"{c[1]} {c[3]:.0f}" for c in CHECKS) + ")")
    p.add_argument("--total-seconds", type=float, default=270.0, metavar="SECONDS",
                   help="the whole run's limit; later checks keep at least 20 s each (default 270)")
    p.add_argument("--workdir", metavar="DIR", help="where the checks write (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the checks' files")
    p.add_argument("-v", "--verbose", action="store_true", help="show the checks' own output too")
    args = p.parse_args(argv)
    for flag, value in (("--timeout-per-check", args.timeout_per_check), ("--total-seconds", args.total_seconds)):
        if value is not None and not value > 0:
            p.error(f"{flag}={value!r} is invalid; expected a positive number of seconds")
    chosen = select(args.only)

    t_start = time.monotonic()
    print("atheria_kit device check (issue 17)" + (" --quick" if args.quick else ""))
    for line in versions():
        print("  " + line)
    print(flush=True)
    root = Path(tempfile.mkdtemp(prefix="atheria-device-check-", dir=args.workdir))
    rows: list[Row] = []
    try:
        for i, (number, name, what, default_limit) in enumerate(chosen):
            left = args.total_seconds - (time.monotonic() - t_start)
            later = len(chosen) - i - 1
            limit = min(args.timeout_per_check or default_limit, left - FLOOR_SECONDS * later)
            print(f"{number}. {what} (limit {max(limit, 0):.0f} s)", flush=True)
            if limit < 5:
                row = Row(number, name, "skipped", detail=f"{left:.0f} s of --total-seconds left, "
                          f"{later} checks after this one")
                rows.append(row)
                show(row)
                continue
            rows += run_check(number, name, limit, root, args.quick, args.verbose)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    total = time.monotonic() - t_start
    print(f"\nDevice check table ({total:.0f} s in all{'; files kept in ' + str(root) if args.keep else ''}):")
    print(table(rows), flush=True)
    return 1 if any(r.result in BAD_RESULTS for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
