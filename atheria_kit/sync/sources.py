"""Read-only places to resume or initialise from: a shared Google Drive link, a Kaggle input folder.

Both materialise a local folder holding ``manifest.json`` and the checkpoints it lists, and then read it
like a directory; resume verifies every byte against the manifest, so nothing here is trusted. A folder
that is missing or cannot be read, and a download that fails, raise :class:`SourceUnavailableError`
(unreachable, not empty); a folder that was read and holds no manifest is empty.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

from atheria_kit._manifest import MANIFEST_NAME, parse_manifest
from atheria_kit.sync.targets import DirectoryTarget, SourceUnavailableError, SyncError, SyncSource

__all__ = ["GoogleDriveLinkSource", "KaggleInputSource", "find_checkpoint_root"]

logger = logging.getLogger(__name__)

_ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")


def _max_step(manifest: Path) -> int:
    try:
        doc = parse_manifest(manifest.read_bytes(), str(manifest))
    except (OSError, ValueError):
        return -2
    return max((e["step"] for e in doc["checkpoints"]), default=-1)


def _raise(exc: OSError) -> None:
    raise exc


def find_checkpoint_root(folder: str | os.PathLike, *, max_depth: int = 4) -> Path | None:
    """The folder below ``folder`` whose ``manifest.json`` lists the newest checkpoint (None if none).

    A folder that cannot be listed raises its ``OSError`` (``os.walk`` would skip it silently).
    """
    base = Path(folder)
    best: tuple[int, Path] | None = None
    for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
        depth = len(Path(dirpath).relative_to(base).parts)
        if depth >= max_depth:
            dirnames[:] = []
        if MANIFEST_NAME in filenames:
            step = _max_step(Path(dirpath) / MANIFEST_NAME)
            if step > -2 and (best is None or step > best[0]):
                best = (step, Path(dirpath))
    return None if best is None else best[1]


def _extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():  # refuse paths that escape the folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise SyncError(f"archive {archive.name} has an unsafe member {member!r}; refusing it")
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    else:
        raise SyncError(f"{archive.name} is not a zip or tar archive")


class _FolderSource(SyncSource):
    """A read-only view of a local folder that is located lazily."""

    def _root(self) -> Path:
        raise NotImplementedError

    def _view(self) -> DirectoryTarget:
        view = getattr(self, "_view_cache", None)
        if view is None:
            try:
                root = self._root()
            except SourceUnavailableError:
                raise
            except (SyncError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
                raise SourceUnavailableError(f"{self.name} cannot be read: {exc}", source=self.name) from exc
            view = DirectoryTarget(root, name=self.name)
            view.close()  # read-only: no writes through this view
            self._view_cache = view
        return view

    def list(self) -> list[str]:
        return self._view().list()

    def get(self, key: str, dest: str | os.PathLike) -> int:
        return self._view().get(key, dest)

    def exists(self, key: str) -> bool:
        return self._view().exists(key)


class KaggleInputSource(_FolderSource):
    """An earlier Kaggle version's output attached as input: ``/kaggle/input/<name>`` (or any folder).

    The manifest may sit in a subfolder (the output of ``/kaggle/working/<dir>``); archives found there
    (``.zip``/``.tar``, e.g. a packed dataset version) are extracted to ``cache_dir`` and searched too.
    """

    def __init__(self, path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.name = f"Kaggle input {self.path}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._found: Path | None = None

    def _root(self) -> Path:
        if self._found is not None:
            return self._found
        if not self.path.is_dir():
            raise SourceUnavailableError(
                f"{self.name} cannot be read: {self.path} does not exist. Add the earlier version's output as "
                "input (Notebook > Input > Add Input > Your Work) and check its name under /kaggle/input",
                source=self.name,
            )
        root = find_checkpoint_root(self.path)
        if root is None:
            archives = [p for p in self.path.rglob("*") if p.is_file() and p.name.endswith(_ARCHIVES)]
            if archives:
                cache = self.cache_dir or Path(tempfile.mkdtemp(prefix="atheria-kaggle-input-"))
                for a in archives:
                    _extract(a, cache / a.name.split(".")[0])
                root = find_checkpoint_root(cache)
        if root is None:
            # An empty folder is a first run, not an error: report "no manifest" through exists().
            root = self.path
        self._found = root
        return root


class GoogleDriveLinkSource(_FolderSource):
    """A Google Drive folder or archive shared with "Anyone with the link", downloaded with gdown 6.x.

    A folder link (``https://drive.google.com/drive/folders/<id>``) is fetched with
    ``gdown.download_folder``; any other link must point to a ``.zip``/``.tar`` of the checkpoint folder
    and is fetched with ``gdown.download``. ``gdown`` can be injected (tests point it at a local server).
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | os.PathLike | None = None,
        gdown: ModuleType | Any | None = None,
        retries: int = 2,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"url={url!r} is invalid; expected a Google Drive share link")
        self.url = url.strip()
        self.name = f"Google Drive link {self.url}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._gdown = gdown
        self.retries = retries
        self._found: Path | None = None

    @property
    def is_folder(self) -> bool:
        return "/folders/" in self.url

    def _lib(self) -> Any:
        if self._gdown is None:
            import gdown

            self._gdown = gdown
        return self._gdown

    def _explain(self, exc: Exception) -> SourceUnavailableError:
        text = str(exc)
        low = text.lower()
        if "too many users" in low or "many accesses" in low or "quota" in low:
            why = (
                "Google Drive refuses the download: the file had too many downloads recently, or it is not shared "
                "publicly. Share it as 'Anyone with the link', or wait a day, or (on Colab) mount your Drive and "
                "use DirectoryTarget on the folder instead of the link."
            )
        elif "incomplete" in low or "partial" in low or "byte range" in low:
            why = "the download was cut off (partial download); run again: gdown resumes it, and it is verified."
        elif "permission" in low or "public link" in low or "sign in" in low:
            why = "the link is not shared publicly: in Drive, Share > General access > 'Anyone with the link'."
        else:
            why = "check the link and your connection."
        first = text.splitlines()[0] if text else type(exc).__name__
        return SourceUnavailableError(f"could not download {self.url}: {why} (gdown said: {first})", source=self.name)

    def _root(self) -> Path:
        if self._found is not None:
            return self._found
        gd = self._lib()
        cache = self.cache_dir or Path(tempfile.mkdtemp(prefix="atheria-gdrive-"))
        cache.mkdir(parents=True, exist_ok=True)
        try:
            if self.is_folder:
                out = cache / "folder"
                gd.download_folder(url=self.url, output=str(out), quiet=True, resume=True, retries=self.retries)
                root = find_checkpoint_root(out)
            else:
                dl = cache / "download"
                dl.mkdir(exist_ok=True)
                path = Path(gd.download(url=self.url, output=str(dl) + os.sep, quiet=True, resume=True,
                                        retries=self.retries))
                head = path.read_bytes()[:512].lstrip().lower()
                if head.startswith((b"<!doctype html", b"<html")):
                    raise SourceUnavailableError(
                        f"could not download {self.url}: Google Drive returned a web page instead of the file; the "
                        "link is not shared publicly (Share > 'Anyone with the link') or needs a sign-in.",
                        source=self.name,
                    )
                extracted = cache / "extracted"
                shutil.rmtree(extracted, ignore_errors=True)
                _extract(path, extracted)
                root = find_checkpoint_root(extracted)
        except SyncError:
            raise
        except Exception as exc:  # gdown's DownloadError / FileURLRetrievalError / requests errors
            raise self._explain(exc) from exc
        if root is None:
            # Read, and empty: resume reports "no checkpoint found" here, with this hint in the log.
            logger.warning("%s holds no %s: share the whole checkpoint folder (or an archive of it), not a single "
                           "checkpoint file", self.url, MANIFEST_NAME)
            root = cache
        self._found = root
        return root
