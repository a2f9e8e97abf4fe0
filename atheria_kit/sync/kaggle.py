"""A Kaggle dataset as a versioned sync target, through the ``kaggle`` package's ``KaggleApi`` (2.x).

Kaggle keeps only ``/kaggle/working`` of a saved version, and a run killed at the limit can leave
nothing; a private dataset survives. Each commit uploads the staging folder as a new dataset version
(``dataset_create_new`` the first time, ``dataset_create_version`` after), with ``dir_mode="zip"`` so
subfolders survive (the CLI's default ``skip`` silently drops them). A version is atomic on Kaggle's
side, and the manifest inside it is the commit marker as everywhere else.

Unreachable is not empty: only a definite "not found" answer (HTTP 404) to the status call means the
dataset does not exist yet; any other failure (a timeout, a 5xx, an auth error) raises
:class:`SourceUnavailableError` and is never remembered, so the next attempt asks again and a later sync
creates a *version* of the existing dataset instead of failing with "already exists".

The remote lease is not taken on a Kaggle dataset (``supports_lease = False``): a lease file would only
become visible with the next version, minutes later, so it cannot lock anything. Two sessions writing one
dataset each add versions; older versions stay on Kaggle (unless ``delete_old_versions=True``), and the
lineage check of the sync worker still refuses to list one run's checkpoints over another's.

Credentials: ``KAGGLE_API_TOKEN``, ``KAGGLE_USERNAME``/``KAGGLE_KEY``, ``~/.kaggle/kaggle.json``
(or ``$KAGGLE_CONFIG_DIR``), or Kaggle's secrets client. They are never logged or written anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from atheria_kit._io import CHUNK_BYTES, atomic_open, atomic_write_json
from atheria_kit.sync.targets import (
    LocalFileChangedError,
    SourceUnavailableError,
    SyncError,
    SyncTarget,
    _check_key,
)

__all__ = ["KaggleAuthError", "KaggleDatasetTarget", "kaggle_api", "kaggle_credentials_source"]

logger = logging.getLogger(__name__)

METADATA_FILE = "dataset-metadata.json"
_SECRET_LABELS = (("KAGGLE_API_TOKEN",), ("KAGGLE_USERNAME", "KAGGLE_KEY"))


class KaggleAuthError(SyncError):
    """The kaggle package is missing, broken, or has no credentials; the message says how to fix it."""


def kaggle_credentials_source(
    environ: Mapping[str, str] | None = None, *, home: str | os.PathLike | None = None
) -> str | None:
    """Which credential source the kaggle package would use (a name, never a value), or None."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    config_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else Path(home or Path.home()) / ".kaggle"
    for name in ("kaggle.json", "access_token"):
        if (config_dir / name).is_file():
            return f"{config_dir / name}"
    return None


def _from_kaggle_secrets(environ: MutableMapping[str, str]) -> str | None:
    """Copy credentials from Kaggle's secrets client into the environment the kaggle package reads."""
    try:
        from kaggle_secrets import UserSecretsClient  # only inside Kaggle notebooks (or the test fake)
    except ImportError:
        return None
    client = UserSecretsClient()
    for labels in _SECRET_LABELS:
        values = {}
        for label in labels:
            try:
                values[label] = client.get_secret(label)
            except Exception:
                break
        else:
            environ.update(values)
            return "Kaggle secrets (" + "/".join(labels) + ")"
    return None


_HELP = (
    "Kaggle credentials are missing: set KAGGLE_API_TOKEN (Kaggle > Settings > API > Create New Token), or "
    "KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/ (chmod 600); in a Kaggle notebook add them "
    "under Add-ons > Secrets with those labels."
)


def kaggle_api(
    *,
    environ: MutableMapping[str, str] | None = None,
    api_factory: Callable[[], Any] | None = None,
) -> Any:
    """An authenticated ``KaggleApi``, imported lazily so that a failing import cannot end the process.

    ``import kaggle`` authenticates at import time and, in some versions, calls ``exit(1)`` without
    credentials: ``SystemExit`` is caught here and turned into :class:`KaggleAuthError`.
    """
    env = os.environ if environ is None else environ
    source = kaggle_credentials_source(env) or _from_kaggle_secrets(env)
    if api_factory is None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints its auth help at import
                from kaggle.api.kaggle_api_extended import KaggleApi
        except (Exception, SystemExit) as exc:
            detail = "missing" if isinstance(exc, ImportError) else f"failed to import ({type(exc).__name__})"
            raise KaggleAuthError(
                f"the kaggle package is {detail}: `pip install -q kaggle six` (some versions miss six). "
                + ("" if source else _HELP)
            ) from None
        api_factory = KaggleApi
    if source is None:
        raise KaggleAuthError(_HELP)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api = api_factory()
            api.authenticate()
    except (Exception, SystemExit) as exc:
        raise KaggleAuthError(
            f"Kaggle authentication with {source} failed ({type(exc).__name__}); check that the token is current. "
            + _HELP
        ) from None
    logger.info("Kaggle API authenticated with credentials from %s", source)
    return api


def _is_not_found(exc: BaseException) -> bool:
    """A definite "no such dataset" answer: HTTP 404 from Kaggle (kagglesdk raises ``requests.HTTPError``)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(exc, "status", None)  # older swagger clients: ApiException.status
    if isinstance(status, int):
        return status == 404
    # raise_for_status()'s message starts with the code when no response object came with the error
    return type(exc).__name__ == "HTTPError" and str(exc).startswith("404 ")


class KaggleDatasetTarget(SyncTarget):
    """Versions of the private dataset ``owner/slug``, built from a local staging folder.

    ``put``/``delete`` change the staging folder; ``commit`` uploads it as one new version. On first use
    the staging folder is filled from the dataset's latest version (when it exists). ``api`` defaults to
    :func:`kaggle_api`; tests pass a fake with the same methods.
    """

    supports_lease = False

    def __init__(
        self,
        dataset: str,
        *,
        staging_dir: str | os.PathLike | None = None,
        api: Any | None = None,
        title: str | None = None,
        public: bool = False,
        delete_old_versions: bool = False,
    ) -> None:
        parts = dataset.split("/") if isinstance(dataset, str) else []
        if len(parts) != 2 or not all(parts) or not 6 <= len(parts[1]) <= 50:
            raise ValueError(
                f"dataset={dataset!r} is invalid; expected 'owner/slug' with a slug of 6 to 50 characters"
            )
        self.dataset = dataset
        self.name = f"Kaggle dataset {dataset}"
        self.title = title or parts[1].replace("-", " ")[:50].ljust(6, "_")
        self.public = public
        self.delete_old_versions = delete_old_versions
        self._api = api
        base = Path(staging_dir) if staging_dir is not None else Path(tempfile.mkdtemp(prefix="atheria-kaggle-"))
        self.files_dir = base / "files"
        self._exists: bool | None = None
        self._dirty = False
        self._closed = False

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = kaggle_api()
        return self._api

    def _unavailable(self, what: str, exc: BaseException) -> SourceUnavailableError:
        return SourceUnavailableError(
            f"{self.name} cannot be read ({what}: {type(exc).__name__}: {exc}); Kaggle may be down or the network "
            "unreachable", source=self.name,
        )

    def _dataset_exists(self) -> bool:
        """Whether the dataset exists; only a definite 404 answer is remembered as "no"."""
        if self._exists is None:
            api = self.api  # KaggleAuthError (no credentials) is raised as it is
            try:
                api.dataset_status(self.dataset)
            except Exception as exc:
                if not _is_not_found(exc):
                    raise self._unavailable("dataset status", exc) from exc
                self._exists = False
            else:
                self._exists = True
        return self._exists

    def _staging(self) -> Path:
        if not self.files_dir.is_dir():
            tmp = self.files_dir.with_name(".download")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if self._dataset_exists():
                try:
                    self.api.dataset_download_files(self.dataset, path=str(tmp), force=True, quiet=True,
                                                    unzip=True)
                except Exception as exc:  # it exists (status said so): failing to fetch it is not "empty"
                    raise self._unavailable("download of the latest version", exc) from exc
                # dir_mode="zip" uploads subfolder <d> as <d>.zip; unpack those that came back packed.
                for z in list(tmp.rglob("*.zip")):
                    target = z.with_suffix("")
                    if not target.exists():
                        with zipfile.ZipFile(z) as zf:
                            zf.extractall(target)
                        z.unlink()
            os.replace(tmp, self.files_dir)
        return self.files_dir

    def list(self) -> list[str]:
        root = self._staging()
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def exists(self, key: str) -> bool:
        return (self._staging() / _check_key(key)).is_file()

    def get(self, key: str, dest: str | os.PathLike) -> int:
        src = self._staging() / _check_key(key)
        with open(src, "rb") as fin, atomic_open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        return src.stat().st_size

    def put(self, src: str | os.PathLike, key: str, *, sha256: str | None = None) -> int:
        if self._closed:
            raise SyncError(f"{self.name} is closed")
        dest = self._staging() / _check_key(key)
        h = hashlib.sha256()
        with open(src, "rb") as fin, atomic_open(dest, "wb") as fout:
            for block in iter(lambda: fin.read(CHUNK_BYTES), b""):
                h.update(block)
                fout.write(block)
        if sha256 is not None and h.hexdigest() != sha256:
            dest.unlink()
            raise LocalFileChangedError(f"local file {os.fspath(src)} does not match its manifest hash; not staged")
        self._dirty = True
        return dest.stat().st_size

    def delete(self, key: str, *, truncate: bool | None = None) -> None:
        """Drop ``key`` from the next version (earlier versions keep it; ``truncate`` has no meaning here)."""
        if self._closed:
            raise SyncError(f"{self.name} is closed")
        p = self._staging() / _check_key(key)
        if p.is_file():
            p.unlink()
            self._dirty = True

    def move(self, src_key: str, dst_key: str) -> None:
        """Rename inside the next version (the bytes are uploaded again with it; earlier versions are kept)."""
        if self._closed:
            raise SyncError(f"{self.name} is closed")
        staging = self._staging()
        src, dst = staging / _check_key(src_key), staging / _check_key(dst_key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        self._dirty = True

    def commit(self, message: str) -> None:
        """Upload the staging folder as a new dataset version (the first commit creates the dataset)."""
        if not self._dirty:
            return
        staging = self._staging()
        upload = staging.with_name("upload")
        shutil.rmtree(upload, ignore_errors=True)
        shutil.copytree(staging, upload)
        atomic_write_json(
            upload / METADATA_FILE,
            {"title": self.title, "id": self.dataset, "licenses": [{"name": "CC0-1.0"}]},
        )
        try:
            if self._dataset_exists():
                resp = self.api.dataset_create_version(
                    str(upload), message, quiet=True, convert_to_csv=False,
                    delete_old_versions=self.delete_old_versions, dir_mode="zip",
                )
            else:
                resp = self.api.dataset_create_new(
                    str(upload), public=self.public, quiet=True, convert_to_csv=False, dir_mode="zip"
                )
        finally:
            shutil.rmtree(upload, ignore_errors=True)
        error = getattr(resp, "error", None)
        if error:
            raise SyncError(f"Kaggle refused the new version of {self.dataset}: {error}")
        self._exists = True
        self._dirty = False
        logger.info("Kaggle dataset %s: new version committed (%s)", self.dataset, message)

    def close(self) -> None:
        self._closed = True
