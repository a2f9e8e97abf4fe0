"""Training worker for the kill tests, and the harness that SIGKILLs it (used by tests/ and bench/).

The worker trains a small MLP with dropout on a shuffling :class:`ResumableLoader`, checkpoints
through :class:`CheckpointManager` every ``--save-every`` steps and prints one flushed line per event:

    FRESH | RESUME <step> <digest>   first line: started from scratch / from a checkpoint
    STEP <n> <digest>                after optimizer step n (digest: sha256 of the parameters)
    SAVE-BEGIN <n>                   before mgr.save(...) of step n
    SAVE-COMMIT <n>                  after checkpoint n and the manifest are durable (writer thread)
    WRITE-BEGIN <file>               with --gate: the writer is about to create <file>'s temporary
                                     file and blocks until the driver sends a line on stdin
    CHUNK <file> <offset>            with --gate: a piece of <file> was written; the writer blocks
                                     again until the driver says go
    WRITE-END <file>                 with --gate: <file> is complete and renamed into place
    DONE <n> <digest>                the run finished

With ``--gate`` every write is held open, piece by piece, until the driver lets it continue: the
driver can kill the process while a checkpoint (or the manifest) is provably half-written, with no
sleeps anywhere. :func:`run_with_kills` is that driver.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from tests._paths import REPO_ROOT  # importable in the worker too: its PYTHONPATH starts with REPO_ROOT

WORKER = Path(__file__).resolve()
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")

# ----------------------------------------------------------------------------------------- worker

_emit_lock = threading.Lock()


def emit(line: str) -> None:
    with _emit_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def param_digest(model: Any) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_storage_class():
    from atheria_kit.checkpoint import DiskStorage

    class GatedStorage(DiskStorage):
        """Writes each chunk in small pieces and, when gated, waits for the driver after each piece."""

        def __init__(self, directory: Path, *, gate: bool, piece: int = 64 * 1024) -> None:
            super().__init__(directory)
            self.gate = gate
            self.piece = piece

        def write(self, name, chunks):
            if self.gate:
                emit(f"WRITE-BEGIN {name}")
                self._wait_for_go()
            result = super().write(name, chunks)
            if self.gate:
                emit(f"WRITE-END {name}")
            return result

        def _wait_for_go(self) -> None:
            if not sys.stdin.readline():
                raise OSError("gate closed by the driver")

        def write_chunk(self, name: str, fh: IO[bytes], chunk) -> None:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), self.piece):
                fh.write(view[start : start + self.piece])
                fh.flush()  # the half-written temporary file is really on disk when the driver kills
                if self.gate:
                    emit(f"CHUNK {name} {start}")
                    self._wait_for_go()

    return GatedStorage


def train(directory: Path, *, steps: int, save_every: int, gate: bool) -> None:
    import torch
    from torch import nn

    from atheria_kit.checkpoint import CheckpointManager
    from atheria_kit.resumable import ResumableLoader
    from atheria_kit.state import (
        SeededGenerators,
        TrainingProgress,
        collect_state,
        restore_state,
        seed_everything,
    )

    torch.set_num_threads(1)  # same kernels in every life; and the machine is shared
    seed_everything(1234)
    data_gen = torch.Generator().manual_seed(7)
    x = torch.randn(256, 32, generator=data_gen)
    y = (x[:, :4].sum(dim=1, keepdim=True) > 0).float()
    dataset = torch.utils.data.TensorDataset(x, y)

    gens = SeededGenerators(99)
    model = nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 1),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loader = ResumableLoader(dataset, batch_size=32, generator=gens.torch)
    progress = TrainingProgress()
    objects = {
        "model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader,
        "progress": progress, "generators": gens,
    }
    storage = make_storage_class()(directory, gate=gate)
    mgr = CheckpointManager(directory, monitor="loss", keep_best=3, storage=storage)
    mgr.subscribe(lambda record, _manifest: emit(f"SAVE-COMMIT {record.step}"))
    loaded = mgr.load()
    if loaded is None:
        emit("FRESH")
    else:
        restore_state(objects, loaded.state)
        emit(f"RESUME {progress.step} {param_digest(model)}")

    loss_fn = nn.BCEWithLogitsLoss()
    while progress.step < steps:
        for xb, yb in loader:
            model.train()
            noise = torch.from_numpy(gens.numpy.normal(0.0, 0.05, size=tuple(xb.shape)).astype("float32"))
            loss = loss_fn(model(xb + noise), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            progress.step += 1
            progress.record(loss=loss.item())
            emit(f"STEP {progress.step} {param_digest(model)}")
            if progress.step % save_every == 0:
                emit(f"SAVE-BEGIN {progress.step}")
                mgr.save(collect_state(objects), step=progress.step, metrics={"loss": loss.item()})
            if progress.step >= steps:
                break
    mgr.close()
    emit(f"DONE {progress.step} {param_digest(model)}")


def serve(sock_fd: int) -> None:
    """Fork server: import and warm up once, then fork one fresh training process per request.

    Why: a cold start costs seconds (importing torch, and torch._dynamo on the first optimizer), which
    would cap a CI kill test at a handful of kills. Each forked child is a real process: it builds
    every object from scratch, is killed with SIGKILL, and is reaped here. Request: JSON arguments with
    the child's stdin, stdout and stderr as passed file descriptors; replies: ``PID <pid>`` and then
    ``EXIT <pid> <code>`` (code -9 after SIGKILL).
    """
    import torch

    import atheria_kit.checkpoint  # noqa: F401  (imported before forking, like torch)
    import atheria_kit.resumable  # noqa: F401
    import atheria_kit.state  # noqa: F401

    torch.set_num_threads(1)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # imports torch._dynamo once, here
    if threading.active_count() != 1:  # forking with other threads alive could deadlock the child
        raise RuntimeError(f"fork server has {threading.active_count()} threads; expected 1")
    sock = socket.socket(fileno=sock_fd)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 3)
        if not msg:
            return
        args = json.loads(msg.decode())
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the training process
            code = 1
            try:
                sock.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                train(Path(args["dir"]), steps=args["steps"], save_every=args["save_every"], gate=args["gate"])
                sys.stdout.flush()
                code = 0
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        sock.sendall(f"PID {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        sock.sendall(f"EXIT {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--gate", action="store_true", help="hold each written piece until stdin says go")
    parser.add_argument("--serve", type=int, metavar="FD", help="run as a fork server on this socket")
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
    elif args.dir is None:
        parser.error("--dir is required")
    else:
        train(args.dir, steps=args.steps, save_every=args.save_every, gate=args.gate)


# ----------------------------------------------------------------------------------------- driver


def start_worker(
    directory: Path, *, steps: int, save_every: int, gate: bool, stderr: IO[str] | int = subprocess.PIPE
) -> subprocess.Popen:
    env = _worker_env()
    cmd = [sys.executable, str(WORKER), "--dir", str(directory), "--steps", str(steps), "--save-every", str(save_every)]
    if gate:
        cmd.append("--gate")
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1, env=env
    )


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


class Life:
    """One training process seen from the driver: its stdin/stdout, SIGKILL, and its exit code."""

    def __init__(self, pid: int, stdin: IO[str], stdout: IO[str], wait: Any) -> None:
        self.pid, self.stdin, self.stdout, self._wait = pid, stdin, stdout, wait
        self.returncode: int | None = None

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # no cleanup, no flush, no atexit

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = self._wait()
        return self.returncode

    def close(self) -> None:
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class ColdLauncher:
    """Each life is ``sys.executable tests/kill_worker.py ...``, started from nothing."""

    def start(self, directory: Path, *, steps: int, save_every: int, gate: bool, stderr: IO[str]) -> Life:
        proc = start_worker(directory, steps=steps, save_every=save_every, gate=gate, stderr=stderr)
        assert proc.stdin is not None and proc.stdout is not None
        return Life(proc.pid, proc.stdin, proc.stdout, proc.wait)

    def close(self) -> None:
        pass


class ForkLauncher:
    """Each life is a process forked from a warm fork server (see :func:`serve`)."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        self.server = subprocess.Popen(
            [sys.executable, str(WORKER), "--serve", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=_worker_env(),
        )
        theirs.close()
        self.sock = mine
        self.replies = mine.makefile("r")

    def _reply(self, kind: str) -> list[str]:
        line = self.replies.readline().split()
        if not line or line[0] != kind:
            raise RuntimeError(f"fork server: expected {kind}, got {line} (server rc={self.server.poll()})")
        return line

    def start(self, directory: Path, *, steps: int, save_every: int, gate: bool, stderr: IO[str]) -> Life:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        args = {"dir": str(directory), "steps": steps, "save_every": save_every, "gate": gate}
        socket.send_fds(self.sock, [json.dumps(args).encode()], [in_r, out_w, stderr.fileno()])
        os.close(in_r)
        os.close(out_w)
        pid = int(self._reply("PID")[1])
        return Life(pid, open(in_w, "w", buffering=1), open(out_r), lambda: int(self._reply("EXIT")[2]))

    def close(self) -> None:
        self.replies.close()
        self.sock.close()  # the server reads end-of-file and returns
        self.server.wait()


@dataclass
class Reference:
    """Digests of an uninterrupted run: after each step, and at the end."""

    steps: dict[int, str]
    final: str


def reference_run(directory: Path, *, steps: int, save_every: int) -> Reference:
    proc = start_worker(directory, steps=steps, save_every=save_every, gate=False)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"reference worker failed (rc={proc.returncode}):\n{err}")
    digests: dict[int, str] = {}
    final = None
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "STEP":
            digests[int(parts[1])] = parts[2]
        elif parts[0] == "DONE":
            final = parts[2]
    if final is None or len(digests) != steps:
        raise RuntimeError(f"reference worker output incomplete:\n{out[-2000:]}")
    return Reference(digests, final)


class DiskScan(NamedTuple):
    """What :func:`scan_directory` saw on disk."""

    newest: int | None  # the newest complete checkpoint's step
    temps: list[str]  # temporary files left by unfinished writes
    problems: list[str]
    newest_listed: bool  # manifest.json lists the newest checkpoint file (False: renamed, not yet listed)


def scan_directory(directory: Path) -> DiskScan:
    """The newest complete step, temporary files and problems observed on disk, independently of the kit.

    A file only gets its final ``ckpt-*.pt`` name by a rename after it was completely written, so the
    newest complete checkpoint is the highest-numbered one. Where the manifest lists a file, its
    size and sha256 are checked here with hashlib.
    """
    names = os.listdir(directory) if directory.is_dir() else []
    temps = [n for n in names if n.startswith(".tmp-")]
    steps = {int(m.group(1)): n for n in names if (m := _CKPT_RE.match(n))}
    problems: list[str] = []
    newest = max(steps) if steps else None
    newest_listed = False
    manifest = directory / "manifest.json"
    if newest is not None and manifest.is_file():
        listed = {c["file"]: c for c in json.loads(manifest.read_text())["checkpoints"]}
        entry = listed.get(steps[newest])
        newest_listed = entry is not None
        if entry is not None:
            data = (directory / steps[newest]).read_bytes()
            if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                problems.append(f"{steps[newest]} does not match the manifest")
    return DiskScan(newest, temps, problems, newest_listed)


@dataclass
class KillReport:
    kills: int = 0
    kills_during_write: int = 0
    kills_during_manifest_write: int = 0
    resumed_unlisted: int = 0  # the newest file was renamed into place but the manifest did not list it yet
    resumes: int = 0
    resumed_from_newest: int = 0
    partial_loads: int = 0
    step_mismatches: int = 0
    resumed_behind_commit: int = 0
    temp_files_left: int = 0
    max_lost_steps: int = 0
    rounds: int = 0
    finished_rounds: int = 0
    final_equal: bool = True
    lives: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)


def _read_life(proc: Life, plan: tuple[str, int] | None, ref: Reference, report: KillReport) -> dict[str, Any]:
    """Read one life's lines, answer the write gates, and SIGKILL at the planned event.

    ``("write", n)``: kill at the n-th written piece, while a temporary file is half-written.
    ``("step", n)``: kill after the n-th step, at a moment when no file is being written (if a write
    is open then, at the next moment the writer is held before creating its temporary file).
    """
    seen: dict[str, Any] = {
        "first": None, "last_step": None, "last_commit": None, "done": None, "killed": False, "killed_in": None,
    }
    count = 0
    open_write: str | None = None
    kill_when_idle = False
    assert proc.stdout is not None and proc.stdin is not None

    def kill() -> None:
        proc.kill()
        seen["killed"] = True

    def go() -> None:
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass

    for line in proc.stdout:
        parts = line.split()
        if not parts or seen["killed"]:
            continue  # after the kill: only drain what the process printed before it died
        kind = parts[0]
        if seen["first"] is None and kind in ("FRESH", "RESUME"):
            seen["first"] = parts
        if kind == "STEP":
            step = int(parts[1])
            seen["last_step"] = step
            if ref.steps.get(step) != parts[2]:
                report.step_mismatches += 1
                report.fail(f"step {step}: parameters {parts[2]} differ from the uninterrupted run's {ref.steps.get(step)}")
            if plan is not None and plan[0] == "step":
                count += 1
                if count == plan[1]:
                    if open_write is None:
                        kill()
                    else:
                        kill_when_idle = True
        elif kind == "SAVE-COMMIT":
            seen["last_commit"] = int(parts[1])
        elif kind == "DONE":
            seen["done"] = parts
        elif kind == "WRITE-BEGIN":
            if kill_when_idle:  # the writer is held before creating its temporary file
                kill()
            else:
                open_write = parts[1]
                go()
        elif kind == "WRITE-END":
            open_write = None
        elif kind == "CHUNK":
            if plan is not None and plan[0] == "write":
                count += 1
                if count == plan[1]:
                    kill()
                    seen["killed_in"] = parts[1]
                    continue
            go()
    proc.wait()
    return seen


def run_with_kills(
    base: Path,
    *,
    kills: int,
    seed: int,
    ref: Reference,
    steps: int,
    save_every: int,
    launcher: ColdLauncher | ForkLauncher | None = None,
    pieces_per_save: int = 16,
    max_lives: int | None = None,
) -> KillReport:
    """Train in ``base`` with ``kills`` SIGKILLs at random events (seeded); check every resume.

    Each kill is planned at the n-th event of one kind: a written piece (the process dies in the
    middle of writing a checkpoint or the manifest) or a training step (between or during saves).
    When a run finishes before the kills are used up, a new round starts in a fresh directory.
    """
    launcher = launcher if launcher is not None else ColdLauncher()
    rng = random.Random(seed)
    report = KillReport()
    max_lives = max_lives if max_lives is not None else 4 * kills + 20
    kills_left = kills
    while kills_left > 0 or report.rounds == 0:
        directory = base / f"round-{report.rounds:03d}"
        directory.mkdir(parents=True)
        report.rounds += 1
        last_commit_seen: int | None = None
        while True:
            if report.lives >= max_lives:
                report.fail(f"gave up after {report.lives} lives")
                return report
            expected, temps_before, problems, listed_before = scan_directory(directory)
            for p in problems:
                report.fail(p)
            if kills_left > 0:
                kind = ("write", "step")[(kills - kills_left) % 2]  # alternate: both kinds always covered
                plan = (kind, rng.randint(1, pieces_per_save * 2 if kind == "write" else save_every * 2))
            else:
                plan = None
            err_path = base / f"life-{report.lives:04d}.stderr"
            with open(err_path, "w") as err_file:  # a file, not a pipe: a chatty worker can never block on it
                proc = launcher.start(directory, steps=steps, save_every=save_every, gate=True, stderr=err_file)
                report.lives += 1
                try:
                    seen = _read_life(proc, plan, ref, report)
                finally:
                    proc.close()
            first = seen["first"] or ["<nothing>"]
            # The first line says where this life started: check it against the disk and the reference.
            if expected is None:
                if first[0] != "FRESH":
                    report.fail(f"expected a fresh start (no checkpoint on disk), got {first}")
            elif first[0] == "RESUME":
                report.resumes += 1
                resumed = int(first[1])
                if resumed == expected:
                    report.resumed_from_newest += 1
                    report.resumed_unlisted += not listed_before
                else:
                    report.fail(f"resumed from step {resumed}, newest complete checkpoint is {expected}")
                if ref.steps.get(resumed) != first[2]:
                    report.partial_loads += 1
                    report.fail(f"resumed state of step {resumed} differs from the uninterrupted run's")
                if last_commit_seen is not None and resumed < last_commit_seen:
                    report.resumed_behind_commit += 1
                    report.fail(f"resumed from {resumed} although step {last_commit_seen} was committed")
            else:
                report.fail(f"expected to resume from step {expected}, got {first}")
            if temps_before:  # the previous life died in the middle of a write
                report.kills_during_write += 1
                leftover = [n for n in os.listdir(directory) if n in temps_before]
                if leftover:
                    report.temp_files_left += len(leftover)
                    report.fail(f"temporary files of the killed write were not cleaned up: {leftover}")
            if seen["killed"]:
                kills_left -= 1
                report.kills += 1
                report.kills_during_manifest_write += seen["killed_in"] == "manifest.json"
                last_commit_seen = seen["last_commit"] if seen["last_commit"] is not None else last_commit_seen
                newest = scan_directory(directory).newest
                if seen["last_step"] is not None:
                    report.max_lost_steps = max(report.max_lost_steps, seen["last_step"] - (newest or 0))
                continue
            if proc.returncode != 0 or seen["done"] is None:
                err = err_path.read_text()
                report.fail(f"worker exited with rc={proc.returncode} without finishing:\n{err[-3000:]}")
                return report
            report.finished_rounds += 1
            if int(seen["done"][1]) != steps or seen["done"][2] != ref.final:
                report.final_equal = False
                report.fail(f"final parameters {seen['done']} differ from the uninterrupted run's {ref.final}")
            break
    return report


if __name__ == "__main__":
    main()
