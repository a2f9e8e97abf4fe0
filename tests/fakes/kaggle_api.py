"""A fake ``kaggle.api.kaggle_api_extended.KaggleApi`` (kaggle 2.x): the real method names and arguments,
with Kaggle's servers replaced by a folder that stores every dataset version.

Behaviour kept from the real client and service: the folder needs ``dataset-metadata.json`` (``id`` =
owner/slug); ``dir_mode="skip"`` drops subfolders and ``"zip"`` uploads each as ``<dir>.zip``;
``dataset_status`` raises ``requests.HTTPError`` carrying a 404 response for an unknown dataset (as
kagglesdk's ``raise_for_status`` does); downloads are one zip of the latest version, extracted with
``unzip=True``; authenticate reads credentials from the environment and raises ``SystemExit`` without them
(as ``exit(1)`` does). ``fail_next(method, exc)`` makes the next call of a method raise (a transient error).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import requests


def not_found() -> requests.HTTPError:
    """What kagglesdk raises for an unknown dataset: ``raise_for_status()`` on a 404 response."""
    response = requests.Response()
    response.status_code = 404
    response.reason = "Not Found"
    return requests.HTTPError("404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/...",
                              response=response)


class FakeKaggleApi:
    def __init__(self, server_dir: str | os.PathLike) -> None:
        self.server = Path(server_dir)
        self.server.mkdir(parents=True, exist_ok=True)
        self.calls: list[tuple[str, dict]] = []
        self._failures: dict[str, list[BaseException]] = {}

    def fail_next(self, method: str, exc: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``exc`` (after being recorded in ``calls``)."""
        self._failures.setdefault(method, []).extend([exc] * times)

    def _maybe_fail(self, method: str) -> None:
        queue = self._failures.get(method)
        if queue:
            raise queue.pop(0)

    def authenticate(self) -> None:
        if not (os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))):
            raise SystemExit(1)

    def _versions(self, ref: str) -> list[Path]:
        d = self.server / ref
        return sorted((p for p in d.glob("v*") if p.is_dir()), key=lambda p: int(p.name[1:])) if d.is_dir() else []

    def dataset_status(self, dataset: str, format=None) -> str:  # noqa: A002
        self.calls.append(("dataset_status", {"dataset": dataset}))
        self._maybe_fail("dataset_status")
        if not self._versions(dataset):
            raise not_found()
        return "ready"

    def _upload(self, folder: str, dir_mode: str) -> tuple[str, Path]:
        meta = json.loads((Path(folder) / "dataset-metadata.json").read_text())
        ref = meta["id"]
        versions = self._versions(ref)
        dest = self.server / ref / f"v{len(versions) + 1}"
        staging = dest.with_name(dest.name + ".incoming")
        staging.mkdir(parents=True)
        for p in Path(folder).iterdir():
            if p.name == "dataset-metadata.json":
                continue
            if p.is_dir():
                if dir_mode == "zip":
                    shutil.make_archive(str(staging / p.name), "zip", p)
                continue  # "skip": the CLI default silently drops subfolders
            shutil.copy2(p, staging / p.name)
        staging.rename(dest)
        return ref, dest

    def dataset_create_new(self, folder: str, public: bool = False, quiet: bool = False, convert_to_csv: bool = True,
                           dir_mode: str = "skip", ignore_patterns: list[str] | None = None):
        self.calls.append(("dataset_create_new", {"folder": folder, "public": public, "dir_mode": dir_mode}))
        self._maybe_fail("dataset_create_new")
        ref = json.loads((Path(folder) / "dataset-metadata.json").read_text())["id"]
        if self._versions(ref):
            return SimpleNamespace(status="error", error="The requested title is already in use", ref=ref)
        self._upload(folder, dir_mode)
        return SimpleNamespace(status="ok", error=None, ref=ref, url=f"https://www.kaggle.com/datasets/{ref}")

    def dataset_create_version(self, folder: str, version_notes: str, quiet: bool = False,
                               convert_to_csv: bool = True, delete_old_versions: bool = False,
                               dir_mode: str = "skip", ignore_patterns: list[str] | None = None):
        self.calls.append(("dataset_create_version", {"folder": folder, "version_notes": version_notes,
                                                      "dir_mode": dir_mode}))
        self._maybe_fail("dataset_create_version")
        ref = json.loads((Path(folder) / "dataset-metadata.json").read_text())["id"]
        if not self._versions(ref):
            return SimpleNamespace(status="error", error="Dataset not found", ref=ref)
        self._upload(folder, dir_mode)
        return SimpleNamespace(status="ok", error=None, ref=ref, url=f"https://www.kaggle.com/datasets/{ref}")

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=[]):  # noqa: B006
        self.calls.append(("dataset_download_files", {"dataset": dataset, "path": path, "unzip": unzip}))
        self._maybe_fail("dataset_download_files")
        versions = self._versions(dataset)
        if not versions:
            raise not_found()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        archive = out / (dataset.split("/")[1] + ".zip")
        with zipfile.ZipFile(archive, "w") as z:
            for p in sorted(versions[-1].rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(versions[-1]).as_posix())
        if unzip:
            with zipfile.ZipFile(archive) as z:
                z.extractall(out)
            archive.unlink()
