"""Atomic, verified file writes shared by checkpoints, manifests, run logs and sync.

Why: a session can die at any instant. A file is either the old complete version or the
new complete version, never a half-written one. The temporary file lives in the *same
directory* as the target so that ``os.replace`` is a rename, not a cross-device copy
(Lightning #20270).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Prefix of every temporary file the kit writes; leftovers from killed writes are recognised by it.
TMP_PREFIX = ".tmp-"

#: Block size for streaming reads, writes and hashing of large files.
CHUNK_BYTES = 4 * 1024 * 1024


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory entry to disk so a completed rename survives a power cut."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:  # some filesystems (FUSE mounts, Windows) cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success flush, fsync and rename it into place.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode={mode!r} is not supported; expected 'wb' or 'w'")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the kit's pretty JSON (sorted keys; NaN/inf become Python json's ``NaN``/``Infinity`` tokens)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON atomically (see :func:`json_bytes`)."""
    atomic_write_bytes(path, json_bytes(obj))


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML settings file (empty file: ``{}``).

    Raises ``ValueError`` naming the file when it is missing, not valid YAML or not a mapping.
    """
    import yaml  # only the configuration loaders need it

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config={str(p)!r}: file not found; expected an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"config={str(p)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config={str(p)!r}: expected a YAML mapping of settings, got {type(data).__name__}")
    return data


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def truncate_and_remove(path: str | os.PathLike) -> None:
    """Delete a file after truncating it to zero bytes.

    Why: files deleted through the Google Drive mount go to the Trash and keep counting
    against the quota; a zero-byte file in the Trash costs nothing.
    """
    p = Path(path)
    with contextlib.suppress(FileNotFoundError):
        with open(p, "r+b") as fh:
            fh.truncate(0)
            fh.flush()
            os.fsync(fh.fileno())
    with contextlib.suppress(FileNotFoundError):
        p.unlink()


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a directory tree, truncating each file first (see :func:`truncate_and_remove`); no error if absent."""
    root = Path(path)
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            truncate_and_remove(Path(dirpath) / name)
        for name in dirnames:
            with contextlib.suppress(OSError):
                (Path(dirpath) / name).rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary files left by killed writes in ``directory``; return what was removed."""
    removed: list[Path] = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for entry in d.iterdir():
        if entry.name.startswith(TMP_PREFIX) and entry.is_file():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed
