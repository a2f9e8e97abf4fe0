"""Checking a copied checkpoint against the record that lists it, and which run (lineage) it belongs to.

A copy counts only when its size and hash match the record: BLAKE3 when the record carries one (several
times faster than SHA-256 and as strict: any changed byte changes either), else SHA-256.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atheria_kit._io import file_digest, read_integrity_sidecar, sidecar_path, write_integrity_sidecar
from atheria_kit._manifest import parse_checkpoint_name

__all__ = ["entry_lineage", "sidecar_entry", "verify_file", "write_sidecar"]


def verify_file(path: str | os.PathLike, entry: dict[str, Any]) -> str | None:
    """None when ``path`` matches the record's size and hash, else what is wrong."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    size = p.stat().st_size
    if size != entry["size"]:
        return f"size {size} != {entry['size']} in the manifest"
    algorithm = "blake3" if entry.get("blake3") else "sha256"
    if file_digest(p, algorithm) != entry[algorithm]:
        return f"{algorithm} differs from the manifest"
    return None


def entry_lineage(entry: dict[str, Any], doc: dict[str, Any] | None) -> str | None:
    """The run an entry belongs to: its own ``lineage``, else its manifest's, else None (an old manifest)."""
    value = entry.get("lineage")
    if value is None and doc is not None:
        value = doc.get("lineage")
    return value if isinstance(value, str) and value else None


def write_sidecar(path: Path, entry: dict[str, Any], lineage: str | None) -> None:
    """Give a downloaded, verified checkpoint its local integrity sidecar (the record's fields included), so
    that it stays verifiable if the local manifest is lost."""
    step, revision = parse_checkpoint_name(path.name) or (entry["step"], 0)
    metrics = entry.get("metrics")
    episode = entry.get("episode")
    versions = entry.get("versions")
    write_integrity_sidecar(
        path, entry["size"], entry["sha256"], entry.get("blake3"), step, revision, lineage,
        episode=episode if isinstance(episode, int) and not isinstance(episode, bool) and episode >= 0 else None,
        metrics=metrics if isinstance(metrics, dict) else None,
        time=entry.get("time") if isinstance(entry.get("time"), (int, float)) else None,
        versions=versions if isinstance(versions, dict) else None,
    )


def sidecar_entry(path: Path) -> dict[str, Any] | None:
    """A manifest-like record of checkpoint ``path`` from its integrity sidecar, or None when it has no usable one."""
    side_path = sidecar_path(path)
    if not side_path.is_file():
        return None
    try:
        side = read_integrity_sidecar(side_path)
    except (OSError, ValueError):
        return None
    if side["file"] != path.name or parse_checkpoint_name(path.name) != (side["step"], side["revision"]):
        return None
    return {k: side[k] for k in ("file", "step", "size", "sha256", "blake3", "lineage", "episode", "time")
            if side.get(k) is not None}
