"""Persistence across sessions end to end: real torch training, Kaggle datasets, shared Drive links, secrets."""

from __future__ import annotations

import functools
import hashlib
import http.server
import inspect
import json
import logging
import os
import shutil
import tarfile
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest
import requests
import torch

from atheria_kit.checkpoint import CheckpointManager
from atheria_kit.lease import Lease, LeaseHeldError
from atheria_kit.platform import detect_environment
from atheria_kit.session_config import SessionConfig, SessionPaths
from atheria_kit.session_sync import SessionSync
from atheria_kit.state import collect_state, restore_state
from atheria_kit.sync import (
    DirectoryTarget,
    FsspecTarget,
    GoogleDriveLinkSource,
    KaggleAuthError,
    KaggleDatasetTarget,
    KaggleInputSource,
    RemoteUnavailableError,
    SourceUnavailableError,
    SyncSchedule,
    SyncWorker,
    TargetLeaseStore,
    kaggle_api,
    resume_from_best_source,
)
from tests.fakes.clock import ManualClock
from tests.fakes.faulty_fs import FaultyFileSystem
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
    if resume_from_best_source(local_dir, [drive]).found:
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


def test_missing_kaggle_input_is_explained(tmp_path):
    with pytest.raises(RemoteUnavailableError, match="Add Input"):
        resume_from_best_source(tmp_path / "w", [KaggleInputSource(tmp_path / "absent")], retry_seconds=0)


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


def test_a_link_to_an_archive_without_a_manifest_is_read_and_empty(tmp_path, http_root, caplog):
    root, base = http_root
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "ckpt-0000000003.pt").write_bytes(b"a single checkpoint, no manifest")
    with tarfile.open(root / "loose.tar", "w") as t:
        t.add(tmp_path / "loose", arcname="loose")
    src = GoogleDriveLinkSource(f"{base}/loose.tar", cache_dir=tmp_path / "c")
    assert src.read_manifest() is None  # reachable, and nothing a resume could verify
    assert "share the whole checkpoint folder" in caplog.text


def test_link_that_is_not_shared_publicly_is_explained(tmp_path, http_root):
    root, base = http_root
    (root / "signin").write_text("<!DOCTYPE html><html><body>Sign in - Google Accounts</body></html>")
    src = GoogleDriveLinkSource(f"{base}/signin", cache_dir=tmp_path / "c")
    with pytest.raises(SourceUnavailableError, match="Anyone with the link"):
        src.list()


def test_partial_download_is_explained(tmp_path, http_root):
    _, base = http_root
    src = GoogleDriveLinkSource(f"{base}/cut.tar", cache_dir=tmp_path / "c", retries=0)
    with pytest.raises(SourceUnavailableError, match="partial download"):
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
    with pytest.raises(SourceUnavailableError, match="too many downloads recently"):
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



def test_a_kaggle_status_error_is_never_remembered_as_a_missing_dataset(tmp_path):
    server = tmp_path / "kaggle-server"
    first = tmp_path / "first"
    make_checkpoints(first, [1])
    w = SyncWorker(first, KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "s1", api=FakeKaggleApi(server)),
                   wait=no_wait)
    assert w.sync_now(30) and w.close(30)
    assert sorted(p.name for p in (server / "me" / "atheria-ckpts").iterdir()) == ["v1"]

    api = FakeKaggleApi(server)
    api.fail_next("dataset_status", requests.ConnectionError("Read timed out"))  # one transient error, then answers
    api.fail_next("dataset_status", requests.HTTPError("503 Server Error", response=_response(503)))
    local = tmp_path / "second"
    make_checkpoints(local, [1, 2])
    target = KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "s2", api=api)
    with pytest.raises(SourceUnavailableError, match="ConnectionError"):
        target.list()  # unreachable, not "no dataset"
    delays: list[float] = []
    with SyncWorker(local, target, wait=delays.append) as w:
        assert w.sync_now(30)
    assert len(delays) == 1  # the 503 failed one mirror; the next one went through
    created = [c for c, _ in api.calls if c.startswith("dataset_create")]
    assert created == ["dataset_create_version"]  # a new version, never "create" (which says it already exists)
    assert sorted(p.name for p in (server / "me" / "atheria-ckpts").iterdir()) == ["v1", "v2"]
    listed = json.loads((server / "me" / "atheria-ckpts" / "v2" / "manifest.json").read_text())["checkpoints"]
    assert [e["step"] for e in listed] == [1, 2]


def test_a_definite_404_means_a_new_kaggle_dataset(tmp_path):
    api = FakeKaggleApi(tmp_path / "server")
    local = tmp_path / "local"
    make_checkpoints(local, [3])
    with SyncWorker(local, KaggleDatasetTarget("me/fresh-dataset", staging_dir=tmp_path / "s", api=api),
                    wait=no_wait) as w:
        assert w.sync_now(30)
    assert [c for c, _ in api.calls if c.startswith("dataset_create")] == ["dataset_create_new"]


def _response(status: int) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    return r


def test_kaggle_archive_keeps_the_previous_run_in_the_next_version(tmp_path):
    server = tmp_path / "server"
    old = tmp_path / "old"
    blobs = make_checkpoints(old, [5])
    target = KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "s1", api=FakeKaggleApi(server))
    w = SyncWorker(old, target, wait=no_wait, wall_clock=lambda: 1_700_000_000.0)
    assert w.sync_now(30)
    key = w.archive_remote("start over")
    assert w.close(30, final_sync=False)
    assert key == "archive/unknown-20231114T221320Z"  # a manifest from before lineages: "unknown"
    fresh = KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "s2", api=FakeKaggleApi(server))
    assert fresh.read_manifest() is None and fresh.exists(f"{key}/manifest.json")
    fresh.get(f"{key}/ckpt-0000000005.pt", tmp_path / "back.pt")
    assert (tmp_path / "back.pt").read_bytes() == blobs["ckpt-0000000005.pt"]


# ------------------------------------------------------------------------- the session's remote copy


@pytest.fixture
def local_env(tmp_path):
    return detect_environment({}, shell=None, kind="local", cwd=tmp_path, nvml=None, torch_module=None)


def session_sync(tmp_path: Path, env, remote=None, *, name: str = "vm1", **kwargs) -> tuple[SessionSync, SessionPaths]:
    """A SessionSync as the session opens it: its own local folders, the shared remote."""
    root = tmp_path / name
    cfg = SessionConfig(experiment_name="exp", root=str(root), drive_sync_every=1,
                        remote=None if remote is not None else str(tmp_path / "remote"))
    paths = SessionPaths.under(root, "exp")
    sync = SessionSync.open(cfg, env, remote, paths, **kwargs)
    assert sync is not None
    return sync, paths


def test_a_second_vm_on_the_same_remote_folder_refuses_until_the_first_finishes(tmp_path, local_env):
    first, _ = session_sync(tmp_path, local_env, name="vm1")
    assert (tmp_path / "remote" / "checkpoints" / "exp" / "lease.json").is_file()
    with pytest.raises(LeaseHeldError) as info:
        session_sync(tmp_path, local_env, name="vm2")
    assert f"pid {os.getpid()}" in str(info.value) and "experiment 'exp'" in str(info.value)
    first.finish(timeout=30)
    assert not (tmp_path / "remote" / "checkpoints" / "exp" / "lease.json").exists()
    second, _ = session_sync(tmp_path, local_env, name="vm2")  # the lease is free again
    second.finish(timeout=30)


def test_a_session_whose_remote_lease_was_taken_over_stops_writing_there(tmp_path, local_env):
    t0 = 1_700_000_000.0
    first, paths1 = session_sync(tmp_path, local_env, name="vm1", wall_clock=lambda: t0, lease_timeout=60)
    make_checkpoints(paths1.checkpoints, [1])
    assert first.sync_now(30).complete
    # The first VM looks dead (no heartbeat for longer than the timeout): a new VM takes the remote over.
    second, paths2 = session_sync(tmp_path, local_env, name="vm2", wall_clock=lambda: t0 + 120, lease_timeout=60)
    remote = tmp_path / "remote" / "checkpoints" / "exp"
    before = {p.name: p.read_bytes() for p in remote.iterdir()}
    make_checkpoints(paths1.checkpoints, [1, 2])
    state = first.sync_now(30)
    assert not state.complete and "lost the lease" in state.error
    assert {p.name: p.read_bytes() for p in remote.iterdir()} == before
    first.finish(timeout=5)
    assert (remote / "lease.json").is_file()  # the first session did not remove the new holder's lease
    second.finish(timeout=30)


def test_an_unreachable_remote_at_open_gets_its_lease_before_the_first_write(tmp_path, local_env):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)
    target = FsspecTarget(f"/lease-{uuid.uuid4().hex}", fs=faulty, name="bucket")
    sync, paths = session_sync(tmp_path, local_env, remote=target)
    assert sync.lease is not None and not sync.lease.held
    faulty.disconnected = lambda: False
    make_checkpoints(paths.checkpoints, [1])
    assert sync.sync_now(30).complete
    assert sync.lease.held and target.exists("lease.json")
    sync.finish(timeout=30)
    assert not target.exists("lease.json")


def test_a_stuck_remote_at_open_does_not_hang_the_start(tmp_path, local_env, monkeypatch):
    import atheria_kit.session_sync as session_sync_module

    monkeypatch.setattr(session_sync_module, "LEASE_OPEN_TIMEOUT_S", 0.3)
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    stuck = threading.Event()
    faulty.before_op = lambda op, path: stuck.wait(60)
    target = FsspecTarget(f"/stuck-{uuid.uuid4().hex}", fs=faulty, name="stuck bucket")
    t0 = time.monotonic()
    sync, _ = session_sync(tmp_path, local_env, remote=target)
    assert time.monotonic() - t0 < 0.3 + 1.0 and not sync.lease.held
    stuck.set()  # the mount answers again: the late acquire completes in the background
    sync.finish(timeout=10)


def test_a_kaggle_dataset_takes_no_lease(tmp_path, local_env):
    target = KaggleDatasetTarget("me/atheria-ckpts", staging_dir=tmp_path / "s", api=FakeKaggleApi(tmp_path / "srv"))
    sync, _ = session_sync(tmp_path, local_env, remote=target)
    assert sync.lease is None
    with pytest.raises(ValueError, match="cannot hold a lease"):
        TargetLeaseStore(target)
    sync.finish(timeout=30)


def test_the_lease_store_reads_unreachable_as_unreachable(tmp_path):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)
    lease = Lease(TargetLeaseStore(FsspecTarget("/x", fs=faulty)), owner_label="t")
    with pytest.raises(SourceUnavailableError):
        lease.acquire()  # never "nobody holds it"


def test_finish_with_every_upload_failing_returns_within_its_bound(tmp_path, local_env):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    target = FsspecTarget(f"/dead-{uuid.uuid4().hex}", fs=faulty, name="dead bucket")
    clock, parked = ManualClock(), threading.Event()

    def wait(seconds: float) -> None:  # backoff passes on the manual clock; past the bound, time stands still
        if clock.t >= 120:
            parked.wait(30)
            return
        clock.t += seconds

    sync, paths = session_sync(tmp_path, local_env, remote=target, lease=False, clock=clock, wait=wait)
    faulty.fail_next("open_write", TimeoutError("upload timed out"), times=100_000)
    make_checkpoints(paths.checkpoints, [10, 20])
    state = sync.finish(timeout=120)
    parked.set()
    assert clock.t == 5 + 10 + 20 + 40 + 80  # the default backoff; the wait that crossed 120 s was the last
    assert (state.complete, state.checkpoints_behind, state.newest_remote_file) == (False, 2, None)
    assert state.describe() == ("remote copy is 2 checkpoints behind: it holds no checkpoint of this run (local "
                                "ckpt-0000000020.pt); last error: TimeoutError: upload timed out")


def test_finish_against_a_hanging_remote_returns_in_real_time(tmp_path, local_env):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    target = FsspecTarget(f"/hang-{uuid.uuid4().hex}", fs=faulty, name="hanging bucket")
    sync, paths = session_sync(tmp_path, local_env, remote=target)
    make_checkpoints(paths.checkpoints, [1])
    assert sync.sync_now(30).complete
    make_checkpoints(paths.checkpoints, [1, 2])
    release, entered = threading.Event(), threading.Event()

    def hang(path: str) -> None:  # every upload from now on blocks until the test ends
        entered.set()
        release.wait(60)

    faulty.before_write = hang
    t0 = time.monotonic()
    state = sync.finish(timeout=1.5)
    elapsed = time.monotonic() - t0
    release.set()
    assert entered.is_set() and elapsed < 1.5 + 1.0
    assert state.checkpoints_behind == 1 and state.newest_remote_file == "ckpt-0000000001.pt"
    assert state.describe().startswith("remote copy is 1 checkpoint behind: newest remote ckpt-0000000001.pt "
                                       "(local ckpt-0000000002.pt)")


def test_the_final_sync_estimate_comes_from_the_measured_upload_speed(tmp_path, local_env):
    clock = ManualClock()

    def takes(seconds: float) -> None:  # each file opened for writing "takes" 2 s on the manual clock
        clock.t += seconds

    faulty = FaultyFileSystem(fsspec.filesystem("memory"), latency=2.0, sleep=takes)
    target = FsspecTarget(f"/slow-{uuid.uuid4().hex}", fs=faulty, name="slow bucket")
    sync, paths = session_sync(tmp_path, local_env, remote=target, lease=False, clock=clock)
    make_checkpoints(paths.checkpoints, [1, 2])  # 1000 bytes each
    # Nothing measured yet: the 2000 bytes the remote lacks + 1000 for the final save, at the assumed 5 MB/s.
    assert sync.estimated_final_sync_seconds() == pytest.approx(3000 / 5e6)
    assert sync.sync_now(30).complete
    manifest = len(target.fs.cat_file(target._path("manifest.json")))
    speed = (2000 + manifest) / (3 * 2.0)  # three uploads (two checkpoints and the manifest), 2 s each
    assert sync.estimated_final_sync_seconds() == pytest.approx(1000 / speed)  # only the final save is left
    assert sync.final_sync_timeout() == pytest.approx(3 * 1000 / speed + 30)
    state = sync.finish()
    assert state.complete and state.describe() == "remote copy is up to date: ckpt-0000000002.pt"


def test_the_final_sync_estimate_includes_the_logs_and_exports_it_copies(tmp_path, local_env):
    sync, paths = session_sync(tmp_path, local_env, lease=False)  # cfg.remote: a folder with logs/ and exports/
    make_checkpoints(paths.checkpoints, [1, 2])
    paths.logs.mkdir(parents=True)
    (paths.logs / "metrics.jsonl").write_bytes(b"x" * 500)
    paths.exports.mkdir(parents=True)
    (paths.exports / "model.onnx").write_bytes(b"y" * 300)
    assert sync.estimated_final_sync_seconds() == pytest.approx((2000 + 1000 + 500 + 300) / 5e6)
    state = sync.finish(extra_dirs=(paths.logs, paths.exports), timeout=60)
    assert state.complete
    assert (tmp_path / "remote" / "logs" / "exp" / "metrics.jsonl").read_bytes() == b"x" * 500
    assert (tmp_path / "remote" / "exports" / "exp" / "model.onnx").read_bytes() == b"y" * 300


def test_session_archive_retries_an_unreachable_remote_then_gives_up(tmp_path, local_env):
    faulty = FaultyFileSystem(fsspec.filesystem("memory"), disconnected=lambda: True)
    target = FsspecTarget(f"/a-{uuid.uuid4().hex}", fs=faulty, name="bucket")
    clock = ManualClock()
    delays: list[float] = []

    def wait(seconds: float) -> None:
        delays.append(seconds)
        clock.t += seconds

    cfg_retry = 7.0
    sync, _ = session_sync(tmp_path, local_env, remote=target, lease=False, clock=clock, wait=wait)
    sync.retry_seconds = cfg_retry
    with pytest.raises(SourceUnavailableError):
        sync.archive_remote("start over")
    assert delays == [1.0, 2.0, 4.0] and clock.t == 7.0
    sync.abandon()


# ------------------------------------------------------------- with the real checkpoint manager's lineage


def _save_run(local: Path, steps: range) -> str:
    """Checkpoints written by the real CheckpointManager; returns the lineage it gave the run."""
    mgr = CheckpointManager(local, keep_best=2, async_save=False)
    for step in steps:
        mgr.save({"w": torch.full((256,), float(step))}, step=step, episode=step, metrics={"loss": 1.0 / (1 + step)})
    mgr.close()
    return mgr.lineage


def test_a_run_started_from_scratch_beside_a_remote_it_could_not_read_never_prunes_it(tmp_path, other_fs_dir):
    drive = DirectoryTarget(other_fs_dir / "drive")
    old_lineage = _save_run(tmp_path / "old-vm", range(1, 6))
    w = SyncWorker(tmp_path / "old-vm", drive, wait=no_wait)
    assert w.sync_now(30) and w.close(30, close_target=False)
    history = {p.name: p.read_bytes() for p in (other_fs_dir / "drive").iterdir()}
    # remote_unavailable='ignore' on a new VM: it trains from zero as a new run, with its own lineage.
    new_lineage = _save_run(tmp_path / "new-vm", range(1, 4))
    assert new_lineage != old_lineage
    w = SyncWorker(tmp_path / "new-vm", drive, wait=no_wait)
    assert not w.sync_now(30)
    assert f"holds another run (lineage {old_lineage}, newest step 5)" in w.status()["blocked"]
    assert w.close(30) is False
    assert {p.name: p.read_bytes() for p in (other_fs_dir / "drive").iterdir()} == history


def test_a_downloaded_checkpoint_is_verifiable_without_the_manifest(tmp_path, other_fs_dir):
    drive = DirectoryTarget(other_fs_dir / "drive")
    lineage = _save_run(tmp_path / "old-vm", range(1, 4))
    w = SyncWorker(tmp_path / "old-vm", drive, wait=no_wait)
    assert w.sync_now(30) and w.close(30)
    fresh = tmp_path / "new-vm"
    res = resume_from_best_source(fresh, [drive])
    assert res.step == 3 and res.verified and res.lineage == lineage
    assert (fresh / "ckpt-0000000003.pt.integrity.json").is_file()
    (fresh / "manifest.json").unlink()  # lost: the sidecar written at download still proves the file
    again = resume_from_best_source(fresh, [])
    assert (again.source, again.step, again.verified, again.downloaded) == ("local", 3, True, False)
    mgr = CheckpointManager(fresh)
    assert mgr.lineage == lineage and mgr.latest().step == 3
    assert torch.equal(mgr.load().state["w"], torch.full((256,), 3.0))
    mgr.close()
