"""Verified checkpoint folders: a framework's ``checkpoint-N/`` directory made safe to resume from and to copy.

Why: trainers such as Hugging Face ``Trainer`` write a checkpoint as a folder of files (weights, optimizer,
scheduler, RNG state, trainer state) straight into ``output_dir``; a session killed in the middle leaves a
half-written folder that looks like the newest checkpoint (transformers #35782, #35525). Once the trainer has
finished a folder, :func:`seal_folder` records every file's relative path, size and sha256, the global step and
the run's lineage in :data:`SEAL_NAME`, written LAST and atomically (temporary file, fsync, rename): its presence
means "complete", and :func:`verify_folder` proves that nothing is missing, added or changed since.

Remote copies use the kit's :class:`~atheria_kit.sync.SyncTarget` (each file written under a temporary name,
verified, renamed): :class:`FolderPusher` uploads a sealed folder's files first and its seal last, in a background
thread, so a remote folder without a seal is an interrupted upload and is never restored. Unreachable is not
empty: a remote that cannot be read raises :class:`~atheria_kit.sync.SourceUnavailableError`.

The folders are the framework's files: nothing here deletes a local folder. Remote folders are deleted only when
this run (lineage) pushed them and the framework's own rotation (``save_total_limit``) removed them locally.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atheria_kit._io import TMP_PREFIX, atomic_write_json, fsync_dir, sha256_file
from atheria_kit._validation import require_int
from atheria_kit.sync.targets import DirectoryTarget, FsspecTarget, SyncError, SyncTarget, mount_root_for
from atheria_kit.sync.worker import RetryPolicy, call_within

__all__ = [
    "FOLDER_RE",
    "SEAL_FORMAT",
    "SEAL_NAME",
    "FolderCheck",
    "FolderPusher",
    "RemoteFolder",
    "folder_step",
    "list_folders",
    "list_remote_folders",
    "newest_verified_folder",
    "read_seal",
    "remote_target",
    "restore_newest_remote",
    "new_lineage",
    "seal_folder",
    "verify_folder",
]

logger = logging.getLogger(__name__)

#: The integrity manifest inside a sealed folder; written last, so its presence means the folder is complete.
SEAL_NAME = "atheria-folder.json"
SEAL_FORMAT = "atheria-folder"
_SEAL_VERSION = 1
#: Checkpoint folder names the framework writes: Hugging Face's ``checkpoint-<global step>``.
FOLDER_RE = re.compile(r"^checkpoint-(\d+)$")
#: Prefix of a folder being downloaded (renamed to its real name only once verified).
_RESTORE_PREFIX = TMP_PREFIX + "restore-"


def folder_step(name: str) -> int | None:
    """The global step of a checkpoint folder name (``checkpoint-500`` -> 500), else None."""
    m = FOLDER_RE.match(name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


def _files_of(folder: Path) -> list[str]:
    """Relative '/'-separated paths of the folder's files (the seal and the kit's temporary files excluded)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(folder).as_posix()
            if rel == SEAL_NAME or name.startswith(TMP_PREFIX):
                continue
            out.append(rel)
    return out


def seal_folder(folder: str | os.PathLike, *, lineage: str, step: int | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record the finished folder's files (relative path, size, sha256), step and lineage; return the seal.

    Call only once the framework has finished writing the folder (Hugging Face: in ``on_save``). Every file is
    fsynced before the seal is written, and the seal is renamed into place last, so a seal never vouches for
    bytes still in the page cache. ``step`` defaults to the number in the folder's name.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"folder={str(root)!r} is invalid; expected an existing checkpoint folder")
    if not isinstance(lineage, str) or not lineage:
        raise ValueError(f"lineage={lineage!r} is invalid; expected a non-empty string (the run's id)")
    if step is None:
        step = folder_step(root.name)
        if step is None:
            raise ValueError(f"step=None and folder name {root.name!r} has no step; expected 'checkpoint-<step>' "
                             f"or an explicit step")
    require_int("step", step, minimum=0)
    files = []
    for rel in _files_of(root):
        path = root / rel
        with open(path, "rb") as fh:  # the framework does not fsync (torch.save, safetensors)
            os.fsync(fh.fileno())
        files.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    for d in {(root / f["path"]).parent for f in files} | {root}:
        fsync_dir(d)
    doc = {"format": SEAL_FORMAT, "version": _SEAL_VERSION, "folder": root.name, "step": int(step),
           "lineage": lineage, "time": time.time(), "files": files, "extra": dict(extra or {})}
    atomic_write_json(root / SEAL_NAME, doc)
    return doc


def _parse_seal(data: bytes, origin: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"seal {origin} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SEAL_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"seal {origin}: format={got!r} is invalid; expected {SEAL_FORMAT!r}")
    if doc.get("version") != _SEAL_VERSION:
        raise ValueError(f"seal {origin}: version={doc.get('version')!r} is invalid; expected {_SEAL_VERSION}")
    if not isinstance(doc.get("lineage"), str) or not doc["lineage"]:
        raise ValueError(f"seal {origin}: lineage={doc.get('lineage')!r} is invalid; expected a non-empty string")
    step = doc.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"seal {origin}: step={step!r} is invalid; expected an integer >= 0")
    files = doc.get("files")
    if not isinstance(files, list):
        raise ValueError(f"seal {origin}: files={type(files).__name__} is invalid; expected a list")
    for i, f in enumerate(files):
        rel = f.get("path") if isinstance(f, dict) else None
        parts = rel.split("/") if isinstance(rel, str) else []
        if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or rel == SEAL_NAME:
            raise ValueError(f"seal {origin}: files[{i}].path={rel!r} is invalid; expected a relative path inside "
                             f"the folder")
        size = f.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"seal {origin}: files[{i}].size={size!r} is invalid; expected an integer >= 0")
        digest = f.get("sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"seal {origin}: files[{i}].sha256={digest!r} is invalid; expected 64 hex digits")
    return doc


def read_seal(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's checked seal; None when it has none. ``ValueError`` naming the file when it is damaged."""
    p = Path(folder) / SEAL_NAME
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None
    return _parse_seal(data, str(p))


@dataclass(frozen=True)
class FolderCheck:
    """The result of :func:`verify_folder`: ``ok``, else ``reason`` says what is wrong (missing seal, a file
    missing, added or changed). ``seal`` is the folder's seal when it could be read."""

    folder: Path
    ok: bool
    reason: str | None
    seal: dict[str, Any] | None

    @property
    def step(self) -> int | None:
        return self.seal["step"] if self.seal else folder_step(self.folder.name)

    @property
    def lineage(self) -> str | None:
        return self.seal["lineage"] if self.seal else None


def verify_folder(folder: str | os.PathLike) -> FolderCheck:
    """Whether the folder is exactly what its seal recorded: every file present with its size and sha256, and
    no other file (a file the framework added later means the folder was rewritten after the seal)."""
    root = Path(folder)
    if not root.is_dir():
        return FolderCheck(root, False, "the folder does not exist", None)
    try:
        seal = read_seal(root)
    except (OSError, ValueError) as exc:
        return FolderCheck(root, False, f"its seal cannot be read ({exc})", None)
    if seal is None:
        return FolderCheck(root, False, f"it has no {SEAL_NAME} (half-written, or written without the kit)", None)
    listed = {f["path"]: f for f in seal["files"]}
    present = set(_files_of(root))
    missing = sorted(set(listed) - present)
    if missing:
        return FolderCheck(root, False, f"file {missing[0]} is missing" + _more(missing), seal)
    extra = sorted(present - set(listed))
    if extra:
        return FolderCheck(root, False, f"file {extra[0]} was added after the seal" + _more(extra), seal)
    for rel, f in listed.items():
        path = root / rel
        size = path.stat().st_size
        if size != f["size"]:
            return FolderCheck(root, False, f"file {rel} has {size} bytes, the seal says {f['size']}", seal)
        if sha256_file(path) != f["sha256"]:
            return FolderCheck(root, False, f"file {rel} changed after the seal (sha256 differs)", seal)
    return FolderCheck(root, True, None, seal)


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def list_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint folders in ``output_dir``, newest (highest step) first; ``[]`` when it does not exist."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(folder_step(p.name), p) for p in root.iterdir() if p.is_dir()]
    return [p for step, p in sorted(((s, p) for s, p in found if s is not None), reverse=True)]


def newest_verified_folder(output_dir: str | os.PathLike, *,
                           warn: Callable[[str], Any] | None = None) -> FolderCheck | None:
    """The newest folder in ``output_dir`` that verifies, or None. Each newer folder passed over is named with its
    reason through ``warn`` (default: a log warning); nothing is deleted (the folders belong to the framework)."""
    for folder in list_folders(output_dir):
        check = verify_folder(folder)
        if check.ok:
            return check
        text = f"skipped {folder.name} in {output_dir}: {check.reason}"
        if warn is not None:
            warn(text)
        else:
            logger.warning("%s", text)
    return None


# ------------------------------------------------------------------------------------------------- remote
def remote_target(remote: SyncTarget | str | os.PathLike) -> SyncTarget:
    """A sync target from a target object, an fsspec URL (``s3://...``, ``memory://...``) or a folder path.

    A folder under Colab's ``/content/drive`` (or one that exists now) is unreachable, not empty, while it is
    missing: a Drive that is not mounted stops the start instead of looking like a new run, and nothing is
    written to the VM's own disk under the mount point."""
    if isinstance(remote, SyncTarget):
        return remote
    if isinstance(remote, (str, os.PathLike)) and os.fspath(remote).strip():
        text = os.fspath(remote)
        if "://" in text:
            return FsspecTarget(text)
        return DirectoryTarget(text, mount_root=mount_root_for(text))
    raise ValueError(f"remote={remote!r} is invalid; expected a folder path, an fsspec URL or a SyncTarget")


@dataclass(frozen=True)
class RemoteFolder:
    """A checkpoint folder on a remote: ``sealed`` when its seal arrived (the upload finished)."""

    name: str
    step: int
    sealed: bool
    keys: tuple[str, ...]


def list_remote_folders(target: SyncTarget, *, timeout: float | None = 60.0) -> list[RemoteFolder]:
    """The checkpoint folders on ``target``, newest first. Raises :class:`SourceUnavailableError` when the target
    cannot be read (also when it does not answer within ``timeout``): unreachable is not empty."""
    keys = target.list() if timeout is None else call_within(target.list, timeout, "list", target.name)
    groups: dict[str, list[str]] = {}
    for key in keys:
        head, _, rest = key.partition("/")
        if rest and folder_step(head) is not None:
            groups.setdefault(head, []).append(key)
    out = [RemoteFolder(name, folder_step(name) or 0, f"{name}/{SEAL_NAME}" in ks, tuple(sorted(ks)))
           for name, ks in groups.items()]
    return sorted(out, key=lambda f: f.step, reverse=True)


def _remote_seal(target: SyncTarget, name: str, scratch: Path) -> dict[str, Any]:
    dest = scratch / f"{name}.seal.json"
    target.get(f"{name}/{SEAL_NAME}", dest)
    return _parse_seal(dest.read_bytes(), f"{target.name}/{name}/{SEAL_NAME}")


def restore_newest_remote(target: SyncTarget, output_dir: str | os.PathLike, *,
                          warn: Callable[[str], Any] | None = None,
                          timeout: float | None = 60.0) -> FolderCheck | None:
    """Download the newest sealed folder on ``target`` into ``output_dir`` and verify it; None when the target
    holds no usable folder. A folder without its seal (an interrupted upload) is never chosen; one that fails
    verification after the download is named through ``warn`` and the next older one is tried.

    The folder is assembled under a temporary name in ``output_dir`` and renamed only once verified, so a kill
    during the download leaves nothing that looks like a checkpoint. A local folder of the same name that does
    not verify is replaced (it is a broken copy of the same step); one that verifies is returned as it is.
    Raises :class:`SourceUnavailableError` when the target cannot be read.
    """
    say_warn = warn if warn is not None else (lambda text: logger.warning("%s", text))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(_RESTORE_PREFIX + "*"):  # a download killed in an earlier session
        shutil.rmtree(stale, ignore_errors=True)
    for folder in list_remote_folders(target, timeout=timeout):
        if not folder.sealed:
            say_warn(f"skipped {folder.name} on {target.name}: its upload did not finish (no {SEAL_NAME})")
            continue
        local = out / folder.name
        if local.is_dir() and verify_folder(local).ok:
            return verify_folder(local)
        staging = out / f"{_RESTORE_PREFIX}{folder.name}.{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            seal = _remote_seal(target, folder.name, staging.parent)
            for f in seal["files"]:
                target.get(f"{folder.name}/{f['path']}", staging / f["path"])
            atomic_write_json(staging / SEAL_NAME, seal)
            check = verify_folder(staging)
            if not check.ok:
                say_warn(f"skipped {folder.name} on {target.name}: the downloaded copy does not verify "
                         f"({check.reason})")
                continue
            if local.exists():
                shutil.rmtree(local)
            os.replace(staging, local)
            fsync_dir(out)
            return verify_folder(local)
        except (FileNotFoundError, ValueError) as exc:  # the seal names a file the remote lacks, or is damaged
            say_warn(f"skipped {folder.name} on {target.name}: {exc}")
            continue
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (out / f"{folder.name}.seal.json").unlink()
    return None


class FolderPusher:
    """Uploads sealed folders to a :class:`SyncTarget` in a background thread: files first, the seal last.

    :meth:`submit` only enqueues (the training thread never waits for the network). When several folders are
    pending, only the newest is sent (older ones would be superseded anyway). A failed upload is retried with
    ``retry``'s backoff. :meth:`prune` removes a remote folder only if its remote seal carries this run's
    ``lineage`` and this pusher (or an earlier session of the run, via :meth:`state_dict`) pushed it; the seal is
    deleted first, so an interrupted prune leaves an unsealed folder that is never restored. A remote listing
    that does not answer within ``list_timeout`` seconds is a failure (retried), so a stuck mount cannot hold the
    thread forever.
    """

    def __init__(self, target: SyncTarget, lineage: str, *, retry: RetryPolicy | None = None,
                 on_alert: Callable[[str, str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, list_timeout: float = 60.0) -> None:
        if not isinstance(target, SyncTarget):
            raise ValueError(f"target={target!r} is invalid; expected an atheria_kit.sync.SyncTarget "
                             f"(DirectoryTarget, FsspecTarget, ...)")
        if not isinstance(lineage, str) or not lineage:
            raise ValueError(f"lineage={lineage!r} is invalid; expected a non-empty string")
        if not isinstance(list_timeout, (int, float)) or isinstance(list_timeout, bool) or not list_timeout > 0:
            raise ValueError(f"list_timeout={list_timeout!r} is invalid; expected seconds > 0")
        self.target = target
        self.lineage = lineage
        self.list_timeout = float(list_timeout)
        self.retry = retry if retry is not None else RetryPolicy(initial_delay=2.0, max_delay=120.0)
        self.on_alert = on_alert
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[str, Path] = {}  # folder name -> local path
        self._prune: set[str] = set()
        self._busy = False
        self._closed = False
        self.pushed: list[str] = []  # remote folders of this run, oldest first
        self.last_error: str | None = None
        self.failures = 0
        self.bytes_sent = 0
        self.seconds_sending = 0.0
        self._thread = threading.Thread(target=self._run, name="atheria-folder-push", daemon=True)
        self._thread.start()

    # -- training thread --------------------------------------------------------------------------------
    def submit(self, folder: str | os.PathLike) -> None:
        """Queue a sealed folder for upload (returns at once)."""
        p = Path(folder)
        with self._cond:
            if self._closed:
                raise SyncError(f"folder pusher for {self.target.name} is closed")
            self._pending[p.name] = p
            self._cond.notify_all()

    def prune(self, names: Iterable[str]) -> None:
        """Queue the removal of remote folders that the framework's rotation removed locally (only this run's)."""
        with self._cond:
            self._prune.update(n for n in names if n in self.pushed)
            self._cond.notify_all()

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything submitted has been sent (or failed for good); False when ``timeout`` ran out."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while self._pending or self._prune or self._busy:
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is None else min(left, 0.5))
        return True

    def close(self, timeout: float | None = 60.0) -> bool:
        """Send what is pending (waiting at most ``timeout``), then stop the thread; True when all was sent."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return done

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._prune) + int(self._busy)

    def throughput(self) -> float | None:
        """Measured upload bytes per second (None before the first upload)."""
        return self.bytes_sent / self.seconds_sending if self.seconds_sending > 0 else None

    def estimate_seconds(self, nbytes: int) -> float:
        """Seconds an upload of ``nbytes`` is expected to take at the measured pace (0 before any upload)."""
        rate = self.throughput()
        return nbytes / rate if rate else 0.0

    def status(self) -> dict[str, Any]:
        return {"pushed": self.pushed[-1] if self.pushed else None, "pending": self.pending,
                "error": self.last_error}

    def state_dict(self) -> dict[str, Any]:
        return {"lineage": self.lineage, "pushed": list(self.pushed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("lineage") == self.lineage:
            self.pushed = [str(n) for n in state.get("pushed", []) if folder_step(str(n)) is not None]

    # -- worker thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._prune) and not self._closed:
                    self._cond.wait()
                if self._closed:  # close() waited (bounded) for the queue; what is left is dropped
                    return
                if self._pending:
                    names = sorted(self._pending, key=lambda n: folder_step(n) or 0)
                    for older in names[:-1]:
                        logger.info("folder push: %s superseded by %s before it was sent", older, names[-1])
                        del self._pending[older]
                    job: tuple[str, Any] = ("push", self._pending.pop(names[-1]))
                else:
                    job = ("prune", sorted(self._prune))
                    self._prune.clear()
                self._busy = True
            try:
                self._do(job)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _do(self, job: tuple[str, Any]) -> None:
        kind, what = job
        try:
            if kind == "push":
                self._push(what)
            else:
                self._prune_now(what)
        except Exception as exc:  # noqa: BLE001 - reported, then retried with backoff
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("folder push to %s failed (%s); retrying", self.target.name, self.last_error)
            if self.on_alert is not None and self.failures == 1:
                self.on_alert("failing", f"copying checkpoints to {self.target.name} failed ({self.last_error}); "
                                         f"retrying in the background")
            with self._cond:
                if kind == "push" and what.name not in self._pending and what.is_dir():
                    self._pending[what.name] = what
                elif kind == "prune":
                    self._prune.update(what)
                self._cond.wait(self.retry.delay(self.failures))
            return
        if self.failures and self.on_alert is not None:
            self.on_alert("recovered", f"copying checkpoints to {self.target.name} works again")
        self.failures = 0
        self.last_error = None

    def _push(self, folder: Path) -> None:
        seal = read_seal(folder)
        if seal is None:
            raise SyncError(f"{folder} is not sealed; only sealed folders are pushed")
        name = folder.name
        started = self._clock()
        sent = 0
        uploaded: list[str] = []
        try:
            for f in seal["files"]:
                key = f"{name}/{f['path']}"
                sent += self.target.put(folder / f["path"], key, sha256=f["sha256"])
                uploaded.append(key)
            sent += self.target.put(folder / SEAL_NAME, f"{name}/{SEAL_NAME}")  # the commit marker, last
        except FileNotFoundError:
            # The framework's rotation removed the folder while it was being sent: a superseded checkpoint.
            for key in uploaded:
                with contextlib.suppress(Exception):
                    self.target.delete(key, truncate=True)
            logger.info("folder push: %s was removed locally during its upload; its partial copy was removed", name)
            return
        self.target.commit(f"checkpoint folder {name}")
        self.bytes_sent += sent
        self.seconds_sending += max(self._clock() - started, 1e-6)
        if name not in self.pushed:
            self.pushed.append(name)
        logger.info("folder push: %s sent to %s (%d bytes)", name, self.target.name, sent)

    def _prune_now(self, names: list[str]) -> None:
        folders = {f.name: f for f in list_remote_folders(self.target, timeout=self.list_timeout)}
        with _scratch() as scratch:
            for name in names:
                folder = folders.get(name)
                if folder is None:
                    self.pushed = [n for n in self.pushed if n != name]
                    continue
                if folder.sealed and _remote_seal(self.target, name, scratch)["lineage"] != self.lineage:
                    logger.warning("folder push: %s on %s belongs to another run; not removed", name, self.target.name)
                    continue
                seal_key = f"{name}/{SEAL_NAME}"
                if folder.sealed:
                    self.target.delete(seal_key, truncate=True)  # unsealed first: never restored from here on
                for key in folder.keys:
                    if key != seal_key:
                        self.target.delete(key, truncate=True)
                self.target.commit(f"remove checkpoint folder {name}")
                self.pushed = [n for n in self.pushed if n != name]
                logger.info("folder push: removed %s from %s (rotated out locally)", name, self.target.name)


@contextlib.contextmanager
def _scratch() -> Any:
    with tempfile.TemporaryDirectory(prefix="atheria-folder-") as tmp:
        yield Path(tmp)


def new_lineage() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex
