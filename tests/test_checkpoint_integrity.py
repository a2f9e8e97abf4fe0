"""Integrity without the manifest, verified loading, lineage and the checkpoint names.

Every checkpoint carries its own proof, ``<name>.integrity.json`` (size, SHA-256, BLAKE3, step, revision,
lineage), written before the checkpoint gets its name. A file the manifest does not list is adopted only
when its bytes match that proof; nothing damaged is ever loaded silently. Expected hashes are computed
here with hashlib and the blake3 package over the bytes on disk, not taken from the kit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import blake3
import pytest
import torch

from atheria_kit import _io
from atheria_kit._manifest import (
    CHECKPOINT_RE,
    checkpoint_name,
    newest_first,
    parse_checkpoint_name,
    parse_manifest,
)
from atheria_kit.checkpoint import (
    MANIFEST_NAME,
    CheckpointLoadError,
    CheckpointManager,
    CheckpointWriteError,
    DiskStorage,
    write_integrity_sidecar,
)
from atheria_kit.retention import LatestN
from tests.helpers import make_checkpoints

LOGGER = "atheria_kit.checkpoint"


def state_for(step: int, n: int = 64) -> dict:
    return {"w": torch.full((n,), float(step)), "step": step}


def ckpt(directory: Path, step: int, revision: int = 0) -> Path:
    return directory / (f"ckpt-{step:010d}.pt" if revision == 0 else f"ckpt-{step:010d}-r{revision}.pt")


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".integrity.json")


def manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


def flip_byte(path: Path, where: str = "middle") -> None:
    data = bytearray(path.read_bytes())
    i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def three_checkpoints(directory: Path, **kwargs) -> CheckpointManager:
    mgr = CheckpointManager(directory, policy=LatestN(5), async_save=False, **kwargs)
    for step, loss in ((1, 0.5), (2, 0.2), (3, 0.4)):
        mgr.save(state_for(step), step=step, episode=step * 10, metrics={"loss": loss})
    return mgr


# ----------------------------------------------------------------------------------------- sidecar


def test_each_checkpoint_has_a_sidecar_with_its_size_hashes_step_revision_and_lineage(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False, lineage="run-7", wall_clock=lambda: 1.7e9)
    mgr.save(state_for(4), step=4, episode=2, metrics={"loss": 0.25})
    mgr.save(state_for(5), step=4, episode=2, metrics={"loss": 0.125})  # the same step again: revision 1
    data = ckpt(tmp_path, 4, 1).read_bytes()
    doc = json.loads(sidecar(ckpt(tmp_path, 4, 1)).read_text())
    assert {k: doc[k] for k in ("file", "size", "sha256", "blake3", "step", "revision", "lineage")} == {
        "file": "ckpt-0000000004-r1.pt",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "blake3": blake3.blake3(data).hexdigest(),
        "step": 4,
        "revision": 1,
        "lineage": "run-7",
    }
    assert (doc["episode"], doc["metrics"], doc["time"]) == (2, {"loss": 0.125}, 1.7e9)
    header = torch.load(ckpt(tmp_path, 4, 1), weights_only=True)
    assert (header["step"], header["revision"], header["lineage"]) == (4, 1, "run-7")
    (entry,) = manifest(tmp_path)["checkpoints"]
    assert (entry["blake3"], entry["lineage"]) == (doc["blake3"], "run-7")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_manifest_deleted_and_a_byte_flipped_in_the_newest_loads_the_previous_one_with_a_warning(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    three_checkpoints(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    flip_byte(ckpt(tmp_path, 3), where)
    damaged = ckpt(tmp_path, 3).read_bytes()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fresh = CheckpointManager(tmp_path, policy=LatestN(5))
        loaded = fresh.load("latest")
    assert loaded.record.step == 2 and torch.equal(loaded.state["w"], state_for(2)["w"])
    assert [r.step for r in fresh.records()] == [1, 2]
    assert [c["step"] for c in manifest(tmp_path)["checkpoints"]] == [1, 2]  # the rebuilt manifest
    assert any(ckpt(tmp_path, 3).name in w and "NOT loaded" in w for w in warnings_of(caplog)), warnings_of(caplog)
    assert ckpt(tmp_path, 3).read_bytes() == damaged  # never deleted: it may still be worth something to you


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_byte_anywhere_in_a_listed_checkpoint_is_caught_by_the_verified_load(
    tmp_path: Path, where: str
) -> None:
    three_checkpoints(tmp_path)
    flip_byte(ckpt(tmp_path, 3), where)  # zip header, a tensor, the zip's central directory
    fresh = CheckpointManager(tmp_path, policy=LatestN(5))
    assert fresh.load("latest").record.step == 2
    with pytest.raises(CheckpointLoadError, match=r"blake3 mismatch \(corrupted\)"):
        fresh.load(fresh.records()[-1])


def test_the_rebuilt_manifest_holds_the_same_records(tmp_path: Path) -> None:
    mgr = three_checkpoints(tmp_path, wall_clock=lambda: 1.7e9)
    before = manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    fresh = CheckpointManager(tmp_path, policy=LatestN(5))
    assert manifest(tmp_path) == before
    assert fresh.lineage == mgr.lineage  # the run goes on under its own lineage, recovered from the sidecars


def test_an_unlisted_file_without_a_sidecar_is_not_adopted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    three_checkpoints(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    sidecar(ckpt(tmp_path, 3)).unlink()  # e.g. a checkpoint from a kit version without sidecars
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fresh = CheckpointManager(tmp_path, policy=LatestN(5))
    assert [r.step for r in fresh.records()] == [1, 2]
    assert any(ckpt(tmp_path, 3).name in w and "no integrity sidecar" in w for w in warnings_of(caplog))
    assert ckpt(tmp_path, 3).exists()
    # you can still load it yourself, explicitly, with a warning that it is unverified
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert fresh.load(ckpt(tmp_path, 3)).record.step == 3
    assert any("cannot be verified" in w for w in warnings_of(caplog))


@pytest.mark.parametrize("damage", ["garbage", "other file's proof", "wrong size"])
def test_a_sidecar_that_does_not_prove_its_file_means_no_adoption(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    three_checkpoints(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    proof = sidecar(ckpt(tmp_path, 3))
    if damage == "garbage":
        proof.write_text('{"format": "atheria-integ')
    elif damage == "other file's proof":
        proof.write_text(sidecar(ckpt(tmp_path, 2)).read_text())
    else:
        doc = json.loads(proof.read_text())
        doc["size"] += 1
        proof.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fresh = CheckpointManager(tmp_path, policy=LatestN(5))
    assert [r.step for r in fresh.records()] == [1, 2]
    assert any(ckpt(tmp_path, 3).name in w for w in warnings_of(caplog))


def test_retention_removes_each_sidecar_with_its_file_and_opening_removes_orphans(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, policy=LatestN(1), async_save=False)
    for step in (1, 2, 3):
        mgr.save(state_for(step), step=step)
    assert sorted(os.listdir(tmp_path)) == [ckpt(tmp_path, 3).name, sidecar(ckpt(tmp_path, 3)).name, MANIFEST_NAME]
    leftovers = [
        sidecar(ckpt(tmp_path, 2)),  # a kill between removing a checkpoint and its sidecar
        tmp_path / ".tmp-ckpt-0000000004.pt.integrity.json.k2j4",  # a kill while the sidecar was written
        tmp_path / ".tmp-ckpt-0000000004.pt.9xk1",  # ... and the checkpoint beside it
    ]
    for p in leftovers:
        p.write_text("{}")
    strangers = [tmp_path / "notes.integrity.json", tmp_path / "ckpt-3.pt.integrity.json"]  # not ours
    for p in strangers:
        p.write_text("mine")
    CheckpointManager(tmp_path, policy=LatestN(1))
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_text() == "mine" for p in strangers)
    assert ckpt(tmp_path, 3).exists() and sidecar(ckpt(tmp_path, 3)).exists()


def test_a_sidecar_written_by_sync_for_a_downloaded_file_makes_it_adoptable(tmp_path: Path) -> None:
    src = CheckpointManager(tmp_path / "src", async_save=False, lineage="remote-run")
    src.save(state_for(6), step=6, episode=3, metrics={"loss": 0.3})
    data = ckpt(tmp_path / "src", 6).read_bytes()
    dst = tmp_path / "dst"
    dst.mkdir()
    ckpt(dst, 6).write_bytes(data)  # downloaded and checked against the remote manifest by the sync layer
    written = write_integrity_sidecar(ckpt(dst, 6), len(data), hashlib.sha256(data).hexdigest(),
                                      blake3.blake3(data).hexdigest(), 6, 0, "remote-run")
    assert written == sidecar(ckpt(dst, 6))
    fresh = CheckpointManager(dst)
    (rec,) = fresh.records()
    # the record's fields come from the checkpoint's own header (the sidecar here has only the proof)
    assert (rec.step, rec.episode, rec.metrics, rec.lineage) == (6, 3, {"loss": 0.3}, "remote-run")
    assert fresh.lineage == "remote-run" and torch.equal(fresh.load().state["w"], state_for(6)["w"])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("size", -1, "size=-1"), ("sha256", "abc", "sha256='abc'"), ("blake3", "Z" * 64, "blake3='ZZZ"),
     ("step", 1.5, "step=1.5"), ("revision", -2, "revision=-2"), ("lineage", "", "lineage=''")],
)
def test_write_integrity_sidecar_names_a_bad_field(tmp_path: Path, field: str, value, match: str) -> None:
    args = {"size": 3, "sha256": "a" * 64, "blake3": "b" * 64, "step": 1, "revision": 0, "lineage": "x"}
    args[field] = value
    with pytest.raises(ValueError, match=match):
        write_integrity_sidecar(tmp_path / "ckpt-0000000001.pt", **args)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ verified load


def test_records_from_before_blake3_are_verified_with_sha256(tmp_path: Path) -> None:
    three_checkpoints(tmp_path)
    doc = manifest(tmp_path)
    for entry in doc["checkpoints"]:
        del entry["blake3"], entry["lineage"]
    del doc["lineage"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(doc))  # what an older kit wrote
    fresh = CheckpointManager(tmp_path, policy=LatestN(5))
    assert [(r.blake3, r.digest[0]) for r in fresh.records()] == [(None, "sha256")] * 3
    assert fresh.load().record.step == 3
    flip_byte(ckpt(tmp_path, 3))
    with pytest.raises(CheckpointLoadError, match=r"sha256 mismatch \(corrupted\)"):
        fresh.load(fresh.records()[-1])
    assert fresh.load().record.step == 2


def _file(tmp_path: Path, data: bytes = b"0123456789" * 1000) -> tuple[Path, str]:
    p = tmp_path / "blob"
    p.write_bytes(data)
    return p, blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("overlap", [True, False])
def test_read_verified_returns_what_consume_read_from_an_intact_file(tmp_path: Path, overlap: bool) -> None:
    p, digest = _file(tmp_path)
    assert _io.read_verified(p, 10_000, "blake3", digest, lambda fh: fh.read(), overlap=overlap) == p.read_bytes()
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    assert _io.read_verified(p, 10_000, "sha256", sha, lambda fh: fh.read(5), overlap=overlap) == b"01234"


def test_read_verified_refuses_a_corrupted_file_even_when_consume_succeeds(tmp_path: Path) -> None:
    p, digest = _file(tmp_path)
    flip_byte(p, "last")
    with pytest.raises(_io.IntegrityError, match="blake3 mismatch"):
        _io.read_verified(p, 10_000, "blake3", digest, lambda fh: fh.read(10))
    with pytest.raises(_io.IntegrityError, match="size 9999 bytes, expected 10000"):
        p.write_bytes(p.read_bytes()[:-1])
        _io.read_verified(p, 10_000, "blake3", digest, lambda fh: fh.read(10))


def test_read_verified_blames_the_damage_not_the_parser(tmp_path: Path) -> None:
    p, digest = _file(tmp_path)
    flip_byte(p)

    def parser(fh):
        raise RuntimeError("cannot parse")

    with pytest.raises(_io.IntegrityError, match="mismatch") as exc:
        _io.read_verified(p, 10_000, "blake3", digest, parser)
    assert isinstance(exc.value.__cause__, RuntimeError)
    (tmp_path / "intact").mkdir()
    p2, digest2 = _file(tmp_path / "intact")
    with pytest.raises(RuntimeError, match="cannot parse"):  # an intact file: the parser's own error
        _io.read_verified(p2, 10_000, "blake3", digest2, parser)


def test_read_verified_refuses_a_file_that_keeps_changing_while_it_is_read(tmp_path: Path) -> None:
    p, digest = _file(tmp_path)
    calls = []

    def consume_while_someone_writes(fh):
        data = fh.read()
        calls.append(1)
        with open(p, "r+b") as other:  # the same bytes written again: only the file's mtime tells
            other.write(data[:1])
        os.utime(p, ns=(10**18 + len(calls), 10**18 + len(calls)))  # a new mtime each time, whatever the clock
        return data

    with pytest.raises(_io.FileChangedError, match="changed while it was being read"):
        _io.read_verified(p, 10_000, "blake3", digest, consume_while_someone_writes)
    assert len(calls) == 2  # tried again once: a network filesystem may refresh a file's mtime once


def test_read_verified_tries_again_when_the_file_changed_once(tmp_path: Path) -> None:
    p, digest = _file(tmp_path)
    calls = []

    def consume(fh):
        calls.append(1)
        if len(calls) == 1:
            os.utime(p, ns=(10**18, 10**18))
        return fh.read(3)

    assert _io.read_verified(p, 10_000, "blake3", digest, consume) == b"012" and len(calls) == 2


def test_without_overlap_consume_never_sees_an_unverified_file(tmp_path: Path) -> None:
    p, digest = _file(tmp_path)
    flip_byte(p)
    seen = []
    with pytest.raises(_io.IntegrityError):
        _io.read_verified(p, 10_000, "blake3", digest, seen.append, overlap=False)
    assert seen == []


# ------------------------------------------------------------------------------------------ lineage


def test_a_new_run_gets_a_lineage_that_its_directory_keeps(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, async_save=False)
    assert len(mgr.lineage) == 32 and int(mgr.lineage, 16) >= 0  # uuid4 hex
    mgr.save(state_for(1), step=1)
    assert manifest(tmp_path)["lineage"] == mgr.lineage == mgr.records()[0].lineage
    again = CheckpointManager(tmp_path)
    assert again.lineage == mgr.lineage
    assert CheckpointManager(tmp_path / "other").lineage != mgr.lineage


def test_an_explicit_lineage_names_the_new_saves_and_old_records_keep_theirs(tmp_path: Path) -> None:
    first = CheckpointManager(tmp_path, policy=LatestN(5), async_save=False, lineage="first")
    first.save(state_for(1), step=1)
    second = CheckpointManager(tmp_path, policy=LatestN(5), async_save=False, lineage="second")
    second.save(state_for(2), step=2)
    m = manifest(tmp_path)
    assert m["lineage"] == "second"
    assert [(c["step"], c["lineage"]) for c in m["checkpoints"]] == [(1, "first"), (2, "second")]


def test_a_manifest_from_before_lineages_is_read_and_gets_one_at_the_next_save(tmp_path: Path) -> None:
    make_checkpoints(tmp_path, [3, 7])  # hand-written, old format: no lineage, no blake3, no sidecars
    mgr = CheckpointManager(tmp_path, async_save=False)
    assert [(r.step, r.lineage, r.blake3) for r in mgr.records()] == [(3, None, None), (7, None, None)]
    mgr.save(state_for(9), step=9)
    m = manifest(tmp_path)
    assert m["lineage"] == mgr.lineage
    assert ["lineage" in c for c in m["checkpoints"]] == [False, False, True]


@pytest.mark.parametrize("bad", ["", "has space", "../up", 7, "x" * 129])
def test_a_bad_lineage_is_an_error_naming_the_field(tmp_path: Path, bad) -> None:
    with pytest.raises(ValueError, match="lineage="):
        CheckpointManager(tmp_path, lineage=bad)


# ------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "parsed"),
    [("ckpt-0000000005.pt", (5, 0)), ("ckpt-0000000005-r2.pt", (5, 2)), ("ckpt-12345678901-r10.pt", (12345678901, 10)),
     ("ckpt-5.pt", None), ("ckpt-0000000005-r0.pt", None), ("ckpt-0000000005.pt.integrity.json", None),
     ("ckpt-0000000005-r.pt", None), (".tmp-ckpt-0000000005.pt.x1", None), ("manifest.json", None)],
)
def test_checkpoint_names(name: str, parsed) -> None:
    assert parse_checkpoint_name(name) == parsed
    assert bool(CHECKPOINT_RE.match(name)) == (parsed is not None or name == "ckpt-0000000005-r0.pt")
    if parsed is not None:
        assert checkpoint_name(*parsed) == name


def test_newest_first_orders_by_step_then_revision() -> None:
    entries = [{"file": "ckpt-0000000005-r1.pt", "step": 5, "time": 1.0}, {"file": "ckpt-0000000006.pt", "step": 6},
               {"file": "ckpt-0000000005-r2.pt", "step": 5, "time": 0.5}, {"file": "ckpt-0000000005.pt", "step": 5}]
    assert [e["file"] for e in newest_first(entries)] == [
        "ckpt-0000000006.pt", "ckpt-0000000005-r2.pt", "ckpt-0000000005-r1.pt", "ckpt-0000000005.pt"]


def _doc(**entry) -> bytes:
    base = {"file": "ckpt-0000000001.pt", "step": 1, "size": 3, "sha256": "a" * 64}
    return json.dumps({"format": "atheria-checkpoints", "version": 1, "checkpoints": [{**base, **entry}]}).encode()


def test_parse_manifest_accepts_old_manifests_and_names_bad_new_fields() -> None:
    assert parse_manifest(_doc(), "old")["checkpoints"][0]["file"] == "ckpt-0000000001.pt"
    assert parse_manifest(_doc(file="ckpt-0000000001-r3.pt", blake3="b" * 64, lineage="x"), "new")
    for entry, match in (({"blake3": "nope"}, r"checkpoints\[0\]\.blake3='nope'"),
                         ({"lineage": ""}, r"checkpoints\[0\]\.lineage=''"),
                         ({"file": "ckpt-1.pt"}, "ckpt-<step>-r<revision>.pt"),
                         ({"step": 2}, r"step=2 does not match")):
        with pytest.raises(ValueError, match=match):
            parse_manifest(_doc(**entry), "bad")
    doc = json.loads(_doc())
    doc["lineage"] = 5
    with pytest.raises(ValueError, match="lineage=5"):
        parse_manifest(json.dumps(doc).encode(), "bad")


# ----------------------------------------------------------------------------------- write failure


def test_a_sidecar_that_cannot_be_written_leaves_no_checkpoint_and_no_trace(tmp_path: Path) -> None:
    class SidecarDiskFull(DiskStorage):
        fail = False

        def write_integrity(self, name, result, **fields):
            if self.fail:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            super().write_integrity(name, result, **fields)

    storage = SidecarDiskFull(tmp_path)
    mgr = CheckpointManager(tmp_path, async_save=False, storage=storage)
    mgr.save(state_for(1), step=1)
    before = sorted(os.listdir(tmp_path)), (tmp_path / MANIFEST_NAME).read_bytes()
    storage.fail = True
    with pytest.raises(CheckpointWriteError, match="No space left") as exc:
        mgr.save(state_for(2), step=2)
    assert exc.value.errno == errno.ENOSPC and "free space" in str(exc.value)
    assert (sorted(os.listdir(tmp_path)), (tmp_path / MANIFEST_NAME).read_bytes()) == before
    assert mgr.load().record.step == 1
