"""Helpers shared by several test modules: weights-only round trips and hand-written checkpoint folders."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch


def weights_only_round_trip(obj: Any) -> Any:
    """What a checkpoint does: torch.save, then torch.load(weights_only=True) with no allowlisting."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def make_checkpoints(directory: Path, steps: list[int], size: int = 1000) -> dict[str, bytes]:
    """A checkpoint directory laid out as docs/architecture.md specifies, written by hand (not by our code)."""
    directory.mkdir(parents=True, exist_ok=True)
    entries, blobs = [], {}
    for step in steps:
        name = f"ckpt-{step:010d}.pt"
        data = hashlib.sha256(str(step).encode()).digest() * (size // 32 + 1)
        data = data[:size]
        (directory / name).write_bytes(data)
        blobs[name] = data
        entries.append({"file": name, "step": step, "episode": step, "metrics": {"loss": 1.0 / (step + 1)},
                        "size": size, "sha256": hashlib.sha256(data).hexdigest(), "time": 1.7e9 + step,
                        "versions": {}})
    (directory / "manifest.json").write_text(json.dumps(
        {"format": "atheria-checkpoints", "version": 1, "monitor": "loss", "mode": "min", "checkpoints": entries}))
    return blobs


def no_wait(_seconds: float) -> None:
    """Backoff waits return at once: tests drive retries deterministically."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_until_line(process, needle: str, timeout: float) -> str:
    """Read a process's output up to and including the first line that contains ``needle``; returns that text.

    Reads the pipe's file descriptor directly: a buffered ``readline`` may pull the awaited line into Python's
    buffer together with the one before it, and ``select`` on the descriptor would then wait for output that
    already arrived (a process that prints a line and then waits for input would never be seen). What was read
    past that line is kept for the next call on the same process."""
    import codecs
    import os
    import selectors
    import time

    deadline = time.monotonic() + timeout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seen = getattr(process, "_unread_output", "")
    fd = process.stdout.fileno()

    def found() -> str | None:
        lines = seen.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.endswith("\n") and needle in line:
                process._unread_output = "".join(lines[i + 1:])
                return "".join(lines[: i + 1])
        return None

    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (text := found()) is None and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += decoder.decode(chunk)
        else:
            if text is not None:
                return text
    if (text := found()) is not None:
        return text
    process._unread_output = seen
    raise AssertionError(f"the process never printed {needle!r}; its output:\n{seen[-3000:]}")


def stop_process_group(process) -> None:
    """SIGTERM a server started with ``start_new_session=True`` and its children; SIGKILL after 30 s."""
    import os
    import signal
    import subprocess

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
