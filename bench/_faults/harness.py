"""The driver side of the fault bench: lives of the worker, their lines, and what is on disk, checked with hashlib.

Nothing here trusts the kit: which checkpoints are committed is decided from the bytes (a checkpoint file counts
when its size and sha256 match ``manifest.json`` or its own integrity sidecar), the run log is read as plain JSON
lines, and a remote folder is compared file by file with sha256.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = Path(__file__).resolve().with_name("worker.py")
TOTAL, SAVE_EVERY = 12, 4
EXPERIMENT = "w"
#: A life that has not ended after this many seconds is killed and counted as a failure (a hang, not a wait).
LIFE_LIMIT_S = 180.0
_CKPT_RE = re.compile(r"^ckpt-(\d{10,})(?:-r(\d+))?\.pt$")
SIDECAR_SUFFIX = ".integrity.json"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


# ----------------------------------------------------------------------------------------------- lives


class Life:
    """One worker process seen from the driver: its lines, its gates, SIGKILL, and its exit code.

    A watchdog kills a life that is still running after ``LIFE_LIMIT_S`` (``timed_out`` says so): the bench
    never hangs on a product hang, it reports it.
    """

    def __init__(self, pid: int, stdin: IO[str], stdout: IO[str], stderr_path: Path, wait: Callable[[], int],
                 limit: float = LIFE_LIMIT_S):
        self.pid, self.stdin, self.stdout, self.stderr_path = pid, stdin, stdout, stderr_path
        self._wait = wait
        self.limit = limit
        self.lines: list[str] = []
        self.returncode: int | None = None
        self.killed = False
        self.timed_out = False
        self._watchdog = threading.Timer(limit, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        self.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def next_line(self) -> str | None:
        line = self.stdout.readline()
        if not line:
            return None
        line = line.rstrip("\n")
        self.lines.append(line)
        return line

    def until(self, *prefixes: str) -> str | None:
        """Read lines until one starts with one of ``prefixes`` (returned), or the end of the output (None)."""
        while (line := self.next_line()) is not None:
            if line.startswith(prefixes):
                return line
        return None

    def go(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.stdin.write("\n")
            self.stdin.flush()

    def kill(self) -> None:
        self.killed = True
        os.kill(self.pid, signal.SIGKILL)  # no cleanup, no flush, no atexit

    def finish(self, react: Callable[[Life, str], None] | None = None) -> int:
        """Read the rest of the output (answering HOLD and GATE lines with ``react``, default: go on) and reap."""
        while (line := self.next_line()) is not None:
            if line.startswith(("HOLD", "GATE")) and not self.killed:
                (react or (lambda life, _line: life.go()))(self, line)
        return self.wait()

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = self._wait()
            self._watchdog.cancel()
            for stream in (self.stdin, self.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        return self.returncode

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.is_file() else ""

    # -- what the life said ----------------------------------------------------------------------------
    def first(self, prefix: str) -> list[str] | None:
        return next((ln.split() for ln in self.lines if ln.startswith(prefix + " ") or ln == prefix), None)

    @property
    def ready(self) -> int | None:
        parts = self.first("READY")
        return int(parts[1]) if parts else None

    @property
    def end(self) -> list[str] | None:
        return self.first("END")

    @property
    def refused(self) -> str | None:
        return next((ln[len("REFUSED "):] for ln in self.lines if ln.startswith("REFUSED ")), None)

    @property
    def episodes(self) -> list[tuple[int, str]]:
        return [(int(p[1]), p[2]) for p in (ln.split() for ln in self.lines if ln.startswith("EPISODE "))]

    @property
    def said(self) -> list[str]:
        """The session's own printed lines (everything that is not a worker event)."""
        events = ("READY", "EPISODE", "HOLD", "FINISH-BEGIN", "GATE", "END", "THREADS", "REFUSED", "CALLS", "SYNC-FINISH")
        return [ln for ln in self.lines if not ln.startswith(events)]

    def describe(self) -> str:
        tail = "\n".join(self.lines[-8:])
        return f"pid {self.pid} rc={self.returncode}{' (timed out)' if self.timed_out else ''}:\n{tail}\n" \
               f"stderr: {self.stderr[-1500:]}"


class ForkServer:
    """Starts worker lives forked from one warm process (``worker.serve``); several may run at once."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        self.server = subprocess.Popen([sys.executable, str(WORKER), "--serve", str(theirs.fileno())],
                                       pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=_env(), cwd=REPO_ROOT)
        theirs.close()
        self.sock = mine
        self._pids: queue.Queue[int] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _read_replies(self) -> None:
        for raw in self.sock.makefile("r"):
            parts = raw.split()
            if parts and parts[0] == "PID":
                self._pids.put(int(parts[1]))
            elif parts and parts[0] == "EXIT":
                with self._cv:
                    self._exits[int(parts[1])] = int(parts[2])
                    self._cv.notify_all()
        self._pids.put(-1)  # the server is gone
        with self._cv:
            self._cv.notify_all()

    def _exit_code(self, pid: int) -> int:
        with self._cv:
            while pid not in self._exits:
                if not self._reader.is_alive():
                    raise RuntimeError(f"fork server died (rc={self.server.poll()}) before pid {pid} ended")
                self._cv.wait(5.0)
            return self._exits.pop(pid)

    def start(self, args: Iterable[str], stderr_path: Path, limit: float = LIFE_LIMIT_S) -> Life:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "w") as err:  # a file, not a pipe: a chatty worker can never block on it
            socket.send_fds(self.sock, [json.dumps({"argv": [str(a) for a in args]}).encode()],
                            [in_r, out_w, err.fileno()])
        os.close(in_r)
        os.close(out_w)
        pid = self._pids.get(timeout=120)
        if pid < 0:
            raise RuntimeError(f"fork server died (rc={self.server.poll()})")
        return Life(pid, open(in_w, "w", buffering=1), open(out_r), stderr_path, lambda: self._exit_code(pid), limit)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)  # the server reads end-of-file and returns
        self.server.wait(timeout=60)
        self.sock.close()


@dataclass
class Reference:
    """An uninterrupted run's parameter digests after each episode, and at the end."""

    episodes: dict[int, str]
    final: str
    finish_seconds: float


def reference_run(server: ForkServer, base: Path) -> Reference:
    life = server.start(["--root", base / "reference"], base / "reference.stderr")
    rc = life.finish()
    end = life.end
    if rc != 0 or end is None or end[1] != "done" or len(life.episodes) != TOTAL:
        raise RuntimeError(f"the reference run failed: {life.describe()}")
    return Reference(dict(life.episodes), end[3], float(end[4]))


# -------------------------------------------------------------------------------------------- the disk


def ckpt_dir(root: Path) -> Path:
    return root / "checkpoints" / EXPERIMENT


def metrics_path(root: Path) -> Path:
    return root / "logs" / EXPERIMENT / "metrics.jsonl"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listed(directory: Path) -> dict[str, dict]:
    try:
        doc = json.loads((directory / "manifest.json").read_bytes())
        return {e["file"]: e for e in doc["checkpoints"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def committed(directory: Path) -> dict[str, int]:
    """Checkpoint files (name -> step) whose bytes match their manifest entry or their integrity sidecar."""
    listed = _listed(directory)
    out: dict[str, int] = {}
    names = os.listdir(directory) if directory.is_dir() else []
    for name in names:
        m = _CKPT_RE.match(name)
        if not m:
            continue
        proofs = [listed[name]] if name in listed else []
        with contextlib.suppress(OSError, ValueError):
            proofs.append(json.loads((directory / (name + SIDECAR_SUFFIX)).read_bytes()))
        data = (directory / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if any(p.get("size") == len(data) and p.get("sha256") == digest for p in proofs):
            out[name] = int(m.group(1))
    return out


def newest_committed(directory: Path) -> int | None:
    steps = committed(directory).values()
    return max(steps) if steps else None


def remote_history(directory: Path) -> dict[str, str]:
    """sha256 of every file in a remote folder except temporary files and the lease (relative path -> hash)."""
    return {k: v for k, v in tree_hashes(directory).items()
            if not Path(k).name.startswith(".tmp-") and Path(k).name != "lease.json"}


def tree_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file below ``directory`` (relative path -> hash)."""
    out = {}
    for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
        if path.is_file():
            out[path.relative_to(directory).as_posix()] = sha256_of(path)
    return out


def remote_intact(directory: Path) -> tuple[int | None, list[str]]:
    """The newest step a remote folder's manifest lists, and each listed file whose bytes do not match it."""
    listed = _listed(directory)
    problems = []
    for name, entry in listed.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} listed but missing")
        elif path.stat().st_size != entry.get("size") or sha256_of(path) != entry.get("sha256"):
            problems.append(f"{name} does not match the remote manifest")
    steps = [e["step"] for e in listed.values()]
    return (max(steps) if steps else None), problems


def flip_bit(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------- tmpfs


def mount_tmpfs(point: Path, kib: int) -> str | None:
    """Mount a fresh tmpfs of ``kib`` KiB at ``point``; None on success, else why not."""
    point.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)],
                              capture_output=True, text=True)
    except OSError as exc:
        return f"mount is not available ({exc})"
    if done.returncode != 0:
        return f"cannot mount a tmpfs ({done.stderr.strip() or done.returncode}); needs root"
    return None


def umount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill_disk(path: Path) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC); return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        for block in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    written += fh.write(b"\0" * block)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
    return written


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------- results


@dataclass
class PhaseResult:
    """One row of the fault table, and what was seen."""

    fault: str
    trials: int = 0
    survived: int = 0
    nothing_lost: int = 0
    steps_lost_max: int = 0
    not_run: str | None = None
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def trial(self, *, survived: bool, nothing_lost: bool, steps_lost: int, problems: list[str]) -> None:
        self.trials += 1
        self.survived += survived
        self.nothing_lost += nothing_lost and steps_lost == 0  # redone committed work is lost work too
        self.steps_lost_max = max(self.steps_lost_max, steps_lost)
        self.failures.extend(f"trial {self.trials}: {p}" for p in problems)

    @property
    def ok(self) -> bool:
        return self.not_run is None and not self.failures and self.survived == self.nothing_lost == self.trials


def check_resumed_run(life: Life, ref: Reference, *, expected_ready: int | None) -> list[str]:
    """What went wrong in a life that should resume at ``expected_ready`` and end like the uninterrupted run."""
    problems = []
    if life.timed_out:
        problems.append(f"did not end within {life.limit:.0f} s: {life.describe()}")
    if expected_ready is not None and life.ready != expected_ready:
        problems.append(f"resumed at episode {life.ready}, the newest committed checkpoint is episode {expected_ready}")
    bad = [(n, d) for n, d in life.episodes if ref.episodes.get(n) != d]
    if bad:
        problems.append(f"parameters after episode {bad[0][0]} differ from the uninterrupted run's")
    end = life.end
    if life.returncode != 0 or end is None:
        problems.append(f"did not finish: {life.describe()}")
    elif end[1] != "done" or int(end[2]) != TOTAL or end[3] != ref.final:
        problems.append(f"ended {end[1:4]}, the uninterrupted run ended done {TOTAL} {ref.final}")
    if "Traceback" in life.stderr:
        problems.append(f"a traceback on stderr: {life.stderr[-1500:]}")
    return problems
