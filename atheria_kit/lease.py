"""One session per run folder: a lease file with an owner, a host, a pid and a heartbeat.

Why: the same notebook open twice, or Colab and a local run on one Drive folder, would both train, both exit 0,
and the last writer would win while the run log holds two interleaved histories. ``flock`` does not work on Drive
or other remote filesystems, so the lease is a small JSON file that its holder rewrites every
``heartbeat_every`` seconds. A second session finds a fresh lease and refuses with a message naming the holder;
a lease whose heartbeat is older than ``timeout`` (a VM that died) is taken over with a warning. On the same
host a holder whose pid is gone (a restarted kernel) is stale at once.

Writes go through a *store* (``read() -> bytes | None``, ``write(bytes)``, ``remove()``): :class:`FileLeaseStore`
for a local or mounted folder; the sync layer adapts its remote targets. After writing, the lease is read back:
two sessions that wrote at the same instant both see one owner, and the other one refuses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import psutil

from atheria_kit._io import atomic_write_bytes
from atheria_kit._validation import require_positive
from atheria_kit.say import UserError

__all__ = [
    "FileLeaseStore",
    "Lease",
    "LeaseError",
    "LeaseHeldError",
    "LeaseInfo",
    "LeaseLostError",
    "LeaseStore",
]

logger = logging.getLogger(__name__)

#: Owner tokens of the leases held by Lease objects alive in this process. A lease file naming this host and
#: this pid but an owner not in here was left by an object that could not release it (its store was unreachable
#: at the time): nobody holds it, and a second "Run all" in the same kernel must not wait for it to go stale.
_HELD_HERE: set[str] = set()
_HELD_LOCK = threading.Lock()

LEASE_FORMAT = "atheria-lease"
LEASE_FILE = "lease.json"


class LeaseError(UserError):
    """Base class of lease failures."""


class LeaseHeldError(LeaseError):
    """Another live session holds the lease; ``holder`` says who."""

    def __init__(self, where: str, holder: LeaseInfo, age: float, timeout: float) -> None:
        self.where, self.holder, self.age, self.timeout = where, holder, age, timeout
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.started_at))
        super().__init__(
            f"{where} is in use by another session ({holder.label or 'a session'} on host {holder.host}, pid "
            f"{holder.pid}, started {started}, last heartbeat {age:.0f} s ago). Two sessions on one folder would "
            f"overwrite each other's checkpoints. Stop the other session (or wait: a lease not renewed for "
            f"{timeout:.0f} s is taken over), or use another experiment name or folder. If you are sure it is gone, "
            f"set take_over_lease=True."
        )


class LeaseLostError(LeaseError):
    """Someone else holds the lease now (it went stale and was taken over)."""


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease: a random owner token, host, pid, a label (the experiment) and two wall-clock times."""

    owner: str
    host: str
    pid: int
    label: str
    started_at: float
    heartbeat_at: float

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": LEASE_FORMAT, **asdict(self)}, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo | None:
        """The lease in ``data``, or None when it is not a readable lease (a torn or foreign file)."""
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("format") != LEASE_FORMAT:
                return None
            return cls(str(doc["owner"]), str(doc["host"]), int(doc["pid"]), str(doc.get("label", "")),
                       float(doc["started_at"]), float(doc["heartbeat_at"]))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return None


class LeaseStore(Protocol):
    """Where a lease lives. ``read`` returns None when there is no lease and raises when the place is unreachable."""

    name: str

    def read(self) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...

    def remove(self) -> None: ...


class FileLeaseStore:
    """A lease file in a local or mounted folder (written atomically: temp file, fsync, rename).

    ``name`` is what messages call the guarded place (default: the lease file's folder).
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or str(self.path.parent)

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        atomic_write_bytes(self.path, data)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Lease:
    """Hold ``store``'s lease for one session: :meth:`acquire`, heartbeat while training, :meth:`release` at the end.

    ``timeout``: a lease whose heartbeat is older than this is stale (its holder died) and is taken over.
    ``heartbeat_every``: how often :meth:`start_heartbeat`'s thread renews it (well below ``timeout``).
    """

    def __init__(
        self,
        store: LeaseStore,
        *,
        owner_label: str = "",
        timeout: float = 180.0,
        heartbeat_every: float = 30.0,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
        pid_alive: Callable[[int], bool] = psutil.pid_exists,
    ) -> None:
        require_positive("timeout", timeout)
        require_positive("heartbeat_every", heartbeat_every)
        if heartbeat_every >= timeout:
            raise ValueError(f"heartbeat_every={heartbeat_every!r} is invalid; expected less than timeout={timeout!r}")
        self.store = store
        self.timeout = float(timeout)
        self.heartbeat_every = float(heartbeat_every)
        self._clock = clock
        self._pid_alive = pid_alive
        now = clock()
        self.info = LeaseInfo(uuid.uuid4().hex, host or socket.gethostname(), os.getpid() if pid is None else pid,
                              owner_label, now, now)
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: The error of a failed background heartbeat (the lease was lost or the store failed), for the session.
        self.error: BaseException | None = None

    def _current(self) -> LeaseInfo | None:
        data = self.store.read()
        return None if data is None else LeaseInfo.from_bytes(data)

    def is_stale(self, other: LeaseInfo) -> bool:
        """Whether ``other``'s holder is gone: heartbeat older than ``timeout``, or a dead pid on this host."""
        return self.why_stale(other) is not None

    def why_stale(self, other: LeaseInfo) -> str | None:
        """Why ``other``'s holder counts as gone ("its process is gone", "no heartbeat for 412 s"), or None."""
        if other.host == self.info.host and other.pid != self.info.pid and not self._pid_alive(other.pid):
            return "its process is gone"
        if other.host == self.info.host and other.pid == self.info.pid:
            with _HELD_LOCK:
                if other.owner not in _HELD_HERE:
                    return "an earlier session in this process ended without releasing it"
        age = self._clock() - other.heartbeat_at
        if age > self.timeout:
            return f"no heartbeat for {age:.0f} s"
        return None

    def acquire(self, take_over: bool = False) -> LeaseInfo | None:
        """Take the lease; return the stale holder taken over (None if it was free).

        Raises :class:`LeaseHeldError` when a live session holds it, unless ``take_over``.
        """
        with self._lock:
            previous = self._current()
            if previous is not None and previous.owner != self.info.owner:
                age = max(0.0, self._clock() - previous.heartbeat_at)
                if not take_over and not self.is_stale(previous):
                    raise LeaseHeldError(self.store.name, previous, age, self.timeout)
                # INFO: the caller tells the user (a WARNING would reach a notebook's stderr a second time)
                logger.info("taking over the lease of %s from %s pid %d (last heartbeat %.0f s ago)",
                            self.store.name, previous.host, previous.pid, age)
            else:
                previous = None
            self._write()
            # Read back: when two sessions wrote at once, only one of them is the owner now.
            after = self._current()
            if after is None or after.owner != self.info.owner:
                holder = after or previous
                if holder is None:
                    raise LeaseError(f"could not write the lease in {self.store.name}: it does not read back")
                raise LeaseHeldError(self.store.name, holder, max(0.0, self._clock() - holder.heartbeat_at),
                                     self.timeout)
            self.held = True
            with _HELD_LOCK:
                _HELD_HERE.add(self.info.owner)
            return previous

    def _write(self) -> None:
        self.info = LeaseInfo(self.info.owner, self.info.host, self.info.pid, self.info.label,
                              self.info.started_at, self._clock())
        self.store.write(self.info.to_bytes())

    def heartbeat(self) -> None:
        """Renew the lease; raise :class:`LeaseLostError` when another session took it over meanwhile."""
        with self._lock:
            if not self.held:
                return
            current = self._current()
            if current is None or current.owner != self.info.owner:
                self._let_go()
                who = f"{current.host} pid {current.pid}" if current else "nobody (the lease file is gone)"
                raise LeaseLostError(f"the lease of {self.store.name} is now held by {who}")
            self._write()

    def release(self) -> None:
        """Give the lease up (only if this session still holds it); stops the heartbeat thread."""
        self.stop_heartbeat()
        with self._lock:
            if not self.held:
                return
            self._let_go()
            with contextlib.suppress(Exception):
                current = self._current()
                if current is not None and current.owner == self.info.owner:
                    self.store.remove()

    def _let_go(self) -> None:
        self.held = False
        with _HELD_LOCK:
            _HELD_HERE.discard(self.info.owner)

    def start_heartbeat(self) -> None:
        """Renew the lease from a daemon thread every ``heartbeat_every`` seconds until :meth:`release`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="atheria-lease", daemon=True)
        self._thread.start()

    def stop_heartbeat(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                self.heartbeat()
            except LeaseLostError as exc:
                self.error = exc
                logger.error("%s", exc)
                return
            except Exception as exc:  # an unreachable store: keep trying, the lease may go stale meanwhile
                logger.warning("could not renew the lease in %s: %s", self.store.name, exc)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
