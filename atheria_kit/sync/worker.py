"""Background mirroring of a checkpoint directory to a :class:`SyncTarget`, never blocking training.

The training thread only enqueues requests (microseconds). One worker thread uploads: each
checkpoint listed in the local manifest that the remote lacks (temp name, verified, renamed), then the
manifest LAST as the commit marker (listing only what arrived), then deletes remote checkpoints the
local retention dropped. Failures are retried with exponential backoff; requests for the same file
coalesce, so only the newest pending version is ever sent.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atheria_kit._io import TMP_PREFIX, sha256_bytes
from atheria_kit._manifest import CHECKPOINT_RE, MANIFEST_NAME, manifest_bytes, parse_manifest, read_manifest
from atheria_kit._validation import require_int, require_positive
from atheria_kit.sync.targets import LocalFileChangedError, SyncTarget

__all__ = ["RetryPolicy", "SyncSchedule", "SyncWorker"]

logger = logging.getLogger(__name__)

_MIRROR = "<checkpoint mirror>"


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


class SyncWorker:
    """Mirror ``local_dir`` (a CheckpointManager directory) to ``target`` from a background thread.

    ``attach(manager)`` subscribes to the manager's commits; with a ``schedule`` only due checkpoints are
    synced. ``sync_now(timeout)`` (emergency save, end of run) syncs and waits. ``status()`` is a plain
    dict for ``ResourceMonitor.add_status_provider("sync", worker.status)``. Nothing here raises into
    the training loop: failures are counted, logged, retried, and a WARNING is logged once each time
    the consecutive failures reach ``warn_after``.
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
        start: bool = True,
    ) -> None:
        require_int("warn_after", warn_after, minimum=1)
        if not isinstance(target, SyncTarget):
            raise ValueError(f"target={target!r} is invalid; expected a SyncTarget (DirectoryTarget, FsspecTarget, ...)")
        self.local_dir = Path(local_dir)
        self.target = target
        self.schedule = schedule
        self.retry = retry or RetryPolicy()
        self.warn_after = warn_after
        self._interrupt = threading.Event()
        # Backoff waits on an Event (interruptible by close); tests inject ``wait`` to drive it.
        self._wait = wait or self._interrupt.wait
        self._clock = clock
        self._wall_clock = wall_clock
        self._cv = threading.Condition()
        self._pending: collections.OrderedDict[str, tuple[str, Path | None]] = collections.OrderedDict()
        self._inflight: str | None = None
        self._stopping = False
        self._closed = False
        self._remote: dict[str, str] | None = None  # file -> sha256 known to be committed remotely
        self._manifest_sha: str | None = None  # of the manifest this worker last committed
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

    def request_sync(self) -> None:
        """Queue a mirror of the checkpoint directory (coalesced with any pending one)."""
        self._enqueue(_MIRROR, ("mirror", None))

    def submit_file(self, path: str | os.PathLike, key: str | None = None) -> None:
        """Queue an extra file (run log, metrics) for upload as ``key``; a newer submit of the key replaces it."""
        try:
            p = Path(path)
            self._enqueue(key or p.name, ("file", p))
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
        """Sync now and wait (end of run, emergency save); True when everything reached the target."""
        self.request_sync()
        return self.flush(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or in flight; False on timeout (uploads keep going)."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and self._inflight is None, timeout)

    def close(self, timeout: float | None = 60.0, *, final_sync: bool = True, close_target: bool = True) -> bool:
        """Sync a last time (the end of the run), flush (up to ``timeout``), stop the thread, close the target.

        Closing a Colab Drive target calls ``drive.flush_and_unmount()``; nothing is written after it.
        Close the CheckpointManager first, so that its last checkpoint is in the final sync.
        """
        if self._closed:
            return True
        if final_sync:
            self.request_sync()
        done = self.flush(timeout)
        if not done:
            logger.warning(
                "sync: %d upload(s) still pending after %.0f s at close; they stay on the local disk only",
                len(self._pending), timeout or 0,
            )
        with self._cv:
            self._stopping = True
            self._closed = True
            self._cv.notify_all()
        self._interrupt.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if close_target:
            try:
                self.target.close()
            except Exception as exc:
                logger.error("sync: closing %s failed: %s", self.target.name, exc)
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
            s["pending"] = len(self._pending) + (1 if self._inflight is not None else 0)
            s["in_flight"] = self._inflight
        secs = s.pop("upload_seconds")
        s["throughput_bytes_per_s"] = s["bytes_sent"] / secs if secs > 0 else None
        s["target"] = self.target.name
        s["healthy"] = s["consecutive_failures"] < self.warn_after
        s["closed"] = self._closed
        return s

    def status_line(self) -> str:
        s = self.status()
        thr = s["throughput_bytes_per_s"]
        last = s["last_success_time"]
        ago = f"{self._wall_clock() - last:.0f}s ago" if last is not None else "never"
        return (
            f"sync to {s['target']}: last success {ago}, pending {s['pending']}, failures {s['failures']} "
            f"({s['consecutive_failures']} in a row), sent {s['bytes_sent'] / 1e6:.1f} MB"
            + (f" at {thr / 1e6:.1f} MB/s" if thr else "")
        )

    # -- worker thread ---------------------------------------------------------------------------
    def _enqueue(self, key: str, job: tuple[str, Path | None]) -> None:
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
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
                self._failed(key, job, exc)
            else:
                self._succeeded()
            finally:
                with self._cv:
                    self._inflight = None
                    self._cv.notify_all()

    def _failed(self, key: str, job: tuple[str, Path | None], exc: BaseException) -> None:
        with self._cv:
            self._stats["failures"] += 1
            self._stats["consecutive_failures"] += 1
            self._stats["last_error"] = f"{type(exc).__name__}: {exc}"
            n = self._stats["consecutive_failures"]
            if key not in self._pending and not self._stopping:
                self._pending[key] = job  # retry, unless a newer request arrived meanwhile
                self._pending.move_to_end(key, last=False)
        delay = self.retry.delay(n)
        logger.info("sync of %s to %s failed (%s); retry in %.1f s", key, self.target.name, exc, delay)
        if n >= self.warn_after and not self._warned:
            self._warned = True
            logger.warning(
                "SYNC IS FAILING: %d attempts in a row to %s failed (last: %s). Checkpoints are only on the "
                "local disk and will be lost with the VM. See docs/persistence.md (troubleshooting).",
                n, self.target.name, exc,
            )
        self._wait(delay)

    def _succeeded(self) -> None:
        with self._cv:
            recovered = self._stats["consecutive_failures"] >= self.warn_after
            self._stats["consecutive_failures"] = 0
            self._stats["last_success_time"] = self._wall_clock()
            self._stats["syncs"] += 1
        if recovered:
            logger.warning("sync to %s works again", self.target.name)
        self._warned = False
        logger.info("%s", self.status_line())

    def _do(self, key: str, job: tuple[str, Path | None]) -> None:
        kind, path = job
        if kind == "file" and path is not None:
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

    def _load_remote_state(self) -> dict[str, str]:
        """What the remote manifest (the last commit) lists: file -> sha256."""
        try:
            doc = read_manifest(self.target)
        except ValueError as exc:
            logger.warning("sync: remote manifest unreadable (%s); re-uploading everything", exc)
            return {}
        return {} if doc is None else {e["file"]: e["sha256"] for e in doc["checkpoints"]}

    def _still_listed(self, name: str) -> bool:
        try:
            doc = parse_manifest((self.local_dir / MANIFEST_NAME).read_bytes(), "local manifest")
        except (OSError, ValueError):
            return False
        return any(e["file"] == name for e in doc["checkpoints"]) and (self.local_dir / name).is_file()

    def _mirror(self) -> None:
        manifest_path = self.local_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            logger.info("sync: no manifest in %s yet; nothing to sync", self.local_dir)
            return
        doc = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
        if self._remote is None:
            self._remote = self._load_remote_state()
        remote_files = set(self.target.list())
        committed: list[dict[str, Any]] = []
        for entry in doc["checkpoints"]:
            name, sha = entry["file"], entry["sha256"]
            if self._remote.get(name) == sha and name in remote_files:
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
            self._remote[name] = sha
            committed.append(entry)
        remote_doc = dict(doc)
        remote_doc["checkpoints"] = committed
        payload = manifest_bytes(remote_doc)
        digest = sha256_bytes(payload)
        if digest != self._manifest_sha or MANIFEST_NAME not in remote_files:
            with tempfile.TemporaryDirectory(prefix="atheria-sync-") as tmp:
                mpath = Path(tmp) / MANIFEST_NAME
                mpath.write_bytes(payload)
                # The manifest goes last: it is the commit marker listing only verified files.
                self._send(mpath, MANIFEST_NAME, digest)
            self._manifest_sha = digest
        keep = {e["file"] for e in committed}
        for key in remote_files:
            base = key.rsplit("/", 1)[-1]
            if ("/" not in key and CHECKPOINT_RE.match(key) and key not in keep) or base.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    self.target.delete(key)
                self._remote.pop(key, None)
        last_step = max((e["step"] for e in committed), default=None)
        # Versioned targets (Kaggle) publish here, deletions included; for the others it is a no-op.
        self.target.commit(f"atheria sync: {len(committed)} checkpoint(s), latest step {last_step}")
        with self._cv:
            self._stats["remote_checkpoints"] = len(committed)
