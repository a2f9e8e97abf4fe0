"""Where checkpoints persist beyond the VM: one small interface, fsspec underneath.

``SyncSource`` is what resume needs (list, get, exists, read_manifest); ``SyncTarget`` adds what the sync
worker needs (put, delete, move, free_space, commit, close). Every remote write goes to a temporary name
beside the final one, is verified (size and sha256 of the bytes read back), and only then renamed, so a
half-uploaded file never carries a checkpoint's name.

Unreachable is not empty: a read that fails for any reason other than "this key does not exist" raises
:class:`SourceUnavailableError`, so a dropped mount, a timeout or a refused request is never mistaken for a
remote that holds nothing (which would make a new session start from zero and prune the remote history).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from atheria_kit._io import CHUNK_BYTES, TMP_PREFIX, atomic_open, sha256_file
from atheria_kit._manifest import MANIFEST_NAME
from atheria_kit._manifest import read_manifest as _read_manifest

__all__ = [
    "DirectoryTarget",
    "DriveDisconnectedError",
    "FsspecTarget",
    "InsufficientSpaceError",
    "LocalFileChangedError",
    "SourceUnavailableError",
    "SyncError",
    "SyncSource",
    "SyncTarget",
    "colab_drive_target",
    "colab_remounter",
    "mount_root_for",
]

logger = logging.getLogger(__name__)

#: Head room kept free on the target beyond the file being written (Drive needs some for its own files).
SPACE_MARGIN_BYTES = 64 * 1024 * 1024
T = TypeVar("T")


class SyncError(RuntimeError):
    """A sync operation failed; the message says what to do."""


class LocalFileChangedError(SyncError):
    """The local file's bytes do not match the hash it was submitted with (changed or corrupt locally)."""


class InsufficientSpaceError(SyncError):
    """The target reports too little free space for the file."""


class SourceUnavailableError(SyncError):
    """The source or target could not be read (timeout, dropped mount, refused request): unreachable, not empty.

    ``source`` names the place. Callers must not treat it as "holds nothing".
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class DriveDisconnectedError(SourceUnavailableError):
    """The Drive mount dropped (Errno 107, or ``MyDrive`` vanished) and could not be remounted."""


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"key={key!r} is invalid; expected a relative 'a/b' path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"key={key!r} is invalid; expected a relative path without '.', '..' or empty parts")
    return key


class SyncSource(ABC):
    """A read-only place holding checkpoints (and their manifest) under relative keys.

    Every read raises :class:`SourceUnavailableError` when the place cannot be read; ``get`` of a key that
    is not there raises ``FileNotFoundError`` and ``exists`` returns False (the place was read).
    """

    name: str = "source"

    @abstractmethod
    def list(self) -> list[str]:
        """All keys (relative paths, '/'-separated) below the root; ``[]`` when the root is not there yet."""

    @abstractmethod
    def get(self, key: str, dest: str | os.PathLike) -> int:
        """Copy ``key`` to the local file ``dest`` (atomically); return its size."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    def read_manifest(self) -> dict[str, Any] | None:
        """The parsed ``manifest.json``; None only when the place was read and holds no manifest.

        Raises :class:`SourceUnavailableError` when it cannot be read, ``ValueError`` naming the source when
        the manifest is there but damaged.
        """
        try:
            return _read_manifest(self)
        except FileNotFoundError:  # removed between exists() and get(): it was read, and it is gone
            return None
        except (SourceUnavailableError, ValueError):
            raise
        except Exception as exc:
            raise SourceUnavailableError(
                f"{self.name}/{MANIFEST_NAME} cannot be read: {type(exc).__name__}: {exc}", source=self.name
            ) from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SyncTarget(SyncSource):
    """A writable place: the sync worker mirrors a checkpoint directory into it."""

    #: Whether a lease file in this target is a real lock (see :class:`~atheria_kit.sync.TargetLeaseStore`).
    supports_lease: bool = True

    @abstractmethod
    def put(self, src: str | os.PathLike, key: str, *, sha256: str | None = None) -> int:
        """Upload ``src`` as ``key`` (temp name, verify, rename); return the bytes sent.

        With ``sha256`` the local bytes are checked against it while they are read, and
        :class:`LocalFileChangedError` is raised on a mismatch (nothing is renamed into place).
        """

    @abstractmethod
    def delete(self, key: str, *, truncate: bool | None = None) -> None:
        """Remove ``key`` (no error if it is absent).

        ``truncate``: empty the file before removing it (Drive: the Trash copy then costs nothing); None
        means the target's default. Callers pass True only for files whose content is worthless.
        """

    def move(self, src_key: str, dst_key: str) -> None:
        """Move ``src_key`` to ``dst_key``: copy, verify (size and sha256), then delete the original.

        Targets whose storage can rename override this; the original is never truncated.
        """
        with tempfile.TemporaryDirectory(prefix="atheria-move-") as tmp:
            local = Path(tmp) / "blob"
            self.get(src_key, local)
            digest = sha256_file(local)
            self.put(local, dst_key, sha256=digest)
        self.delete(src_key, truncate=False)

    def free_space(self) -> int | None:
        """Free bytes on the target, or ``None`` when the target cannot tell."""
        return None

    def commit(self, message: str) -> None:
        """Publish what was put since the last commit (a no-op where each put is already visible)."""

    def close(self) -> None:
        """Release the target; no writes are allowed afterwards."""


class FsspecTarget(SyncTarget):
    """Any fsspec URL (``s3://bucket/run``, ``gs://...``, ``memory://run``, a local path) or an fsspec filesystem.

    ``verify="read"`` (default) reads each uploaded file back and compares its sha256; ``"size"`` only
    compares sizes (cheaper on object stores where reading back means downloading).
    ``on_disconnect`` is called once when an operation fails with Errno 107 (a dropped FUSE mount);
    it should reconnect or raise, and the operation is then retried once.
    """

    def __init__(
        self,
        url: str | os.PathLike,
        *,
        fs: fsspec.AbstractFileSystem | None = None,
        storage_options: dict[str, Any] | None = None,
        verify: str = "read",
        truncate_before_delete: bool = False,
        on_disconnect: Callable[[], None] | None = None,
        name: str | None = None,
    ) -> None:
        if verify not in ("read", "size"):
            raise ValueError(f"verify={verify!r} is invalid; expected one of 'read', 'size'")
        if fs is None:
            fs, root = fsspec.core.url_to_fs(os.fspath(url), **(storage_options or {}))
        else:
            root = os.fspath(url)
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.verify = verify
        self.truncate_before_delete = truncate_before_delete
        self.on_disconnect = on_disconnect
        self.name = name or os.fspath(url)
        self._closed = False

    # -- helpers ---------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return posixpath.join(self.root, _check_key(key))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an fs operation; on Errno 107 let ``on_disconnect`` remount, then retry once."""
        try:
            return fn(*args)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN or self.on_disconnect is None:
                raise
            logger.warning("sync target %s: mount dropped (Errno 107: %s); trying to remount", self.name, exc)
            self.on_disconnect()  # raises DriveDisconnectedError when it cannot remount
            return fn(*args)

    def _read(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A read: "not there" stays ``FileNotFoundError``; any other failure means unreachable."""
        try:
            return self._call(fn, *args)
        except (FileNotFoundError, SourceUnavailableError):
            raise
        except Exception as exc:
            raise SourceUnavailableError(
                f"{self.name} cannot be read ({what}: {type(exc).__name__}: {exc})", source=self.name
            ) from exc

    def _info(self, path: str) -> dict[str, Any] | None:
        """``fs.info`` or None when absent. Not ``fs.exists``: fsspec's swallows every error as "absent"."""
        try:
            return self.fs.info(path)
        except FileNotFoundError:
            return None

    def _check_open(self) -> None:
        if self._closed:
            raise SyncError(f"sync target {self.name} is closed (after flush_and_unmount no writes are allowed)")

    # -- SyncSource ------------------------------------------------------------------------------
    def list(self) -> list[str]:
        def _find() -> list[str]:
            if self._info(self.root) is None:
                return []  # reachable, and the folder is not there yet (a first run)
            found = self.fs.find(self.root, withdirs=False)
            root = self.fs._strip_protocol(self.root).rstrip("/")
            out = []
            for p in found:
                p = self.fs._strip_protocol(p)
                rel = posixpath.relpath(p, root) if root else p
                out.append(rel)
            return sorted(out)

        return self._read("list", _find)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        return self._read(f"look up {key}", self._info, path) is not None

    def get(self, key: str, dest: str | os.PathLike) -> int:
        path = self._path(key)
        src = self._read(f"open {key}", self.fs.open, path, "rb")
        try:
            n = 0
            # Remote read errors mean unreachable; local write errors (disk full) are raised as they are.
            with atomic_open(dest, "wb") as out:
                while True:
                    block = self._read(f"read {key}", src.read, CHUNK_BYTES)
                    if not block:
                        break
                    out.write(block)
                    n += len(block)
            return n
        finally:
            with contextlib.suppress(Exception):
                src.close()

    # -- SyncTarget ------------------------------------------------------------------------------
    def put(self, src: str | os.PathLike, key: str, *, sha256: str | None = None) -> int:
        self._check_open()
        final = self._path(key)
        size = os.path.getsize(src)
        free = self.free_space()
        if free is not None and free < size + SPACE_MARGIN_BYTES:
            raise InsufficientSpaceError(
                f"sync target {self.name} has {free / 1e6:.1f} MB free, needs {size / 1e6:.1f} MB "
                f"(+{SPACE_MARGIN_BYTES / 1e6:.0f} MB margin) for {key}: free space (on Drive, empty the Trash)"
            )
        directory = posixpath.dirname(final)
        tmp = posixpath.join(directory, f"{TMP_PREFIX}{posixpath.basename(final)}.{uuid.uuid4().hex[:12]}")
        try:
            self._call(self._write_verified, src, tmp, directory, size, sha256, key)
            self._call(self.fs.mv, tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                if self._info(tmp) is not None:
                    self.fs.rm(tmp)
            raise
        return size

    def _write_verified(
        self, src: str | os.PathLike, tmp: str, directory: str, size: int, expected: str | None, key: str
    ) -> None:
        with contextlib.suppress(FileExistsError):
            self.fs.makedirs(directory, exist_ok=True)
        h = hashlib.sha256()
        sent = 0
        with open(src, "rb") as fin, self.fs.open(tmp, "wb") as fout:
            for block in iter(lambda: fin.read(CHUNK_BYTES), b""):
                h.update(block)
                fout.write(block)
                sent += len(block)
            fout.flush()
            with contextlib.suppress(AttributeError, OSError, ValueError):
                os.fsync(fout.fileno())  # local/FUSE paths: push to the mount now, not at VM death
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            raise LocalFileChangedError(
                f"local file {os.fspath(src)} does not match its manifest hash (changed or corrupt); not uploaded"
            )
        remote_size = self.fs.info(tmp)["size"]
        if remote_size != sent or sent != size:
            raise SyncError(
                f"upload of {key} to {self.name} is incomplete: {remote_size} of {sent} bytes arrived; will retry"
            )
        if self.verify == "read":
            rh = hashlib.sha256()
            with self.fs.open(tmp, "rb") as back:
                for block in iter(lambda: back.read(CHUNK_BYTES), b""):
                    rh.update(block)
            if rh.hexdigest() != digest:
                raise SyncError(f"upload of {key} to {self.name} is corrupt (sha256 differs on read-back); will retry")

    def delete(self, key: str, *, truncate: bool | None = None) -> None:
        self._check_open()
        path = self._path(key)
        empty_first = self.truncate_before_delete if truncate is None else truncate

        def _delete() -> None:
            if self._info(path) is None:
                return
            if empty_first:
                # Drive moves deleted files to the Trash, where they keep counting against the quota.
                with self.fs.open(path, "wb"):
                    pass
            self.fs.rm(path)

        self._call(_delete)

    def move(self, src_key: str, dst_key: str) -> None:
        """Rename on the storage (a rename on a mounted folder, a server-side copy on object stores), verified."""
        self._check_open()
        src, dst = self._path(src_key), self._path(dst_key)

        def _move() -> None:
            before = self.fs.info(src)
            with contextlib.suppress(FileExistsError):
                self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            self.fs.mv(src, dst)
            after = self._info(dst)
            if after is None or after["size"] != before["size"]:
                got = None if after is None else after["size"]
                raise SyncError(f"moving {src_key} to {dst_key} on {self.name} failed: {got} of "
                                f"{before['size']} bytes arrived; the original is kept")

        self._call(_move)

    def close(self) -> None:
        self._closed = True


def mount_root_for(path: str | os.PathLike) -> Path | None:
    """The folder whose absence means "not mounted" for a remote folder ``path``: the folder itself when it
    exists now, or Colab's ``/content/drive/<MyDrive|Shareddrives>`` for a path below it (so an unmounted Drive
    is never written to the VM's own disk); None for a new folder elsewhere."""
    path = Path(path).expanduser().absolute()
    parts = path.parts
    if len(parts) > 4 and parts[:3] == ("/", "content", "drive"):
        return Path(*parts[:4])
    return path if path.is_dir() else None


class DirectoryTarget(FsspecTarget):
    """A directory: Drive's ``MyDrive/...`` when mounted, or any local or mounted path.

    Deleting truncates first by default (Drive's Trash counts against the quota); the sync worker deletes
    only its own superseded checkpoints. Free space comes from the filesystem. ``on_close`` runs at
    :meth:`close` (for Colab: ``drive.flush_and_unmount``).

    ``mount_root``: a directory that exists only while the storage is mounted (Drive's ``MyDrive``). When it
    is missing the target is unreachable, not empty: reads raise :class:`SourceUnavailableError` and writes
    are refused, so that nothing is written to the VM's own disk under the mount point.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fs: fsspec.AbstractFileSystem | None = None,
        verify: str = "read",
        on_disconnect: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
        mount_root: str | os.PathLike | None = None,
        name: str | None = None,
    ) -> None:
        root = Path(path).expanduser().absolute()
        super().__init__(
            str(root),
            fs=fs if fs is not None else LocalFileSystem(),
            verify=verify,
            truncate_before_delete=True,
            on_disconnect=on_disconnect,
            name=name or str(root),
        )
        self.path = root
        self.on_close = on_close
        self.mount_root = Path(mount_root).expanduser().absolute() if mount_root is not None else None
        if self.mount_root is not None and self.mount_root not in (root, *root.parents):
            raise ValueError(f"mount_root={str(self.mount_root)!r} is invalid; expected {root} or a folder above it")

    def _mounted(self) -> bool:
        return self.mount_root is None or self.fs.isdir(str(self.mount_root))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._mounted():
            if self.on_disconnect is not None:
                logger.warning("sync target %s: %s is missing (mount dropped); trying to remount",
                               self.name, self.mount_root)
                self.on_disconnect()
            if not self._mounted():
                raise SourceUnavailableError(
                    f"{self.name} is unreachable: {self.mount_root} is not there (the storage is not mounted)",
                    source=self.name,
                )
        return super()._call(fn, *args)

    def free_space(self) -> int | None:
        probe = self.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            return shutil.disk_usage(probe).free
        except OSError:
            return None

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self.on_close is not None:
            self.on_close()


def _colab_drive():
    try:
        from google.colab import drive  # only importable inside Colab (or the test fake)
    except ImportError as exc:
        raise SyncError("Google Drive sync needs Colab (google.colab is not importable here)") from exc
    return drive


def colab_remounter(mountpoint: str = "/content/drive", *, timeout_ms: int = 120_000) -> Callable[[], None]:
    """A callable that remounts Drive after Errno 107, raising :class:`DriveDisconnectedError` clearly."""

    def remount() -> None:
        try:
            _colab_drive().mount(mountpoint, force_remount=True, timeout_ms=timeout_ms)
        except Exception as exc:
            logger.error(
                "Google Drive mount at %s dropped and remounting failed (%s). Checkpoints stay on the local disk "
                "only: run `from google.colab import drive; drive.mount(%r, force_remount=True)` in a cell.",
                mountpoint, exc, mountpoint,
            )
            raise DriveDisconnectedError(
                f"Drive mount at {mountpoint} dropped (Errno 107) and remount failed: {exc}. "
                f"Run drive.mount({mountpoint!r}, force_remount=True) in a cell."
            ) from exc
        logger.warning("Google Drive remounted at %s after the mount dropped", mountpoint)

    return remount


def colab_drive_target(
    subdir: str = "atheria_checkpoints",
    *,
    mountpoint: str = "/content/drive",
    fs: fsspec.AbstractFileSystem | None = None,
    unmount_on_close: bool = True,
) -> DirectoryTarget:
    """Mount Drive (Colab's own mount) and return a target in ``MyDrive/<subdir>``.

    It remounts on Errno 107 (or when ``MyDrive`` vanished) and, at :meth:`~DirectoryTarget.close`, calls
    ``drive.flush_and_unmount()``: writes through the mount land on the VM's disk first and only that call
    forces them to Drive. While Drive cannot be remounted the target is unreachable, never empty.
    """
    drive = _colab_drive()
    mydrive = Path(mountpoint) / "MyDrive"
    if not mydrive.is_dir():
        drive.mount(mountpoint)

    def flush_and_unmount() -> None:
        logger.info("flushing and unmounting Google Drive at %s", mountpoint)
        drive.flush_and_unmount()

    return DirectoryTarget(
        mydrive / subdir,
        fs=fs,
        on_disconnect=colab_remounter(mountpoint),
        on_close=flush_and_unmount if unmount_on_close else None,
        mount_root=mydrive,
        name=f"Google Drive: MyDrive/{subdir}",
    )
