"""The persistent copy of a progressive-training session: which target, when to sync, its lease, and a bounded end.

Two levels, as in the seed's design: checkpoints go to the fast local disk often; every ``drive_sync_every``
episodes (or ``sync_every_minutes``) and at the end they are mirrored to persistent storage in the background.

The remote copy is protected like the local folder: a lease (``lease.json`` in the remote folder) keeps a second
VM from writing it; the worker never prunes another run's files; and :meth:`SessionSync.finish` waits for the
final sync at most a bounded time, then says exactly what the remote holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atheria_kit._manifest import MANIFEST_NAME
from atheria_kit._validation import require_positive
from atheria_kit.lease import Lease, LeaseHeldError
from atheria_kit.sync import (
    DirectoryTarget,
    FsspecTarget,
    KaggleInputSource,
    RemoteState,
    SourceUnavailableError,
    SyncSchedule,
    SyncSource,
    SyncTarget,
    SyncWorker,
    TargetLeaseStore,
    colab_drive_target,
)
from atheria_kit.sync.resume import RETRY_SECONDS
from atheria_kit.sync.targets import mount_root_for
from atheria_kit.sync.worker import call_within, run_bounded

if TYPE_CHECKING:
    from atheria_kit.checkpoint import CheckpointManager
    from atheria_kit.platform import Environment
    from atheria_kit.session_config import SessionConfig, SessionPaths

__all__ = [
    "ASSUMED_BYTES_PER_S",
    "FINAL_SYNC_CAP_S",
    "FINAL_SYNC_FACTOR",
    "FINAL_SYNC_MARGIN_S",
    "SessionSync",
    "kaggle_input_sources",
]

log = logging.getLogger(__name__)

#: The final sync's default bound: FACTOR x the estimated upload time + MARGIN, at most CAP seconds. The factor
#: absorbs a slower moment of the same link; the margin covers the manifest, Drive's flush_and_unmount and the
#: lease; the cap keeps a dead remote from holding the VM past its end.
FINAL_SYNC_FACTOR = 3.0
FINAL_SYNC_MARGIN_S = 30.0
FINAL_SYNC_CAP_S = 600.0
#: Upload speed assumed before anything was measured this session (a slow Drive mount).
ASSUMED_BYTES_PER_S = 5e6
#: How long open() waits for the remote lease before leaving it to the first sync (a stuck mount never answers).
LEASE_OPEN_TIMEOUT_S = 30.0
#: How long abandon() (a start that failed) waits for the worker and the lease.
ABANDON_TIMEOUT_S = 5.0


def kaggle_input_sources(env: Environment, experiment: str) -> tuple[SyncSource, ...]:
    """Earlier Kaggle versions' outputs attached as inputs that hold this experiment's checkpoints."""
    if env.kind != "kaggle":
        return ()
    inputs = env.work_dir.parent / "input"
    if not inputs.is_dir():
        return ()
    found = sorted({p for p in inputs.glob(f"*/**/checkpoints/{experiment}") if (p / MANIFEST_NAME).is_file()})
    for p in found:
        log.info("resume candidate from a Kaggle input: %s", p)
    return tuple(KaggleInputSource(p) for p in found)


def _target_for(location: str, subdir: str) -> SyncTarget:
    if "://" in location:
        return FsspecTarget(location.rstrip("/") + "/" + subdir)
    base = Path(location).expanduser().absolute()
    return DirectoryTarget(base / subdir, mount_root=mount_root_for(base))


class SessionSync:
    """A :class:`SyncWorker` for the checkpoint folder, its remote lease, and the copies of logs and exports.

    Built by :meth:`open`; the session calls :meth:`attach`, :meth:`sync_now` (emergency save),
    :meth:`estimated_final_sync_seconds` (the time budget's reserve), :meth:`archive_remote` (start over) and
    :meth:`finish`.
    """

    def __init__(
        self,
        worker: SyncWorker,
        extra_targets: dict[str, SyncTarget],
        *,
        lease: Lease | None = None,
        extra_dirs: tuple[Path, ...] = (),
        retry_seconds: float = RETRY_SECONDS,
        wait: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker
        self.extra_targets = extra_targets
        self.lease = lease
        self.extra_dirs = tuple(extra_dirs)
        self.retry_seconds = retry_seconds
        self._wait = wait
        self._clock = clock
        #: What the remote held after the last :meth:`sync_now` or :meth:`finish`.
        self.last_state: RemoteState | None = None
        self._finished = False

    @classmethod
    def open(
        cls,
        cfg: SessionConfig,
        env: Environment,
        remote: Any,
        paths: SessionPaths,
        *,
        lease: bool = True,
        lease_timeout: float | None = None,
        take_over: bool | None = None,
        wait: Callable[[float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_alert: Callable[[str, str], Any] | None = None,
    ) -> SessionSync | None:
        """The session's persistent copy, or None when none is configured.

        ``on_alert(kind, message)`` receives "sync is failing" / "works again" (the session prints them).

        The target is ``remote`` (a :class:`SyncTarget`), else ``cfg.remote`` (a folder or fsspec URL), else Drive
        on Colab. With ``lease`` the remote lease is taken now (``lease_timeout``/``take_over`` default to
        ``cfg.lease_timeout_seconds``/``cfg.take_over_lease``): :class:`~atheria_kit.lease.LeaseHeldError` when
        another live session holds it. When the remote cannot be read right now, the lease is taken before the
        first sync instead (the resume step decides whether an unreachable remote stops the session).
        Kaggle dataset targets take no lease (see :mod:`atheria_kit.sync.kaggle`).
        """
        exp = cfg.experiment_name
        if isinstance(remote, SyncTarget):
            target, extras = remote, {}
        elif cfg.remote:
            target = _target_for(cfg.remote, f"checkpoints/{exp}")
            extras = {k: _target_for(cfg.remote, f"{k}/{exp}") for k in ("logs", "exports")}
        elif env.kind == "colab":
            target = colab_drive_target(f"atheria/checkpoints/{exp}")
            mydrive = target.path.parents[2]
            extras = {k: DirectoryTarget(mydrive / "atheria" / k / exp, mount_root=mydrive) for k in ("logs", "exports")}
        else:
            log.info("no persistent copy configured (remote=None on %s): checkpoints stay in %s",
                     env.kind, paths.checkpoints)
            return None
        timeout = float(getattr(cfg, "lease_timeout_seconds", 180.0) if lease_timeout is None else lease_timeout)
        take = bool(getattr(cfg, "take_over_lease", False) if take_over is None else take_over)
        remote_lease = None
        if lease and target.supports_lease:
            remote_lease = Lease(TargetLeaseStore(target), owner_label=f"experiment {exp!r}", timeout=timeout,
                                 heartbeat_every=min(30.0, timeout / 4), clock=wall_clock)
            try:  # bounded: a stuck mount must not hang the start (the resume step then reports it)
                previous = call_within(lambda: remote_lease.acquire(take_over=take), LEASE_OPEN_TIMEOUT_S,
                                       "taking the lease", target.name)
            except LeaseHeldError:
                raise
            except Exception as exc:  # unreachable or unwritable now: the resume step decides whether that stops
                log.warning("the remote lease of %s could not be taken now (%s: %s); it is taken before the first "
                            "sync", target.name, type(exc).__name__, exc)
            else:
                if previous is not None:
                    log.warning("took over the remote lease of %s from %s (pid %d)", target.name, previous.host,
                                previous.pid)
                remote_lease.start_heartbeat()
        elif lease:
            log.info("no remote lease on %s: a lease there could not lock anything", target.name)
        schedule = SyncSchedule(every_episodes=cfg.drive_sync_every or None,
                                every_seconds=cfg.sync_every_minutes * 60.0)
        worker = SyncWorker(paths.checkpoints, target, schedule=schedule, lease=remote_lease, take_over_lease=take,
                            wait=wait, clock=clock, wall_clock=wall_clock, on_alert=on_alert)
        log.info("checkpoints are mirrored to %s every %s episodes or %.0f min", target.name,
                 cfg.drive_sync_every or "-", cfg.sync_every_minutes)
        return cls(worker, extras, lease=remote_lease, extra_dirs=(paths.logs, paths.exports),
                   retry_seconds=float(getattr(cfg, "remote_retry_seconds", RETRY_SECONDS)),
                   wait=wait or time.sleep, clock=clock)

    # -- during the run --------------------------------------------------------------------------
    def attach(self, checkpoints: CheckpointManager) -> None:
        """Mirror ``checkpoints``' commits as the schedule says."""
        self.worker.attach(checkpoints)

    def status(self) -> dict[str, Any]:
        s = self.worker.status()
        s["lease"] = None if self.lease is None else ("held" if self.lease.held else "not held")
        return s

    def remote_state(self) -> RemoteState:
        """What the remote holds now (as last read or written) against the local checkpoints."""
        return self.worker.remote_state()

    def sync_now(self, timeout: float | None = None) -> RemoteState:
        """Sync now and wait up to ``timeout`` s (an emergency save); returns (and records) what the remote holds."""
        self.worker.sync_now(timeout)
        self.last_state = self.worker.remote_state()
        return self.last_state

    def _extra_bytes(self, dirs: tuple[Path, ...]) -> int:
        total = 0
        for directory in dirs:
            if directory.parent.name in self.extra_targets:
                total += sum(p.stat().st_size for p in _files(directory))
        return total

    def estimated_final_sync_seconds(self) -> float:
        """Seconds the final sync is expected to take, for the time budget's reserve.

        What it must send (local checkpoints the remote lacks, one more checkpoint the size of the newest for the
        final save, the logs and exports) at the upload speed measured this session (verification included), or
        at ``ASSUMED_BYTES_PER_S`` before the first upload.
        """
        entries = self.worker._local_entries()
        newest = max(entries, key=lambda e: e["step"], default=None)
        pending = self.worker.bytes_to_send() + (newest["size"] if newest else 0)
        pending += self._extra_bytes(self.extra_dirs)
        speed = self.worker.throughput() or ASSUMED_BYTES_PER_S
        return pending / speed

    def final_sync_timeout(self) -> float:
        """The bound :meth:`finish` uses when given none: ``min(CAP, FACTOR x estimate + MARGIN)``."""
        return min(FINAL_SYNC_CAP_S, FINAL_SYNC_FACTOR * self.estimated_final_sync_seconds() + FINAL_SYNC_MARGIN_S)

    # -- starting over ---------------------------------------------------------------------------
    def archive_remote(self, reason: str = "start over") -> str | None:
        """Keep the remote's previous run under ``archive/<lineage>-<UTC time>/`` (nothing is deleted); return the
        archive key, or None when the remote held nothing. An unreachable remote is retried for
        ``retry_seconds``; then :class:`~atheria_kit.sync.SourceUnavailableError` is raised."""
        deadline: float | None = None
        delay = 1.0
        while True:
            try:
                return self.worker.archive_remote(reason)
            except SourceUnavailableError:
                now = self._clock()
                deadline = now + self.retry_seconds if deadline is None else deadline
                if now >= deadline:
                    raise
                self._wait(min(delay, deadline - now))
                delay = min(30.0, delay * 2)

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, extra_dirs: tuple[Path, ...] = (), timeout: float | None = None) -> RemoteState:
        """Mirror the checkpoints one last time, copy logs and exports, release the lease, close (Colab: flush
        Drive), all within ``timeout`` seconds (None: :meth:`final_sync_timeout`); return what the remote holds.

        Checkpoints go first (they matter most), then the logs and exports with the time left. Whatever is
        still uploading when the time is up is abandoned; the local checkpoints are intact either way.
        """
        if self._finished:
            return self.last_state or self.worker.remote_state()
        if timeout is not None:
            require_positive("timeout", timeout, allow_zero=True)
        bound = self.final_sync_timeout() if timeout is None else float(timeout)
        deadline = self._clock() + bound

        def left() -> float:
            return max(0.0, deadline - self._clock())

        self.worker.sync_now(left())
        copy_error = run_bounded(lambda: self._copy_extras(tuple(extra_dirs)), left(), "copying logs and exports")
        if copy_error is not None:
            log.warning("%s", copy_error)
        state = self.worker.remote_state()
        self.worker.close(left(), final_sync=False, close_target=False)
        if self.lease is not None:
            error = run_bounded(self.lease.release, left(), f"releasing the lease of {self.worker.target.name}")
            if error is not None:
                log.warning("%s", error)
        for target in (self.worker.target, *self.extra_targets.values()):
            error = run_bounded(target.close, left(), f"closing {target.name}")
            if error is not None:
                log.warning("%s", error)
        self._finished = True
        self.last_state = state
        (log.info if state.complete else log.warning)("%s", state.describe())
        return state

    def abandon(self) -> None:
        """Stop without a final sync (a start that failed has nothing new to copy) and give the lease back."""
        self.worker.close(ABANDON_TIMEOUT_S, final_sync=False)
        if self.lease is not None:
            error = run_bounded(self.lease.release, ABANDON_TIMEOUT_S, "releasing the remote lease")
            if error is not None:
                log.warning("%s", error)
        for target in self.extra_targets.values():
            run_bounded(target.close, ABANDON_TIMEOUT_S, f"closing {target.name}")
        self._finished = True

    def _copy_extras(self, extra_dirs: tuple[Path, ...]) -> None:
        for directory in extra_dirs:
            target = self.extra_targets.get(directory.parent.name)  # {root}/logs/{experiment} -> "logs"
            if target is None:
                continue
            for path in _files(directory):
                try:
                    target.put(path, path.relative_to(directory).as_posix())
                except Exception as exc:  # the checkpoints matter most; a failed log copy is reported only
                    log.warning("could not copy %s to %s: %s", path.name, target.name, exc)


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
