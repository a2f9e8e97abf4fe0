"""Data-parallel sessions: every rank stops at the same episode, the checkpoint is written once, and a run moves
between process counts. Real processes (one per rank, as torchrun starts them), gloo on CPU, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.ddp_worker import BATCHES_PER_EPISODE, N_SAMPLES
from tests.helpers import free_port, read_until_line

WORKER = Path(__file__).with_name("ddp_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def _start(root: Path, world: int, *extra: str, port: int | None = None) -> list[subprocess.Popen]:
    port = port or free_port()
    return [subprocess.Popen([sys.executable, str(WORKER), "--root", str(root), "--world", str(world),
                              "--rank", str(r), "--port", str(port), *extra],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for r in range(world)]


def _finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[list[str]]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-3000:]
        outs.append(out.splitlines())
    return outs


def run(root: Path, world: int, *extra: str) -> list[list[str]]:
    """One job of ``world`` ranks to its end; each rank's output lines."""
    return _finish(_start(root, world, *extra))


def end(lines: list[str]) -> tuple[str, int, str]:
    _, _, reason, episode, dig = next(line for line in lines if line.startswith("END ")).split()
    return reason, int(episode), dig


def samples(outs: list[list[str]]) -> dict[int, list[int]]:
    """Episode -> the dataset indices all ranks trained on in it."""
    by_ep: dict[int, list[int]] = {}
    for lines in outs:
        for line in lines:
            if line.startswith("SAMPLES "):
                _, _, ep, idx = line.split()
                by_ep.setdefault(int(ep), []).extend(int(i) for i in idx.split(","))
    return by_ep


def final_params(root: Path) -> dict[str, torch.Tensor]:
    from atheria_kit import CheckpointManager

    with CheckpointManager(root / "checkpoints" / "ddp") as mgr:
        return mgr.load("latest").state["objects"]["model"]


def test_all_ranks_stop_at_rank_0s_budget_decision_and_the_checkpoint_is_written_once(tmp_path):
    # Rank 0's (injected) clock says ~5 episodes fit; rank 1's real clock would allow 12. Both stop together.
    outs = run(tmp_path, 2, "--budget-episodes", "5")
    (r0, e0, d0), (r1, e1, d1) = end(outs[0]), end(outs[1])
    assert r0 == r1 == "budget"
    assert e0 == e1 < 12
    assert d0 == d1  # replicas stay identical
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "ddp").glob("ckpt-*.pt"))
    assert files[-1] == f"ckpt-{e0:010d}.pt"
    assert len(files) == len(set(files))  # one writer: no second revision of a step
    assert not any("stopped before" in line for line in outs[1])  # rank 0 speaks
    assert any("stopped before episode" in line for line in outs[0])


@pytest.mark.slow  # four jobs of two processes: ~40 s on 2 cores
def test_a_stopped_two_process_run_resumes_bit_identically(tmp_path):
    reference = run(tmp_path / "ref", 2)
    assert end(reference[0])[:2] == ("done", 12)
    run(tmp_path / "run", 2, "--budget-episodes", "5")
    resumed = run(tmp_path / "run", 2)
    assert end(resumed[0]) == end(reference[0])
    assert end(resumed[1]) == end(reference[1])
    # every rank's dropout stream and the loader position were restored: the same samples in the same episodes
    first = run(tmp_path / "again", 2, "--budget-episodes", "5")
    assert samples(first) | samples(resumed) == samples(reference)


@pytest.mark.slow
def test_a_killed_rank_takes_the_job_down_and_the_resume_matches_an_uninterrupted_run(tmp_path):
    reference = run(tmp_path / "ref", 2)
    procs = _start(tmp_path / "run", 2, "--hold-at", "7")
    for p in procs:
        read_until_line(p, "HOLD", timeout=120)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait(timeout=30)
    procs[0].stdin.write("go\n")
    procs[0].stdin.flush()
    out, _ = procs[0].communicate(timeout=120)  # the collective fails (peer gone): rank 0 ends, no hang
    assert procs[0].returncode != 0, out[-2000:]
    resumed = run(tmp_path / "run", 2)
    assert end(resumed[0]) == end(reference[0])


def _consumed_once_per_epoch(by_episode: dict[int, list[int]], episodes: int, global_batch: int) -> None:
    seen = [i for ep in range(episodes) for i in by_episode[ep]]
    assert len(seen) == episodes * BATCHES_PER_EPISODE * global_batch
    epochs = len(seen) // N_SAMPLES
    for e in range(epochs):  # each full epoch holds every sample exactly once
        assert Counter(seen[e * N_SAMPLES:(e + 1) * N_SAMPLES]) == Counter(range(N_SAMPLES))


@pytest.mark.slow  # three jobs each: ~30 s on 2 cores
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_a_checkpoint_moves_between_process_counts(tmp_path, before, after):
    # The same global batch (16) on either count: batch 8 per rank on 2 processes, 16 on one. Without dropout and
    # input noise (drawn per rank, so they differ with the count) the weights match an uninterrupted run up to the
    # order of the floating-point sums; every sample of each epoch is trained on exactly once.
    def batch(world: int) -> str:
        return str(16 // world)

    same = ("--dropout", "0", "--noise", "0")
    reference = run(tmp_path / "ref", 2, "--batch", batch(2), *same)
    first = run(tmp_path / "run", before, "--batch", batch(before), *same, "--budget-episodes", "5")
    stopped = end(first[0])[1]
    second = run(tmp_path / "run", after, "--batch", batch(after), *same)
    assert end(second[0])[:2] == ("done", 12)
    if after > before:  # said where the user looks (rank 0), not on a rank whose lines are not shown
        assert any("with new random streams" in line for line in second[0]), second[0]
    got, want = final_params(tmp_path / "run"), final_params(tmp_path / "ref")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    by_ep = samples(first) | samples(second)
    assert sorted(by_ep) == list(range(12)) and 0 < stopped < 12
    _consumed_once_per_epoch(by_ep, 12, 16)
    ref_by_ep = samples(reference)
    assert all(sorted(by_ep[ep]) == sorted(ref_by_ep[ep]) for ep in range(12))


def test_the_start_order_is_not_a_race_when_rank_0_cannot_start(tmp_path):
    # Rank 0 refuses (its run folder is a file); rank 1 must not hang waiting for it.
    (tmp_path / "checkpoints").write_text("not a folder")
    procs = _start(tmp_path, 2)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert "rank 0 could not start the session" in outs[1]
    assert os.path.isfile(tmp_path / "checkpoints")
