"""Run one function on every local GPU from a notebook: ``launch(train, nprocs="auto")``.

Data-parallel training wants one process per GPU, and a notebook is one process. There are two ways to get the others:

* **fork** (the fast path, like ``accelerate.notebook_launcher`` and Lightning's ``ddp_notebook``): the kernel is
  copied, so ``fn`` may be anything defined in the notebook, with any arguments. It is only safe while nothing in
  this process has talked to the CUDA driver: a forked child of a process with a CUDA context fails with
  "Cannot re-initialize CUDA in forked subprocess" or "CUDA error: initialization error" (accelerate #940, #3524,
  #3833). The check used here is stronger than ``torch.cuda.is_initialized()``, which stays False when another
  library, or ``torch.cuda.is_available()`` itself, initialised the driver: the driver library being mapped into this
  process counts as "in use" too. The GPU count comes from NVML (``torch.cuda.device_count``), which does not
  initialise the driver.
* **torchrun** (the fallback, when CUDA is in use, fork is unsafe on this platform, or ``method="torchrun"``): a
  small script that imports ``fn`` (or, for a function defined in the notebook, carries its source) runs under
  ``python -m torch.distributed.run``. The function must then be self-contained: it imports what it uses inside its
  body (modules the notebook imported are imported for it) and gets data through its arguments, which are pickled.

On both paths every rank gets an initialised process group (``nccl`` with GPUs, else ``gloo``) before ``fn`` runs and
loses it after; ``fn`` asks ``torch.distributed.get_rank()`` which rank it is. Every rank's output (stdout, stderr,
C-level writes included) reaches the caller's ``stream`` line by line, each line prefixed ``[rank R] `` (rank 0's
too, so no line is ambiguous). A rank that fails stops the others within ``shutdown_timeout`` seconds (no rank is left
waiting in a collective) and :class:`LaunchError` names it, its exit code and its last lines. An interrupt in the
caller (the notebook's stop button) kills the whole group, then re-raises.
"""

from __future__ import annotations

import ast
import builtins
import codecs
import collections
import dataclasses
import dis
import inspect
import io
import json
import logging
import os
import pickle
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import psutil
import torch

from atheria_kit._validation import require_choice, require_int, require_positive
from atheria_kit.platform import LAUNCH_RANK_ENV
from atheria_kit.say import UserError

log = logging.getLogger(__name__)

__all__ = ["LaunchError", "launch"]

METHODS = ("auto", "fork", "torchrun")
BACKENDS = ("nccl", "gloo")
#: How many of a failed rank's last output lines the error shows.
TAIL_LINES = 25
_RESULT_FILE = "result.pkl"
_PAYLOAD_FILE = "payload.pkl"
_SCRIPT_FILE = "launch_script.py"
#: torchrun's failure summary: "rank      : 1 (local_rank: 1)" then "exitcode  : -9 (pid: 123) ..."
_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


class LaunchError(UserError):
    """A launched job failed: ``rank`` (None when no rank is to blame), its ``exitcode`` and its last output ``lines``."""

    def __init__(self, message: str, *, rank: int | None = None, exitcode: int | None = None,
                 lines: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode
        self.lines = tuple(lines)


def launch(fn: Callable[..., Any], *args: Any, nprocs: int | str = "auto", backend: str | None = None,
           master_port: int | None = None, stream: TextIO | None = None,
           cuda_initialized: Callable[[], bool] | None = None, method: str = "auto",
           shutdown_timeout: float = 10.0, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on ``nprocs`` local processes of one data-parallel job; return rank 0's result.

    ``nprocs="auto"`` is one process per visible GPU (one process without GPUs). With one process ``fn`` is simply
    called here, without a process group. With more, each rank runs in its own process with ``torch.distributed``
    initialised (``backend``: "nccl" with GPUs, else "gloo"; ``MASTER_ADDR=127.0.0.1``, ``master_port`` or a free
    one; ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set; with GPUs rank ``r`` uses ``cuda:r``). Rank 0's return value
    comes back (it must be picklable); the other ranks' return values are discarded: they are replicas in
    data-parallel training, so anything a rank must report, it sends to rank 0 with a collective.

    ``method``: "auto" forks when that is safe and uses torchrun otherwise; "fork" or "torchrun" force one path
    ("fork" raises when forking is unsafe). ``cuda_initialized`` replaces the check "is CUDA in use in this process"
    (tests simulate a notebook that already used the GPU). ``stream`` receives every rank's prefixed output lines
    (default: ``sys.stdout`` at the time of the call, the cell's output in a notebook). ``shutdown_timeout``: seconds
    the other ranks get to stop after one failed, before they are killed. Keyword arguments named like these
    parameters are taken by ``launch``: give such arguments of ``fn`` other names, or pass them inside a dict.
    """
    if not callable(fn):
        raise TypeError(f"fn={fn!r} is invalid; expected a function to run on every rank")
    require_choice("method", method, METHODS)
    require_positive("shutdown_timeout", shutdown_timeout)
    gpus = _visible_gpu_count()
    n = _resolve_nprocs(nprocs, gpus)
    if n == 1:
        return fn(*args, **kwargs)
    if os.name == "nt":
        raise UserError(f"launch(nprocs={n}) needs Linux or macOS (Colab, Kaggle, a Linux JupyterLab); on Windows "
                        "run one process (nprocs=1)")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise UserError(f"launch(nprocs={n}) starts its own process group, but this process already has one: call "
                        "torch.distributed.destroy_process_group() first (or run fn here, with nprocs=1)")
    chosen_backend = _resolve_backend(backend, gpus, n)
    port = _free_port() if master_port is None else require_int("master_port", master_port, minimum=1,
                                                                 maximum=65535)
    in_use = _cuda_in_use if cuda_initialized is None else cuda_initialized
    if not callable(in_use):
        raise TypeError(f"cuda_initialized={in_use!r} is invalid; expected a function returning True or False")
    unsafe = _fork_unsafe_reason(bool(in_use()))
    if method == "fork" and unsafe:
        raise UserError(f"launch(method='fork') is not safe here: {unsafe}. Use method='auto', which then runs "
                        "the function under torchrun (or restart the kernel and launch before anything uses CUDA).")
    job = _Job(n=n, backend=chosen_backend, port=port, stream=sys.stdout if stream is None else stream,
               shutdown_timeout=float(shutdown_timeout))
    if method == "fork" or (method == "auto" and not unsafe):
        log.info("launch: forking %d ranks (%s, port %d)", n, chosen_backend, port)
        return _launch_fork(job, fn, args, kwargs)
    log.info("launch: running %d ranks under torchrun (%s, port %d)%s", n, chosen_backend, port,
             f" because {unsafe}" if unsafe else "")
    return _launch_torchrun(job, fn, args, kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Boundary checks and environment


def _visible_gpu_count() -> int:
    # torch.cuda.device_count asks NVML first, which does not initialise the CUDA driver; torch.cuda.is_available
    # calls cudaGetDeviceCount, which does (cuInit), and would make every later fork unsafe.
    try:
        return int(torch.cuda.device_count())
    except Exception:  # a broken driver install means no usable GPU, not a failed launch
        log.debug("launch: torch.cuda.device_count failed; assuming no GPU", exc_info=True)
        return 0


def _resolve_nprocs(nprocs: int | str, gpus: int) -> int:
    if nprocs == "auto":
        return max(gpus, 1)
    if isinstance(nprocs, str):
        raise ValueError(f"nprocs={nprocs!r} is invalid; expected 'auto' or an integer >= 1")
    return require_int("nprocs", nprocs, minimum=1)


def _resolve_backend(backend: str | None, gpus: int, n: int) -> str:
    if backend is None:
        backend = "nccl" if gpus > 0 else "gloo"
    require_choice("backend", backend, BACKENDS)
    if backend == "nccl" and n > gpus:
        raise ValueError(f"nprocs={n} is invalid with backend='nccl': {gpus} GPU(s) visible, and NCCL needs one "
                         "GPU per rank; use nprocs <= the GPU count, or backend='gloo' for CPU ranks")
    return backend


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cuda_driver_mapped(maps: str = "/proc/self/maps") -> bool:
    """Whether the CUDA driver library is loaded in this process: something has talked to the driver."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as fh:
            return any("libcuda.so" in line for line in fh)
    except OSError:  # not Linux: no way to tell, rely on torch's own flag
        return False


def _cuda_in_use() -> bool:
    """The default check: torch's CUDA state is initialised, or another library initialised the driver."""
    return bool(torch.cuda.is_initialized()) or _cuda_driver_mapped()


def _fork_unsafe_reason(cuda_in_use: bool) -> str | None:
    import multiprocessing

    if cuda_in_use:
        return "CUDA is already in use in this process, and a forked child cannot use it"
    if "fork" not in multiprocessing.get_all_start_methods():
        return f"this platform ({sys.platform}) cannot fork"
    if sys.platform == "darwin":  # fork is available on macOS but unsafe with its system frameworks
        return "forking is unsafe on macOS"
    if torch.cuda._is_in_bad_fork():
        return "this process is itself a forked child of a process that used CUDA"
    return None


# ---------------------------------------------------------------------------------------------------------------
# What every rank runs (both paths)


@dataclasses.dataclass(frozen=True)
class _Job:
    n: int
    backend: str
    port: int
    stream: TextIO
    shutdown_timeout: float


def _redirect_output(fd: int) -> None:
    """Point this process's stdout and stderr (Python and C level) at ``fd``, line-buffered."""
    # Not flushed: in a forked kernel they are socket-backed objects this process must not use (multiprocessing
    # flushed them before the fork).
    old = (sys.stdout, sys.stderr)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace",
                                  line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace",
                                  line_buffering=True)
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in old:
                handler.setStream(sys.stderr if handler.stream is old[1] else sys.stdout)


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies, so no rank outlives an interrupted launch."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        log.debug("launch: prctl(PR_SET_PDEATHSIG) unavailable", exc_info=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _run_rank(workdir: Path, call: Callable[[], Any], *, rank: int, local_rank: int, world: int,
              backend: str) -> None:
    """Initialise the process group, run ``call``, report: a status file per rank, rank 0's result file."""
    os.environ["ATHERIA_HEADLESS"] = "1"  # the live view cannot draw widgets from another process: text lines
    os.environ[LAUNCH_RANK_ENV] = str(rank)  # no displays from here: the kernel's connection is not ours
    _write_json(workdir / f"rank-{rank}.start", {"pid": os.getpid()})
    dist = torch.distributed
    try:
        if torch.cuda.device_count() > local_rank:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
        result = call()
        if rank == 0:
            buffer = io.BytesIO()
            try:
                torch.save(result, buffer)  # torch's pickle: the caller can load GPU tensors onto the CPU
            except Exception as exc:
                raise TypeError(f"rank 0's return value ({type(result).__name__}) cannot be sent back to the "
                                f"caller: it is not picklable ({exc}); return plain data (numbers, dicts, "
                                "tensors, state_dicts) instead") from exc
            tmp = workdir / (_RESULT_FILE + ".tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, workdir / _RESULT_FILE)
    except (Exception, KeyboardInterrupt) as exc:  # an interrupted rank is a failed rank, not an empty result
        # The status first: tearing down a process group whose peers are gone can block.
        _write_json(workdir / f"rank-{rank}.error", {"time": time.time(), "error": f"{type(exc).__name__}: {exc}"})
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # the user's frames only: the launcher's own are noise in their error
        traceback.print_exception(type(exc), exc, tb)
        sys.stderr.flush()
        _destroy_group()
        sys.exit(1)
    _destroy_group()
    sys.stdout.flush()
    sys.stderr.flush()


def _destroy_group() -> None:
    dist = torch.distributed
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # the job is over either way; a peer that is gone must not hide the real error
        log.debug("launch: destroy_process_group failed", exc_info=True)


def _set_rank_env(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


# ---------------------------------------------------------------------------------------------------------------
# Fork path


def _fork_entry(rank: int, fn: Callable[..., Any], args: tuple, kwargs: dict, job: _Job, workdir: str,
                pipes: list[tuple[int, int]]) -> None:
    for i, (r, w) in enumerate(pipes):
        os.close(r)
        if i != rank:
            os.close(w)
    _redirect_output(pipes[rank][1])
    os.close(pipes[rank][1])
    _die_with_parent()
    # Handlers the kernel installed (a training budget's "save and stop" on SIGTERM) are not this rank's.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A forked child of a process that ran a parallel CPU op deadlocks in its own first one: the OpenMP pool's
    # threads were not copied. One thread is safe, and it is what torchrun gives each rank by default too.
    torch.set_num_threads(1)
    _set_rank_env(rank, job.n, job.port)
    _run_rank(Path(workdir), lambda: fn(*args, **kwargs), rank=rank, local_rank=rank, world=job.n,
              backend=job.backend)


class _ForkRanks:
    """The forked ranks as the supervisor sees them."""

    def __init__(self, context: Any) -> None:
        self.processes = list(context.processes)

    def exit_codes(self) -> dict[int, int | None]:
        return {rank: p.exitcode for rank, p in enumerate(self.processes)}

    def sentinels(self) -> list[int]:
        return [p.sentinel for p in self.processes if p.exitcode is None]

    def done(self) -> bool:
        return all(p.exitcode is not None for p in self.processes)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.exitcode is None and p.pid is not None]

    def terminate(self, spare: Iterable[int] = ()) -> None:
        for rank, p in enumerate(self.processes):
            if p.exitcode is None and rank not in spare:
                p.terminate()

    def kill(self) -> None:
        _kill_tree(self.pids())
        for p in self.processes:
            p.join(timeout=5)


def _launch_fork(job: _Job, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    import torch.multiprocessing as mp

    workdir = Path(tempfile.mkdtemp(prefix="atheria-launch-"))
    pipes = [os.pipe() for _ in range(job.n)]
    try:
        try:
            context = mp.start_processes(_fork_entry, args=(fn, args, kwargs, job, str(workdir), pipes),
                                         nprocs=job.n, join=False, start_method="fork")
        finally:
            for _, w in pipes:
                os.close(w)
        ranks = _ForkRanks(context)
        out = _Output(job.stream, {r: rank for rank, (r, _) in enumerate(pipes)})
        _supervise(job, ranks, out, workdir, torchrun_log=None)
        return _read_result(workdir)
    finally:
        for r, _ in pipes:
            _close_quietly(r)
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# torchrun path

#: Runs torchrun (``python -m torch.distributed.run``) so that it gets SIGTERM, and stops its ranks, if the caller
#: dies (a kernel restart): without this, its ranks would keep the GPUs busy with no one to report to.
_TORCHRUN_SHIM = (
    "import ctypes, runpy, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM)\n"
    "runpy.run_module('torch.distributed.run', run_name='__main__', alter_sys=True)\n"
)


def _torchrun_rank_main(workdir: str, fn: Callable[..., Any] | None = None) -> None:
    """Entry point of the generated script, on every rank started by torchrun."""
    wd = Path(workdir)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    fd = os.open(wd / f"rank-{rank}.out", os.O_WRONLY)
    _redirect_output(fd)
    os.close(fd)
    _die_with_parent()
    try:
        with open(wd / _PAYLOAD_FILE, "rb") as fh:
            payload = pickle.load(fh)  # written by launch() in this job's private folder
    except Exception as exc:  # e.g. an argument's module that this fresh interpreter cannot import
        _write_json(wd / f"rank-{rank}.error", {"time": time.time(), "error": f"{type(exc).__name__}: {exc}"})
        traceback.print_exc()
        sys.exit(1)
    target = fn if fn is not None else payload["fn"]
    args, kwargs = payload["args"], payload["kwargs"]
    _run_rank(wd, lambda: target(*args, **kwargs), rank=rank, local_rank=local_rank, world=world,
              backend=payload["backend"])


class _TorchrunRanks:
    def __init__(self, proc: subprocess.Popen, workdir: Path) -> None:
        self.proc = proc
        self.workdir = workdir

    def exit_codes(self) -> dict[str, int | None]:
        return {"torchrun": self.proc.poll()}

    def sentinels(self) -> list[int]:
        return []

    def done(self) -> bool:
        return self.proc.poll() is not None

    def pids(self) -> list[int]:
        pids = []
        for start in self.workdir.glob("rank-*.start"):
            try:
                pids.append(int(json.loads(start.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                continue
        try:
            pids += [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            pass
        return sorted(set(pids) | ({self.proc.pid} if self.proc.poll() is None else set()))

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # torchrun forwards SIGTERM to its ranks

    def kill(self) -> None:
        _kill_tree(self.pids())
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("launch: torchrun (pid %d) did not exit after SIGKILL", self.proc.pid)


def _launch_torchrun(job: _Job, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    source, payload_fn = _function_for_script(fn)
    payload = {"fn": payload_fn, "args": args, "kwargs": kwargs, "backend": job.backend}
    data = _pickle_payload(payload)
    workdir = Path(tempfile.mkdtemp(prefix="atheria-launch-"))
    fds: dict[int, int | str] = {}
    try:
        (workdir / _PAYLOAD_FILE).write_bytes(data)
        (workdir / _SCRIPT_FILE).write_text(_script(workdir, source, fn))
        for rank in range(job.n):
            fifo = workdir / f"rank-{rank}.out"
            os.mkfifo(fifo)
            fds[os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)] = rank
            # A writer held here keeps the FIFO from reading as closed before the rank opens it.
            fds[os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)] = "keep"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, without its warning
        cmd = [sys.executable, "-c", _TORCHRUN_SHIM, "--nnodes", "1", "--nproc-per-node", str(job.n),
               "--master-addr", "127.0.0.1", "--master-port", str(job.port), str(workdir / _SCRIPT_FILE)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
        assert proc.stdout is not None
        out = _Output(job.stream, {fd: rank for fd, rank in fds.items() if rank != "keep"})
        out.add(proc.stdout.fileno(), "torchrun")
        try:
            _supervise(job, _TorchrunRanks(proc, workdir), out, workdir, torchrun_log=out.tails["torchrun"])
        finally:
            proc.stdout.close()
        return _read_result(workdir)
    finally:
        for fd in fds:
            _close_quietly(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _script(workdir: Path, source: str | None, fn: Callable[..., Any]) -> str:
    paths = [p or os.getcwd() for p in sys.path]
    lines = ["# Written by atheria_kit.launch: one rank of a launch() under torchrun.",
             "from __future__ import annotations", "import sys", f"sys.path[:0] = {paths!r}", ""]
    if source is not None:
        lines += [source, "", "from atheria_kit.launch import _torchrun_rank_main",
                  f"_torchrun_rank_main({str(workdir)!r}, {fn.__name__})"]
    else:
        lines += ["from atheria_kit.launch import _torchrun_rank_main", f"_torchrun_rank_main({str(workdir)!r})"]
    return "\n".join(lines) + "\n"


def _importable(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be found again by its module and name in a fresh process."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
        return False
    obj: Any = sys.modules.get(module)
    if obj is None or not getattr(obj, "__file__", None):
        return False
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


def _function_for_script(fn: Callable[..., Any]) -> tuple[str | None, Callable[..., Any] | None]:
    """``(source to write into the script, None)`` for a notebook function, else ``(None, fn)`` to pickle."""
    name = getattr(fn, "__name__", type(fn).__name__)
    if isinstance(fn, types.FunctionType) and fn.__name__ == "<lambda>":
        raise UserError("launch cannot run a lambda under torchrun: its source is not a definition a script can "
                        "hold. Define the function with def (in a cell or a module).")
    if not isinstance(fn, types.FunctionType) or _importable(fn):
        return None, fn  # a module-level function or a picklable callable: the ranks import it
    if inspect.iscoroutinefunction(fn):
        raise UserError(f"launch runs plain functions; {name} is async")
    if hasattr(fn, "__wrapped__"):
        raise UserError(f"launch cannot send the decorated function {name} to torchrun as source: define it in a "
                        "module (a .py file next to the notebook) and import it, or drop the decorator.")
    if fn.__code__.co_freevars:
        raise UserError(f"launch cannot run {name} under torchrun: it is a closure over "
                        f"{', '.join(fn.__code__.co_freevars)} from the function that defined it. Define it at the "
                        "top level of a cell and pass those values as arguments.")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise UserError(f"launch cannot run {name} under torchrun: its source code is not available ({exc}). "
                        "Define it in a notebook cell or in a module file.") from exc
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fn.__name__), None)
    if node is None:
        raise UserError(f"launch cannot run {name} under torchrun: its source does not define it with def")
    node.decorator_list = []
    imports = _imports_for_globals(fn)
    return "\n".join([*imports, "", ast.unparse(node)]), None


def _global_reads(code: types.CodeType) -> set[str]:
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_reads(const)
    return {n for n in names if isinstance(n, str)}


def _imports_for_globals(fn: types.FunctionType) -> list[str]:
    """Import lines that recreate the modules and importable objects ``fn`` reads from the notebook's globals.

    Anything else it reads (a notebook variable, a function or class defined in the notebook) cannot reach a fresh
    process as source: refuse, naming it, rather than fail later with a NameError on every rank.
    """
    imports, missing = [], []
    for name in sorted(_global_reads(fn.__code__)):
        if name == fn.__name__ or name not in fn.__globals__:
            continue  # recursion, or a builtin
        if hasattr(builtins, name) and fn.__globals__[name] is getattr(builtins, name):
            continue
        value = fn.__globals__[name]
        if isinstance(value, types.ModuleType):
            imports.append(f"import {value.__name__} as {name}" if value.__name__ != name else f"import {name}")
        elif _importable(value) and "." not in value.__qualname__:
            imports.append(f"from {value.__module__} import {value.__qualname__} as {name}")
        else:
            missing.append(f"{name} ({type(value).__name__})")
    if missing:
        raise UserError(f"launch cannot run {fn.__name__} under torchrun: it reads {', '.join(missing)} from the "
                        "notebook, and only its source reaches the other processes. Make it self-contained: "
                        "import what it uses inside its body and pass data as arguments.")
    return imports


class _MainRefusingPickler(pickle.Pickler):
    """Refuses objects whose class lives in ``__main__``: a torchrun rank's ``__main__`` is the script, not the notebook."""

    def persistent_id(self, obj: Any) -> None:
        cls = obj if isinstance(obj, type) else type(obj)
        owner = obj if isinstance(obj, (types.FunctionType, type)) else cls
        if getattr(owner, "__module__", None) == "__main__":
            raise pickle.PicklingError(f"{getattr(owner, '__qualname__', owner)!s} is defined in the notebook "
                                       "(__main__), so a torchrun rank cannot rebuild it")
        return None


def _pickle_payload(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    for field in ("fn", "args", "kwargs"):
        try:
            _MainRefusingPickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(payload[field])
        except Exception as exc:
            what = "the function" if field == "fn" else f"the {field} given to launch"
            raise UserError(f"launch under torchrun needs {what} to be picklable (they travel to the ranks as a "
                            f"file): {exc}. Pass plain data (numbers, strings, paths, tensors, dicts) and build "
                            "models and loaders inside the function.") from exc
    pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Supervision: output, failures, interrupts


class _Output:
    """Reads the ranks' output descriptors and writes whole, prefixed lines to ``stream``; keeps each one's tail."""

    _LINE = re.compile(r"(.*?(?:\r\n|\n|\r))", re.S)

    def __init__(self, stream: TextIO, fds: dict[int, int | str]) -> None:
        self.stream = stream
        self.fds: dict[int, int | str] = {}
        self.pending: dict[int | str, str] = {}
        self.decoders: dict[int | str, Any] = {}
        self.tails: dict[int | str, collections.deque[str]] = {}
        for fd, label in fds.items():
            self.add(fd, label)

    def add(self, fd: int, label: int | str) -> None:
        os.set_blocking(fd, False)
        self.fds[fd] = label
        self.pending[label] = ""
        self.decoders[label] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tails[label] = collections.deque(maxlen=TAIL_LINES)

    def pump(self, timeout: float, extra: list[int]) -> None:
        """Wait up to ``timeout`` for output (or for one of the ``extra`` descriptors), then forward what came."""
        ready, _, _ = select.select([*self.fds, *extra], [], [], timeout)
        for fd in ready:
            if fd in self.fds:
                self._read(fd)

    def drain(self) -> None:
        for fd in list(self.fds):
            self._read(fd)
        for label, rest in self.pending.items():
            if rest:
                self._emit(label, rest + "\n")
            self.pending[label] = ""

    def _read(self, fd: int) -> None:
        label = self.fds[fd]
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                del self.fds[fd]
                return
            text = self.pending[label] + self.decoders[label].decode(chunk)
            lines = list(self._LINE.finditer(text))
            if lines and lines[-1].end() == len(text) and text.endswith("\r"):
                lines.pop()  # maybe the first half of a "\r\n" split across two reads: the next read decides
            for match in lines:
                self._emit(label, match.group(1))
            self.pending[label] = text[lines[-1].end():] if lines else text

    def _emit(self, label: int | str, line: str) -> None:
        body = line.rstrip("\r\n")
        if label == "torchrun":  # the launcher's own messages: kept for errors, logged, not shown
            self.tails[label].append(body)
            log.info("torchrun: %s", body)
            return
        self.tails[label].append(body)
        ending = "\r" if line.endswith("\r") and not line.endswith("\r\n") else "\n"
        self.stream.write(f"[rank {label}] {body}{ending}")
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


def _supervise(job: _Job, ranks: Any, out: _Output, workdir: Path, torchrun_log: Any) -> None:
    """Forward output until every rank has exited; on a failure stop the others; on an interrupt kill them all."""
    deadline: float | None = None
    terminated = False
    culprit: int | None = None
    try:
        while not ranks.done():
            out.pump(0.1, ranks.sentinels())
            if deadline is None and _failure_seen(ranks, workdir):
                deadline = time.monotonic() + job.shutdown_timeout
                if isinstance(ranks, _ForkRanks):
                    # Who failed first, decided before the others are stopped (their deaths are consequences).
                    culprit = _culprit(ranks.exit_codes(), _rank_errors(workdir), None)[0]
                    # SIGTERM now: a survivor blocked in a collective with the failed rank would wait forever.
                    # (torchrun does the same for its ranks by itself.)
                    ranks.terminate(spare=_failed_ranks(workdir))  # a failed rank is still printing its error
                    terminated = True
            if deadline is not None and time.monotonic() > deadline:
                if not terminated:
                    log.warning("launch: ranks still running %.0f s after a failure; terminating them",
                                job.shutdown_timeout)
                    ranks.terminate()
                    terminated = True
                    deadline = time.monotonic() + min(job.shutdown_timeout, 5.0)
                else:
                    log.warning("launch: ranks ignored SIGTERM; killing them")
                    ranks.kill()
    except BaseException:  # KeyboardInterrupt (the notebook's stop button) or a failing stream: nothing survives
        ranks.kill()
        try:
            out.drain()
        except Exception:
            log.debug("launch: output after an interrupt was lost", exc_info=True)
        raise
    out.drain()
    _raise_on_failure(job, ranks, out, workdir, torchrun_log, culprit)


def _failed_ranks(workdir: Path) -> set[int]:
    """The ranks that reported an exception (they exit by themselves)."""
    return {int(path.name.split("-")[1].split(".")[0]) for path in workdir.glob("rank-*.error")}


def _rank_errors(workdir: Path) -> dict[int, dict[str, Any]]:
    errors = {}
    for path in workdir.glob("rank-*.error"):
        try:
            errors[int(path.name.split("-")[1].split(".")[0])] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return errors


def _failure_seen(ranks: Any, workdir: Path) -> bool:
    if any(code not in (None, 0) for code in ranks.exit_codes().values()):
        return True
    return bool(_failed_ranks(workdir))


def _culprit(codes: dict[Any, int | None], errors: dict[int, dict[str, Any]],
             torchrun_log: Iterable[str] | None) -> tuple[int | None, int | None]:
    """``(rank, exit code)`` of the rank that failed first.

    A rank that died without reporting an exception (a signal: the OOM killer, a segfault) is the cause: the
    exceptions of the others ("connection closed by peer") are its consequences. Otherwise the earliest exception.
    """
    if torchrun_log is None:  # fork: this process sees every rank's exit code
        silent = sorted(r for r, code in codes.items() if code not in (None, 0) and r not in errors)
        if silent:
            return silent[0], codes[silent[0]]
    else:
        match = _ROOT_CAUSE.search("\n".join(torchrun_log))
        if match and int(match.group(1)) not in errors:
            return int(match.group(1)), int(match.group(2))
    if errors:
        rank = min(errors, key=lambda r: errors[r]["time"])
        return rank, 1
    return None, codes.get("torchrun")


def _raise_on_failure(job: _Job, ranks: Any, out: _Output, workdir: Path, torchrun_log: Any,
                      culprit: int | None) -> None:
    errors = _rank_errors(workdir)
    codes = ranks.exit_codes()
    if not errors and all(code == 0 for code in codes.values()):
        return
    fork = isinstance(ranks, _ForkRanks)
    if fork and culprit is not None:
        rank, exitcode = culprit, codes.get(culprit)
    else:
        rank, exitcode = _culprit(codes, errors, None if fork else list(torchrun_log or ()))
    cause = errors[rank]["error"] if rank in errors else None
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name} (exit code {exitcode})"
        except ValueError:
            how = f"was killed by signal {-exitcode} (exit code {exitcode})"
    else:
        how = f"failed with exit code {exitcode}" + (f": {cause}" if cause else "")
    if rank is None:
        lines = list(out.tails.get("torchrun", ()))
        raise LaunchError(f"launch: torchrun {how}; its last lines:\n" + "\n".join(lines), exitcode=exitcode,
                          lines=lines)
    lines = list(out.tails.get(rank, ()))
    shown = "\n".join(f"  [rank {rank}] {line}" for line in lines)
    if not lines and out.tails.get("torchrun"):  # it died before its output was redirected (an import error)
        lines = list(out.tails["torchrun"])
        shown = "\n".join(f"  [torchrun] {line}" for line in lines)
    raise LaunchError(f"launch: rank {rank} of {job.n} {how}. The other ranks were stopped. Its last lines:\n"
                      f"{shown or '  (no output)'}", rank=rank, exitcode=exitcode, lines=lines)


def _read_result(workdir: Path) -> Any:
    path = workdir / _RESULT_FILE
    if not path.exists():
        raise LaunchError("launch: every rank exited cleanly but rank 0 sent no result (did the function call "
                          "sys.exit or os._exit?)", rank=0)
    # Tensors come back on the CPU: loading a GPU tensor here would initialise CUDA in the kernel, and every later
    # launch would have to use torchrun. Not weights_only: the return value is any picklable object, written by
    # rank 0 of this very job into its private (0700) folder, not a file from elsewhere.
    return torch.load(path, map_location="cpu", weights_only=False)


def _kill_tree(pids: Iterable[int]) -> None:
    """SIGKILL these processes and everything they started (a rank's DataLoader workers too).

    Only processes that are not this one's children are waited for here: a child is reaped by the handle that
    started it (``multiprocessing`` or ``subprocess``), which would otherwise never learn its exit status.
    """
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            continue
    me = os.getpid()
    others = []
    for proc in procs:
        try:
            if proc.ppid() != me:
                others.append(proc)
        except psutil.Error:
            continue
    psutil.wait_procs(others, timeout=5)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
