"""An fsspec filesystem wrapper that injects faults at chosen moments: errors, partial writes, latency,
and a dropped FUSE mount (OSError Errno 107, "Transport endpoint is not connected").

It wraps a real filesystem (local or memory) and forwards the methods the sync targets use.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

from fsspec import AbstractFileSystem


class _PartialWriter:
    """A write handle that silently keeps only the first ``limit`` bytes (a cut-off upload)."""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner, self._left = inner, limit

    def write(self, data: bytes) -> int:
        keep = bytes(data[: max(0, self._left)])
        self._left -= len(keep)
        if keep:
            self._inner.write(keep)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _PartialWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


class FaultyFileSystem(AbstractFileSystem):
    cachable = False
    protocol = "faulty"

    def __init__(self, inner: AbstractFileSystem, *, latency: float = 0.0,
                 sleep: Callable[[float], Any] | None = None,
                 disconnected: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.latency = latency  # seconds added to every file opened for writing
        self._sleep = sleep or threading.Event().wait
        self.disconnected = disconnected or (lambda: False)
        self.fail_ops: dict[str, list[BaseException]] = {}
        self.partial_writes: list[int] = []
        self.calls: list[tuple[str, str]] = []
        self.before_write: Callable[[str], None] | None = None
        #: Called with (op, path) before every operation: a test can hold one (a stuck mount) or observe it.
        self.before_op: Callable[[str, str], None] | None = None

    def fail_next(self, op: str, exc: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` ('open_write', 'open_read', 'mv', 'rm', 'info', ...) raise ``exc``."""
        self.fail_ops.setdefault(op, []).extend([exc] * times)

    def truncate_next_write(self, nbytes: int) -> None:
        """The next file written keeps only its first ``nbytes`` bytes, without any error."""
        self.partial_writes.append(nbytes)

    def _check(self, op: str, path: str) -> None:
        self.calls.append((op, path))
        if self.before_op is not None:
            self.before_op(op, path)
        if self.disconnected():
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", path)
        queue = self.fail_ops.get(op)
        if queue:
            raise queue.pop(0)

    def _strip_protocol(self, path: str) -> str:  # type: ignore[override]
        return self.inner._strip_protocol(path)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:  # type: ignore[override]
        writing = "w" in mode
        self._check("open_write" if writing else "open_read", path)
        if writing:
            if self.before_write is not None:
                self.before_write(path)
            if self.latency:
                self._sleep(self.latency)
            fh = self.inner.open(path, mode, **kwargs)
            if self.partial_writes:
                return _PartialWriter(fh, self.partial_writes.pop(0))
            return fh
        return self.inner.open(path, mode, **kwargs)

    def info(self, path: str, **kwargs: Any) -> dict:
        self._check("info", path)
        return self.inner.info(path, **kwargs)

    def exists(self, path: str, **kwargs: Any) -> bool:
        self._check("exists", path)
        return self.inner.exists(path, **kwargs)

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False,
             **kwargs: Any) -> Any:
        self._check("find", path)
        return self.inner.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        self._check("mv", path2)
        self.inner.mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def rm(self, path: str, recursive: bool = False, maxdepth: int | None = None) -> None:
        self._check("rm", path)
        self.inner.rm(path, recursive=recursive, maxdepth=maxdepth)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self._check("makedirs", path)
        self.inner.makedirs(path, exist_ok=exist_ok)
