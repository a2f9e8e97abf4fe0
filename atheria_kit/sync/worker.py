"""Background mirroring of a checkpoint directory to a :class:`SyncTarget`, never blocking training.

The training thread only enqueues requests (microseconds). One worker thread uploads: each
checkpoint listed in the local manifest that the remote lacks (temp name, verified, renamed), then the
manifest LAST as the commit marker (listing only what arrived), then deletes the remote checkpoints of
this run that the local retention dropped. Failures are retried with exponential backoff; requests for
the same file coalesce, so only the newest pending version is ever sent.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from atheria_kit._io import TMP_PREFIX, sha256_bytes
from atheria_kit._manifest import (
    MANIFEST_NAME,
    SIDECAR_SUFFIX,
    manifest_bytes,
    newest_first,
    parse_checkpoint_name,
    parse_manifest,
    sidecar_owner,
)
from atheria_kit._validation import require_int, require_positive
from atheria_kit.lease import LeaseHeldError, LeaseLostError
from atheria_kit.sync._verify import entry_lineage
from atheria_kit.sync.targets import LocalFileChangedError, SourceUnavailableError, SyncError, SyncTarget

__all__ = [
    "ARCHIVE_DIR",
    "RemoteOwnedByAnotherRunError",
    "RemoteState",
    "RetryPolicy",
    "SyncSchedule",
    "SyncWorker",
    "archive_remote",
    "call_within",
    "run_bounded",
]

logger = logging.getLogger(__name__)

_MIRROR = "<checkpoint mirror>"
T = TypeVar("T")
#: Folder (under the target) where :func:`archive_remote` keeps earlier runs; sync never touches it.
ARCHIVE_DIR = "archive"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``initial_delay * multiplier**(n-1)`` seconds after the n-th consecutive failure."""

    initial_delay: float = 5.0
    multiplier: float = 2.0
    max_delay: float = 600.0

    def __post_init__(self) -> None:
        require_positive("initial_delay", self.initial_delay, allow_zero=True)
        require_positive("max_delay", self.max_delay, allow_zero=True)
        if not (isinstance(self.multiplier, (int, float)) and self.multiplier >= 1):
            raise ValueError(f"multiplier={self.multiplier!r} is invalid; expected a number >= 1")

    def delay(self, consecutive_failures: int) -> float:
        if consecutive_failures <= 0:
            return 0.0
        return min(self.max_delay, self.initial_delay * self.multiplier ** (consecutive_failures - 1))


class SyncSchedule:
    """When to sync: every ``every_episodes`` episodes or every ``every_seconds``, whichever comes first.

    ``SyncSchedule(every_episodes=DRIVE_SYNC_EVERY)`` is the seed notebook's setting. With neither set,
    every checkpoint is synced. The end of a run and an emergency save sync regardless (``SyncWorker.sync_now``).
    """

    def __init__(
        self,
        every_episodes: int | None = None,
        every_seconds: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_episodes is not None:
            require_int("every_episodes", every_episodes, minimum=1)
        if every_seconds is not None:
            require_positive("every_seconds", every_seconds)
        self.every_episodes = every_episodes
        self.every_seconds = every_seconds
        self._clock = clock
        self.last_episode: int | None = None
        self._last_time: float | None = None

    def due(self, episode: int | None) -> bool:
        """Whether a checkpoint at ``episode`` should be synced (the first one always is)."""
        if self.every_episodes is None and self.every_seconds is None:
            return True
        if self.last_episode is None and self._last_time is None:
            return True
        if self.every_episodes is not None and episode is not None and self.last_episode is not None:
            if episode - self.last_episode >= self.every_episodes:
                return True
        if self.every_seconds is not None and self._last_time is not None:
            if self._clock() - self._last_time >= self.every_seconds:
                return True
        return False

    def mark(self, episode: int | None) -> None:
        self.last_episode = episode if episode is not None else self.last_episode
        self._last_time = self._clock()

    def state_dict(self) -> dict[str, Any]:
        return {
            "every_episodes": self.every_episodes,
            "every_seconds": self.every_seconds,
            "last_episode": self.last_episode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The monotonic clock does not survive a session; the timer restarts from the load.
        self.last_episode = state.get("last_episode")
        self._last_time = self._clock() if self.last_episode is not None else None


class RemoteOwnedByAnotherRunError(SyncError):
    """The remote folder holds another run's checkpoints (another lineage): this worker will not write there."""

    def __init__(self, remote: str, lineage: str | None, newest_step: int | None) -> None:
        self.remote, self.lineage, self.newest_step = remote, lineage, newest_step
        super().__init__(
            f"remote {remote} holds another run (lineage {lineage or 'unknown'}, newest step {newest_step}); set "
            f"start_over=True to archive it, or choose another remote folder. Nothing was written or deleted there."
        )


@dataclass(frozen=True)
class RemoteState:
    """What the remote copy holds, as far as this session read or wrote it, against the local checkpoints.

    ``known`` is False when the remote could not be read at all this session (its content is then unknown);
    ``complete`` is True when the last sync succeeded and the remote has the newest local checkpoint.
    """

    target: str
    newest_remote_file: str | None
    newest_remote_step: int | None
    newest_local_file: str | None
    newest_local_step: int | None
    checkpoints_behind: int
    complete: bool
    error: str | None
    known: bool = True

    def describe(self) -> str:
        """One line for the notebook, the report and the notifier."""
        err = f"; last error: {self.error}" if self.error else ""
        local = f"local {self.newest_local_file}" if self.newest_local_file else "no local checkpoint"
        if not self.known:
            return f"remote copy at {self.target} could not be read; what it holds is unknown ({local}){err}"
        if self.checkpoints_behind == 0:
            if self.newest_remote_file is None:
                text = "remote copy is up to date (no checkpoint yet)"
            else:
                text = f"remote copy is up to date: {self.newest_remote_file}"
            if not self.complete:
                text += " but the last sync did not complete"
            return text + err
        n = self.checkpoints_behind
        behind = f"{n} checkpoint{'s' if n != 1 else ''} behind"
        if self.newest_remote_file is None:
            return f"remote copy is {behind}: it holds no checkpoint of this run ({local}){err}"
        return f"remote copy is {behind}: newest remote {self.newest_remote_file} ({local}){err}"


class _Blocked(SyncError):
    """A mirror that must not be retried until something changes (another run's remote, a lost lease)."""


class SyncWorker:
    """Mirror ``local_dir`` (a CheckpointManager directory) to ``target`` from a background thread.

    ``attach(manager)`` subscribes to the manager's commits; with a ``schedule`` only due checkpoints are
    synced. ``sync_now(timeout)`` (emergency save, end of run) syncs and waits. ``status()`` is a plain
    dict for ``ResourceMonitor.add_status_provider("sync", worker.status)``. Nothing here raises into
    the training loop: failures are counted, logged, retried, and a WARNING is logged once each time
    the consecutive failures reach ``warn_after``.

    The remote is never pruned by a run that does not own it. The local manifest's ``lineage`` names this
    run; each mirror first reads the remote manifest (unreadable is a failure, retried; never "empty") and:

    - refuses to write at all when the remote lists another run's checkpoints
      (:class:`RemoteOwnedByAnotherRunError` in ``status()["blocked"]``; see :meth:`archive_remote`);
    - deletes only checkpoints of its own run that its own retention superseded, never one whose step is
      newer than the newest local checkpoint, and none listed by a remote manifest it could not parse;
    - keeps listing this run's remote checkpoints that are newer than the newest local one.

    ``lease`` (an :class:`~atheria_kit.lease.Lease` on the target) is renewed before each mirror (taken first,
    with ``take_over_lease``, if it is not held yet); once it is lost to another session, nothing more is
    written.
    """

    def __init__(
        self,
        local_dir: str | os.PathLike,
        target: SyncTarget,
        *,
        schedule: SyncSchedule | None = None,
        retry: RetryPolicy | None = None,
        warn_after: int = 3,
        wait: Callable[[float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        lease: Any = None,
        take_over_lease: bool = False,
        on_alert: Callable[[str, str], Any] | None = None,
        start: bool = True,
    ) -> None:
        require_int("warn_after", warn_after, minimum=1)
        if on_alert is not None and not callable(on_alert):
            raise ValueError(f"on_alert={on_alert!r} is invalid; expected a callable(kind, message) or None")
        #: Where "sync is failing" / "works again" go: a session passes its printed-line path; without one they
        #: are WARNING log records.
        self.on_alert = on_alert
        if not isinstance(target, SyncTarget):
            raise ValueError(f"target={target!r} is invalid; expected a SyncTarget (DirectoryTarget, FsspecTarget, ...)")
        self.local_dir = Path(local_dir)
        self.target = target
        self.schedule = schedule
        self.retry = retry or RetryPolicy()
        self.warn_after = warn_after
        self.lease = lease
        self.take_over_lease = take_over_lease
        self._interrupt = threading.Event()
        # Backoff waits on an Event (interruptible by close); tests inject ``wait`` to drive it.
        self._wait = wait or self._interrupt.wait
        self._clock = clock
        self._wall_clock = wall_clock
        self._cv = threading.Condition()
        self._pending: collections.OrderedDict[str, tuple[str, Path | None, int]] = collections.OrderedDict()
        self._inflight: str | None = None
        self._stopping = False
        self._closed = False
        self._requested = 0  # mirror requests so far; each mirror covers every request made before it started
        self._mirrored = 0  # the newest request covered by a successful mirror
        self._settled = 0  # the newest request whose mirror succeeded or was refused (not retried)
        self._uploaded: set[str] = set()  # checkpoint files this worker put on the remote
        self._remote_entries: dict[str, dict[str, Any]] | None = None  # what the remote manifest lists (read/written)
        self._blocked: str | None = None
        self._remote_lock = threading.Lock()  # one mirror or archive at a time on the remote
        self._stats: dict[str, Any] = {
            "last_success_time": None,
            "last_error": None,
            "failures": 0,
            "consecutive_failures": 0,
            "bytes_sent": 0,
            "files_sent": 0,
            "syncs": 0,
            "upload_seconds": 0.0,
            "remote_checkpoints": 0,
        }
        self._warned = False
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # -- training-thread API (never raises) ---------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="atheria-sync", daemon=True)
            self._thread.start()

    def request_sync(self) -> int:
        """Queue a mirror of the checkpoint directory (coalesced with any pending one); return its request number."""
        with self._cv:
            self._requested += 1
            gen = self._requested
        self._enqueue(_MIRROR, ("mirror", None, gen))
        return gen

    def submit_file(self, path: str | os.PathLike, key: str | None = None) -> None:
        """Queue an extra file (run log, metrics) for upload as ``key``; a newer submit of the key replaces it."""
        try:
            p = Path(path)
            self._enqueue(key or p.name, ("file", p, 0))
        except Exception as exc:  # never into the training loop
            logger.error("sync: could not queue %s: %s", path, exc)

    def on_checkpoint(self, record: Any, manifest_path: Any = None) -> None:
        """``CheckpointManager.subscribe`` callback: sync when the schedule says so."""
        try:
            episode = getattr(record, "episode", None)
            if episode is None:
                episode = getattr(record, "step", None)
            if self.schedule is None or self.schedule.due(episode):
                if self.schedule is not None:
                    self.schedule.mark(episode)
                self.request_sync()
        except Exception as exc:
            logger.error("sync: checkpoint callback failed: %s", exc)

    def attach(self, manager: Any) -> SyncWorker:
        """Subscribe to ``manager``'s commits (``CheckpointManager.subscribe``)."""
        manager.subscribe(self.on_checkpoint)
        return self

    def sync_now(self, timeout: float | None = None) -> bool:
        """Sync now and wait up to ``timeout`` s (end of run, emergency save); True when the mirror succeeded.

        False on a timeout (the upload goes on in the background), and at once when the mirror is refused
        (another run's remote, a lost lease: see ``status()["blocked"]``).
        """
        gen = self.request_sync()
        self._wait_for(lambda: self._settled >= gen, timeout)
        with self._cv:
            return self._mirrored >= gen

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or in flight; False on timeout (uploads keep going)."""
        return self._wait_for(lambda: not self._pending and self._inflight is None, timeout)

    def _pending_count(self) -> int:
        """Jobs queued or running (a failed job waiting for its retry is both, and counts once)."""
        with self._cv:
            return len(set(self._pending) | ({self._inflight} if self._inflight is not None else set()))

    def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait on the worker's condition, with the deadline measured by the (injectable) clock."""
        with self._cv:
            if timeout is None:
                self._cv.wait_for(predicate)
                return True
            deadline = self._clock() + timeout
            while not predicate():
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def close(self, timeout: float | None = 60.0, *, final_sync: bool = True, close_target: bool = True) -> bool:
        """Sync a last time (the end of the run), flush, stop the thread, close the target; all within ``timeout``.

        Closing a Colab Drive target calls ``drive.flush_and_unmount()``; nothing is written after it. A
        mirror still running when the time is up is abandoned before it writes the manifest or deletes
        anything. Close the CheckpointManager first, so that its last checkpoint is in the final sync.
        """
        if self._closed:
            return True
        deadline = None if timeout is None else self._clock() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - self._clock())

        done = self.sync_now(left()) if final_sync else self.flush(left())
        if not done:
            logger.warning(
                "sync: %d upload(s) still pending after %.0f s at close; they stay on the local disk only",
                self._pending_count(), timeout or 0,
            )
        with self._cv:
            self._stopping = True
            self._closed = True
            self._cv.notify_all()
        self._interrupt.set()
        if self._thread is not None:
            self._thread.join(left())
        if close_target:
            error = run_bounded(self.target.close, left(), f"closing {self.target.name}")
            if error is not None:
                logger.error("sync: %s", error)
                done = False
        logger.info("sync closed: %s", self.status_line())
        return done

    def __enter__(self) -> SyncWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        """Plain-dict status for logs and ``ResourceMonitor.add_status_provider``."""
        with self._cv:
            s = dict(self._stats)
            s["pending"] = self._pending_count()
            s["in_flight"] = self._inflight
            s["blocked"] = self._blocked
        secs = s.pop("upload_seconds")
        s["throughput_bytes_per_s"] = s["bytes_sent"] / secs if secs > 0 else None
        s["target"] = self.target.name
        s["healthy"] = s["consecutive_failures"] < self.warn_after and s["blocked"] is None
        s["closed"] = self._closed
        return s

    def status_line(self) -> str:
        s = self.status()
        if s["blocked"]:
            return f"sync to {s['target']} is stopped: {s['blocked']}"
        thr = s["throughput_bytes_per_s"]
        last = s["last_success_time"]
        ago = f"{self._wall_clock() - last:.0f}s ago" if last is not None else "never"
        return (
            f"sync to {s['target']}: last success {ago}, pending {s['pending']}, failures {s['failures']} "
            f"({s['consecutive_failures']} in a row), sent {s['bytes_sent'] / 1e6:.1f} MB"
            + (f" at {thr / 1e6:.1f} MB/s" if thr else "")
        )

    # -- what the remote holds ------------------------------------------------------------------
    def _local_entries(self) -> list[dict[str, Any]]:
        try:
            doc = parse_manifest((self.local_dir / MANIFEST_NAME).read_bytes(), "local manifest")
        except (OSError, ValueError):
            return []
        return doc["checkpoints"]

    def remote_state(self) -> RemoteState:
        """What the remote holds (as last read or written) against the local checkpoints, and the last error."""
        local = newest_first(self._local_entries())
        with self._cv:
            remote = None if self._remote_entries is None else list(self._remote_entries.values())
            failing = self._stats["consecutive_failures"] > 0 or self._blocked is not None
            error = self._blocked or (self._stats["last_error"] if failing else None)
            idle = not self._pending and self._inflight is None
        newest_local = local[0] if local else None
        if remote is None:
            return RemoteState(self.target.name, None, None, newest_local and newest_local["file"],
                               newest_local and newest_local["step"], len(local), False, error, known=False)
        newest_remote = newest_first(remote)[0] if remote else None
        if newest_remote is None:
            behind = len(local)
        else:
            have = {(e["file"], e["sha256"]) for e in remote}
            behind = sum(1 for e in local if e["step"] > newest_remote["step"]
                         or (e["step"] == newest_remote["step"] and (e["file"], e["sha256"]) not in have))
        return RemoteState(
            self.target.name,
            newest_remote and newest_remote["file"],
            newest_remote and newest_remote["step"],
            newest_local and newest_local["file"],
            newest_local and newest_local["step"],
            behind,
            behind == 0 and not failing and idle,
            error,
        )

    def bytes_to_send(self) -> int:
        """Bytes the next mirror would upload: local checkpoints the remote lacks (as far as known)."""
        with self._cv:
            remote = dict(self._remote_entries or {})
        return sum(e["size"] for e in self._local_entries()
                   if remote.get(e["file"], {}).get("sha256") != e["sha256"])

    def throughput(self) -> float | None:
        """Measured upload throughput in bytes/s (verification included), None before the first upload."""
        return self.status()["throughput_bytes_per_s"]

    # -- worker thread ---------------------------------------------------------------------------
    def _enqueue(self, key: str, job: tuple[str, Path | None, int]) -> None:
        with self._cv:
            if self._closed:
                logger.warning("sync: %s requested after close; ignored (no writes after flush_and_unmount)", key)
                return
            self._pending.pop(key, None)  # coalesce: the newest request replaces a pending one
            self._pending[key] = job
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    self._cv.notify_all()
                    return
                key, job = self._pending.popitem(last=False)
                self._inflight = key
            try:
                self._do(key, job)
            except _Blocked as exc:
                self._refused(job, str(exc))
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
                self._failed(key, job, exc)
            else:
                self._succeeded(job)
            finally:
                with self._cv:
                    self._inflight = None
                    self._cv.notify_all()

    def _refused(self, job: tuple[str, Path | None, int], message: str) -> None:
        with self._cv:
            first = self._blocked != message
            self._blocked = message
            self._stats["failures"] += 1
            self._stats["last_error"] = message
            self._settled = max(self._settled, job[2])
        if first:
            logger.error("sync: %s", message)

    def _failed(self, key: str, job: tuple[str, Path | None, int], exc: BaseException) -> None:
        with self._cv:
            if self._closed:  # an attempt cut short by close(): not a failure of the remote
                logger.info("sync of %s abandoned at close (%s)", key, exc)
                return
            self._stats["failures"] += 1
            self._stats["consecutive_failures"] += 1
            self._stats["last_error"] = f"{type(exc).__name__}: {exc}"
            n = self._stats["consecutive_failures"]
            if key not in self._pending and not self._stopping:
                self._pending[key] = job  # retry, unless a newer request arrived meanwhile
                self._pending.move_to_end(key, last=False)
            self._cv.notify_all()  # waiters see the failure now, not after the backoff
        delay = self.retry.delay(n)
        logger.info("sync of %s to %s failed (%s); retry in %.1f s", key, self.target.name, exc, delay)
        if n >= self.warn_after and not self._warned:
            self._warned = True
            self._alert("failing", (
                f"sync to {self.target.name} is failing: {n} attempts in a row (last: {type(exc).__name__}: {exc}). "
                "New checkpoints are only on this machine's disk until it works again; it keeps retrying in the "
                "background. On Colab, check that Drive is still mounted (drive.mount('/content/drive')); on a "
                "full Drive, empty its Trash."))
        self._wait(delay)

    def _alert(self, kind: str, message: str) -> None:
        if self.on_alert is None:
            logger.warning("%s", message)
            return
        logger.info("%s", message)
        try:
            self.on_alert(kind, message)
        except Exception:  # the worker must survive a failing display
            logger.exception("sync alert callback failed")

    def _succeeded(self, job: tuple[str, Path | None, int]) -> None:
        with self._cv:
            recovered = self._stats["consecutive_failures"] >= self.warn_after
            self._stats["consecutive_failures"] = 0
            self._stats["last_success_time"] = self._wall_clock()
            self._stats["syncs"] += 1
            if job[0] == "mirror":
                self._blocked = None
                self._mirrored = max(self._mirrored, job[2])
                self._settled = max(self._settled, job[2])
        if recovered:
            self._alert("recovered", f"sync to {self.target.name} works again")
        self._warned = False
        logger.info("%s", self.status_line())

    def _do(self, key: str, job: tuple[str, Path | None, int]) -> None:
        kind, path, _gen = job
        if kind == "file" and path is not None:
            self._check_lease()
            self._send(path, key, None)
        else:
            self._mirror()

    def _send(self, src: Path, key: str, sha256: str | None) -> int:
        t0 = self._clock()
        n = self.target.put(src, key, sha256=sha256)
        with self._cv:
            self._stats["upload_seconds"] += max(0.0, self._clock() - t0)
            self._stats["bytes_sent"] += n
            self._stats["files_sent"] += 1
        return n

    def _check_lease(self) -> None:
        """Write only while holding the remote lease: take it if it could not be taken at start, else renew it."""
        if self.lease is None:
            return
        if self.lease.error is not None:
            raise _Blocked(f"this session lost the lease of {self.target.name} ({self.lease.error}); another "
                           "session writes there now, so this one stops syncing")
        if not self.lease.held:
            try:
                # The remote could not be read at start: take the lease now (an unreachable store raises: retried).
                self.lease.acquire(take_over=self.take_over_lease)
            except LeaseHeldError as exc:
                raise _Blocked(str(exc)) from exc
            self.lease.start_heartbeat()
            return
        try:
            self.lease.heartbeat()  # renews it, and raises when another session took it over meanwhile
        except LeaseLostError as exc:
            raise _Blocked(f"this session lost the lease of {self.target.name} ({exc}); another session writes "
                           "there now, so this one stops syncing") from exc
        self.lease.start_heartbeat()  # no-op when it runs; starts it for a lease that was taken late

    def _still_listed(self, name: str) -> bool:
        return any(e["file"] == name for e in self._local_entries()) and (self.local_dir / name).is_file()

    def _mirror(self) -> None:
        with self._remote_lock:
            self._mirror_locked()

    def _mirror_locked(self) -> None:
        manifest_path = self.local_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            logger.info("sync: no manifest in %s yet; nothing to sync", self.local_dir)
            return
        doc = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
        local_entries = doc["checkpoints"]
        newest_local = max((e["step"] for e in local_entries), default=None)
        # Unreachable raises here (a failure, retried): nothing is written or deleted on an unread remote.
        try:
            remote_doc, damaged = self.target.read_manifest(), None
        except ValueError as exc:
            remote_doc, damaged = None, str(exc)
            logger.warning("sync: remote manifest unreadable (%s); re-uploading, and deleting nothing it may list",
                           exc)
        remote_files = set(self.target.list())
        remote_listed = {e["file"]: e for e in (remote_doc or {}).get("checkpoints", [])}
        owner = _ownership(doc, remote_doc)
        with self._cv:  # what the remote holds of this run (nothing, when it is another run's)
            self._remote_entries = {} if owner == "foreign" else {
                f: e for f, e in remote_listed.items() if f in remote_files}
        if owner == "foreign":
            newest = max((e["step"] for e in remote_doc["checkpoints"]), default=None)
            raise _Blocked(str(RemoteOwnedByAnotherRunError(self.target.name, remote_doc.get("lineage"), newest)))
        self._check_lease()  # reading needs no lease; every write below does

        committed: list[dict[str, Any]] = []
        for entry in local_entries:
            name, sha = entry["file"], entry["sha256"]
            there = remote_listed.get(name)
            if there is not None and there["sha256"] == sha and name in remote_files:
                committed.append(entry)
                continue
            local = self.local_dir / name
            if not local.is_file():
                logger.info("sync: %s left the local directory before upload (retention); skipped", name)
                continue
            try:
                self._send(local, name, sha)
            except (LocalFileChangedError, FileNotFoundError) as exc:
                if self._still_listed(name):
                    if isinstance(exc, FileNotFoundError):
                        raise
                    logger.warning("sync: %s", exc)
                else:  # local retention truncated and removed it while it was being read
                    logger.info("sync: %s was removed by retention during upload; skipped", name)
                continue
            self._uploaded.add(name)
            committed.append(entry)
        # This run's remote checkpoints newer than the newest local one stay listed (and are never deleted).
        names = {e["file"] for e in committed}
        if owner == "ours":
            for name, entry in remote_listed.items():
                if name not in names and name in remote_files and (newest_local is None or entry["step"] > newest_local):
                    committed.append(entry)
                    names.add(name)
        committed = newest_first(committed)[::-1]

        remote_new = dict(doc)
        remote_new["checkpoints"] = committed
        payload = manifest_bytes(remote_new)
        with self._cv:
            if self._stopping:
                raise SyncError("sync abandoned at close: the time for the final sync ran out")
        if remote_doc is None or manifest_bytes(remote_doc) != payload or MANIFEST_NAME not in remote_files:
            with tempfile.TemporaryDirectory(prefix="atheria-sync-") as tmp:
                mpath = Path(tmp) / MANIFEST_NAME
                mpath.write_bytes(payload)
                # The manifest goes last: it is the commit marker listing only verified files.
                self._send(mpath, MANIFEST_NAME, sha256_bytes(payload))
        with self._cv:
            self._remote_entries = {e["file"]: e for e in committed}
            self._stats["remote_checkpoints"] = len(committed)

        for key in sorted(remote_files):
            if "/" in key or key in names:
                continue
            if _is_upload_temp(key):
                self.target.delete(key, truncate=True)  # a killed upload's leftover: worthless bytes
                continue
            parsed = parse_checkpoint_name(key)
            if parsed is None or newest_local is None or parsed[0] > newest_local:
                continue  # never a file newer than the newest local checkpoint
            listed = remote_listed.get(key)
            ours = key in self._uploaded or (
                damaged is None and owner == "ours" and listed is not None
                and entry_lineage(listed, remote_doc) == doc.get("lineage")
            )
            if not ours:
                continue  # another run's, or nobody's we know: not ours to delete
            # Superseded by this run's own retention: its Trash copy on Drive is worthless, so it is emptied first.
            self.target.delete(key, truncate=True)
            sidecar = f"{key}{SIDECAR_SUFFIX}"
            if sidecar in remote_files:
                self.target.delete(sidecar, truncate=True)
            self._uploaded.discard(key)
        last_step = committed[-1]["step"] if committed else None
        # Versioned targets (Kaggle) publish here, deletions included; for the others it is a no-op.
        self.target.commit(f"atheria sync: {len(committed)} checkpoint(s), latest step {last_step}")

    # -- starting over ------------------------------------------------------------------------------
    def archive_remote(self, reason: str = "start over") -> str | None:
        """Move the remote's checkpoints and manifest to ``archive/<lineage or 'unknown'>-<UTC time>/``.

        For starting over on purpose: the previous run stays on the remote, byte for byte, where no sync
        touches it. Runs on the calling thread, between mirrors. Returns the archive key, or None when
        there was nothing to archive. Raises :class:`SourceUnavailableError` when the remote cannot be read.
        """
        with self._remote_lock:
            self._check_lease()
            key = archive_remote(self.target, reason, wall_clock=self._wall_clock)
            with self._cv:
                self._remote_entries = {}
                self._uploaded.clear()
                self._blocked = None
        return key


def _ownership(local_doc: dict[str, Any], remote_doc: dict[str, Any] | None) -> str:
    """Whose the remote manifest is: "free" (none, or empty), "ours", "legacy" (no lineage on one side, related
    files), or "foreign" (another run)."""
    if remote_doc is None or not remote_doc["checkpoints"]:
        return "free"
    mine, theirs = local_doc.get("lineage"), remote_doc.get("lineage")
    if mine is not None and theirs is not None:
        return "ours" if mine == theirs else "foreign"
    if mine is None and theirs is None:
        return "ours"  # both written before lineages existed: the same run, as sync has always assumed
    if theirs is None:
        return "legacy"  # an older remote: mirrored over, but its files are not ours to delete
    shared = {(e["file"], e["sha256"]) for e in local_doc["checkpoints"]}
    return "legacy" if any((e["file"], e["sha256"]) in shared for e in remote_doc["checkpoints"]) else "foreign"


def _is_upload_temp(key: str) -> bool:
    """A leftover of a killed upload of a checkpoint or manifest (not another writer's lease file)."""
    if not key.startswith(TMP_PREFIX):
        return False
    rest = key[len(TMP_PREFIX):]
    return rest.startswith(MANIFEST_NAME + ".") or (rest.startswith("ckpt-") and ".pt." in rest)


def archive_remote(target: SyncTarget, reason: str = "start over", *,
                   wall_clock: Callable[[], float] = time.time) -> str | None:
    """Move ``target``'s checkpoints (and their sidecars) and manifest under ``archive/<lineage>-<UTC time>/``.

    Each file is moved with :meth:`SyncTarget.move` (a rename where the storage can, else copy, verify, delete);
    the manifest goes last, so an interrupted archive leaves the remote listing only what is still there.
    Returns the archive key, or None when the remote holds no checkpoint and no manifest.
    """
    try:
        doc = target.read_manifest()
    except ValueError:
        doc = None  # damaged: archived as it is, under "unknown"
    files = [k for k in target.list()
             if "/" not in k and (parse_checkpoint_name(k) is not None or sidecar_owner(k) is not None)]
    has_manifest = target.exists(MANIFEST_NAME)
    if not files and not has_manifest:
        return None
    lineage = (doc or {}).get("lineage") or "unknown"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_clock()))
    key = f"{ARCHIVE_DIR}/{lineage}-{stamp}"
    for name in sorted(files):
        target.move(name, f"{key}/{name}")
    if has_manifest:
        target.move(MANIFEST_NAME, f"{key}/{MANIFEST_NAME}")
    target.commit(f"atheria: archived the previous run to {key} ({reason})")
    logger.warning("archived the previous run on %s to %s (%s): %d file(s)", target.name, key, reason,
                   len(files) + has_manifest)
    return key


def call_within(fn: Callable[[], T], seconds: float, what: str, source: str) -> T:
    """``fn()``, or :class:`SourceUnavailableError` when it has not returned after ``seconds`` (a stuck mount
    that never answers). The call goes on in a daemon thread whose result is dropped."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=call, name="atheria-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise SourceUnavailableError(f"{source} did not answer within {seconds:g} s ({what})", source=source)
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_bounded(fn: Callable[[], Any], seconds: float | None, what: str) -> str | None:
    """Run ``fn`` on a daemon thread and wait at most ``seconds``; None when it finished, else what went wrong.

    For calls that can hang on a dead remote (unmounting Drive, releasing a lease) at the end of a session.
    """
    if seconds is None:
        try:
            fn()
        except Exception as exc:
            return f"{what} failed: {type(exc).__name__}: {exc}"
        return None
    errors: list[BaseException] = []

    def call() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    thread = threading.Thread(target=call, name="atheria-bounded", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return f"{what} did not finish within {seconds:.1f} s"
    if errors:
        return f"{what} failed: {type(errors[0]).__name__}: {errors[0]}"
    return None
