"""Persistence across sessions end to end: real torch training, Kaggle datasets, shared Drive links, secrets."""

from __future__ import annotations

import functools
import hashlib
import http.server
import inspect
import json
import logging
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from atheria_kit.checkpoint import CheckpointManager
from atheria_kit.state import collect_state, restore_state
from atheria_kit.sync import (
    DirectoryTarget,
    GoogleDriveLinkSource,
    KaggleAuthError,
    KaggleDatasetTarget,
    KaggleInputSource,
    SyncError,
    SyncSchedule,
    SyncWorker,
    kaggle_api,
    resume_from_best_source,
)
from tests.fakes.kaggle_api import FakeKaggleApi
from tests.helpers import make_checkpoints, no_wait

# ------------------------------------------------------------------------ the "new session" scenario

TOTAL_EPISODES = 12


def _train(local_dir: Path, drive_dir: Path, stop_after: int | None) -> tuple[torch.Tensor, int]:
    """A small real training run that checkpoints locally each episode and syncs to "Drive" every 2.

    Returns the final parameters (flattened) and the episode the run started from.
    """
    torch.manual_seed(0)
    data_gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 8, generator=data_gen), torch.randn(256, 1, generator=data_gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    shuffle = torch.Generator().manual_seed(2)
    objects = {"model": model, "opt": opt, "sched": sched, "shuffle": shuffle}

    drive = DirectoryTarget(drive_dir)
    start = 0
    if resume_from_best_source(local_dir, [drive]) is not None:
        loaded = CheckpointManager(local_dir).load()  # the safe loader (weights_only=True)
        start = restore_state(objects, loaded.state)["episode"] + 1
    mgr = CheckpointManager(local_dir, keep_best=2)
    worker = SyncWorker(local_dir, drive, schedule=SyncSchedule(every_episodes=2), wait=no_wait).attach(mgr)
    for episode in range(start, TOTAL_EPISODES):
        perm = torch.randperm(256, generator=shuffle)
        for i in range(0, 256, 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        mgr.save(collect_state(objects, episode=episode), step=episode, episode=episode,
                 metrics={"loss": loss.item()})
        if stop_after is not None and episode == stop_after:
            mgr.wait()
            worker.sync_now(timeout=60)  # the emergency save before the session ends
            break
    mgr.close()
    assert worker.close(timeout=60)  # the end of the run: a final sync, then the target is closed
    return torch.cat([p.detach().flatten() for p in model.parameters()]), start


def test_new_session_resumes_from_drive_with_identical_parameters(tmp_path, other_fs_dir):
    reference, ref_start = _train(tmp_path / "ref-local", other_fs_dir / "ref-drive", stop_after=None)
    assert ref_start == 0

    local, drive = tmp_path / "local", other_fs_dir / "drive"
    _, first_start = _train(local, drive, stop_after=6)
    assert first_start == 0
    shutil.rmtree(local)  # the VM is gone: a reconnect gives a fresh, empty disk
    resumed, resumed_start = _train(local, drive, stop_after=None)
    assert resumed_start == 7  # episode 6 was the last one saved and synced before the session ended
    assert torch.equal(resumed, reference)
    assert json.loads((drive / "manifest.json").read_text())["checkpoints"][-1]["step"] == TOTAL_EPISODES - 1


# --------------------------------------------------------------------------------------- Kaggle


def test_fake_kaggle_api_keeps_the_real_signatures():
    from kaggle.api.kaggle_api_extended import KaggleApi

    for name in ("authenticate", "dataset_status", "dataset_create_new", "dataset_create_version",
                 "dataset_download_files"):
        real = [(p.name, p.default) for p in inspect.signature(getattr(KaggleApi, name)).parameters.values()]
        fake = [(p.name, p.default) for p in inspect.signature(getattr(FakeKaggleApi, name)).parameters.values()]
        assert fake == real, name


def test_kaggle_dataset_versions_survive_a_new_session(tmp_path):
    server = tmp_path / "kaggle-server"
    local = tmp_path / "local"
    blobs = make_checkpoints(local, [4, 8])
    (local / "logs").mkdir()
    (local / "logs" / "metrics.jsonl").write_text('{"loss": 1}\n')
    api = FakeKaggleApi(server)
    target = KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "stage1", api=api)
    with SyncWorker(local, target, wait=no_wait) as w:
        w.submit_file(local / "logs" / "metrics.jsonl", "logs/metrics.jsonl")
        assert w.sync_now(30)
    calls = [c for c, kw in api.calls if c.startswith("dataset_create")]
    assert calls[0] == "dataset_create_new"
    assert all(kw["dir_mode"] == "zip" for c, kw in api.calls if c.startswith("dataset_create"))

    # next session, fresh VM: a new target reads the latest version back
    fresh = KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "stage2", api=FakeKaggleApi(server))
    res = resume_from_best_source(tmp_path / "new-local", [fresh])
    assert res.step == 8 and res.downloaded
    assert (tmp_path / "new-local" / "ckpt-0000000008.pt").read_bytes() == blobs["ckpt-0000000008.pt"]
    assert "logs/metrics.jsonl" in fresh.list()  # the subfolder survived (packed as a zip)


def test_kaggle_input_folder_of_an_earlier_version(tmp_path):
    kaggle_input = tmp_path / "kaggle" / "input" / "my-run-output"
    blobs = make_checkpoints(kaggle_input / "checkpoints", [2, 6])
    res = resume_from_best_source(tmp_path / "working", [KaggleInputSource(kaggle_input)])
    assert res.step == 6
    assert (tmp_path / "working" / "ckpt-0000000006.pt").read_bytes() == blobs["ckpt-0000000006.pt"]


def test_missing_kaggle_input_is_explained(tmp_path, caplog):
    assert resume_from_best_source(tmp_path / "w", [KaggleInputSource(tmp_path / "absent")]) is None
    assert "Add Input" in caplog.text


def test_kaggle_without_credentials_is_a_clear_error_not_an_exit(tmp_path):
    env: dict[str, str] = {"KAGGLE_CONFIG_DIR": str(tmp_path / "no-config")}
    with pytest.raises(KaggleAuthError, match="KAGGLE_API_TOKEN"):
        kaggle_api(environ=env)


def test_credentials_are_never_logged_printed_or_written(tmp_path, fake_kaggle_secrets, monkeypatch, caplog, capsys):
    secret = "planted-secret-7f3a9c1e5b"
    fake_kaggle_secrets["KAGGLE_USERNAME"] = "me"
    fake_kaggle_secrets["KAGGLE_KEY"] = secret
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    server = tmp_path / "server"
    caplog.set_level(logging.DEBUG)
    api = kaggle_api(api_factory=lambda: FakeKaggleApi(server))
    local = tmp_path / "local"
    make_checkpoints(local, [1])
    with SyncWorker(local, KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "s", api=api),
                    wait=no_wait) as w:
        assert w.sync_now(30)
        status = json.dumps(w.status())
    produced = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "ckpt-0000000001.pt" for p in produced if server in p.parents)
    for p in produced:
        assert secret.encode() not in p.read_bytes(), p
    out = capsys.readouterr()
    assert secret not in caplog.text + out.out + out.err + status


# -------------------------------------------------------------------------------- shared Drive links


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/cut.tar":  # announces more bytes than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_shared_drive_archive_link_resumes(tmp_path, http_root):
    root, base = http_root
    blobs = make_checkpoints(tmp_path / "shared" / "run", [3, 11])
    with tarfile.open(root / "run.tar", "w") as t:
        t.add(tmp_path / "shared" / "run", arcname="run")
    res = resume_from_best_source(tmp_path / "local", [GoogleDriveLinkSource(f"{base}/run.tar",
                                                                             cache_dir=tmp_path / "cache")])
    assert res.step == 11
    assert hashlib.sha256((tmp_path / "local" / res.file).read_bytes()).digest() == hashlib.sha256(
        blobs["ckpt-0000000011.pt"]).digest()


def test_link_that_is_not_shared_publicly_is_explained(tmp_path, http_root):
    root, base = http_root
    (root / "signin").write_text("<!DOCTYPE html><html><body>Sign in - Google Accounts</body></html>")
    src = GoogleDriveLinkSource(f"{base}/signin", cache_dir=tmp_path / "c")
    with pytest.raises(SyncError, match="Anyone with the link"):
        src.list()


def test_partial_download_is_explained(tmp_path, http_root):
    _, base = http_root
    src = GoogleDriveLinkSource(f"{base}/cut.tar", cache_dir=tmp_path / "c", retries=0)
    with pytest.raises(SyncError, match="partial download"):
        src.list()


def test_too_many_users_is_explained(tmp_path):
    import gdown

    class Refusing:  # gdown 6.x's function boundary, raising what it raises for an over-used file
        @staticmethod
        def download_folder(url=None, id=None, output=None, quiet=False, proxy=None, speed=None,  # noqa: A002
                            use_cookies=True, verify=True, user_agent=None, skip_download=False, resume=False,
                            cookies_file=None, timeout=None, retries=0):
            raise gdown.exceptions.FileURLRetrievalError(
                "Too many users have viewed or downloaded this file recently. Please try accessing the file again "
                "later.")

    assert list(inspect.signature(Refusing.download_folder).parameters) == list(
        inspect.signature(gdown.download_folder).parameters)
    src = GoogleDriveLinkSource("https://drive.google.com/drive/folders/abc", cache_dir=tmp_path / "c",
                                gdown=Refusing)
    with pytest.raises(SyncError, match="too many downloads recently"):
        src.list()


def test_folder_link_through_gdowns_folder_boundary(tmp_path):
    import gdown

    shared = tmp_path / "drive-folder"
    make_checkpoints(shared, [1, 2])

    class FolderCopy:
        @staticmethod
        def download_folder(url=None, id=None, output=None, quiet=False, proxy=None, speed=None,  # noqa: A002
                            use_cookies=True, verify=True, user_agent=None, skip_download=False, resume=False,
                            cookies_file=None, timeout=None, retries=0):
            shutil.copytree(shared, output)
            return [str(p) for p in Path(output).iterdir()]

    assert list(inspect.signature(FolderCopy.download_folder).parameters) == list(
        inspect.signature(gdown.download_folder).parameters)
    res = resume_from_best_source(tmp_path / "local", [GoogleDriveLinkSource(
        "https://drive.google.com/drive/folders/abc", cache_dir=tmp_path / "c", gdown=FolderCopy)])
    assert res.step == 2

