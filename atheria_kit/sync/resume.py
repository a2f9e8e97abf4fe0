"""Resume across sessions: find the newest valid checkpoint, locally or remotely, and bring it home.

On a fresh VM the local directory is empty; the newest checkpoint lives on Drive, in a Kaggle input
folder or behind a shared link. ``resume_from_best_source`` compares them all, verifies the candidate
(size and hash against the manifest that lists it), downloads it when only a remote has it, and
writes the local manifest, so that ``CheckpointManager(local_dir).load()`` (the safe loader,
``weights_only=True``) continues from it.

Unreachable is not empty: a source that cannot be read is retried with exponential backoff for up to
``retry_seconds``; if it stays unreachable, :class:`RemoteUnavailableError` stops the start-up instead of
silently training from episode 0 (and later pruning the remote history), unless ``unavailable="ignore"``
says to go on with what could be read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from atheria_kit._io import TMP_PREFIX, atomic_write_json, remove_stale_temp_files
from atheria_kit._manifest import MANIFEST_NAME, newest_first, parse_checkpoint_name, parse_manifest
from atheria_kit._validation import require_choice, require_positive
from atheria_kit.sync._verify import entry_lineage, sidecar_entry, verify_file, write_sidecar
from atheria_kit.sync.targets import SourceUnavailableError, SyncError, SyncSource
from atheria_kit.sync.worker import call_within

__all__ = ["RemoteUnavailableError", "ResumeResult", "resume_from_best_source"]

logger = logging.getLogger(__name__)

#: Default time an unreachable source is retried at start-up before giving up.
RETRY_SECONDS = 60.0
#: A manifest read that has not answered after this long counts as unreachable (a stuck mount never answers).
READ_TIMEOUT = 60.0
#: First backoff delay and its growth; the delay never exceeds ``MAX_DELAY``.
INITIAL_DELAY, MULTIPLIER, MAX_DELAY = 1.0, 2.0, 30.0
T = TypeVar("T")


class RemoteUnavailableError(SyncError):
    """A configured remote stayed unreachable at start-up; starting without it would start from zero.

    ``sources``: the names of the places that could not be read; ``last_error``: the last failure, as text.
    """

    def __init__(self, sources: Sequence[str], last_error: str, retry_seconds: float) -> None:
        self.sources = tuple(sources)
        self.last_error = last_error
        names = ", ".join(self.sources)
        super().__init__(
            f"{names} could not be read (retried for {retry_seconds:.0f} s; last error: {last_error}). It may hold "
            f"this run's checkpoints, so the session does not start from scratch without it: run again when it is "
            f"reachable, or start without it by setting remote_unavailable='ignore'."
        )


@dataclass(frozen=True)
class ResumeResult:
    """Which checkpoint the next ``CheckpointManager.load()`` will find, where it came from, and where we looked.

    ``found`` is False on a first run (``step``/``file``/``path``/``source`` are then None). ``unavailable``
    lists the sources that could not be read (only with ``unavailable="ignore"``); ``problems`` says why
    each passed-over candidate or source was skipped.
    """

    step: int | None
    file: str | None
    path: Path | None
    source: str | None  # "local", a source's name, or None when nothing was found
    downloaded: bool
    verified: bool
    lineage: str | None
    episode: int | None
    looked_in: tuple[str, ...]
    problems: tuple[str, ...] = field(default=())
    unavailable: tuple[str, ...] = field(default=())

    @property
    def found(self) -> bool:
        return self.file is not None

    def describe(self) -> str:
        """One line for the notebook: what was resumed from where, or where nothing was found."""
        if self.found:
            where = "local copy" if self.source == "local" else f"downloaded from {self.source}"
            text = f"resumed from {self.file} ({where}, {'verified' if self.verified else 'not verified'})"
        else:
            text = f"no checkpoint found in {', '.join(self.looked_in) or 'no place'}; starting from the beginning"
        if self.unavailable:
            text += (f"; {', '.join(self.unavailable)} could not be read (remote_unavailable='ignore'), so a newer "
                     "checkpoint there was not considered")
        return text


class _Retry:
    """Call ``fn``; while it raises :class:`SourceUnavailableError`, wait with exponential backoff, for at most
    ``seconds`` from the first failure, then re-raise the last error."""

    def __init__(self, seconds: float, wait: Callable[[float], Any], clock: Callable[[], float]) -> None:
        self.seconds, self.wait, self.clock = seconds, wait, clock

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        deadline: float | None = None
        delay = INITIAL_DELAY
        while True:
            try:
                return fn()
            except SourceUnavailableError as exc:
                now = self.clock()
                deadline = now + self.seconds if deadline is None else deadline
                left = deadline - now
                if left <= 0:
                    raise
                pause = min(delay, left)
                logger.warning("resume: %s failed (%s); retrying in %.0f s", what, exc, pause)
                self.wait(pause)
                delay = min(MAX_DELAY, delay * MULTIPLIER)


def _write_local_manifest(local_dir: Path, header: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    doc = {k: v for k, v in header.items() if k != "checkpoints"}
    doc["checkpoints"] = sorted(entries, key=_order)
    atomic_write_json(local_dir / MANIFEST_NAME, doc)


def _order(entry: dict[str, Any]) -> tuple[int, int, float]:
    """Newer first: step, then revision (a step saved again), then save time."""
    parsed = parse_checkpoint_name(entry["file"])
    return entry["step"], parsed[1] if parsed else 0, float(entry.get("time") or 0.0)


def _download(
    source: SyncSource, entry: dict[str, Any], doc: dict[str, Any], local_dir: Path, retry: _Retry
) -> str | None:
    """Fetch one checkpoint to a temp name, verify it, rename it into place. None on success, else why not.

    :class:`SourceUnavailableError` (still unreachable after the retries) is raised to the caller.
    """
    name = entry["file"]
    tmp = local_dir / f"{TMP_PREFIX}resume-{name}"
    try:
        try:
            retry(f"download of {name} from {source.name}", lambda: source.get(name, tmp))
        except FileNotFoundError:
            return "listed in the manifest but missing"
        problem = verify_file(tmp, entry)
        if problem is not None:
            return problem
        os.replace(tmp, local_dir / name)
        write_sidecar(local_dir / name, entry, entry_lineage(entry, doc))
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def resume_from_best_source(
    local_dir: str | os.PathLike,
    sources: Sequence[SyncSource] = (),
    *,
    fetch: str = "latest",
    unavailable: str = "raise",
    retry_seconds: float = RETRY_SECONDS,
    wait: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    read_timeout: float = READ_TIMEOUT,
) -> ResumeResult:
    """Make the newest valid checkpoint (local or remote) available in ``local_dir``.

    Candidates are ordered by step (then save time); a local copy wins a tie (no download). A candidate
    whose bytes do not match its manifest is skipped with a warning naming it, and the next newest is
    tried. ``fetch="all"`` also downloads the chosen source's other listed checkpoints (e.g. the best-N by
    metric), so the local retention keeps its ranking; ``"latest"`` fetches only the one to resume from.

    A source that cannot be read (:class:`SourceUnavailableError`) is retried with backoff (1 s, 2 s, 4 s ...
    up to 30 s apart) for ``retry_seconds``; then ``unavailable="raise"`` raises
    :class:`RemoteUnavailableError`, and ``"ignore"`` goes on without it and names it in the result.
    A manifest read that has not answered after ``read_timeout`` seconds (a stuck mount) counts as one failed
    attempt. ``wait``/``clock`` are injectable so that tests drive the backoff without sleeping.
    """
    require_choice("fetch", fetch, ("latest", "all"))
    require_choice("unavailable", unavailable, ("raise", "ignore"))
    require_positive("retry_seconds", retry_seconds, allow_zero=True)
    require_positive("read_timeout", read_timeout)
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(local)
    retry = _Retry(retry_seconds, wait, clock)
    problems: list[str] = []
    down: dict[str, str] = {}  # source name -> last error

    def gave_up(src: SyncSource, exc: SourceUnavailableError) -> None:
        cause = exc.__cause__
        down[src.name] = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        problems.append(f"source {src.name} unavailable: {exc}")
        logger.warning("resume: %s stayed unreachable for %.0f s: %s", src.name, retry_seconds, exc)
        if unavailable == "raise":
            raise RemoteUnavailableError(list(down), down[src.name], retry_seconds) from exc

    looked_in = (f"local folder {local}", *(s.name for s in sources))
    local_doc: dict[str, Any] | None = None
    mpath = local / MANIFEST_NAME
    if mpath.is_file():
        try:
            local_doc = parse_manifest(mpath.read_bytes(), str(mpath))
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
            logger.warning("resume: local manifest unreadable (%s); only remote checkpoints are considered", exc)

    # (order, local-first rank, entry, source or None, the manifest that lists it)
    candidates: list[tuple[tuple[int, int, float], int, dict[str, Any], SyncSource | None, dict[str, Any]]] = []
    listed = set()
    if local_doc is not None:
        for e in local_doc["checkpoints"]:
            candidates.append((_order(e), 1, e, None, local_doc))
            listed.add(e["file"])
    # Local files the manifest does not list (it was lost, or a session died before updating it) count when their
    # integrity sidecar vouches for them; the checkpoint manager adopts them the same way.
    for path in sorted(local.glob("ckpt-*.pt")):
        if path.name not in listed and (e := sidecar_entry(path)) is not None:
            candidates.append((_order(e), 1, e, None, {"checkpoints": [], "lineage": e.get("lineage")}))
    for src in sources:
        try:
            doc = retry(f"reading {src.name}",
                        lambda src=src: call_within(src.read_manifest, read_timeout, "reading its manifest", src.name))
        except SourceUnavailableError as exc:
            gave_up(src, exc)
            continue
        except ValueError as exc:  # there, but damaged: reported; its files are not trusted
            problems.append(str(exc))
            logger.warning("resume: %s", exc)
            continue
        if doc is None:
            logger.info("resume: no checkpoints at %s", src.name)
            continue
        for e in doc["checkpoints"]:
            candidates.append((_order(e), 0, e, src, doc))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)

    def result(entry: dict[str, Any], doc: dict[str, Any], source: str, downloaded: bool) -> ResumeResult:
        episode = entry.get("episode")
        return ResumeResult(
            entry["step"], entry["file"], local / entry["file"], source, downloaded, True, entry_lineage(entry, doc),
            episode if isinstance(episode, int) else None, looked_in, tuple(problems), tuple(down),
        )

    for _order_key, _rank, entry, src, doc in candidates:
        name, step = entry["file"], entry["step"]
        if src is None:
            problem = verify_file(local / name, entry)
            if problem is None:
                logger.info("resume: newest valid checkpoint is local %s (step %d)", name, step)
                return result(entry, doc, "local", False)
            msg = f"local {name} is not valid ({problem}); trying an older one"
        elif src.name in down:
            continue  # gave up on this source while downloading an earlier candidate
        else:
            existing = local / name
            if existing.is_file() and verify_file(existing, entry) is None:
                problem = None  # the same bytes are already here (listed differently or not at all)
            else:
                try:
                    problem = _download(src, entry, doc, local, retry)
                except SourceUnavailableError as exc:
                    gave_up(src, exc)
                    continue
            if problem is None:
                _adopt(local, local_doc, doc, entry, src, fetch, retry, problems)
                logger.info("resume: downloaded %s (step %d) from %s and verified it", name, step, src.name)
                return result(entry, doc, src.name, True)
            msg = f"{src.name}/{name} is not valid ({problem}); trying an older one"
        problems.append(msg)
        logger.warning("resume: %s", msg)

    if problems:
        logger.warning("resume: no valid checkpoint found (%s)", "; ".join(problems))
    else:
        logger.info("resume: no checkpoint in %s", ", ".join(looked_in))
    return ResumeResult(None, None, None, None, False, False, None, None, looked_in, tuple(problems), tuple(down))


def _adopt(
    local: Path,
    local_doc: dict[str, Any] | None,
    doc: dict[str, Any],
    entry: dict[str, Any],
    src: SyncSource,
    fetch: str,
    retry: _Retry,
    problems: list[str],
) -> None:
    """List the downloaded ``entry`` (and, with ``fetch="all"``, its siblings) in the local manifest.

    Local entries of the same run are kept; the manifest header (its lineage) is the remote run's, so the
    sync worker recognises the remote as its own.
    """
    name = entry["file"]
    lineage = entry_lineage(entry, doc)
    kept = []
    for e in (local_doc or {}).get("checkpoints", []):
        if e["file"] == name:
            continue
        if lineage is not None and entry_lineage(e, local_doc) not in (None, lineage):
            logger.warning("resume: local %s belongs to another run (lineage %s); no longer listed",
                           e["file"], entry_lineage(e, local_doc))
            continue
        kept.append(e)
    fetched = [entry]
    if fetch == "all":
        for other in newest_first(doc["checkpoints"]):
            if other["file"] == name or any(k["file"] == other["file"] for k in kept):
                continue
            try:
                problem = _download(src, other, doc, local, retry)
            except SourceUnavailableError as exc:
                problem = f"unavailable: {exc}"
            if problem is None:
                fetched.append(other)
            else:
                problems.append(f"{src.name}/{other['file']} not fetched ({problem})")
    same_run = local_doc is not None and (lineage is None or local_doc.get("lineage") in (None, lineage))
    header = local_doc if same_run else doc
    if lineage is not None:
        header = dict(header, lineage=lineage)
    _write_local_manifest(local, header, kept + fetched)
