"""Where checkpoints persist beyond the VM: one small interface, fsspec underneath.

``SyncSource`` is what resume needs (list, get, exists); ``SyncTarget`` adds what the sync worker needs
(put, delete, free_space, commit, close). Every remote write goes to a temporary name beside the final
one, is verified (size and sha256 of the bytes read back), and only then renamed, so a half-uploaded
file never carries a checkpoint's name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import posixpath
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from atheria_kit._io import CHUNK_BYTES, TMP_PREFIX, atomic_open

__all__ = [
    "DirectoryTarget",
    "DriveDisconnectedError",
    "FsspecTarget",
    "InsufficientSpaceError",
    "LocalFileChangedError",
    "SyncError",
    "SyncSource",
    "SyncTarget",
    "colab_drive_target",
    "colab_remounter",
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


class DriveDisconnectedError(SyncError):
    """The Drive mount dropped (Errno 107) and could not be remounted."""


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"key={key!r} is invalid; expected a relative 'a/b' path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"key={key!r} is invalid; expected a relative path without '.', '..' or empty parts")
    return key


class SyncSource(ABC):
    """A read-only place holding checkpoints (and their manifest) under relative keys."""

    name: str = "source"

    @abstractmethod
    def list(self) -> list[str]:
        """All keys (relative paths, '/'-separated) below the root."""

    @abstractmethod
    def get(self, key: str, dest: str | os.PathLike) -> int:
        """Copy ``key`` to the local file ``dest`` (atomically); return its size."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SyncTarget(SyncSource):
    """A writable place: the sync worker mirrors a checkpoint directory into it."""

    @abstractmethod
    def put(self, src: str | os.PathLike, key: str, *, sha256: str | None = None) -> int:
        """Upload ``src`` as ``key`` (temp name, verify, rename); return the bytes sent.

        With ``sha256`` the local bytes are checked against it while they are read, and
        :class:`LocalFileChangedError` is raised on a mismatch (nothing is renamed into place).
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is absent)."""

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

    def _check_open(self) -> None:
        if self._closed:
            raise SyncError(f"sync target {self.name} is closed (after flush_and_unmount no writes are allowed)")

    # -- SyncSource ------------------------------------------------------------------------------
    def list(self) -> list[str]:
        def _find() -> list[str]:
            if not self.fs.exists(self.root):
                return []
            found = self.fs.find(self.root, withdirs=False)
            root = self.fs._strip_protocol(self.root).rstrip("/")
            out = []
            for p in found:
                p = self.fs._strip_protocol(p)
                rel = posixpath.relpath(p, root) if root else p
                out.append(rel)
            return sorted(out)

        return self._call(_find)

    def exists(self, key: str) -> bool:
        return bool(self._call(self.fs.exists, self._path(key)))

    def get(self, key: str, dest: str | os.PathLike) -> int:
        path = self._path(key)

        def _get() -> int:
            n = 0
            with self.fs.open(path, "rb") as src, atomic_open(dest, "wb") as out:
                for block in iter(lambda: src.read(CHUNK_BYTES), b""):
                    out.write(block)
                    n += len(block)
            return n

        return self._call(_get)

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
                if self.fs.exists(tmp):
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

    def delete(self, key: str) -> None:
        self._check_open()
        path = self._path(key)

        def _delete() -> None:
            if not self.fs.exists(path):
                return
            if self.truncate_before_delete:
                # Drive moves deleted files to the Trash, where they keep counting against the quota.
                with self.fs.open(path, "wb"):
                    pass
            self.fs.rm(path)

        self._call(_delete)

    def close(self) -> None:
        self._closed = True


class DirectoryTarget(FsspecTarget):
    """A directory: Drive's ``MyDrive/...`` when mounted, or any local or mounted path.

    Deleting truncates first (Drive's Trash counts against the quota); free space comes from the
    filesystem. ``on_close`` runs at :meth:`close` (for Colab: ``drive.flush_and_unmount``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fs: fsspec.AbstractFileSystem | None = None,
        verify: str = "read",
        on_disconnect: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
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

    It remounts on Errno 107 and, at :meth:`~DirectoryTarget.close`, calls ``drive.flush_and_unmount()``:
    writes through the mount land on the VM's disk first and only that call forces them to Drive.
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
        name=f"Google Drive: MyDrive/{subdir}",
    )
