"""Atomic, verified file writes shared by checkpoints, manifests, run logs and sync.

Why: a session can die at any instant. A file is either the old complete version or the
new complete version, never a half-written one. The temporary file lives in the *same
directory* as the target so that ``os.replace`` is a rename, not a cross-device copy
(Lightning #20270).

Verification: files are hashed with SHA-256 and BLAKE3 (both 256-bit cryptographic hashes; BLAKE3 is
several times faster and multithreaded, so it is what a load checks when a record carries it). A
checkpoint's integrity sidecar (``<name>.integrity.json``, :func:`write_integrity_sidecar`) holds its
size and hashes, so the file can be verified without the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import blake3 as _blake3

from atheria_kit._validation import require_int

#: Prefix of every temporary file the kit writes; leftovers from killed writes are recognised by it.
TMP_PREFIX = ".tmp-"

#: Block size for streaming reads, writes and hashing of large files.
CHUNK_BYTES = 4 * 1024 * 1024

#: Block size of the verifying reader: large enough for BLAKE3 to spread one block over all cores.
HASH_BLOCK_BYTES = 16 * 1024 * 1024

#: A checkpoint's integrity sidecar is ``<checkpoint file name>`` + this suffix (format: :func:`write_integrity_sidecar`).
SIDECAR_SUFFIX = ".integrity.json"
SIDECAR_FORMAT = "atheria-integrity"

#: Hash algorithms a record or sidecar can carry, strongest-and-fastest first.
HASH_ALGORITHMS = ("blake3", "sha256")
_HEX64 = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


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
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, before_replace: Callable[[], None] | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success flush, fsync and rename it into place.

    ``before_replace`` runs once the temporary file is complete and durable, just before the rename
    (a checkpoint writes its integrity sidecar there). On any exception, including one raised by
    ``before_replace``, the temporary file is removed and ``path`` is left untouched.
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
        if before_replace is not None:
            before_replace()
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


def new_hasher(algorithm: str, *, threads: int | None = None) -> Any:
    """A fresh ``hashlib``-style hasher: ``"blake3"`` (on ``threads`` threads per large block, default: all
    cores) or ``"sha256"`` (one thread)."""
    if algorithm == "blake3":
        return _blake3.blake3(max_threads=_blake3.blake3.AUTO if threads is None else max(1, threads))
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"algorithm={algorithm!r} is invalid; expected one of {HASH_ALGORITHMS}")


def blake3_bytes(data: bytes | memoryview) -> str:
    h = new_hasher("blake3")
    h.update(data)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file with ``algorithm`` ("blake3" or "sha256"), streamed (constant memory).

    Reads with ``readinto`` into one reused buffer: no allocation per block, and no ``mmap`` (an I/O error
    on a mapped network file kills the process with SIGBUS instead of raising).
    """
    h = new_hasher(algorithm)
    buf = bytearray(HASH_BLOCK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def check_digest(field: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` must be 64 lowercase hex digits (a SHA-256 or BLAKE3 digest), or None when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{field}={value!r} is invalid; expected 64 lowercase hex digits")
    return value


class Digests:
    """SHA-256 and BLAKE3 of one stream, fed block by block (what a checkpoint write computes)."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._blake3 = new_hasher("blake3")
        self.size = 0

    def update(self, block: bytes | memoryview) -> None:
        self._sha256.update(block)
        self._blake3.update(block)
        self.size += len(block)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def blake3(self) -> str:
        return self._blake3.hexdigest()


class IntegrityError(ValueError):
    """A file's size or hash differs from its record, or it changed while it was being read."""


class FileChangedError(IntegrityError):
    """The file's identity (device, inode, size, mtime) changed while it was being read."""


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    # not ctime: it also moves for metadata-only changes (a hard link, chmod) that leave the bytes alone
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_verified(
    path: str | os.PathLike,
    size: int,
    algorithm: str,
    digest: str,
    consume: Callable[[IO[bytes]], T],
    *,
    overlap: bool = True,
    attempts: int = 2,
) -> T:
    """``consume(fh)`` on the open file ``path``, returned only if the file has ``size`` bytes and ``digest``.

    Why: hashing a checkpoint and then deserializing it doubled the time to resume. With ``overlap`` a
    second thread hashes the same open file (``pread``, so the two never move each other's file position)
    while ``consume`` reads it. Both read one file that is never rewritten (committed checkpoint names are
    immutable), and its device, inode, size and mtime must be the same after the reads as before them: a
    file that changes while it is read is refused like a corrupted one (after ``attempts`` tries: a
    network filesystem may refresh a file's mtime once, e.g. after an upload). ``consume`` must be safe on
    damaged input: its result is thrown away unless the hash matches. Without ``overlap`` the hash is
    checked first and ``consume`` runs only on a verified file (use this for full pickle, which can run
    code while it reads). Raises :class:`IntegrityError` (size, hash or change), the ``OSError`` of an
    unreadable file, or ``consume``'s own error when the file verifies but ``consume`` fails.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _read_verified_once(path, size, algorithm, digest, consume, overlap)
        except FileChangedError:
            if attempt >= attempts:
                raise
    raise ValueError(f"attempts={attempts!r} is invalid; expected an integer >= 1")


def _read_verified_once(
    path: str | os.PathLike, size: int, algorithm: str, digest: str, consume: Callable[[IO[bytes]], T], overlap: bool
) -> T:
    with open(path, "rb") as fh:
        fd = fh.fileno()
        before = os.fstat(fd)
        if before.st_size != size:
            raise IntegrityError(f"size {before.st_size} bytes, expected {size} (truncated or overwritten)")
        if not overlap:
            got = _pread_digest(fd, size, algorithm)
            if got != digest:
                raise IntegrityError(f"{algorithm} mismatch (corrupted)")
            result = consume(fh)
            _check_unchanged(fd, before)
            return result
        hashed: dict[str, Any] = {}

        def hash_it() -> None:
            try:
                # one core stays with the reader: on a 2-core notebook VM, hashing on both made the pair slower
                hashed["digest"] = _pread_digest(fd, size, algorithm, threads=max(1, _usable_cpus() - 1))
            except BaseException as e:  # reported by the reading thread
                hashed["error"] = e

        hasher = threading.Thread(target=hash_it, name="atheria-verify", daemon=True)
        hasher.start()
        try:
            result = consume(fh)
        except BaseException as consume_error:
            hasher.join()
            # A damaged file explains a parser failure better than the parser's own error does.
            if "error" in hashed:
                raise hashed["error"] from consume_error
            if hashed["digest"] != digest:
                raise IntegrityError(f"{algorithm} mismatch (corrupted)") from consume_error
            raise
        hasher.join()
        if "error" in hashed:
            raise hashed["error"]
        if hashed["digest"] != digest:
            raise IntegrityError(f"{algorithm} mismatch (corrupted)")
        _check_unchanged(fd, before)
        return result


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def _pread_digest(fd: int, size: int, algorithm: str, threads: int | None = None) -> str:
    """Digest of the first ``size`` bytes of open file ``fd``, read with ``pread`` into one reused buffer."""
    h = new_hasher(algorithm, threads=threads)
    buf = bytearray(min(HASH_BLOCK_BYTES, max(size, 1)))
    view = memoryview(buf)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(len(buf), size - offset)]], offset)
        if n == 0:
            raise IntegrityError(f"ended at byte {offset}, expected {size} (truncated while being read)")
        h.update(view[:n])
        offset += n
    return h.hexdigest()


def _check_unchanged(fd: int, before: os.stat_result) -> None:
    if _identity(os.fstat(fd)) != _identity(before):
        raise FileChangedError("the file changed while it was being read")


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """Where the integrity sidecar of checkpoint file ``checkpoint`` lies: beside it, ``<name>.integrity.json``."""
    p = Path(checkpoint)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_integrity_sidecar(
    path: str | os.PathLike,
    size: int,
    sha256: str,
    blake3: str | None,
    step: int,
    revision: int,
    lineage: str | None,
    *,
    episode: int | None = None,
    metrics: Mapping[str, float] | None = None,
    time: float | None = None,
    versions: Mapping[str, str] | None = None,
) -> Path:
    """Atomically write the integrity sidecar of checkpoint file ``path``; return the sidecar's path.

    The sidecar proves the checkpoint's content without the manifest: ``{"format", "version", "file",
    "size", "sha256", "blake3", "step", "revision", "lineage"}`` plus, when given, the record fields
    ``episode``, ``metrics``, ``time`` and ``versions`` (so the record can be rebuilt without loading the
    file). The checkpoint manager writes it before renaming the checkpoint into place; the sync layer
    writes it for a checkpoint it downloaded and verified. ``blake3`` may be None (an old manifest entry):
    then ``sha256`` is what verifies the file.
    """
    p = Path(path)
    doc: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "file": p.name,
        "size": require_int("size", size, minimum=0),
        "sha256": check_digest("sha256", sha256),
        "blake3": check_digest("blake3", blake3, optional=True),
        "step": require_int("step", step, minimum=0),
        "revision": require_int("revision", revision, minimum=0),
        "lineage": lineage,
    }
    if lineage is not None and (not isinstance(lineage, str) or not lineage):
        raise ValueError(f"lineage={lineage!r} is invalid; expected a non-empty string or None")
    if episode is not None:
        doc["episode"] = require_int("episode", episode, minimum=0)
    if metrics is not None:
        doc["metrics"] = {str(k): float(v) for k, v in dict(metrics).items()}
    if time is not None:
        doc["time"] = float(time)
    if versions is not None:
        doc["versions"] = {str(k): str(v) for k, v in dict(versions).items()}
    target = sidecar_path(p)
    atomic_write_bytes(target, json_bytes(doc))
    return target


def read_integrity_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The checked content of sidecar file ``path``; ``ValueError`` naming the file and the bad field."""
    p = Path(path)
    try:
        doc = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"integrity sidecar {p} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"integrity sidecar {p}: format={got!r} is invalid; expected {SIDECAR_FORMAT!r}")
    try:
        for key in ("size", "step", "revision"):
            value = doc.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key}={value!r} is invalid; expected an integer >= 0")
        check_digest("sha256", doc.get("sha256"))
        check_digest("blake3", doc.get("blake3"), optional=True)
        if not isinstance(doc.get("file"), str) or doc.get("lineage") is not None and not isinstance(doc["lineage"], str):
            raise ValueError(f"file={doc.get('file')!r}, lineage={doc.get('lineage')!r}: expected strings")
    except ValueError as exc:
        raise ValueError(f"integrity sidecar {p}: {exc}") from None
    return doc


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
