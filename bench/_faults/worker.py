"""A real training process around TrainingSession for the fault bench, and a fork server that starts it fast.

    python bench/_faults/worker.py --root R [--total 12] [--save-every 4] [--stop-after N] [--hold-at N]
                                   [--gate-finish] [--remote DIR --fault-file F] [--final-sync-timeout S]

It trains the small seeded model of ``tests/session_worker.py`` (same data, same seeds: the same parameters after
each episode) and prints one flushed line per event:

    READY <first episode> <remote ops so far>   restore() returned (after the session's own printed lines)
    EPISODE <n> <digest>           episode n was logged (digest: sha256 of the parameters, 16 hex digits)
    HOLD <n>                       with --hold-at n: waits for a line on stdin before training episode n
    HOLD finish                    with --hold-finish: waits for a line on stdin before calling finish()
    FINISH-BEGIN                   finish() is called
    GATE <kind> <file> [offset]    with --gate-finish, during finish(): the process waits for a line on stdin at
                                   each write instant (the driver may SIGKILL it instead). Kinds: WRITE-BEGIN
                                   (before the temporary file), PIECE (a piece of it is on disk), SEAL-BEGIN /
                                   SEAL-END (the integrity sidecar), WRITE-END (renamed into place), REMOVE-BEGIN /
                                   REMOVE-END (a superseded file), LOG-BEGIN / LOG-END (a run-log file)
    SYNC-FINISH <seconds>          with --remote: the final sync inside finish() returned after <seconds>
    END <reason> <episode> <digest> <seconds>   finish() returned after <seconds>
    THREADS <names>                non-daemon threads still alive after finish() (they would block the exit)
    CALLS <op>:<file> ...          with --remote, after READY: the remote operations of this start, in order
    REFUSED <error class>: <message>   the session refused to start (exit code 3)
    HOLD again                     with --again, after REFUSED: waits for a line on stdin, then starts again in
                                   the same process (a second "Run all" in the same kernel)

Everything the session prints (its status lines) goes to stdout too, unprefixed; log records go to stderr as in
a notebook without logging configured.

The remote (``--remote``) is a folder reached through fsspec (``DirectoryTarget`` over ``FaultyFileSystem``).
``--fault-file`` is its switch: while that file exists and holds ``<kind> [after]``, every remote operation after
the first ``after`` ones of this process fails: ``enotconn`` (a dropped mount, Errno 107), ``timeout`` (a request
that timed out) or ``hang`` (blocks forever, like a stuck FUSE mount). The driver creates and deletes that file at
the instants it chooses: no sleeps anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.session_worker import digest, emit  # noqa: E402  (the same lines and digests as the tests' worker)


class Gate:
    """Write instants of finish(): announced on stdout, released by a line on stdin (only while armed)."""

    armed = False

    @classmethod
    def at(cls, kind: str, name: str, extra: str = "") -> None:
        if not cls.armed:
            return
        emit(f"GATE {kind} {name}{' ' + extra if extra else ''}")
        if not sys.stdin.readline():
            raise OSError("the driver closed the gate")


def gated_storage_class():
    from atheria_kit.checkpoint import DiskStorage

    class GatedStorage(DiskStorage):
        """Each checkpoint-folder write instant is a gate: before and after each file, each piece, the integrity
        sidecar and each removal."""

        piece = 8192

        def write(self, name, chunks):
            Gate.at("WRITE-BEGIN", name)
            result = super().write(name, chunks)
            Gate.at("WRITE-END", name)
            return result

        def write_chunk(self, name, fh, chunk):
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), self.piece):
                fh.write(view[start:start + self.piece])
                if Gate.armed:
                    fh.flush()  # the half-written temporary file is really in the file when the driver kills
                Gate.at("PIECE", name, str(start))

        def write_integrity(self, name, result, **fields):
            Gate.at("SEAL-BEGIN", name)
            super().write_integrity(name, result, **fields)
            Gate.at("SEAL-END", name)

        def remove(self, name):
            Gate.at("REMOVE-BEGIN", name)
            super().remove(name)
            Gate.at("REMOVE-END", name)

    return GatedStorage


def gate_runlog_writes() -> None:
    """The run log's atomic file writes (progress.json, summary, a rewound metrics.jsonl) become gates too."""
    from atheria_kit import runlog

    plain_json, plain_bytes = runlog.atomic_write_json, runlog.atomic_write_bytes

    def write_json(path, obj):
        Gate.at("LOG-BEGIN", Path(path).name)
        plain_json(path, obj)
        Gate.at("LOG-END", Path(path).name)

    def write_bytes(path, data):
        Gate.at("LOG-BEGIN", Path(path).name)
        plain_bytes(path, data)
        Gate.at("LOG-END", Path(path).name)

    runlog.atomic_write_json, runlog.atomic_write_bytes = write_json, write_bytes


def timed(event: str, fn):
    """``fn`` that prints ``<event> <seconds>`` when it returns or raises."""

    def call(*args, **kwargs):
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            emit(f"{event} {time.monotonic() - t0:.3f}")

    return call


class FaultSwitch:
    """Called before every remote operation (FaultyFileSystem's ``disconnected`` hook): counts it and fails it
    as the fault file says."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.ops = 0

    def __call__(self) -> bool:
        self.ops += 1
        if self.path is None:
            return False
        try:
            spec = self.path.read_text().split()
        except FileNotFoundError:
            return False
        kind, after = spec[0], int(spec[1]) if len(spec) > 1 else 0
        if self.ops <= after:
            return False
        if kind == "enotconn":
            return True  # FaultyFileSystem raises OSError(ENOTCONN, "Transport endpoint is not connected")
        if kind == "timeout":
            raise TimeoutError("the remote did not answer within its timeout (bench fault)")
        if kind == "hang":
            threading.Event().wait()  # a stuck mount: the operation never returns
        raise ValueError(f"fault file {self.path}: kind={kind!r} is invalid; expected enotconn, timeout or hang")


def remote_target(path: Path, switch: FaultSwitch):
    from fsspec.implementations.local import LocalFileSystem

    from atheria_kit.sync import DirectoryTarget
    from tests.fakes.faulty_fs import FaultyFileSystem

    return DirectoryTarget(path, fs=FaultyFileSystem(LocalFileSystem(), disconnected=switch), name=f"remote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--total", type=int, default=12)
    ap.add_argument("--save-every", type=int, default=4)
    ap.add_argument("--hold-at", type=int, default=None)
    ap.add_argument("--stop-after", type=int, default=None, help="request a stop after this many episodes")
    ap.add_argument("--gate-finish", action="store_true")
    ap.add_argument("--hold-finish", action="store_true", help="print HOLD finish and wait before finish()")
    ap.add_argument("--remote", default=None, help="a folder: the persistent copy, reached through fsspec")
    ap.add_argument("--fault-file", default=None, help="the remote's fault switch (see the module docstring)")
    ap.add_argument("--sync-every", type=int, default=4)
    ap.add_argument("--retry-seconds", type=float, default=1.0)
    ap.add_argument("--remote-unavailable", choices=("stop", "ignore"), default="stop")
    ap.add_argument("--again", action="store_true",
                    help="after a refused start, print HOLD again, wait, and start again in this process")
    ap.add_argument("--final-sync-timeout", type=float, default=None)
    args = ap.parse_args(argv)


    from atheria_kit.platform import detect_environment
    from atheria_kit.say import UserError
    from atheria_kit.session import TrainingSession
    from atheria_kit.session_config import SessionConfig
    from tests.session_worker import seeded_training, train_episode

    root = Path(args.root)
    switch = FaultSwitch(Path(args.fault_file) if args.fault_file else None)
    env = detect_environment({}, shell=None, kind="local", cwd=root, nvml=None, torch_module=None)
    cfg = SessionConfig(experiment_name="w", total_episodes=args.total, save_every_episodes=args.save_every,
                        drive_sync_every=args.sync_every if args.remote else 0, live_view="off",
                        root=str(root), export_formats=(), handle_signals=False, monitor_interval=5.0,
                        max_training_seconds=3600, remote_retry_seconds=args.retry_seconds,
                        remote_unavailable=args.remote_unavailable,
                        final_sync_timeout=args.final_sync_timeout)
    storage = gated_storage_class()(root / "checkpoints" / "w")
    if args.gate_finish:
        gate_runlog_writes()
    for attempt in (1, 2):
        # What "Run all" builds: a new remote target and session (in the same process on the second attempt).
        remote = remote_target(Path(args.remote), switch) if args.remote else None
        try:
            session = TrainingSession(cfg, environment=env, storage=storage, remote=remote)
            break
        except UserError as exc:
            emit(f"REFUSED {type(exc).__name__}: {exc}")
            if not args.again or attempt == 2:
                return 3
            emit("HOLD again")
            sys.stdin.readline()
    if session.sync is not None:  # time the final sync itself: finish() bounds it by final_sync_timeout
        session.sync.finish = timed("SYNC-FINISH", session.sync.finish)
    model, opt, gens = seeded_training()  # the same model and episodes as the tests' session worker
    first = session.restore(model=model, optimizer=opt, generators=gens)
    emit(f"READY {first} {switch.ops}")
    if remote is not None:
        emit("CALLS " + " ".join(f"{op}:{Path(path).name}" for op, path in remote.fs.calls))
    for ep in session.episodes():
        if args.hold_at is not None and ep == args.hold_at:
            emit(f"HOLD {ep}")
            sys.stdin.readline()
        session.log(loss=train_episode(model, opt, gens))
        emit(f"EPISODE {ep} {digest(model)}")
        if args.stop_after is not None and ep + 1 >= args.stop_after:
            session.budget.request_stop("worker --stop-after")
    emit("FINISH-BEGIN")
    if args.hold_finish:
        emit("HOLD finish")
        sys.stdin.readline()
    if args.gate_finish:
        session.checkpoints.wait()  # saves queued by log() land first: the gates see finish()'s writes only
        Gate.armed = True
    t0 = time.monotonic()
    result = session.finish()
    seconds = time.monotonic() - t0
    Gate.armed = False
    emit(f"END {result.end_reason} {result.episodes_done} {digest(model)} {seconds:.3f}")
    blocking = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon
                and t is not threading.main_thread()]
    emit(f"THREADS {','.join(blocking) or '-'}")
    return 0


def serve(sock_fd: int) -> None:
    """Fork server: import and warm up once, then fork one training process per request, several at once.

    Request: JSON ``{"argv": [...]}`` with the child's stdin, stdout and stderr as passed file descriptors.
    Replies, one line each: ``PID <pid>`` for each request, in order, and ``EXIT <pid> <code>`` when a child
    ends (code -9 after SIGKILL), in the order they end. Each child is a real process: it builds every object
    from scratch and is reaped here as soon as it exits (so its pid is gone when the driver hears EXIT).
    """
    import select

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import torch

    import atheria_kit.session  # noqa: F401  (and everything it imports, before forking)
    import atheria_kit.session_outputs  # noqa: F401
    import atheria_kit.session_sync  # noqa: F401
    import atheria_kit.sync  # noqa: F401
    from tests.fakes.faulty_fs import FaultyFileSystem  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # imports torch._dynamo once, here
    if threading.active_count() != 1:  # forking with other threads alive could deadlock the child
        raise RuntimeError(f"fork server has {threading.active_count()} threads; expected 1")
    sock = socket.socket(fileno=sock_fd)
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        ready, _, _ = select.select([sock, *children], [], [])
        for fd in ready:
            if fd in children:
                pid = children.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                sock.sendall(f"EXIT {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
                continue
            msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 3)
            if not msg:
                return
            argv = json.loads(msg.decode())["argv"]
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(sock, list(children), fds, argv)
            for child_fd in fds:
                os.close(child_fd)
            children[os.pidfd_open(pid)] = pid
            sock.sendall(f"PID {pid}\n".encode())


def _child(sock: socket.socket, inherited: list[int], fds: list[int], argv: list[str]) -> None:
    code = 1
    try:
        sock.close()
        for fd in inherited:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)
        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        sys.exit(main())
