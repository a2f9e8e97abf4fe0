"""Atomic, verified, asynchronous checkpoints with a manifest and pluggable retention.

Why: a notebook session can die at any instant, even in the middle of writing a file. A checkpoint
is streamed to a temporary file in its own directory while it is hashed (SHA-256 and BLAKE3); its
integrity sidecar ``<name>.integrity.json`` (size, hashes, step, revision, lineage) is written next;
then the checkpoint is fsynced and renamed into place, and only then listed in ``manifest.json`` (also
replaced atomically). A committed file is never written again under its own name: saving a step that
already has a checkpoint writes ``ckpt-<step>-r<n>.pt`` (revision n), commits the manifest listing it
instead of the old one, and only then removes the old file. So a kill at any instant leaves either the
old complete state or the new one, and the next start finds it.

Only a file whose bytes match its record (size and BLAKE3, or SHA-256 for records written before
BLAKE3) is ever loaded; a bad or unsafe file is skipped with a warning naming it and the next
newest valid checkpoint is used instead. A file that the manifest does not list (the manifest was lost,
or a session died between the rename and the manifest update) is adopted only when its bytes match its
integrity sidecar.

Asynchronous saves: the training thread only copies the state to CPU memory
(:func:`snapshot_state`); a single background writer serializes, hashes and writes it. At most one
write is in flight. A save requested while a write is in flight *coalesces*: its snapshot waits in a
one-slot queue and replaces any older snapshot still waiting there, so the training thread never
waits for the disk (unless ``blocking=True``), and memory holds at most two snapshots. A failed
background write is re-raised by the next ``save``/``wait``/``close`` call, never lost.

Buffer reuse (``reuse_buffers=True``, the default): once a snapshot is written, the manager keeps it and
the next save copies into its tensors in place. Saving is then one memory copy with no allocation, at the
price of one copy of the state staying in CPU memory between saves (pinned memory for CUDA tensors).
Pass ``reuse_buffers=False`` when host memory is tighter than the training loop's time.
"""

from __future__ import annotations

import contextlib
import copy
import errno as _errno
import io
import logging
import os
import pickle
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import torch

from atheria_kit import _io
from atheria_kit._manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    checkpoint_name,
    manifest_bytes,
    parse_checkpoint_name,
    parse_manifest,
    sidecar_owner,
)
from atheria_kit._validation import require_choice, require_int
from atheria_kit.retention import CheckpointInfo, RetentionPolicy, default_policy, rank_best

__all__ = [
    "CheckpointError",
    "CheckpointLoadError",
    "CheckpointManager",
    "CheckpointRecord",
    "CheckpointWriteError",
    "DiskStorage",
    "LoadedCheckpoint",
    "MANIFEST_NAME",
    "snapshot_state",
    "write_integrity_sidecar",
]

logger = logging.getLogger(__name__)

PAYLOAD_FORMAT = "atheria-checkpoint"
FORMAT_VERSION = 1
_LINEAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: Re-exported for the sync layer: the integrity sidecar of a checkpoint it downloaded and verified.
write_integrity_sidecar = _io.write_integrity_sidecar


def checkpoint_filename(step: int, revision: int = 0) -> str:
    """``ckpt-{step:010d}.pt``, or ``ckpt-{step:010d}-r{revision}.pt`` for a step saved again."""
    return checkpoint_name(step, revision)


def _revision(name: str) -> int:
    parsed = parse_checkpoint_name(name)
    return parsed[1] if parsed is not None else 0


# --------------------------------------------------------------------------------------------- errors


class CheckpointError(RuntimeError):
    """Base class of checkpoint failures."""


_HINTS = {
    _errno.ENOSPC: "free space on that disk (delete old runs or outputs) or choose a directory on a larger disk, "
    "then run again: the run resumes from the last checkpoint",
    _errno.EDQUOT: "free some of your quota (e.g. empty the Drive Trash) or choose another directory, then run again",
    _errno.EROFS: "the filesystem is read-only (e.g. /kaggle/input, or a mount that went read-only); choose a "
    "writable directory (on Kaggle: under /kaggle/working)",
    _errno.EACCES: "make the directory writable for this user, or choose another directory",
    _errno.EPERM: "make the directory writable for this user, or choose another directory",
}


def storage_hint(errno_value: int | None) -> str:
    """What a user can do about an OS error number when writing checkpoints (one short sentence)."""
    return _HINTS.get(errno_value or 0, "check the disk and the directory's permissions, then run again")


class CheckpointWriteError(CheckpointError):
    """A checkpoint, its sidecar or the manifest could not be written (disk full, permission denied, ...).

    The checkpoints already on disk and the manifest are left as they were. ``path`` is the file or
    directory being written, ``errno`` the OS error number (or None), ``hint`` what to do about it, and
    ``__cause__`` the original error.
    """

    def __init__(self, path: Path, error: BaseException, *, opening: bool = False) -> None:
        self.path = Path(path)
        self.errno = getattr(error, "errno", None)
        self.hint = storage_hint(self.errno)
        reason = os.strerror(self.errno) if self.errno else str(error)
        code = f"errno {self.errno} ({_errno.errorcode.get(self.errno, '?')}), " if self.errno else ""
        if opening:
            text = (f"checkpoint directory {self.path} is not writable: {reason} ({code}{type(error).__name__}: "
                    f"{error}); {self.hint}")
        else:
            text = (f"could not write checkpoint file {self.path}: {reason} ({code}{type(error).__name__}: {error}); "
                    f"existing checkpoints and the manifest are unchanged; {self.hint}")
        super().__init__(text)


class CheckpointLoadError(CheckpointError):
    """A checkpoint exists and matches its hash but cannot be loaded as asked (e.g. it needs full pickle)."""


# -------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint as listed in the manifest; ``path`` is where it lies now (not stored).

    ``blake3`` is None for records written before BLAKE3 (their ``sha256`` verifies them); ``lineage``
    is the run that wrote the file (None before lineages existed).
    """

    file: str
    step: int
    episode: int | None
    metrics: dict[str, float]
    size: int
    sha256: str
    time: float
    versions: dict[str, str]
    path: Path = field(compare=False)
    blake3: str | None = None
    lineage: str | None = None

    @property
    def revision(self) -> int:
        """0 for ``ckpt-<step>.pt``; n for ``ckpt-<step>-r<n>.pt`` (the step saved again, n times)."""
        return _revision(self.file)

    @property
    def digest(self) -> tuple[str, str]:
        """``(algorithm, hex digest)`` that verifies the file: BLAKE3 when recorded, else SHA-256."""
        return ("blake3", self.blake3) if self.blake3 else ("sha256", self.sha256)

    def info(self) -> CheckpointInfo:
        return CheckpointInfo(step=self.step, metrics=self.metrics, time=self.time, episode=self.episode)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["path"]
        for key in ("blake3", "lineage"):  # absent rather than null: the format of records written before them
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], directory: Path) -> CheckpointRecord:
        name = str(d["file"])
        parsed = parse_checkpoint_name(name) if Path(name).name == name else None
        if parsed is None:
            raise ValueError(f"file={name!r} is not a checkpoint file name")
        step = int(d["step"])
        if step != parsed[0]:
            raise ValueError(f"step={step} does not match file={name!r}")
        blake3 = _io.check_digest("blake3", d.get("blake3"), optional=True)
        lineage = d.get("lineage")
        return cls(
            file=name,
            step=step,
            episode=None if d.get("episode") is None else int(d["episode"]),
            metrics={str(k): float(v) for k, v in dict(d.get("metrics") or {}).items()},
            size=int(d["size"]),
            sha256=str(_io.check_digest("sha256", d.get("sha256"))),
            time=float(d.get("time") or 0.0),
            versions={str(k): str(v) for k, v in dict(d.get("versions") or {}).items()},
            path=Path(directory) / name,
            blake3=blake3,
            lineage=str(lineage) if lineage else None,
        )


def _newest_revisions(records: Iterable[CheckpointRecord]) -> tuple[list[CheckpointRecord], list[CheckpointRecord]]:
    """One record per step: the highest revision (then the later save time) wins.

    Returns (kept records sorted by step, superseded records). Two records for one step appear when a
    manifest was merged from two places (a local and a downloaded copy); the newer revision is the later save.
    """
    by_step: dict[int, CheckpointRecord] = {}
    superseded: list[CheckpointRecord] = []
    for rec in records:
        old = by_step.get(rec.step)
        if old is None:
            by_step[rec.step] = rec
        elif (rec.revision, rec.time) > (old.revision, old.time):
            by_step[rec.step] = rec
            superseded.append(old)
        else:
            superseded.append(rec)
    kept_files = {r.file for r in by_step.values()}
    return sorted(by_step.values(), key=lambda r: r.step), [r for r in superseded if r.file not in kept_files]


class LoadedCheckpoint(NamedTuple):
    """A verified checkpoint's record and the state that was saved."""

    record: CheckpointRecord
    state: Any


class SaveBudget(Protocol):
    def record_save(self, seconds: float) -> None: ...


def _versions() -> dict[str, str]:
    import atheria_kit

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses
    return {"torch": str(torch.__version__), "atheria_kit": str(getattr(atheria_kit, "__version__", "unknown"))}


# ------------------------------------------------------------------------------------------- snapshot


def snapshot_state(state: Any, reuse: Any = None) -> Any:
    """Deep copy of nested dict/list/tuple ``state`` with every tensor detached and copied to CPU.

    This is the training thread's whole cost in an asynchronous save: afterwards the training loop may
    change its parameters in place while the writer serializes the copy. A tensor reachable twice (tied
    weights) is copied once, so the copy keeps the sharing; a view is copied compactly.

    ``reuse`` is an earlier snapshot that nobody needs any more (its write is finished). Its tensors are
    overwritten in place wherever the structure, shape and dtype still match, so a save is a plain memory
    copy instead of an allocation: fresh memory costs a page fault per page, which on a CPU machine made
    the copy as slow as ``torch.save`` itself. CUDA tensors are copied into pinned (page-locked) host
    memory, which is allocated once and then reused, and the copy is complete when this returns.
    """
    memo: dict[int, Any] = {}
    used: set[int] = set()  # buffers of ``reuse`` already filled in this call: never fill one twice
    cuda_devices: set[torch.device] = set()

    def tensor_copy(t: torch.Tensor, old: Any) -> torch.Tensor:
        if _reusable(old, t) and id(old) not in used:
            used.add(id(old))
            old.copy_(t, non_blocking=t.is_cuda)
            if t.is_cuda:
                cuda_devices.add(t.device)
            return old
        if t.device.type == "cpu":
            return t.clone()
        if t.is_cuda and t.layout == torch.strided:
            try:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            except RuntimeError:  # page-locked memory can be capped (containers, ulimit -l): pageable works too
                return t.to("cpu")
            buf.copy_(t, non_blocking=True)
            cuda_devices.add(t.device)
            return buf
        return t.to("cpu")

    def copy_(obj: Any, old: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            key = id(obj)
            if key not in memo:
                memo[key] = tensor_copy(obj.detach(), old)
            return memo[key]
        if isinstance(obj, Mapping):
            olds = old if isinstance(old, Mapping) else {}
            items = [(k, copy_(v, olds.get(k))) for k, v in obj.items()]
            try:
                return type(obj)(items)  # keeps OrderedDict (what state_dict() returns)
            except TypeError:
                return dict(items)
        if isinstance(obj, (tuple, list)):
            olds = old if isinstance(old, (tuple, list)) and len(old) == len(obj) else [None] * len(obj)
            items = [copy_(v, o) for v, o in zip(obj, olds, strict=True)]
            if isinstance(obj, list):
                return items
            return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
        if obj is None or isinstance(obj, (str, bytes, int, float, bool, complex)):
            return obj
        return copy.deepcopy(obj)

    snap = copy_(state, reuse)
    for device in cuda_devices:  # non-blocking copies into pinned memory must land before anyone reads them
        torch.cuda.synchronize(device)
    return snap


def _reusable(old: Any, t: torch.Tensor) -> bool:
    """True if ``old`` (a tensor of an earlier snapshot) can take a copy of ``t`` in place."""
    return (
        isinstance(old, torch.Tensor)
        and old.device.type == "cpu"
        and old.layout == torch.strided
        and t.layout == torch.strided
        and not t.is_quantized
        and old.shape == t.shape
        and old.dtype == t.dtype
        and not old.requires_grad
        # it owns its whole storage (not a view into something else that may still be in use)
        and old.storage_offset() == 0
        and old.untyped_storage().nbytes() == old.numel() * old.element_size()
    )


# -------------------------------------------------------------------------------------------- storage


class WriteResult(NamedTuple):
    """What a write produced: size and both hashes, computed from the bytes as they were written."""

    size: int
    sha256: str
    blake3: str | None = None


class DiskStorage:
    """File operations of a checkpoint directory; subclass it to change how bytes reach the disk.

    ``write`` is atomic (temporary ``.tmp-`` file in the same directory, fsync, ``os.replace``, fsync of
    the directory, via :func:`atheria_kit._io.atomic_open`) and hashes while writing. Each chunk goes
    through :meth:`write_chunk`, the one hook to override for throttled or instrumented writes (the kill
    tests slow it down on purpose). A checkpoint is written with :meth:`write_checkpoint`, which goes
    through :meth:`write` (so a subclass that overrides ``write(name, chunks)`` still sees every file) and
    writes the integrity sidecar (:meth:`write_integrity`) after the last chunk and before the rename.
    Deleting truncates first (:func:`atheria_kit._io.truncate_and_remove`).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        # name -> what to run before that file's rename (set by write_checkpoint for the duration of one write)
        self._before_rename: dict[str, Callable[[WriteResult], None]] = {}

    def path(self, name: str) -> Path:
        return self.directory / name

    def write_chunk(self, name: str, fh: IO[bytes], chunk: bytes | memoryview) -> None:
        """Write one chunk (at most 4 MiB) of file ``name`` to its open temporary file ``fh``.

        The hook to override to slow down, fail or observe writes; it runs in the writer thread.
        """
        fh.write(chunk)

    def write(self, name: str, chunks: Iterable[bytes | memoryview]) -> WriteResult:
        """Atomically write the concatenated ``chunks`` to ``name``; return its size, sha256 and blake3."""
        digests = _io.Digests()
        hook = self._before_rename.get(name)
        done: list[WriteResult] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        with _io.atomic_open(
            self.path(name), "wb", before_replace=None if hook is None else lambda: hook(done[0])
        ) as fh:
            for chunk in chunks:
                self.write_chunk(name, fh, chunk)
                digests.update(chunk)
            done.append(WriteResult(digests.size, digests.sha256, digests.blake3))
        return done[0]

    def write_checkpoint(
        self, name: str, chunks: Iterable[bytes | memoryview], before_rename: Callable[[WriteResult], None]
    ) -> WriteResult:
        """Write checkpoint ``name`` like :meth:`write`, calling ``before_rename(result)`` once its temporary
        file is complete and durable, before it gets its name (the integrity sidecar is written there).

        If the write fails after the sidecar was written, the sidecar is removed again.
        """
        self._before_rename[name] = before_rename
        try:
            return self.write(name, chunks)
        except BaseException:
            if not self.exists(name):
                with contextlib.suppress(OSError):
                    self.remove(name + _io.SIDECAR_SUFFIX)
            raise
        finally:
            self._before_rename.pop(name, None)

    def write_integrity(self, name: str, result: WriteResult, **fields: Any) -> None:
        """Write the integrity sidecar of checkpoint ``name`` (fields: see :func:`write_integrity_sidecar`)."""
        _io.write_integrity_sidecar(self.path(name), result.size, result.sha256, result.blake3, **fields)

    def read_integrity(self, name: str) -> dict[str, Any]:
        """The checked sidecar of checkpoint ``name``; FileNotFoundError if it has none, ValueError if unreadable."""
        return _io.read_integrity_sidecar(self.path(name + _io.SIDECAR_SUFFIX))

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def load_verified(
        self,
        name: str,
        size: int,
        algorithm: str,
        digest: str,
        consume: Callable[[IO[bytes]], Any],
        *,
        overlap: bool = True,
    ) -> Any:
        """``consume(open file)``, returned only if the file's size and hash match (see :func:`_io.read_verified`)."""
        return _io.read_verified(self.path(name), size, algorithm, digest, consume, overlap=overlap)

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def digest(self, name: str, algorithm: str) -> str:
        """Hex digest of file ``name`` with ``algorithm`` ("blake3" or "sha256"), streamed."""
        return _io.file_digest(self.path(name), algorithm)

    def sha256(self, name: str) -> str:
        return self.digest(name, "sha256")

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def remove(self, name: str) -> None:
        _io.truncate_and_remove(self.path(name))

    def list(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.is_file())

    def cleanup_temp(self) -> list[Path]:
        return _io.remove_stale_temp_files(self.directory)

    def check_writable(self) -> None:
        """Create the directory if needed and write, fsync and delete a small probe file in it.

        Raises the ``OSError`` (read-only filesystem, permission denied, disk full) at once, instead of
        from deep inside the first save.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_io.TMP_PREFIX + "probe.", dir=self.directory)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)


def _chunks(buf: memoryview, size: int = _io.CHUNK_BYTES) -> Iterator[memoryview]:
    for i in range(0, len(buf), size):
        yield buf[i : i + size]


# -------------------------------------------------------------------------------------------- manager


@dataclass
class _Job:
    state: Any
    step: int
    episode: int | None
    metrics: dict[str, float]
    snapshot_seconds: float


class CheckpointManager:
    """Saves, verifies, ranks and loads checkpoints in one directory.

    ``save`` snapshots ``state`` to CPU memory and (by default) writes it in a background thread;
    ``latest()``/``best()``/``load()`` verify size and hash and fall back past bad files; retention
    (``policy``, default: the best ``keep_best`` by ``monitor`` or the latest one) deletes the rest,
    truncating each file first. The newest checkpoint is never deleted, whatever the policy says.

    ``lineage`` names the run: it is stored in the manifest, in every record and sidecar and in every
    checkpoint, so the sync layer can tell this run's files from another run's. None (the default)
    continues the lineage found in the directory, or starts a new one (a random hex id).

    The constructor checks that ``directory`` is writable (a probe file is written and removed) and raises
    :class:`CheckpointWriteError` naming the directory, the OS error and what to do if it is not.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        policy: RetentionPolicy | None = None,
        monitor: str = "loss",
        mode: str = "min",
        keep_best: int = 5,
        async_save: bool = True,
        budget: SaveBudget | None = None,
        allow_pickle: bool = False,
        *,
        lineage: str | None = None,
        reuse_buffers: bool = True,
        storage: DiskStorage | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor={monitor!r} is invalid; expected a non-empty metric name")
        self.monitor = monitor
        self.mode = require_choice("mode", mode, ("min", "max"))
        self.keep_best = require_int("keep_best", keep_best, minimum=1)
        if policy is not None and not isinstance(policy, RetentionPolicy):
            raise ValueError(f"policy={policy!r} is invalid; expected a RetentionPolicy or None")
        self.policy: RetentionPolicy = policy or default_policy(monitor, mode, keep_best)
        if budget is not None and not callable(getattr(budget, "record_save", None)):
            raise ValueError(f"budget={budget!r} is invalid; expected an object with record_save(seconds)")
        if lineage is not None and (not isinstance(lineage, str) or not _LINEAGE_RE.match(lineage)):
            raise ValueError(f"lineage={lineage!r} is invalid; expected 1-128 letters, digits, '.', '_' or '-' "
                             "(starting with a letter or digit), or None")
        self.budget = budget
        self.async_save = bool(async_save)
        self.allow_pickle = bool(allow_pickle)
        self.reuse_buffers = bool(reuse_buffers)
        self.directory = Path(directory)
        self.storage = storage if storage is not None else DiskStorage(self.directory)
        self._clock = clock
        self._wall_clock = wall_clock

        self._subscribers: list[Callable[[CheckpointRecord, Path], None]] = []
        self._records: list[CheckpointRecord] = []
        self._bad: dict[str, str] = {}  # file -> why it failed verification (this process)
        self._commit_lock = threading.RLock()  # one commit (file + manifest + retention) at a time
        self._cond = threading.Condition()
        self._pending: _Job | None = None
        self._spare: Any = None  # a written snapshot whose tensors the next save() overwrites (reuse_buffers)
        self._in_flight = False
        self._error: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._lineage = lineage or ""
        #: How many snapshots were replaced by a newer one before being written (coalesced saves).
        self.coalesced = 0

        try:
            self.storage.check_writable()
        except OSError as e:
            raise CheckpointWriteError(self.directory, e, opening=True) from e
        for p in self.storage.cleanup_temp():
            logger.info("removed leftover temporary file %s from an interrupted write", p)
        self._open_manifest(lineage)

    @property
    def lineage(self) -> str:
        """The run id stored in the manifest, every record, every sidecar and every checkpoint written here."""
        return self._lineage

    # ------------------------------------------------------------------------------------ manifest

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def _manifest_obj(self, records: Iterable[CheckpointRecord]) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": FORMAT_VERSION,
            "monitor": self.monitor,
            "mode": self.mode,
            "lineage": self._lineage,
            "checkpoints": [r.to_json() for r in sorted(records, key=lambda r: r.step)],
        }

    def _write_manifest(self, records: list[CheckpointRecord]) -> None:
        data = manifest_bytes(self._manifest_obj(records))
        try:
            self.storage.write(MANIFEST_NAME, [data])
        except OSError as e:
            raise CheckpointWriteError(self.manifest_path, e) from e

    def _read_manifest(self) -> tuple[list[CheckpointRecord], str | None]:
        """The manifest's records and lineage; raises if it is unreadable or not ours."""
        doc = parse_manifest(self.storage.read(MANIFEST_NAME), str(self.manifest_path))
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"version={doc.get('version')!r}; this kit reads version {FORMAT_VERSION}")
        if doc.get("monitor") not in (None, self.monitor) or doc.get("mode") not in (None, self.mode):
            logger.warning(
                "%s ranks by %s/%s; this manager ranks by %s/%s (rankings are recomputed from the stored metrics)",
                self.manifest_path, doc.get("monitor"), doc.get("mode"), self.monitor, self.mode,
            )
        return [CheckpointRecord.from_json(d, self.directory) for d in doc["checkpoints"]], doc.get("lineage")

    def _open_manifest(self, lineage: str | None) -> None:
        """Read the manifest and reconcile it with the files a killed session may have left.

        - listed: trusted as listed (verified at load time);
        - unlisted, with a newer revision or a newer step than the manifest lists: adopted if its bytes
          match its integrity sidecar (a session died between the rename and the manifest update);
        - unlisted, an older revision of a listed step whose file is present: superseded (a session died
          before removing it), removed;
        - a sidecar whose checkpoint is gone: removed.
        Damaged or unverifiable files are never adopted and never deleted: they are left with a warning.
        """
        names = self.storage.list()
        files = {n: parsed for n in names if (parsed := parse_checkpoint_name(n)) is not None}
        manifest_lineage: str | None = None
        records: list[CheckpointRecord] = []
        if MANIFEST_NAME not in names:
            if files:
                logger.warning("%s is missing; rebuilding it from the checkpoint files", self.manifest_path)
        else:
            try:
                records, manifest_lineage = self._read_manifest()
            except Exception as e:  # unreadable, not JSON, wrong format: rebuild rather than lose checkpoints
                logger.warning("%s is unreadable (%s); rebuilding it from the checkpoint files", self.manifest_path, e)
                records = []
        records, superseded = _newest_revisions(records)
        remove = [r.file for r in superseded]
        by_step = {r.step: r for r in records}
        listed = {r.file for r in records}
        adopted: list[CheckpointRecord] = []
        for name, (step, revision) in sorted(files.items(), key=lambda item: item[1]):
            if name in listed:
                continue
            current = by_step.get(step)
            if current is not None and current.revision > revision and current.file in files:
                logger.info("removing %s: superseded by %s (a session ended before removing it)", name, current.file)
                remove.append(name)
                continue
            rec = self._adopt(name)
            if rec is None:
                continue
            if current is not None:
                remove.append(current.file)
            by_step[step] = rec
            adopted.append(rec)
        self._records = sorted(by_step.values(), key=lambda r: r.step)
        self._lineage = lineage or manifest_lineage or self._newest_lineage(adopted) or uuid.uuid4().hex
        kept = {r.file for r in self._records}
        remove = [n for n in dict.fromkeys(remove) if n not in kept]
        for n in names:
            owner = sidecar_owner(n)
            if owner is not None and owner not in files:
                logger.info("removing %s: its checkpoint %s is gone", self.storage.path(n), owner)
                with contextlib.suppress(OSError):
                    self.storage.remove(n)
        if adopted or remove:
            with self._commit_lock:
                self._apply_retention(remove)

    @staticmethod
    def _newest_lineage(records: list[CheckpointRecord]) -> str | None:
        newest = max((r for r in records if r.lineage), key=lambda r: (r.step, r.revision), default=None)
        return None if newest is None else newest.lineage

    def _adopt(self, name: str) -> CheckpointRecord | None:
        """The record of an unlisted file whose bytes match its integrity sidecar, else None (with a warning).

        Files appear unlisted when the manifest was lost, or when a session died between renaming the file
        and updating the manifest. A file without a sidecar, or whose size or hash differs from it, is not
        trusted: a safe unpickling succeeding proves nothing about the values (a flipped bit in a weight
        still unpickles).
        """
        path = self.storage.path(name)
        step, revision = parse_checkpoint_name(name) or (-1, -1)
        try:
            side = self.storage.read_integrity(name)
        except FileNotFoundError:
            logger.warning(
                "ignoring %s: the manifest does not list it and it has no integrity sidecar (%s), so its content "
                "cannot be verified; it is NOT loaded (if you trust it: CheckpointManager.load(path))",
                path, name + _io.SIDECAR_SUFFIX,
            )
            return None
        except (OSError, ValueError) as e:
            logger.warning("ignoring %s: not listed in the manifest and its integrity sidecar is unreadable (%s)",
                           path, e)
            return None
        if (side["file"], side["step"], side["revision"]) != (name, step, revision):
            logger.warning("ignoring %s: its integrity sidecar describes %s (step %s, revision %s)",
                           path, side["file"], side["step"], side["revision"])
            return None
        algorithm, digest = ("blake3", side["blake3"]) if side.get("blake3") else ("sha256", side["sha256"])
        meta: dict[str, Any] = side
        try:
            if all(k in side for k in ("metrics", "time", "versions")):
                self.storage.load_verified(name, side["size"], algorithm, digest, lambda _fh: None, overlap=False)
            else:  # a sidecar without the record's fields (e.g. written by sync for an old checkpoint)
                payload = self.storage.load_verified(
                    name, side["size"], algorithm, digest,
                    lambda fh: torch.load(fh, map_location="cpu", weights_only=True),
                )
                if not isinstance(payload, dict) or payload.get("format") != PAYLOAD_FORMAT:
                    raise ValueError("not an atheria checkpoint payload")
                meta = {**payload, **{k: v for k, v in side.items() if k in ("lineage",) and v}}
        except Exception as e:
            logger.warning("ignoring %s: not listed in the manifest and its bytes do not match its integrity "
                           "sidecar (%s); it is NOT loaded", path, e)
            return None
        rec = CheckpointRecord(
            file=name,
            step=step,
            episode=None if meta.get("episode") is None else int(meta["episode"]),
            metrics={str(k): float(v) for k, v in dict(meta.get("metrics") or {}).items()},
            size=int(side["size"]),
            sha256=side["sha256"],
            time=float(meta.get("time") or 0.0),
            versions={str(k): str(v) for k, v in dict(meta.get("versions") or {}).items()},
            path=path,
            blake3=side.get("blake3"),
            lineage=meta.get("lineage") or None,
        )
        logger.warning("adopting %s (step %d) into the manifest: not listed, but its bytes match its integrity "
                       "sidecar", path, step)
        return rec

    # ------------------------------------------------------------------------------------ queries

    def records(self) -> list[CheckpointRecord]:
        """The checkpoints listed in the manifest, oldest (lowest step) first; not verified."""
        # No lock: commits replace the list object whole, and the training thread must not wait for a write.
        return list(self._records)

    def newest_step(self) -> int | None:
        """The highest step listed in the manifest (not verified), or None when there is none."""
        recs = self._records
        return recs[-1].step if recs else None

    def verify(self, record: CheckpointRecord) -> str | None:
        """None when ``record``'s file exists with the listed size and hash, else the reason it is bad."""
        try:
            size = self.storage.size(record.file)
            if size != record.size:
                return f"size {size} bytes, manifest says {record.size} (truncated or overwritten)"
            algorithm, digest = record.digest
            if self.storage.digest(record.file, algorithm) != digest:
                return f"{algorithm} mismatch (corrupted)"
        except FileNotFoundError:
            return "file is missing"
        except OSError as e:
            return f"unreadable ({e})"
        return None

    def _mark_bad(self, record: CheckpointRecord, reason: str) -> None:
        self._bad[record.file] = reason
        logger.warning("checkpoint %s (step %d) is invalid: %s; falling back", record.path, record.step, reason)

    def _first_valid(self, candidates: Iterable[CheckpointRecord]) -> CheckpointRecord | None:
        for rec in candidates:
            reason = self.verify(rec)
            if reason is None:
                return rec
            self._mark_bad(rec, reason)
        return None

    def _newest_first(self) -> list[CheckpointRecord]:
        return sorted(self.records(), key=lambda r: r.step, reverse=True)

    def _best_first(self) -> list[CheckpointRecord]:
        recs = self.records()
        by_step = {r.step: r for r in recs}
        return [by_step[i.step] for i in rank_best([r.info() for r in recs], self.monitor, self.mode)]

    def latest(self) -> CheckpointRecord | None:
        """The newest checkpoint whose bytes verify, or None."""
        return self._first_valid(self._newest_first())

    def best(self) -> CheckpointRecord | None:
        """The verified checkpoint with the best finite ``monitor`` value (NaN/inf never best), or None."""
        return self._first_valid(self._best_first())

    # --------------------------------------------------------------------------------------- load

    def load(
        self,
        which: str | CheckpointRecord | os.PathLike = "latest",
        map_location: Any = "cpu",
        weights_only: bool = True,
        allow_pickle: bool | None = None,
    ) -> LoadedCheckpoint | None:
        """Load a verified checkpoint: ``"latest"``, ``"best"``, a record, or a file path.

        With "latest"/"best" a bad file (truncated, corrupted, missing, unreadable) or an unsafe one (it
        needs full pickle, not allowed) is skipped with a warning naming it and the next candidate is
        tried; None means nothing valid exists (a first run). Naming a record or path explicitly raises
        :class:`CheckpointLoadError` instead. Loading uses ``torch.load(weights_only=True)``; full pickle
        (which can run arbitrary code) needs ``allow_pickle=True`` here or in the constructor.
        """
        allowed = self.allow_pickle if allow_pickle is None else bool(allow_pickle)
        if not weights_only and not allowed:
            raise ValueError(
                "weights_only=False is refused: full pickle can run arbitrary code; "
                "pass allow_pickle=True (here or to CheckpointManager) for files you trust"
            )
        # allowed: try weights_only=True first, full pickle only if needed; weights_only=False: pickle.
        use_pickle = ("force" if not weights_only else "fallback") if allowed else "never"
        self.raise_pending_error()
        if isinstance(which, str) and which in ("latest", "best"):
            candidates = self._newest_first() if which == "latest" else self._best_first()
            for rec in candidates:
                try:
                    loaded = self._load_record(rec, map_location, use_pickle, fallback=True)
                except CheckpointLoadError as e:
                    logger.warning("skipping checkpoint %s (step %d): %s; trying an older one", rec.path, rec.step, e)
                    continue
                if loaded is not None:
                    return loaded
            return None
        if isinstance(which, CheckpointRecord):
            return self._load_record(which, map_location, use_pickle, fallback=False)
        if isinstance(which, (str, os.PathLike)):
            return self._load_path(Path(which), map_location, use_pickle)
        raise ValueError(f"which={which!r} is invalid; expected 'latest', 'best', a CheckpointRecord or a path")

    def _deserialize(
        self, name: str, path: Path, size: int, algorithm: str, digest: str, map_location: Any, use_pickle: str
    ) -> Any:
        """The verified payload of file ``name``: hashed while ``torch.load(weights_only=True)`` reads it.

        Full pickle (allowed and needed) runs only after the hash has been checked, since it can run code.
        """
        if use_pickle != "force":
            try:
                return self.storage.load_verified(
                    name, size, algorithm, digest,
                    lambda fh: torch.load(fh, map_location=map_location, weights_only=True),
                )
            except pickle.UnpicklingError as e:  # the bytes verified: the content needs full pickle
                if use_pickle == "never":
                    raise CheckpointLoadError(
                        f"{path} holds objects that torch.load(weights_only=True) refuses to unpickle; it was NOT "
                        f"loaded. If you trust the file, load it with allow_pickle=True ({_last_line(e)})"
                    ) from e
        logger.warning("loading %s with full pickle (weights_only=False): this can run arbitrary code", path)
        return self.storage.load_verified(
            name, size, algorithm, digest,
            lambda fh: torch.load(fh, map_location=map_location, weights_only=False),
            overlap=False,
        )

    def _load_record(
        self, rec: CheckpointRecord, map_location: Any, use_pickle: str, *, fallback: bool
    ) -> LoadedCheckpoint | None:
        algorithm, digest = rec.digest
        try:
            payload = self._deserialize(rec.file, rec.path, rec.size, algorithm, digest, map_location, use_pickle)
        except CheckpointLoadError:
            raise  # verified but unsafe: load("latest") skips it without calling it bad (it is not damaged)
        except FileNotFoundError:
            reason = "file is missing"
        except _io.IntegrityError as e:
            reason = str(e)
        except OSError as e:
            reason = f"unreadable ({e})"
        except Exception as e:
            reason = f"cannot be deserialized ({type(e).__name__}: {e})"
        else:
            return LoadedCheckpoint(rec, _unwrap(payload))
        if not fallback:
            raise CheckpointLoadError(f"checkpoint {rec.path} (step {rec.step}) is invalid: {reason}")
        self._mark_bad(rec, reason)
        return None

    def _load_path(self, path: Path, map_location: Any, use_pickle: str) -> LoadedCheckpoint:
        listed = next((r for r in self.records() if r.path.resolve() == path.resolve()), None)
        if listed is not None:
            loaded = self._load_record(listed, map_location, use_pickle, fallback=False)
            assert loaded is not None
            return loaded
        storage = DiskStorage(path.parent)  # a file elsewhere: read it directly, never through our hooks
        try:
            side: dict[str, Any] | None = storage.read_integrity(path.name)
        except FileNotFoundError:
            side = None
        except (OSError, ValueError) as e:
            raise CheckpointLoadError(f"checkpoint {path}: its integrity sidecar is unreadable ({e})") from e
        if side is not None:
            algorithm, digest = ("blake3", side["blake3"]) if side.get("blake3") else ("sha256", side["sha256"])
            size = int(side["size"])
        else:
            logger.warning("loading %s, which no manifest here lists and which has no integrity sidecar: its "
                           "content cannot be verified", path)
            size = path.stat().st_size
            algorithm, digest = "sha256", _io.file_digest(path, "sha256")
        try:
            payload = self._deserialize(path.name, path, size, algorithm, digest, map_location, use_pickle)
        except _io.IntegrityError as e:
            raise CheckpointLoadError(f"checkpoint {path} is invalid: {e}") from e
        meta = payload if isinstance(payload, dict) and payload.get("format") == PAYLOAD_FORMAT else {}
        sha256 = side["sha256"] if side is not None else digest
        rec = CheckpointRecord(
            file=path.name,
            step=int(meta.get("step", -1)),
            episode=meta.get("episode"),
            metrics=dict(meta.get("metrics") or {}),
            size=size,
            sha256=sha256,
            time=float(meta.get("time", path.stat().st_mtime)),
            versions=dict(meta.get("versions") or {}),
            path=path,
            blake3=side.get("blake3") if side is not None else None,
            lineage=meta.get("lineage"),
        )
        return LoadedCheckpoint(rec, _unwrap(payload))

    # --------------------------------------------------------------------------------------- save

    def subscribe(self, callback: Callable[[CheckpointRecord, Path], None]) -> None:
        """Call ``callback(record, manifest_path)`` after each commit (from the thread that wrote it)."""
        if not callable(callback):
            raise ValueError(f"callback={callback!r} is invalid; expected a callable")
        self._subscribers.append(callback)

    def save(
        self,
        state: Mapping[str, Any],
        step: int,
        *,
        episode: int | None = None,
        metrics: Mapping[str, float] | None = None,
        blocking: bool = False,
    ) -> None:
        """Checkpoint ``state`` as step ``step``.

        Asynchronous by default: returns once ``state`` is copied to CPU memory. If a write is in flight,
        this snapshot waits in a one-slot queue, replacing (coalescing) any older snapshot waiting there.
        ``blocking=True`` (or ``async_save=False``) writes in the calling thread and returns after the file
        and manifest are durable: use it for the emergency save before a session ends; it drops a still
        waiting older snapshot and waits for an in-flight write to finish first.
        Raises the error of a failed earlier background write, if any (this save is then not made).
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"state={type(state).__name__} is invalid; expected a mapping (e.g. a dict)")
        require_int("step", step, minimum=0)
        if episode is not None:
            require_int("episode", episode, minimum=0)
        clean_metrics = _check_metrics(metrics)
        if self._closing:
            raise CheckpointError("save() after close()")
        self.raise_pending_error()

        with self._cond:
            spare, self._spare = self._spare, None
        t0 = self._clock()
        snap = snapshot_state(state, reuse=spare)
        del spare
        job = _Job(snap, step, episode, clean_metrics, self._clock() - t0)
        if blocking or not self.async_save:
            with self._cond:
                if self._pending is not None:
                    self._pending = None
                    self.coalesced += 1
                    self._cond.notify_all()
            self._commit(job)  # the commit lock waits for an in-flight background write
            self._recycle(job)
            return
        with self._cond:
            if self._pending is not None:
                logger.debug("coalescing: snapshot of step %d replaces step %d", step, self._pending.step)
                self.coalesced += 1
            self._pending = job
            self._ensure_writer()
            self._cond.notify_all()

    def _recycle(self, job: _Job) -> None:
        """Keep a written snapshot so that the next save copies into its tensors instead of allocating."""
        if self.reuse_buffers:
            with self._cond:
                if self._spare is None and not self._closing:
                    self._spare = job.state
        job.state = None

    def _ensure_writer(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._writer_loop, name="atheria-checkpoint-writer", daemon=True)
            self._thread.start()

    def _writer_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._pending is None:
                    return
                job, self._pending = self._pending, None
                self._in_flight = True
            try:
                self._commit(job)
                self._recycle(job)
            except BaseException as e:  # kept for the next call: a failed write is never lost
                logger.error("background checkpoint write of step %d failed: %s", job.step, e)
                with self._cond:
                    if self._error is None:
                        self._error = e
            finally:
                del job
                with self._cond:
                    self._in_flight = False
                    self._cond.notify_all()

    def _next_name(self, step: int) -> tuple[str, int]:
        """The name for a new checkpoint of ``step``: never one that exists (committed files are immutable).

        Revision 0 (``ckpt-<step>.pt``) if nothing of that step is here, else one more than the highest
        revision present (listed, on disk, or only its sidecar left).
        """
        plain = checkpoint_name(step)
        listed = [r.revision for r in self._records if r.step == step]
        if not listed and not self.storage.exists(plain) and not self.storage.exists(plain + _io.SIDECAR_SUFFIX):
            return plain, 0
        present = list(listed)
        for n in self.storage.list():
            parsed = parse_checkpoint_name(sidecar_owner(n) or n)
            if parsed is not None and parsed[0] == step:
                present.append(parsed[1])
        revision = max(present, default=-1) + 1
        return checkpoint_name(step, revision), revision

    def _commit(self, job: _Job) -> CheckpointRecord:
        with self._commit_lock:
            t0 = self._clock()
            try:
                name, revision = self._next_name(job.step)
            except OSError as e:  # the directory cannot even be listed (permissions, a dropped mount)
                raise CheckpointWriteError(self.storage.path(checkpoint_name(job.step)), e) from e
            now = float(self._wall_clock())
            versions = _versions()
            lineage = self._lineage
            payload = {
                "format": PAYLOAD_FORMAT,
                "version": FORMAT_VERSION,
                "step": job.step,
                "revision": revision,
                "episode": job.episode,
                "metrics": job.metrics,
                "time": now,
                "versions": versions,
                "lineage": lineage,
                "state": job.state,
            }
            buf = io.BytesIO()
            torch.save(payload, buf)
            del payload
            view = buf.getbuffer()

            def seal(result: WriteResult) -> None:  # the integrity proof lands before the checkpoint's name
                self.storage.write_integrity(
                    name, result, step=job.step, revision=revision, lineage=lineage, episode=job.episode,
                    metrics=job.metrics, time=now, versions=versions,
                )

            try:
                result = self.storage.write_checkpoint(name, _chunks(view), seal)
            except OSError as e:
                raise CheckpointWriteError(self.storage.path(name), e) from e
            del view, buf  # no close(): a chunk may still be referenced by the failed write's traceback
            rec = CheckpointRecord(name, job.step, job.episode, job.metrics, result.size, result.sha256, now,
                                   versions, self.storage.path(name), blake3=result.blake3, lineage=lineage)
            previous = list(self._records)
            superseded = [r.file for r in previous if r.step == job.step]
            self._records = sorted([r for r in previous if r.step != job.step] + [rec], key=lambda r: r.step)
            self._bad.pop(name, None)
            try:
                self._apply_retention(superseded)
            except BaseException:
                self._records = previous  # the manifest on disk still says `previous`
                raise
            seconds = job.snapshot_seconds + (self._clock() - t0)
            logger.info("checkpoint %s saved (%d bytes, %.3f s)", rec.path, result.size, seconds)
        if self.budget is not None:
            self.budget.record_save(seconds)
        for cb in list(self._subscribers):
            try:
                cb(rec, self.manifest_path)
            except Exception:
                logger.exception("checkpoint subscriber %r failed", cb)
        return rec

    def prune(self) -> list[str]:
        """Apply the retention policy now, without a save; return the checkpoint files it deleted.

        Retention normally runs at each commit; a policy whose answer changes between saves (one that keeps
        what a caller still references, say) calls this to release files at once rather than at the next
        save. Same order as a commit: the manifest is rewritten first, then the dropped files are deleted
        (truncated first); the newest checkpoint is always kept. Waits for a commit in progress.
        """
        with self._commit_lock:
            before = [r.file for r in self._records]
            self._apply_retention()
            kept = {r.file for r in self._records}
        return [name for name in before if name not in kept]

    def _apply_retention(self, superseded: Iterable[str] = ()) -> None:
        """Write the manifest listing what the policy keeps, then delete the rest (truncated first).

        The manifest is written before any deletion, so it never lists a deleted file; ``superseded`` files
        (older revisions of a step saved again) are deleted after it too. Files found bad in this process
        are not offered to the policy (a corrupt "best" must not hold a slot).
        """
        good = [r for r in self._records if r.file not in self._bad]
        keep = self.policy.keep([r.info() for r in good])
        if self._records:
            keep.add(self._records[-1].step)  # never delete the newest checkpoint
        kept = [r for r in self._records if r.step in keep and r.file not in self._bad]
        if self._records and self._records[-1] not in kept:
            kept.append(self._records[-1])
        dropped = [r.file for r in self._records if r not in kept]
        self._write_manifest(kept)
        self._records = kept
        listed = {r.file for r in kept}
        for name in dict.fromkeys([*dropped, *superseded]):
            if name not in listed:
                self._remove_checkpoint(name)

    def _remove_checkpoint(self, name: str) -> None:
        """Delete checkpoint ``name`` (truncated first), then its sidecar: a kill in between leaves only an
        orphan sidecar, which the next start removes."""
        try:
            self.storage.remove(name)
            self._bad.pop(name, None)
            logger.debug("retention removed %s", self.storage.path(name))
        except OSError as e:
            logger.warning("could not remove old checkpoint %s: %s", self.storage.path(name), e)
            return
        with contextlib.suppress(FileNotFoundError):
            try:
                self.storage.remove(name + _io.SIDECAR_SUFFIX)
            except OSError as e:
                logger.warning("could not remove the integrity sidecar of %s: %s", self.storage.path(name), e)

    # ------------------------------------------------------------------------------ flush, errors

    def raise_pending_error(self) -> None:
        """Raise (once) the error of a failed background write, if there is one."""
        with self._cond:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no save is waiting or being written; True if flushed, False on timeout.

        Raises the error of a failed background write, if any.
        """
        with self._cond:
            flushed = self._cond.wait_for(lambda: self._pending is None and not self._in_flight, timeout)
        self.raise_pending_error()
        return bool(flushed)

    def close(self) -> None:
        """Flush pending saves, stop the writer thread and raise a failed write's error, if any."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._in_flight)
            self._closing = True
            self._spare = None
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.raise_pending_error()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            with contextlib.suppress(Exception):
                self.close()

    # -------------------------------------------------------------------------------- state_dict

    def state_dict(self) -> dict[str, Any]:
        """Settings and records as plain types (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "version": FORMAT_VERSION,
            "monitor": self.monitor,
            "mode": self.mode,
            "keep_best": self.keep_best,
            "lineage": self._lineage,
            "coalesced": self.coalesced,
            "records": [r.to_json() for r in self.records()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Merge the records of ``state`` whose files are here and verify into the manifest.

        The manifest stays the source of truth; this recovers rankings from a state saved elsewhere
        (e.g. inside a training checkpoint) when a manifest was lost. Of two records for one step, the
        newer revision wins.
        """
        if not isinstance(state, Mapping) or state.get("version") != FORMAT_VERSION:
            raise ValueError(f"state version={getattr(state, 'get', lambda _k: None)('version')!r} is invalid; "
                             f"expected a CheckpointManager.state_dict() of version {FORMAT_VERSION}")
        for key, mine in (("monitor", self.monitor), ("mode", self.mode)):
            if state.get(key) != mine:
                raise ValueError(f"{key}={state.get(key)!r} in the state does not match this manager's {mine!r}")
        self.coalesced = int(state.get("coalesced", 0))
        with self._commit_lock:
            known = {r.file for r in self._records}
            added = []
            for d in state.get("records", []):
                rec = CheckpointRecord.from_json(d, self.directory)
                if rec.file not in known and self.verify(rec) is None:
                    added.append(rec)
            if added:
                self._records, superseded = _newest_revisions(self._records + added)
                self._apply_retention([r.file for r in superseded])


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "WeightsUnpickler" in ln]
    return lines[-1] if lines else str(e).splitlines()[0][:200]


def _unwrap(payload: Any) -> Any:
    if isinstance(payload, dict) and payload.get("format") == PAYLOAD_FORMAT:
        return payload["state"]
    return payload


def _check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics={metrics!r} is invalid; expected a mapping of name -> number")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise ValueError(f"metrics key {k!r} is invalid; expected a string")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"metrics[{k!r}]={v!r} is invalid; expected a number (NaN/inf allowed)") from None
    return out

