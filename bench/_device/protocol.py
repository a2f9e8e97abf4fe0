"""Result rows and bounded subprocesses for the device check.

A check runs in its own process and prints each finished row as one line ``@@row {json}``; the driver parses those
lines as they come, so a check killed at its time limit still leaves the rows it finished. Every subprocess a
check starts is read through :class:`LineReader`, whose reads end at a deadline: nothing here waits without one.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

ROW_TAG = "@@row "

#: ``ok``: measured and as expected; ``FAIL``: measured and wrong; ``WARN``: measured, outside the expected range
#: (a figure to look at, not a broken feature); ``info``: a figure with no pass mark; ``no GPU``: a GPU-only row on a
#: machine without one; ``skipped``/``timeout``/``error``: not measured, and why.
RESULTS = ("ok", "FAIL", "WARN", "info", "no GPU", "skipped", "timeout", "error")
BAD_RESULTS = ("FAIL", "timeout", "error")


@dataclass
class Row:
    """One line of the table: which check, what was measured, next to what, and the verdict."""

    check: str
    name: str
    result: str
    measured: str = ""
    reference: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"result={self.result!r} is invalid; expected one of {RESULTS}")

    def line(self) -> str:
        return ROW_TAG + json.dumps(asdict(self))

    @classmethod
    def parse(cls, line: str) -> Row | None:
        """The row printed on ``line``, or None for any other output."""
        line = line.strip()
        if not line.startswith(ROW_TAG):
            return None
        try:
            return cls(**json.loads(line[len(ROW_TAG):]))
        except (ValueError, TypeError):
            return None


def emit(row: Row) -> Row:
    """Print ``row`` for the driver (flushed at once: the process may be killed right after)."""
    print(row.line(), flush=True)
    return row


def seconds(value: float) -> str:
    """A duration for the table: milliseconds below one second."""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def size_name(nbytes: int) -> str:
    for unit, div in (("GB", 2**30), ("MB", 2**20)):
        if nbytes >= div:
            return f"{nbytes / div:g} {unit}"
    return f"{nbytes} B"


def torch_cuda_build() -> str | None:
    """The CUDA version torch was built with (None: a CPU-only build), read from ``torch/version.py`` without
    importing torch (which takes seconds). Raises ``LookupError`` when torch or its version file is missing."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise LookupError("torch is not installed")
    text = (Path(spec.origin).parent / "version.py").read_text()
    m = re.search(r"^cuda\s*(?::[^=]*)?=\s*(.+)$", text, re.MULTILINE)
    if m is None:
        raise LookupError(f"no cuda entry in {Path(spec.origin).parent / 'version.py'}")
    value = ast.literal_eval(m.group(1).strip())
    return str(value) if value else None


class LineReader:
    """The output lines of a subprocess, read by a thread so that every wait for the next line has a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        except (OSError, ValueError):  # the stream was closed under us (the process was killed)
            pass
        finally:
            self._queue.put(None)

    def until(self, deadline: float) -> Iterator[str]:
        """Lines as they arrive until the stream ends or ``time.monotonic()`` passes ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if line is None:
                self._queue.put(None)  # stay at the end for later calls
                return
            self.lines.append(line)
            yield line

    def tail(self, n: int = 8) -> str:
        return " | ".join(line.strip() for line in self.lines[-n:] if line.strip())


def start(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
          own_group: bool = False, stdin: bool = False) -> tuple[subprocess.Popen[str], LineReader]:
    """Start ``cmd`` with stdout and stderr merged into one line stream; ``own_group``: a new process group."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        text=True, bufsize=1, env=env, cwd=cwd, start_new_session=own_group,
    )
    assert proc.stdout is not None
    return proc, LineReader(proc.stdout)


def kill(proc: subprocess.Popen[str], *, group: bool = False) -> None:
    """SIGKILL ``proc`` and reap it. With ``group``: its whole process group (which it leads), even when ``proc``
    itself has ended, so that nothing it started outlives it."""
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        elif proc.poll() is None:
            proc.kill()
    except (ProcessLookupError, PermissionError):  # nothing left in the group
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # a process stuck in the kernel (uninterruptible I/O): leave it
        pass


def finish(proc: subprocess.Popen[str], reader: LineReader, deadline: float, *,
           group: bool = False) -> tuple[int | None, list[str]]:
    """Read ``proc`` to its end or the deadline; killed at the deadline. Returns (exit status or None, lines)."""
    for _ in reader.until(deadline):
        pass
    try:
        rc: int | None = proc.wait(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        rc = None
        kill(proc, group=group)
    return rc, reader.lines
