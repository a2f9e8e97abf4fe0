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

from atheria_kit._io import json_bytes

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "atheria-checkpoints"
#: Checkpoint files the sync layer manages remotely (and may delete when retention drops them).
CHECKPOINT_RE = re.compile(r"^ckpt-\d+\.pt$")


def parse_manifest(data: bytes, origin: str) -> dict[str, Any]:
    """Parse and check a manifest; raise ``ValueError`` naming ``origin`` and the bad field."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest {origin} is not valid JSON ({exc}); expected an atheria checkpoint manifest") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"manifest {origin}: format={got!r} is invalid; expected {MANIFEST_FORMAT!r}")
    entries = doc.get("checkpoints")
    if not isinstance(entries, list):
        raise ValueError(f"manifest {origin}: checkpoints={type(entries).__name__} is invalid; expected a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"manifest {origin}: checkpoints[{i}] is {type(entry).__name__}; expected an object")
        name = entry.get("file")
        if not isinstance(name, str) or not CHECKPOINT_RE.match(name):
            raise ValueError(f"manifest {origin}: checkpoints[{i}].file={name!r} is invalid; expected 'ckpt-<step>.pt'")
        for key in ("step", "size"):
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"manifest {origin}: checkpoints[{i}].{key}={value!r} is invalid; expected an integer >= 0"
                )
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError(f"manifest {origin}: checkpoints[{i}].sha256={sha!r} is invalid; expected 64 hex digits")
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
    """Entries ordered newest first: by step, then by save time."""
    return sorted(entries, key=lambda e: (e["step"], float(e.get("time") or 0.0)), reverse=True)


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    """Serialize a manifest the way ``CheckpointManager`` writes it."""
    return json_bytes(doc)
