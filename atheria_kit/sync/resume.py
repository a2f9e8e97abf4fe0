"""Resume across sessions: find the newest valid checkpoint, locally or remotely, and bring it home.

On a fresh VM the local directory is empty; the newest checkpoint lives on Drive, in a Kaggle input
folder or behind a shared link. ``resume_from_best_source`` compares them all, verifies the candidate
(size and sha256 against the manifest that lists it), downloads it when only a remote has it, and
writes the local manifest, so that ``CheckpointManager(local_dir).load()`` (the safe loader,
``weights_only=True``) continues from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atheria_kit._io import TMP_PREFIX, atomic_write_json, remove_stale_temp_files, sha256_file
from atheria_kit._manifest import MANIFEST_NAME, newest_first, parse_manifest, read_manifest
from atheria_kit._validation import require_choice
from atheria_kit.sync.targets import SyncSource

__all__ = ["ResumeResult", "resume_from_best_source"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeResult:
    """Which checkpoint the next ``CheckpointManager.load()`` will find, and where it came from."""

    step: int
    file: str
    path: Path
    source: str  # "local" or the source's name
    downloaded: bool
    problems: tuple[str, ...] = field(default=())


def _verify(path: Path, entry: dict[str, Any]) -> str | None:
    """None when ``path`` matches the entry's size and sha256, else what is wrong."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"size {size} != {entry['size']} in the manifest"
    if sha256_file(path) != entry["sha256"]:
        return "sha256 differs from the manifest"
    return None


def _write_local_manifest(local_dir: Path, header: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    doc = {k: v for k, v in header.items() if k != "checkpoints"}
    doc["checkpoints"] = sorted(entries, key=lambda e: (e["step"], float(e.get("time") or 0.0)))
    atomic_write_json(local_dir / MANIFEST_NAME, doc)


def _download(source: SyncSource, entry: dict[str, Any], local_dir: Path) -> str | None:
    """Fetch one checkpoint to a temp name, verify it, rename it into place. None on success."""
    name = entry["file"]
    tmp = local_dir / f"{TMP_PREFIX}resume-{name}"
    try:
        source.get(name, tmp)
        problem = _verify(tmp, entry)
        if problem is not None:
            return problem
        os.replace(tmp, local_dir / name)
        return None
    except Exception as exc:  # a source that fails is reported, and the next candidate is tried
        return f"download failed: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def resume_from_best_source(
    local_dir: str | os.PathLike,
    sources: Sequence[SyncSource] = (),
    *,
    fetch: str = "latest",
) -> ResumeResult | None:
    """Make the newest valid checkpoint (local or remote) available in ``local_dir``; None on a first run.

    Candidates are ordered by step (then save time); a local copy wins a tie (no download). A candidate
    whose bytes do not match its manifest is skipped with a warning naming it, and the next newest is
    tried. ``fetch="all"`` also downloads the chosen source's other listed checkpoints (e.g. the best-N by
    metric), so the local retention keeps its ranking; ``"latest"`` fetches only the one to resume from.
    """
    require_choice("fetch", fetch, ("latest", "all"))
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(local)
    problems: list[str] = []

    local_doc: dict[str, Any] | None = None
    mpath = local / MANIFEST_NAME
    if mpath.is_file():
        try:
            local_doc = parse_manifest(mpath.read_bytes(), str(mpath))
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
            logger.warning("resume: local manifest unreadable (%s); only remote checkpoints are considered", exc)

    # (step, time, local-first rank, entry, source or None, that source's manifest)
    candidates: list[tuple[int, float, int, dict[str, Any], SyncSource | None, dict[str, Any]]] = []
    if local_doc is not None:
        for e in local_doc["checkpoints"]:
            candidates.append((e["step"], float(e.get("time") or 0.0), 1, e, None, local_doc))
    for src in sources:
        try:
            doc = read_manifest(src)
        except Exception as exc:
            msg = f"source {src.name} unavailable: {type(exc).__name__}: {exc}"
            problems.append(msg)
            logger.warning("resume: %s", msg)
            continue
        if doc is None:
            logger.info("resume: no checkpoints at %s", src.name)
            continue
        for e in doc["checkpoints"]:
            candidates.append((e["step"], float(e.get("time") or 0.0), 0, e, src, doc))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]), reverse=True)

    for step, _t, _rank, entry, src, doc in candidates:
        name = entry["file"]
        if src is None:
            problem = _verify(local / name, entry)
            if problem is None:
                logger.info("resume: newest valid checkpoint is local %s (step %d)", name, step)
                return ResumeResult(step, name, local / name, "local", False, tuple(problems))
            msg = f"local {name} is not valid ({problem}); trying an older one"
        else:
            existing = local / name
            if existing.is_file() and _verify(existing, entry) is None:
                problem = None  # the same bytes are already here (listed differently or not at all)
            else:
                problem = _download(src, entry, local)
            if problem is None:
                kept = [e for e in (local_doc or {}).get("checkpoints", []) if e["file"] != name]
                fetched = [entry]
                if fetch == "all":
                    for other in newest_first(doc["checkpoints"]):
                        if other["file"] == name or any(k["file"] == other["file"] for k in kept):
                            continue
                        if _download(src, other, local) is None:
                            fetched.append(other)
                _write_local_manifest(local, local_doc or doc, kept + fetched)
                logger.info("resume: downloaded %s (step %d) from %s and verified it", name, step, src.name)
                return ResumeResult(step, name, local / name, src.name, True, tuple(problems))
            msg = f"{src.name}/{name} is not valid ({problem}); trying an older one"
        problems.append(msg)
        logger.warning("resume: %s", msg)

    if problems:
        logger.warning("resume: no valid checkpoint found (%s); starting from scratch", "; ".join(problems))
    else:
        logger.info("resume: no checkpoint anywhere; starting from scratch")
    return None
