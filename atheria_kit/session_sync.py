"""The persistent copy of a progressive-training session: which target, when to sync, and resume from it.

Two levels, as in the seed's design: checkpoints go to the fast local disk often; every ``drive_sync_every``
episodes (or ``sync_every_minutes``) and at the end they are mirrored to persistent storage in the background.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atheria_kit._manifest import MANIFEST_NAME
from atheria_kit.sync import (
    DirectoryTarget,
    FsspecTarget,
    KaggleInputSource,
    SyncSchedule,
    SyncSource,
    SyncTarget,
    SyncWorker,
    colab_drive_target,
    resume_from_best_source,
)

if TYPE_CHECKING:
    from atheria_kit.checkpoint import CheckpointManager
    from atheria_kit.platform import Environment
    from atheria_kit.session import SessionPaths
    from atheria_kit.session_config import SessionConfig

log = logging.getLogger(__name__)

FINAL_FLUSH_TIMEOUT_S = 600.0


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


def fetch_newest(local_dir: Path, sources: tuple[SyncSource, ...]) -> None:
    """Bring the newest verified checkpoint among ``local_dir`` and ``sources`` into ``local_dir``."""
    result = resume_from_best_source(local_dir, sources, fetch="all")
    if result is not None:
        log.info("resume source: %s", result)


def _target_for(location: str, subdir: str) -> SyncTarget:
    if "://" in location:
        return FsspecTarget(location.rstrip("/") + "/" + subdir)
    return DirectoryTarget(Path(location).expanduser() / subdir)


class SessionSync:
    """A :class:`SyncWorker` for the checkpoint folder, plus the copies of logs and exports at the end."""

    def __init__(self, worker: SyncWorker, extra_targets: dict[str, SyncTarget]) -> None:
        self.worker = worker
        self.extra_targets = extra_targets

    @classmethod
    def open(cls, cfg: SessionConfig, env: Environment, remote: Any, paths: SessionPaths) -> SessionSync | None:
        exp = cfg.experiment_name
        if isinstance(remote, SyncTarget):
            target, extras = remote, {}
        elif cfg.remote:
            target = _target_for(cfg.remote, f"checkpoints/{exp}")
            extras = {k: _target_for(cfg.remote, f"{k}/{exp}") for k in ("logs", "exports")}
        elif env.kind == "colab":
            target = colab_drive_target(f"atheria/checkpoints/{exp}")
            mydrive = target.path.parents[2]
            extras = {k: DirectoryTarget(mydrive / "atheria" / k / exp) for k in ("logs", "exports")}
        else:
            log.info("no persistent copy configured (remote=None on %s): checkpoints stay in %s",
                     env.kind, paths.checkpoints)
            return None
        schedule = SyncSchedule(every_episodes=cfg.drive_sync_every or None,
                                every_seconds=cfg.sync_every_minutes * 60.0)
        worker = SyncWorker(paths.checkpoints, target, schedule=schedule)
        log.info("checkpoints are mirrored to %s every %s episodes or %.0f min", target.name,
                 cfg.drive_sync_every or "-", cfg.sync_every_minutes)
        return cls(worker, extras)

    def attach(self, checkpoints: CheckpointManager) -> None:
        """Mirror ``checkpoints``' commits as the schedule says."""
        self.worker.attach(checkpoints)

    def status(self) -> dict[str, Any]:
        return self.worker.status()

    def sync_now(self, timeout: float | None = None) -> bool:
        return self.worker.sync_now(timeout)

    def finish(self, extra_dirs: tuple[Path, ...] = ()) -> bool:
        """Mirror the checkpoints one last time, copy logs and exports, wait, then close (Colab: flush Drive)."""
        for directory in extra_dirs:
            target = self.extra_targets.get(directory.parent.name)
            if target is None:
                continue
            for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
                try:
                    target.put(path, path.relative_to(directory).as_posix())
                except Exception as exc:  # the checkpoints matter most; a failed log copy is reported only
                    log.warning("could not copy %s to %s: %s", path.name, target.name, exc)
        ok = self.worker.sync_now(FINAL_FLUSH_TIMEOUT_S)
        ok = self.worker.close(FINAL_FLUSH_TIMEOUT_S) and ok
        for target in self.extra_targets.values():
            try:
                target.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", target.name, exc)
        if not ok:
            log.warning("the persistent copy may be incomplete; the local checkpoints are intact")
        return ok
