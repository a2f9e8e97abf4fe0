"""The run's lease kept in a sync target, so that two VMs never write the same remote folder.

:class:`~atheria_kit.lease.Lease` works through any store with ``read``/``write``/``remove``; this one keeps
the lease file (``lease.json``) beside the remote checkpoints. Each write is a verified upload under a
temporary name and a rename, like every other remote file; a remote that cannot be read raises
:class:`~atheria_kit.sync.SourceUnavailableError` (never "no lease"). Kaggle dataset targets are refused:
a file there becomes visible only with the next dataset version, minutes later, so it would lock nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from atheria_kit.lease import LEASE_FILE
from atheria_kit.sync.targets import SyncTarget, _check_key

__all__ = ["TargetLeaseStore"]


class TargetLeaseStore:
    """A :class:`~atheria_kit.lease.LeaseStore` on ``target`` under ``key``."""

    def __init__(self, target: SyncTarget, key: str = LEASE_FILE) -> None:
        if not isinstance(target, SyncTarget):
            raise ValueError(f"target={target!r} is invalid; expected a SyncTarget")
        if not target.supports_lease:
            raise ValueError(
                f"target={target.name!r} cannot hold a lease: a file written there is visible to others only with "
                "the next dataset version; use a Drive folder or an fsspec URL for a locked remote"
            )
        self.target = target
        self.key = _check_key(key)
        self.name = target.name

    def read(self) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="atheria-lease-") as tmp:
            dest = Path(tmp) / "lease.json"
            try:
                self.target.get(self.key, dest)
            except FileNotFoundError:
                return None
            return dest.read_bytes()

    def write(self, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="atheria-lease-") as tmp:
            src = Path(tmp) / "lease.json"
            src.write_bytes(data)
            self.target.put(src, self.key)

    def remove(self) -> None:
        self.target.delete(self.key, truncate=False)
