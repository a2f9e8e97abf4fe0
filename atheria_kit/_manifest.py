"""Checkpoint manifests (format in docs/architecture.md): names, parsing and serialization shared by
``CheckpointManager`` and the sync layer. Torch-free and fsspec-free, so importing it costs nothing.

The manifest is written by ``CheckpointManager``; sync only reads it, filters it and copies it. A remote
manifest is the commit marker of a remote checkpoint set: only the files it lists (with matching size
and sha256) count as checkpoints.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from atheria_kit._io import SIDECAR_SUFFIX, check_digest, json_bytes

__all__ = [
    "CHECKPOINT_RE",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SIDECAR_SUFFIX",
    "checkpoint_name",
    "manifest_bytes",
    "newest_first",
    "parse_checkpoint_name",
    "parse_manifest",
    "read_manifest",
    "sidecar_owner",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "atheria-checkpoints"
#: Checkpoint file names: ``ckpt-<step, 10+ digits>.pt``, or ``ckpt-<step>-r<n>.pt`` for revision n >= 1 of a step
#: saved again (a committed file is never rewritten under its own name). The sync layer manages these remotely.
CHECKPOINT_RE = re.compile(r"^ckpt-\d{10,}(?:-r\d+)?\.pt$")
_NAME_RE = re.compile(r"^ckpt-(\d{10,})(?:-r(\d+))?\.pt$")


def parse_checkpoint_name(name: str) -> tuple[int, int] | None:
    """``(step, revision)`` of a checkpoint file name (revision 0 for a plain ``ckpt-<step>.pt``), else None."""
    m = _NAME_RE.match(name) if isinstance(name, str) else None
    if m is None:
        return None
    revision = int(m.group(2)) if m.group(2) is not None else 0
    if m.group(2) is not None and revision == 0:
        return None  # "-r0" is spelled without the suffix; two names for one file would break immutability
    return int(m.group(1)), revision


def checkpoint_name(step: int, revision: int = 0) -> str:
    """The file name of revision ``revision`` of step ``step`` (inverse of :func:`parse_checkpoint_name`)."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step={step!r} is invalid; expected an integer >= 0")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise ValueError(f"revision={revision!r} is invalid; expected an integer >= 0")
    return f"ckpt-{step:010d}.pt" if revision == 0 else f"ckpt-{step:010d}-r{revision}.pt"


def sidecar_owner(name: str) -> str | None:
    """The checkpoint file name whose integrity sidecar ``name`` is, or None if it is not one."""
    if not isinstance(name, str) or not name.endswith(SIDECAR_SUFFIX):
        return None
    owner = name[: -len(SIDECAR_SUFFIX)]
    return owner if parse_checkpoint_name(owner) is not None else None


def parse_manifest(data: bytes, origin: str) -> dict[str, Any]:
    """Parse and check a manifest; raise ``ValueError`` naming ``origin`` and the bad field."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest {origin} is not valid JSON ({exc}); expected an atheria checkpoint manifest") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"manifest {origin}: format={got!r} is invalid; expected {MANIFEST_FORMAT!r}")
    lineage = doc.get("lineage")
    if lineage is not None and (not isinstance(lineage, str) or not lineage):
        raise ValueError(f"manifest {origin}: lineage={lineage!r} is invalid; expected a non-empty string")
    entries = doc.get("checkpoints")
    if not isinstance(entries, list):
        raise ValueError(f"manifest {origin}: checkpoints={type(entries).__name__} is invalid; expected a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"manifest {origin}: checkpoints[{i}] is {type(entry).__name__}; expected an object")
        name = entry.get("file")
        parsed = parse_checkpoint_name(name)
        if parsed is None:
            raise ValueError(
                f"manifest {origin}: checkpoints[{i}].file={name!r} is invalid; expected 'ckpt-<step>.pt' or "
                "'ckpt-<step>-r<revision>.pt' (step: 10 or more digits)"
            )
        for key in ("step", "size"):
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"manifest {origin}: checkpoints[{i}].{key}={value!r} is invalid; expected an integer >= 0"
                )
        if entry["step"] != parsed[0]:
            raise ValueError(
                f"manifest {origin}: checkpoints[{i}].step={entry['step']!r} does not match its file {name!r}"
            )
        try:
            check_digest("sha256", entry.get("sha256"))
            check_digest("blake3", entry.get("blake3"), optional=True)  # absent in manifests before BLAKE3
        except ValueError as exc:
            raise ValueError(f"manifest {origin}: checkpoints[{i}].{exc}") from None
        own = entry.get("lineage")  # absent in manifests written before lineages existed
        if own is not None and (not isinstance(own, str) or not own):
            raise ValueError(
                f"manifest {origin}: checkpoints[{i}].lineage={own!r} is invalid; expected a non-empty string"
            )
    return doc


def read_manifest(source: Any) -> dict[str, Any] | None:
    """The parsed manifest of a sync source or target (``exists``/``get``/``name``), or None if it has none.

    Raises ``ValueError`` naming the source when the manifest is there but unreadable.
    """
    if not source.exists(MANIFEST_NAME):
        return None
    with tempfile.TemporaryDirectory(prefix="atheria-manifest-") as tmp:
        dest = Path(tmp) / MANIFEST_NAME
        source.get(MANIFEST_NAME, dest)
        return parse_manifest(dest.read_bytes(), f"{source.name}/{MANIFEST_NAME}")


def newest_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries ordered newest first: by step, then revision (a step saved again), then save time."""

    def key(e: dict[str, Any]) -> tuple[int, int, float]:
        parsed = parse_checkpoint_name(e["file"])
        return e["step"], parsed[1] if parsed is not None else 0, float(e.get("time") or 0.0)

    return sorted(entries, key=key, reverse=True)


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    """Serialize a manifest the way ``CheckpointManager`` writes it."""
    return json_bytes(doc)
