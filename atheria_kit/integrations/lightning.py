"""The kit inside ``lightning.Trainer``: a ``CheckpointIO`` plugin and a ``Callback``, wired by :func:`prepare`.

What Lightning alone does not give a notebook run on a borrowed GPU, and this module adds:

- **verified, kill-safe checkpoints** (:class:`AtheriaCheckpointIO`): every checkpoint Lightning asks for is
  committed by the kit's :class:`~atheria_kit.checkpoint.CheckpointManager` (atomic write, integrity sidecar,
  manifest, immutable files) and loaded only after its size and hash are checked, with ``weights_only=True``;
- **a budget-aware stop** (:class:`AtheriaCallback`): after each training batch the kit's
  :class:`~atheria_kit.budget.TimeBudget` forecasts whether the next batch and the final save still fit; when
  not, the callback saves, sets ``trainer.should_stop`` and prints where it stopped and what was saved;
- **top-k rankings that survive a restart and a changed directory** (Lightning #18687): ``ModelCheckpoint``'s
  ``best_k_models``/``best_model_path``/``last_model_path`` are carried over to the new ``dirpath`` and the files
  they name are put back there, so the resumed run keeps deleting the right files and knows its best;
- **an exact mid-epoch resume** with :class:`ResumableTrainLoader` around the training loader (Lightning restarts a
  plain loader at its first batch); the callback also restores the RNG states, so an epoch-end resume is exact too;
- **a remote copy and a fresh-VM resume**: the store is mirrored by the kit's
  :class:`~atheria_kit.sync.SyncWorker`; :func:`prepare` resumes from the newest verified copy, local first,
  else downloaded (:func:`~atheria_kit.sync.resume_from_best_source`), and an unreachable remote is not empty;
- the live view, the resource monitor and a short end report.

How Lightning's paths map to the kit's files: the checkpoint (Lightning's own dict, serialized by ``torch.save``)
is written once into the *store* (``directory``) as ``ckpt-<n>.pt`` the way the kit writes its own: a temporary
file hashed while written, its integrity sidecar, fsync, rename; then it is listed in the store's
``manifest.json`` through :meth:`CheckpointManager.load_state_dict`, which checks its bytes again. ``n`` counts
saves, so that ``last.ckpt`` and a top-k file saved at the same global step stay two records. The path Lightning
asked for is then made a hard link to that file (an atomic copy where hard links are impossible, e.g. another
filesystem). So Lightning's own logic (file-exists checks, version counters, ``ckpt_path="last"``,
``LightningModule.load_from_checkpoint``) sees an ordinary checkpoint at its path, while the kit sees its
manifest. Overwriting a path re-points the link
(the old file is never written again); :meth:`AtheriaCheckpointIO.remove_checkpoint` unlinks the path and
releases its record, which the store then deletes. Which path names which record is stored inside every
checkpoint (``checkpoint["atheria_kit"]["paths"]``), so it travels with the remote copy.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atheria_kit import _io
from atheria_kit._manifest import SIDECAR_SUFFIX as SIDECAR
from atheria_kit._validation import require_int
from atheria_kit.budget import TimeBudget
from atheria_kit.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointLoadError,
    CheckpointManager,
    CheckpointRecord,
    CheckpointWriteError,
    DiskStorage,
    checkpoint_filename,
)
from atheria_kit.integrations import require
from atheria_kit.integrations.checkpoint_folders import remote_target
from atheria_kit.retention import CheckpointInfo, RetentionPolicy
from atheria_kit.say import Say
from atheria_kit.say import say as default_say
from atheria_kit.session_messages import fmt_duration
from atheria_kit.state import capture_rng_state, restore_rng_state

L = require("lightning", integration="lightning")
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

__all__ = [
    "AtheriaCallback",
    "AtheriaCheckpointIO",
    "LightningSetup",
    "LinkedDiskStorage",
    "ResumableTrainLoader",
    "prepare",
]

logger = logging.getLogger(__name__)

#: Key of the kit's own entry in a Lightning checkpoint dict (path map, store step).
CHECKPOINT_KEY = "atheria_kit"
#: File name of the checkpoint the budget stop writes (in the first ModelCheckpoint's dirpath).
STOP_FILENAME = "atheria-stop.ckpt"
_STATE_VERSION = 1


def _versions() -> dict[str, str]:
    import atheria_kit

    return {"torch": str(torch.__version__), "lightning": str(L.__version__),
            "atheria_kit": str(getattr(atheria_kit, "__version__", "unknown"))}


def _norm(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


# ------------------------------------------------------------------------------------------- storage


class LinkedDiskStorage(DiskStorage):
    """The store's file operations, aware that Lightning's paths are hard links to the store's files.

    Deleting a store file normally truncates it first (so a half-deleted file can never pass for a checkpoint);
    when the file's bytes are still reachable under another name (a Lightning path in an old ``dirpath`` that
    this run no longer manages), only the store's name is removed, so the other name keeps its bytes.
    """

    def remove(self, name: str) -> None:
        path = self.path(name)
        if path.stat().st_nlink > 1:
            path.unlink()
            _io.fsync_dir(path.parent)
            return
        super().remove(name)


class _KeepUnreleased(RetentionPolicy):
    """Keep every record Lightning has not released: ModelCheckpoint decides what to delete, not the store."""

    def __init__(self, released: set[int]) -> None:
        self.released = released

    def keep(self, records: Sequence[CheckpointInfo]) -> set[int]:
        return {r.step for r in records if r.step not in self.released}


# -------------------------------------------------------------------------------------------- plugin


class AtheriaCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` whose files are committed, verified and listed by the kit's checkpoint store.

    ``directory`` is the store (manifest, ``ckpt-<n>.pt``, sidecars; the folder the sync layer mirrors).
    Loading is ``torch.load(weights_only=True)``; objects that it refuses (e.g. a ``pathlib.Path`` in
    ``hyper_parameters``) can be allowed one by one with ``safe_globals``, or all at once, for files you trust,
    with ``allow_pickle=True``. ``budget`` learns each save's duration (``TimeBudget.record_save``).
    ``storage`` replaces the store's file operations (a :class:`LinkedDiskStorage` subclass; tests slow writes).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        budget: TimeBudget | None = None,
        allow_pickle: bool = False,
        safe_globals: Iterable[Any] = (),
        storage: DiskStorage | None = None,
        link: bool = True,
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(f"directory={directory!r} is invalid; expected a folder path for the checkpoint store")
        self.directory = Path(directory).absolute()
        self.allow_pickle = bool(allow_pickle)
        self.safe_globals = list(safe_globals)
        self.link = bool(link)
        if budget is not None and not callable(getattr(budget, "record_save", None)):
            raise ValueError(f"budget={budget!r} is invalid; expected a TimeBudget (with record_save) or None")
        self.budget = budget
        self._subscribers: list[Callable[[CheckpointRecord, Path], None]] = []
        self._released: set[int] = set()
        self.manager = CheckpointManager(
            self.directory,
            policy=_KeepUnreleased(self._released),
            monitor="global_step",
            mode="max",
            allow_pickle=self.allow_pickle,
            storage=storage if storage is not None else LinkedDiskStorage(self.directory),
        )
        #: Lightning path (normalized, absolute) -> store step of the record whose bytes it holds.
        self.paths: dict[str, int] = {}
        #: Set by the callback after a budget stop's save: later saves/removals of this run are skipped, so the
        #: store stays exactly at the stop (a checkpoint written after a mid-epoch stop would claim the epoch done).
        self.frozen: str | None = None
        self.last_saved: CheckpointRecord | None = None
        self.saves = 0
        self.save_seconds = 0.0

    # ---------------------------------------------------------------------------------- save
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r} is not supported by {type(self).__name__}; "
                            "expected None")
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"checkpoint={type(checkpoint).__name__} is invalid; expected a dict")
        if "://" in os.fspath(path) and not os.fspath(path).startswith("file://"):
            raise ValueError(f"path={os.fspath(path)!r} is invalid for AtheriaCheckpointIO; expected a local path "
                             "(set ModelCheckpoint(dirpath=...) to a local folder and pass the remote to "
                             "prepare(remote=...), which mirrors the verified store there)")
        target = _norm(os.fspath(path).removeprefix("file://"))
        if self.frozen is not None:
            logger.info("not saving %s: %s", target, self.frozen)
            return
        t0 = time.perf_counter()
        storage = self.manager.storage
        newest = self.manager.newest_step()
        step = max([-1 if newest is None else newest, *self._released]) + 1
        while storage.exists(checkpoint_filename(step)) or storage.exists(checkpoint_filename(step) + SIDECAR):
            step += 1  # a killed write's leftover name: committed names are never reused
        name = checkpoint_filename(step)
        paths = dict(self.paths)
        paths[target] = step
        payload = dict(checkpoint)
        payload[CHECKPOINT_KEY] = {"version": _STATE_VERSION, "path": target, "step": step, "paths": paths}
        global_step = max(0, int(checkpoint.get("global_step", 0) or 0))
        metrics = {"global_step": float(global_step), "epoch": float(checkpoint.get("epoch", 0) or 0)}
        now, versions, lineage = time.time(), _versions(), self.manager.lineage
        buf = io.BytesIO()
        torch.save(payload, buf)  # Lightning's own format: the file at its path is an ordinary checkpoint
        del payload
        view = buf.getbuffer()
        chunks = (view[i:i + _io.CHUNK_BYTES] for i in range(0, len(view), _io.CHUNK_BYTES))

        def seal(result: Any) -> None:  # the integrity proof lands before the checkpoint gets its name
            storage.write_integrity(name, result, step=step, revision=0, lineage=lineage, episode=global_step,
                                    metrics=metrics, time=now, versions=versions)

        try:
            result = storage.write_checkpoint(name, chunks, seal)
        except OSError as e:
            raise CheckpointWriteError(storage.path(name), e) from e
        finally:
            del chunks, view
        rec = CheckpointRecord(name, step, global_step, metrics, result.size, result.sha256, now, versions,
                               storage.path(name), blake3=result.blake3, lineage=lineage)
        # Listed through the manager's public merge, which checks the bytes once more and writes the manifest.
        self.manager.load_state_dict({"version": FORMAT_VERSION, "monitor": self.manager.monitor,
                                      "mode": self.manager.mode, "records": [rec.to_json()]})
        if not any(r.file == name for r in self.manager.records()):
            raise CheckpointError(f"checkpoint {rec.path} was written but did not verify; it is not listed")
        previous = self.paths.get(target)
        self._place(rec.path, target)
        self.paths[target] = step
        if previous is not None and previous != step:
            self._release(previous)
        seconds = time.perf_counter() - t0
        if self.budget is not None:
            self.budget.record_save(seconds)
        self.last_saved = rec
        self.saves += 1
        self.save_seconds += seconds
        for callback in list(self._subscribers):
            try:
                callback(rec, self.manager.manifest_path)
            except Exception:
                logger.exception("checkpoint subscriber %r failed", callback)

    def subscribe(self, callback: Callable[[CheckpointRecord, Path], None]) -> None:
        """Call ``callback(record, manifest_path)`` after each save (``SyncWorker.attach(plugin)`` uses this)."""
        if not callable(callback):
            raise ValueError(f"callback={callback!r} is invalid; expected a callable")
        self._subscribers.append(callback)

    def _place(self, source: Path, target: str) -> None:
        """Make ``target`` name the bytes of the committed ``source``: a hard link, or an atomic copy."""
        dest = Path(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{_io.TMP_PREFIX}{dest.name}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if self.link:
            try:
                os.link(source, tmp)
            except OSError as e:  # another filesystem, or one without hard links (some FUSE mounts)
                logger.info("cannot hard-link %s to %s (%s); copying instead", source, dest, e)
            else:
                os.replace(tmp, dest)
                _io.fsync_dir(dest.parent)
                return
        with _io.atomic_open(dest, "wb") as fh, open(source, "rb") as src:
            shutil.copyfileobj(src, fh, _io.CHUNK_BYTES)

    def _release(self, step: int) -> None:
        """Drop the store record ``step`` once no Lightning path names it any more."""
        if step in self.paths.values():
            return
        self._released.add(step)
        self.prune()

    def prune(self) -> None:
        """Delete the released records now (the manifest first, then the files), not only at the next save."""
        self.manager.prune()

    # ---------------------------------------------------------------------------------- load
    def resolve(self, path: Any) -> CheckpointRecord | None:
        """The store record that Lightning ``path`` names (by path, by the file's identity, or a store file)."""
        target = _norm(path)
        records = self.manager.records()
        step = self.paths.get(target)
        if step is not None:
            rec = next((r for r in records if r.step == step), None)
            if rec is not None:
                return rec
        for rec in records:
            if _norm(rec.path) == target:
                return rec
        try:
            st = os.stat(target)
        except OSError:
            return None
        for rec in records:
            with contextlib.suppress(OSError):
                rs = os.stat(rec.path)
                if (rs.st_ino, rs.st_dev) == (st.st_ino, st.st_dev):
                    return rec
        return None

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """The verified checkpoint behind ``path``; a damaged one is skipped (warning naming it) for the newest
        older verified one. ``weights_only=False`` needs ``allow_pickle=True``."""
        if weights_only is False and not self.allow_pickle:
            logger.info("loading %s with weights_only=True anyway: full pickle needs allow_pickle=True", path)
        location = map_location if map_location is not None else "cpu"
        rec = self.resolve(path)
        with torch.serialization.safe_globals(self.safe_globals):
            if rec is None:
                if not os.path.isfile(os.fspath(path)):
                    raise FileNotFoundError(f"Checkpoint file not found: {path}")
                loaded = self.manager.load(os.fspath(path), map_location=location)
                assert loaded is not None
                return self._unwrap(loaded.state, loaded.record)
            for candidate in self._fallbacks(rec):
                try:
                    loaded = self.manager.load(candidate, map_location=location)
                except CheckpointLoadError as e:
                    if "allow_pickle" in str(e):
                        raise CheckpointLoadError(
                            f"{e}. Lightning checkpoints hold extra objects when hyper-parameters or callbacks "
                            "store them; allow the classes you trust with AtheriaCheckpointIO(safe_globals=[...]) "
                            "or every object with allow_pickle=True") from e
                    warnings.warn(f"checkpoint {candidate.path} (for {path}) is unusable and skipped: {e}",
                                  stacklevel=2)
                    logger.warning("checkpoint %s (for %s) is unusable and skipped: %s", candidate.path, path, e)
                    continue
                assert loaded is not None
                if candidate is not rec:
                    msg = (f"resuming from the newest older verified checkpoint {candidate.path} "
                           f"(global step {int(candidate.metrics.get('global_step', -1))}) instead of {path}")
                    warnings.warn(msg, stacklevel=2)
                    logger.warning("%s", msg)
                return self._unwrap(loaded.state, candidate)
        raise CheckpointLoadError(f"no verified checkpoint for {path} in {self.directory}: it and every older one "
                                  "failed verification (see the warnings above)")

    def _fallbacks(self, rec: CheckpointRecord) -> list[CheckpointRecord]:
        older = [r for r in self.manager.records() if r.step < rec.step]
        return [rec, *sorted(older, key=lambda r: r.step, reverse=True)]

    def _unwrap(self, state: Any, rec: CheckpointRecord) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise CheckpointLoadError(f"{rec.path} does not hold a Lightning checkpoint (a dict)")
        own = state.get(CHECKPOINT_KEY)
        if isinstance(own, dict):
            known = {r.step for r in self.manager.records()}
            for p, step in dict(own.get("paths") or {}).items():
                if isinstance(step, int) and step in known and p not in self.paths:
                    self.paths[str(p)] = step
        return state

    def forget_unnamed(self, before: int) -> list[int]:
        """Release the store records older than step ``before`` that no Lightning path names (their paths were
        removed after the checkpoint being resumed was written, or never linked); returns their steps."""
        named = set(self.paths.values())
        stale = [r.step for r in self.manager.records() if r.step < before and r.step not in named]
        if stale:
            self._released.update(stale)
            self.prune()
        return stale

    def remove_checkpoint(self, path: Any) -> None:
        target = _norm(path)
        if self.frozen is not None:
            logger.info("not removing %s: %s", target, self.frozen)
            return
        step = self.paths.pop(target, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        if step is not None:
            self._release(step)

    def teardown(self) -> None:
        """Raise a failed write's error, if any (saves are synchronous, so nothing is left to flush)."""
        self.manager.raise_pending_error()


# ------------------------------------------------------------------------------------------- loader

_RESUMABLE = "atheria_resumable"


class ResumableTrainLoader:
    """A training ``DataLoader`` that a mid-epoch resume continues exactly (Lightning #19764, #20550).

    Lightning restarts a plain loader at its first batch when it resumes mid-epoch, so the rest of that epoch sees
    other batches than an uninterrupted run. This wrapper is a stateful loader for Lightning: its state holds the
    torch RNG state at the start of the epoch's iteration (which fixes the shuffle and the workers' seeds) and how
    many batches were trained on (set by :class:`AtheriaCallback` from Lightning's own batch progress, so that a
    fetcher reading ahead never counts a batch that was not trained on). On resume it replays the same
    permutation, skips the consumed batches (they are loaded and dropped, not trained on) and puts the RNG back
    where the checkpoint left it. Exact when batches are drawn in the main process without random augmentation,
    or by workers (their seeds replay); a dataset that draws from the global RNG in the main process sees the
    skipped batches' draws again. Skipping costs the loading time of those batches.
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        if not hasattr(loader, "__iter__") or not hasattr(loader, "__len__"):
            raise ValueError(f"loader={loader!r} is invalid; expected a sized iterable such as a DataLoader")
        self.loader = loader
        self._epoch_rng: torch.Tensor | None = None
        self._yielded = 0
        self._pending: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Any:
        return self._iterate()

    def _iterate(self) -> Any:
        pending, self._pending = self._pending, None
        skip = int(pending["consumed"]) if pending is not None else 0
        if pending is not None and 0 < skip < len(self):
            resume_rng = torch.get_rng_state()  # where the checkpoint left the RNG (restored by the callback)
            torch.set_rng_state(pending["rng"])
            self._epoch_rng = pending["rng"].clone()
            iterator = iter(self.loader)
            self._yielded = 0
            for _ in range(skip):
                next(iterator)
                self._yielded += 1
            torch.set_rng_state(resume_rng)
        else:  # a new epoch (also after a checkpoint written at an epoch's end)
            self._epoch_rng = torch.get_rng_state()
            iterator = iter(self.loader)
            self._yielded = 0
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {_RESUMABLE: _STATE_VERSION, "rng": self._epoch_rng if self._epoch_rng is not None
                else torch.get_rng_state(), "consumed": self._yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get(_RESUMABLE) != _STATE_VERSION:
            raise ValueError(f"ResumableTrainLoader state version={state_dict.get(_RESUMABLE)!r} is invalid; "
                             f"expected {_STATE_VERSION}")
        self._pending = dict(state_dict)


def _set_consumed(checkpoint: dict[str, Any]) -> None:
    """Write Lightning's count of consumed batches into each ResumableTrainLoader state of ``checkpoint``."""
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    progress = (fit.get("epoch_loop.batch_progress") or {}).get("current") or {}
    states = (fit.get("state_dict") or {}).get("combined_loader") or []
    if "processed" not in progress:
        return
    for state in states:
        if isinstance(state, dict) and state.get(_RESUMABLE) is not None:
            # ``processed``: batches trained on (a save in on_train_batch_end has not counted its batch completed)
            state["consumed"] = int(progress["processed"])


# ------------------------------------------------------------------------------------------ callback


class AtheriaCallback(Callback):
    """Budget-aware stop, rankings across directories, remote sync, live view and end report for one run.

    Use with the same run's :class:`AtheriaCheckpointIO` in ``Trainer(plugins=[...])`` (see :func:`prepare`).
    ``budget`` (a :class:`TimeBudget`) is asked after each training batch; ``sync`` (a
    :class:`~atheria_kit.sync.SyncWorker` attached to the plugin's store) gets a final sync, bounded by
    ``final_sync_timeout`` seconds; ``say`` prints the lines a user must see; ``live`` is a
    :class:`~atheria_kit.live.LiveView` (or None), fed every ``live_every`` steps; ``monitor`` a started
    :class:`~atheria_kit.monitor.ResourceMonitor` (or None), stopped at the end. ``restore_rng`` saves the Python,
    NumPy and torch RNG states in each checkpoint and restores them on resume (what makes the next epoch's
    shuffle equal to an uninterrupted run's); ``handle_signals`` turns SIGTERM/SIGINT during ``fit`` into a save
    and stop at the next batch end (a second Ctrl-C interrupts).
    """

    def __init__(
        self,
        checkpoint_io: AtheriaCheckpointIO,
        *,
        budget: TimeBudget | None = None,
        sync: Any = None,
        say: Say | None = None,
        live: Any = None,
        monitor: Any = None,
        final_sync_timeout: float = 120.0,
        stop_filename: str = STOP_FILENAME,
        restore_rng: bool = True,
        handle_signals: bool = False,
        live_every: int = 10,
    ) -> None:
        if not isinstance(checkpoint_io, AtheriaCheckpointIO):
            raise ValueError(f"checkpoint_io={checkpoint_io!r} is invalid; expected an AtheriaCheckpointIO")
        if budget is not None and not isinstance(budget, TimeBudget):
            raise ValueError(f"budget={budget!r} is invalid; expected an atheria_kit.budget.TimeBudget or None")
        if not (isinstance(final_sync_timeout, (int, float)) and final_sync_timeout >= 0):
            raise ValueError(f"final_sync_timeout={final_sync_timeout!r} is invalid; expected seconds >= 0")
        if not isinstance(stop_filename, str) or not stop_filename.endswith(".ckpt") or "/" in stop_filename:
            raise ValueError(f"stop_filename={stop_filename!r} is invalid; expected a file name ending in .ckpt")
        self.checkpoint_io = checkpoint_io
        self.budget = budget
        self.sync = sync
        self.say = say if say is not None else default_say
        self.live = live
        self.monitor = monitor
        self.final_sync_timeout = float(final_sync_timeout)
        self.stop_filename = stop_filename
        self.restore_rng = bool(restore_rng)
        self.handle_signals = bool(handle_signals)
        self.live_every = require_int("live_every", live_every, minimum=1)
        self._signals_installed = False
        #: Why this run stopped early (None while running or after a normal end).
        self.stop_reason: str | None = None
        #: The Lightning path of the budget stop's checkpoint, once written.
        self.stop_path: str | None = None
        self._stop_at_epoch_end = False
        self._unit = False
        self._steps = 0
        self._started = time.monotonic()
        self._resumed_from: str | None = None
        # Validation during fit, in the budget's time: it runs between training batches, so the batch forecast
        # does not see it; a stop must leave room for the validation that follows the next batch.
        self._val_runs: deque[float] = deque(maxlen=3)
        self._val_batch = 0.0  # longest sanity-check validation batch: the estimate before a full run is seen
        self._val_started: float | None = None
        self._val_batch_started: float | None = None
        self._limit_val_batches: Any = None
        self._val_estimate = 0.0

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"version": _STATE_VERSION}
        if self.restore_rng:
            state["rng"] = capture_rng_state()  # tensors and plain types: loads with weights_only=True
        if self.budget is not None:
            state["budget"] = self.budget.state_dict()
            state["validation_seconds"] = list(self._val_runs)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(f"AtheriaCallback state version={state_dict.get('version')!r} is invalid; "
                             f"expected {_STATE_VERSION}")
        if self.restore_rng and "rng" in state_dict:
            restore_rng_state(state_dict["rng"])
        if self.budget is not None and "budget" in state_dict:
            self.budget.load_state_dict(state_dict["budget"])
            self._val_runs.extend(float(v) for v in state_dict.get("validation_seconds", ()))

    # -------------------------------------------------------------------------------- setup
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if trainer.strategy.checkpoint_io is not self.checkpoint_io:
            raise ValueError(
                "AtheriaCallback needs its AtheriaCheckpointIO in the same Trainer: "
                "Trainer(plugins=[checkpoint_io], callbacks=[callback]) (or Trainer(**prepare(...).trainer_kwargs)); "
                f"this Trainer uses {type(trainer.strategy.checkpoint_io).__name__}")
        self.checkpoint_io.frozen = None
        self.stop_reason = None
        self._started = time.monotonic()
        self._steps = 0

    # Signal handlers live from on_train_start to on_train_end (or on_exception): Lightning saves the handlers it
    # finds after setup() and puts them back in its own teardown, which runs after on_exception but before the
    # callbacks' teardown(); installed in setup(), ours would be put back after a failed run.
    def _install_signals(self, trainer: Any) -> None:
        if (self.handle_signals and self.budget is not None and trainer.state.fn == "fit"
                and threading.current_thread() is threading.main_thread()):
            # SIGTERM/SIGINT become "save and stop at the next batch end" (Kaggle and Colab send SIGTERM first).
            self.budget.install_signal_handlers()
            self._signals_installed = True

    def _uninstall_signals(self) -> None:
        if self._signals_installed and self.budget is not None:
            self.budget.uninstall_signal_handlers()
            self._signals_installed = False

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._uninstall_signals()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._uninstall_signals()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        _set_consumed(checkpoint)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Carry ModelCheckpoint rankings over to the current dirpath and put the files they name back."""
        own = checkpoint.get(CHECKPOINT_KEY) or {}
        self._resumed_from = own.get("path")
        states = checkpoint.get("callbacks") or {}
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or cb.state_key not in states or cb.dirpath is None:
                continue
            states[cb.state_key] = self._carry_rankings(cb, dict(states[cb.state_key]))
        io_ = self.checkpoint_io
        # An earlier session's stop checkpoint has served its purpose once resumed from (this session writes its own).
        for p in [p for p in io_.paths if Path(p).name == self.stop_filename]:
            io_.remove_checkpoint(p)
        if isinstance(own.get("step"), int):
            io_.forget_unnamed(before=own["step"])

    def _carry_rankings(self, cb: ModelCheckpoint, state: dict[str, Any]) -> dict[str, Any]:
        old_dir = state.get("dirpath") or cb.dirpath
        new_dir = cb.dirpath
        moved = _norm(old_dir) != _norm(new_dir)

        def carry(path: Any) -> str | None:
            """The path in the new dirpath, with its file put back from the store; None when its record is gone."""
            if not path:
                return None
            p = _norm(path)
            if moved and Path(p).parent == Path(_norm(old_dir)):
                new = str(Path(new_dir) / Path(p).name)
            else:
                new = str(path)
            rec = self.checkpoint_io.resolve(p)
            if rec is None:
                logger.warning("ranking entry %s has no verified checkpoint left in the store; dropped", path)
                return None
            if moved:  # the old dirpath is no longer this run's: its files stay, untouched, but are not managed
                self.checkpoint_io.paths.pop(p, None)
            self.checkpoint_io.paths[_norm(new)] = rec.step
            if not os.path.isfile(new) or self.checkpoint_io.resolve(new) is not rec:
                self.checkpoint_io._place(rec.path, _norm(new))
            return new

        best_k = {}
        for path, score in dict(state.get("best_k_models") or {}).items():
            new = carry(path)
            if new is not None:
                best_k[new] = score
        state["best_k_models"] = best_k
        state["last_model_path"] = carry(state.get("last_model_path")) or ""
        best = carry(state.get("best_model_path"))
        state["best_model_path"] = best or ""
        if best_k:
            pick, worst = (min, max) if cb.mode == "min" else (max, min)
            if best is None or best not in best_k:
                state["best_model_path"] = pick(best_k, key=lambda k: float(best_k[k]))
            state["best_model_score"] = best_k[state["best_model_path"]]
            k = cb.save_top_k
            if k == -1 or len(best_k) >= k:
                state["kth_best_model_path"] = worst(best_k, key=lambda k_: float(best_k[k_]))
                state["kth_value"] = best_k[state["kth_best_model_path"]]
            else:  # fewer than k left: Lightning keeps filling before it deletes
                state["kth_best_model_path"] = ""
        else:
            state["kth_best_model_path"] = ""
        if moved:
            logger.info("ModelCheckpoint rankings carried from %s to %s (%d files)", old_dir, new_dir, len(best_k))
        state["dirpath"] = new_dir
        return state

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._install_signals(trainer)
        if self.budget is not None:  # after the sanity check: its batches give the first estimate
            self._val_estimate = self.validation_estimate(trainer)
        if self._resumed_from is not None:
            logger.info("resumed at epoch %d, global step %d", trainer.current_epoch, trainer.global_step)
        if self.live is not None and getattr(self.live, "total", None) is None:
            total = trainer.estimated_stepping_batches
            if isinstance(total, (int, float)) and math.isfinite(total):
                self.live.total = int(total)
                self.live.done = trainer.global_step

    # -------------------------------------------------------------------------------- budget
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.stop_reason is not None:
            # Lightning went on after should_stop (min_epochs/min_steps not reached): saves must go on too.
            self.say.once("lightning-min-epochs", "Lightning did not stop at the time budget (min_epochs or min_steps "
                          "is not reached yet), so the run goes on past the budget stop and may be killed by the "
                          "session limit; lower min_epochs/min_steps to let the budget stop it", kind="warning")
            self.checkpoint_io.frozen = None
            self.stop_reason = None
        if self.budget is not None:
            if self._unit:
                self.budget.abandon_unit()
            self.budget.start_unit()
            self._unit = True

    # ---------------------------------------------------------------------------- validation time
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self.budget is not None and not trainer.sanity_checking:
            self._val_started = self.budget.elapsed

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.budget is not None and self._val_started is not None:
            self._val_runs.append(max(0.0, self.budget.elapsed - self._val_started))
            self._val_started = None
            self._val_estimate = self.validation_estimate(trainer)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self.budget is not None and trainer.sanity_checking:
            self._val_batch_started = self.budget.elapsed

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.budget is not None and trainer.sanity_checking and self._val_batch_started is not None:
            self._val_batch = max(self._val_batch, self.budget.elapsed - self._val_batch_started)
            self._val_batch_started = None

    def validation_estimate(self, trainer: Any) -> float:
        """Seconds a validation run is expected to take: the longest of the last runs (with a margin), else the
        sanity check's slowest batch times the number of validation batches, else 0."""
        if self._val_runs:
            return max(self._val_runs) * 1.25
        batches = sum(n for n in trainer.num_val_batches if math.isfinite(n)) if trainer.num_val_batches else 0
        return self._val_batch * 1.25 * batches

    def _validation_after(self, trainer: Any, batch_number: int) -> bool:
        """Whether Lightning validates right after training batch ``batch_number`` (1-based; past the end of this
        epoch: the next epoch's batch ``batch_number - num_training_batches``)."""
        if not trainer.enable_validation:
            return False
        epoch = trainer.current_epoch
        if batch_number > trainer.num_training_batches:
            epoch, batch_number = epoch + 1, batch_number - trainer.num_training_batches
        every = trainer.check_val_every_n_epoch
        if every is not None and (epoch + 1) % every != 0:
            return False
        if batch_number >= trainer.num_training_batches:
            return True
        check = trainer.val_check_batch
        return isinstance(check, int) and check > 0 and batch_number % check == 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._steps += 1
        budget = self.budget
        if budget is not None and self._unit:
            budget.end_unit()
            self._unit = False
        if self.live is not None and self._steps % self.live_every == 0:
            # Only every few steps: reading the loss waits for the GPU, which Lightning itself does only to log.
            loss = _loss_of(outputs)
            if loss is not None:
                self.live.update(trainer.global_step - 1, loss, status=f"epoch {trainer.current_epoch}")
        if budget is None or self.stop_reason is not None:
            return
        validation = 0.0
        if budget.can_start():  # False too once a stop was requested (a signal) or only the save time is left
            estimate = self._val_estimate
            if estimate <= 0 or budget.remaining - budget.end_reserve - (budget.unit_forecast or 0.0) >= estimate:
                return  # (cheap checks first: this runs after every step)
            if not self._validation_after(trainer, batch_idx + 2):
                return
            validation = estimate
        if trainer.should_stop:
            return  # something else (EarlyStopping) already ends the run, and Lightning's own saves follow
        self.stop_reason = self.budget.stop_reason or "time budget"
        trainer.should_stop = True
        last = batch_idx + 1 >= trainer.num_training_batches
        if last and not self.stop_reason.startswith("signal"):
            # End of the epoch: save after Lightning's epoch-end work (validation, ModelCheckpoint), which resumes
            # cleanly; see on_train_epoch_end.
            self._stop_at_epoch_end = True
            return
        self._save_and_say(trainer, where=f"epoch {trainer.current_epoch}, after batch {batch_idx + 1}/"
                                         f"{trainer.num_training_batches} (global step {trainer.global_step})",
                           freeze=True, validation=validation)
        # Lightning validates once more when should_stop is set mid-epoch; the saved state does not need it, and the
        # time it takes is what the budget just said is missing. Restored at the end of fit.
        self._limit_val_batches = trainer.limit_val_batches
        trainer.limit_val_batches = 0

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._stop_at_epoch_end:
            self._stop_at_epoch_end = False
            self._save_and_say(trainer, where=f"the end of epoch {trainer.current_epoch} "
                                             f"(global step {trainer.global_step})", freeze=False)

    def _stop_dir(self, trainer: Any) -> Path:
        cb = trainer.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return Path(cb.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    def _save_and_say(self, trainer: Any, *, where: str, freeze: bool, validation: float = 0.0) -> None:
        forecast = self.budget.unit_forecast if self.budget is not None else None
        left = self.budget.remaining if self.budget is not None else math.inf
        save_est = self.budget.save_estimate if self.budget is not None else 0.0
        path = self._stop_dir(trainer) / self.stop_filename
        trainer.save_checkpoint(str(path))
        self.stop_path = str(path)
        rec = self.checkpoint_io.last_saved
        if freeze:
            # Lightning still runs its epoch-end hooks after should_stop; a checkpoint written there would say the
            # epoch finished and the resume would skip its remaining batches.
            self.checkpoint_io.frozen = f"the run stopped for the time budget at {where}; its checkpoint is {path}"
        remote = self._final_sync()
        val = f", the validation after it (~{fmt_duration(validation)})" if validation > 0 else ""
        why = (f"the next step (~{fmt_duration(forecast)}){val} and the final save (~{fmt_duration(save_est)}) would "
               f"not fit in the {fmt_duration(left)} left") if forecast else (self.stop_reason or "stop requested")
        if self.stop_reason and self.stop_reason.startswith("signal"):
            why = f"stop requested ({self.stop_reason})"
        saved = f"saved {path} (store file {rec.file}, verified)" if rec is not None else f"saved {path}"
        self.say(f"stopped at {where}: {why}; {saved}{remote}; press Run all in the next session to continue")

    def _final_sync(self, timeout: float | None = None) -> str:
        if self.sync is None:
            return ""
        ok = self.sync.sync_now(timeout=self.final_sync_timeout if timeout is None else timeout)
        state = self.sync.remote_state()
        if ok:
            return f"; remote copy at {self.sync.target.name} is up to date"
        return f"; remote copy NOT confirmed ({state.describe()})"

    # -------------------------------------------------------------------------------- end
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """A run that fails (or Ctrl-C twice): Lightning calls neither ``on_fit_end`` nor ``teardown`` then, so the
        monitor thread is stopped, the signal handlers are given back, the copy gets a bounded last sync, and the
        user is told which verified checkpoint the next "Run all" continues from."""
        if self.budget is not None and self._unit:
            self.budget.abandon_unit()
            self._unit = False
        self._uninstall_signals()
        if self._limit_val_batches is not None:
            trainer.limit_val_batches, self._limit_val_batches = self._limit_val_batches, None
        if self.live is not None:
            with contextlib.suppress(Exception):
                self.live.close(status="error", outcome="error")
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.stop()
        remote = self._final_sync()
        rec = self.checkpoint_io.manager.latest()  # verified (size and hash) before it is named
        kept = (f"the last verified checkpoint ({rec.file}, epoch {int(rec.metrics.get('epoch', 0))}, global step "
                f"{int(rec.metrics.get('global_step', 0))}) is kept" if rec is not None
                else "no checkpoint had been saved yet")
        what = "interrupted" if isinstance(exception, KeyboardInterrupt) else f"{type(exception).__name__}: {exception}"
        self.say.error(f"training stopped at epoch {trainer.current_epoch}, global step {trainer.global_step}: {what}; "
                       f"{kept}{remote}. Fix the cause, then Run all again to continue")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._limit_val_batches is not None:
            trainer.limit_val_batches, self._limit_val_batches = self._limit_val_batches, None
        timeout = self.final_sync_timeout
        if self.stop_reason is not None and self.budget is not None:  # what the budget still allows
            timeout = min(timeout, max(0.0, self.budget.remaining - self.budget.reserve_seconds))
        remote = self._final_sync(timeout)
        elapsed = time.monotonic() - self._started
        cb = trainer.checkpoint_callback
        best = ""
        if cb is not None and getattr(cb, "best_model_path", "") and os.path.isfile(cb.best_model_path):
            score = cb.best_model_score
            shown = f" ({cb.monitor}={float(score):.4g})" if score is not None and cb.monitor else ""
            best = f"; best: {cb.best_model_path}{shown}"
        store = self.checkpoint_io
        outcome = "stopped for the time budget" if self.stop_reason is not None else "finished"
        self.say(f"{outcome}: {self._steps} training steps this session in {fmt_duration(elapsed)} "
                 f"(epoch {trainer.current_epoch}, global step {trainer.global_step}); {store.saves} checkpoint(s) "
                 f"saved this session, {len(store.manager.records())} kept in {store.directory}{best}{remote}")
        if self.live is not None:
            with contextlib.suppress(Exception):
                self.live.close(status=outcome, outcome="stopped" if self.stop_reason else "done")
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.stop()
        if self.budget is not None and self._unit:
            self.budget.abandon_unit()
            self._unit = False


def _loss_of(outputs: Any) -> float | None:
    value = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    return None


# ------------------------------------------------------------------------------------------- prepare


@dataclass
class LightningSetup:
    """What :func:`prepare` wires: pass ``**trainer_kwargs`` to ``Trainer`` and ``ckpt_path`` to ``fit``."""

    checkpoint_io: AtheriaCheckpointIO
    callback: AtheriaCallback
    ckpt_path: str | None
    budget: TimeBudget | None
    sync: Any = None
    resumed: Any = None
    extra_callbacks: list[Any] = field(default_factory=list)

    @property
    def trainer_kwargs(self) -> dict[str, Any]:
        """``plugins`` and ``callbacks`` for ``lightning.Trainer(...)``."""
        return {"plugins": [self.checkpoint_io], "callbacks": [self.callback, *self.extra_callbacks]}

    @property
    def fit_kwargs(self) -> dict[str, Any]:
        """``ckpt_path`` (None on a new run) and ``weights_only=True`` for ``trainer.fit(model, ..., **fit_kwargs)``."""
        return {"ckpt_path": self.ckpt_path, "weights_only": True}

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop the sync worker (after a last bounded sync) and the monitor; the store stays as it is."""
        if self.sync is not None:
            self.sync.close(timeout=timeout)
        if self.callback.monitor is not None:
            self.callback.monitor.stop()


def prepare(
    directory: str | os.PathLike,
    *,
    budget: TimeBudget | float | None = None,
    remote: Any = None,
    callbacks: Sequence[Any] = (),
    say: Say | None = None,
    live: str = "auto",
    monitor: bool = True,
    allow_pickle: bool = False,
    safe_globals: Iterable[Any] = (),
    unavailable: str = "raise",
    retry_seconds: float = 60.0,
    final_sync_timeout: float = 120.0,
    handle_signals: bool = True,
    wait: Callable[[float], Any] = time.sleep,
) -> LightningSetup:
    """Resume from the newest verified checkpoint and wire the plugin and callback for ``lightning.Trainer``.

    ``directory`` is the checkpoint store on this VM; ``remote`` (a folder such as Drive's, an fsspec URL or a
    :class:`~atheria_kit.sync.SyncTarget`) is where it is mirrored and where a fresh VM finds it. ``budget`` is
    a :class:`TimeBudget`, a number of seconds, or None (the platform's session limit; none locally).
    An unreachable remote is retried for ``retry_seconds`` and then stops the start-up
    (:class:`~atheria_kit.sync.RemoteUnavailableError`) instead of starting over, unless
    ``unavailable="ignore"``. Prints "resumed from ..." or "new run ...".
    """
    from atheria_kit.sync import SyncWorker, resume_from_best_source

    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
        raise ValueError(f"directory={directory!r} is invalid; expected the folder for the checkpoint store, e.g. "
                         f"prepare('run/store', remote=...), called before lightning.Trainer(**kit.trainer_kwargs)")
    speak = say if say is not None else default_say
    if budget is None or isinstance(budget, TimeBudget):
        tb = budget if budget is not None else TimeBudget()
    elif isinstance(budget, (int, float)) and not isinstance(budget, bool):
        tb = TimeBudget(float(budget))
    else:
        raise ValueError(f"budget={budget!r} is invalid; expected a TimeBudget, seconds (a number) or None")
    if live not in ("auto", "widget", "text", "off"):
        raise ValueError(f"live={live!r} is invalid; expected one of 'auto', 'widget', 'text', 'off'")
    store = Path(directory).absolute()
    target = remote_target(remote) if remote is not None else None
    found = resume_from_best_source(store, [target] if target is not None else [], fetch="all",
                                    unavailable=unavailable, retry_seconds=retry_seconds, wait=wait)
    if found.unavailable:
        speak.warning(f"{', '.join(found.unavailable)} could not be read (unavailable='ignore'): a newer checkpoint "
                      "there was not considered")
    plugin = AtheriaCheckpointIO(store, budget=tb, allow_pickle=allow_pickle, safe_globals=safe_globals)
    worker = None
    if target is not None:
        worker = SyncWorker(store, target, on_alert=lambda kind, message: speak.warning(message)).attach(plugin)
        tb.final_sync_estimate = _sync_estimate(worker)
    ckpt_path = None
    if found.found:
        listed = plugin.manager.records()
        rec = plugin.manager.latest()
        for bad in (r for r in reversed(listed) if rec is None or r.step > rec.step):
            speak.warning(f"{bad.path} failed verification ({plugin.manager.verify(bad) or 'unreadable'}); skipped"
                          + (f", resuming from the previous verified checkpoint {rec.file}" if rec else ""))
        if rec is not None:
            ckpt_path = str(rec.path)
            where = "local copy" if found.source == "local" else f"copy downloaded from {found.source}"
            speak(f"resumed from {rec.file} ({where}, verified) at epoch {int(rec.metrics.get('epoch', 0))}, "
                  f"global step {int(rec.metrics.get('global_step', 0))}; this session's budget: "
                  f"{fmt_duration(tb.remaining)}")
    if ckpt_path is None:
        places = [str(store)] + ([target.name] if target is not None else [])
        speak(f"new run: no checkpoint found in {', '.join(places)}; starting from the beginning "
              f"(this session's budget: {fmt_duration(tb.remaining)})")
    view = None
    if live != "off":
        from atheria_kit.live import LiveView

        view = LiveView(None, mode=live, title="lightning")
    mon = None
    if monitor:
        from atheria_kit.monitor import ResourceMonitor

        mon = ResourceMonitor(interval=5.0, budget=tb)
        if worker is not None:
            mon.add_status_provider("sync", worker.status)
        mon.start()
    cb = AtheriaCallback(plugin, budget=tb, sync=worker, say=speak, live=view, monitor=mon,
                         final_sync_timeout=final_sync_timeout, handle_signals=handle_signals)
    return LightningSetup(plugin, cb, ckpt_path, tb, worker, found, list(callbacks))


def _sync_estimate(worker: Any) -> Callable[[], float]:
    def estimate() -> float:
        rate = worker.throughput()
        return worker.bytes_to_send() / rate if rate else 0.0

    return estimate
