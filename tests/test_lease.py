"""The run-folder lease: one live session per folder; a dead holder's lease is taken over."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from atheria_kit.lease import FileLeaseStore, Lease, LeaseHeldError, LeaseInfo, LeaseLostError
from tests._paths import REPO_ROOT

HOLDER = """
import sys
from atheria_kit.lease import FileLeaseStore, Lease
lease = Lease(FileLeaseStore(sys.argv[1]), owner_label="other notebook")
lease.acquire()
print("HELD", flush=True)
sys.stdin.readline()
lease.release()
print("RELEASED", flush=True)
"""


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "HELD"
    return proc


def test_a_second_session_on_the_folder_of_a_live_one_refuses_and_names_the_holder(tmp_path: Path):
    path = tmp_path / "lease.json"
    proc = _holder(path)
    try:
        with pytest.raises(LeaseHeldError) as err:
            Lease(FileLeaseStore(path), owner_label="me").acquire()
        message = str(err.value)
        assert f"pid {proc.pid}" in message and "other notebook" in message and "take_over_lease=True" in message
        assert err.value.holder.pid == proc.pid
        # The refused session left the holder's lease as it was.
        assert LeaseInfo.from_bytes(path.read_bytes()).pid == proc.pid
    finally:
        proc.communicate("\n", timeout=30)
    assert not path.exists()  # released by its holder
    Lease(FileLeaseStore(path)).acquire()  # free again


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path: Path):
    path = tmp_path / "lease.json"
    proc = _holder(path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lease = Lease(FileLeaseStore(path))
    previous = lease.acquire()
    assert previous is not None and previous.pid == proc.pid
    assert LeaseInfo.from_bytes(path.read_bytes()).owner == lease.info.owner


def test_a_lease_from_another_host_is_stale_only_after_its_heartbeat_timeout(tmp_path: Path):
    clock = Clock()
    store = FileLeaseStore(tmp_path / "lease.json")
    other = Lease(store, host="colab-vm-1", clock=clock, timeout=180, heartbeat_every=30)
    other.acquire()
    clock.t += 170
    me = Lease(store, host="laptop", clock=clock, timeout=180, heartbeat_every=30)
    with pytest.raises(LeaseHeldError, match=r"colab-vm-1.*last heartbeat 170 s ago"):
        me.acquire()
    clock.t += 11  # 181 s without a heartbeat: that VM is gone
    assert me.acquire().host == "colab-vm-1"
    with pytest.raises(LeaseLostError, match="laptop"):
        other.heartbeat()


def test_heartbeats_keep_a_live_lease_fresh(tmp_path: Path):
    clock = Clock()
    store = FileLeaseStore(tmp_path / "lease.json")
    holder = Lease(store, host="a", clock=clock, timeout=100, heartbeat_every=10)
    holder.acquire()
    for _ in range(20):  # 200 s of heartbeats every 10 s
        clock.t += 10
        holder.heartbeat()
    with pytest.raises(LeaseHeldError):
        Lease(store, host="b", clock=clock, timeout=100, heartbeat_every=10).acquire()


def test_take_over_is_an_explicit_choice(tmp_path: Path):
    clock = Clock()
    store = FileLeaseStore(tmp_path / "lease.json")
    Lease(store, host="a", clock=clock).acquire()
    me = Lease(store, host="b", clock=clock)
    assert me.acquire(take_over=True).host == "a"
    assert json.loads(store.read())["host"] == "b"


def test_release_leaves_a_lease_that_someone_else_took(tmp_path: Path):
    clock = Clock()
    store = FileLeaseStore(tmp_path / "lease.json")
    first = Lease(store, host="a", clock=clock, timeout=60, heartbeat_every=10)
    first.acquire()
    clock.t += 61
    second = Lease(store, host="b", clock=clock, timeout=60, heartbeat_every=10)
    second.acquire()
    first.release()  # first still thinks it holds it; it must not remove second's lease
    assert LeaseInfo.from_bytes(store.read()).host == "b"


def test_a_torn_or_foreign_lease_file_counts_as_free(tmp_path: Path):
    path = tmp_path / "lease.json"
    path.write_text('{"format": "atheria-lease", "own')
    Lease(FileLeaseStore(path)).acquire()
    assert LeaseInfo.from_bytes(path.read_bytes()) is not None


def test_settings_are_checked():
    with pytest.raises(ValueError, match="heartbeat_every=60"):
        Lease(FileLeaseStore("x"), timeout=30, heartbeat_every=60)
    with pytest.raises(ValueError, match="timeout=0"):
        Lease(FileLeaseStore("x"), timeout=0)


class FlakyStore(FileLeaseStore):
    """A lease file whose store goes away (a dropped mount) when ``down`` is set."""

    down = False

    def remove(self) -> None:
        if self.down:
            raise OSError(107, "Transport endpoint is not connected")
        super().remove()

    def read(self):
        if self.down:
            raise OSError(107, "Transport endpoint is not connected")
        return super().read()


def test_a_lease_left_behind_by_an_ended_session_in_this_process_does_not_lock_out_the_next_one(tmp_path: Path):
    store = FlakyStore(tmp_path / "lease.json")
    first = Lease(store)
    first.acquire()
    live = Lease(store)
    with pytest.raises(LeaseHeldError):  # while the first is alive and holds it, a second one in this process waits
        live.acquire()
    store.down = True  # the first session ends while the remote is unreachable: its lease file stays
    first.release()
    store.down = False
    assert LeaseInfo.from_bytes(store.read()).owner == first.info.owner
    again = Lease(store)
    assert again.why_stale(LeaseInfo.from_bytes(store.read())) == \
        "an earlier session in this process ended without releasing it"
    assert again.acquire().owner == first.info.owner
