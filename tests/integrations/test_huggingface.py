"""A real ``transformers.Trainer`` under :class:`AtheriaCallback`: it stops before the budget with a sealed
checkpoint and a printed line, resumes to the same weights as a run that never stopped, survives a SIGKILL during
the Trainer's own save, resumes on a fresh VM from the remote copy, and never takes an unreachable remote for an
empty one. Tiny GPT-2 from a config, synthetic tokens, CPU, seeded; the time budget runs on an injected clock."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from atheria_kit.budget import TimeBudget  # noqa: E402
from atheria_kit.integrations.checkpoint_folders import (  # noqa: E402
    SEAL_NAME,
    list_remote_folders,
    seal_folder,
    verify_folder,
)
from atheria_kit.integrations.huggingface import AtheriaCallback, prepare  # noqa: E402
from atheria_kit.platform import detect_environment  # noqa: E402
from atheria_kit.say import Say, UserError  # noqa: E402
from atheria_kit.sync import DirectoryTarget  # noqa: E402
from tests._paths import REPO_ROOT  # noqa: E402
from tests.integrations.hf_tiny import tiny_trainer, weights  # noqa: E402

MAX_STEPS = 12


@pytest.fixture(autouse=True)
def one_torch_thread():
    """A tiny model on two shared cores runs ~10x faster on one thread; the setting is given back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeClock:
    """Seconds that pass only when a step says so: each training step "takes" ``step_seconds``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tick(TrainerCallback):
    """Placed before the kit's callback: each optimizer step advances the fake clock by one second."""

    def __init__(self, clock: FakeClock, step_seconds: float = 1.0) -> None:
        self.clock, self.step_seconds = clock, step_seconds

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.now += self.step_seconds


def short_budget(clock: FakeClock, seconds: float = 10.0) -> TimeBudget:
    env = detect_environment(environ={}, shell=None, kind="local")
    return TimeBudget(seconds, environment=env, clock=clock, wall_clock=clock, reserve_seconds=1.0,
                      initial_save_seconds=1.0)


def quiet(**kw):
    """Settings for a test run: lines captured, no live view, no monitor thread, no signal handlers."""
    stream = io.StringIO()
    return stream, dict(say=Say(stream), live_view="off", monitor=False, handle_signals=False, **kw)


def uninterrupted(tmp_path: Path, **kw) -> dict[str, torch.Tensor]:
    trainer = tiny_trainer(tmp_path / "reference", max_steps=MAX_STEPS, **kw)
    trainer.train()
    return weights(trainer)


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs by {(got[name] - want[name]).abs().max()}"


def stopped_run(out: Path, *, remote=None, lora: bool = False, **targs):
    """A first session whose 10 s budget (on the fake clock, 1 s per step) ends the run early."""
    clock = FakeClock()
    trainer = tiny_trainer(out, max_steps=MAX_STEPS, save_steps=100, lora=lora, callbacks=[Tick(clock)], **targs)
    stream, kw = quiet(remote=remote)
    assert prepare(trainer, budget=short_budget(clock), **kw) is None
    trainer.train()
    return trainer, stream.getvalue()


def resumed_run(out: Path, *, remote=None, lora: bool = False, **targs):
    """The next session: the same script on a new trainer, with an unlimited budget."""
    trainer = tiny_trainer(out, max_steps=MAX_STEPS, save_steps=100, lora=lora, **targs)
    stream, kw = quiet(remote=remote, max_training_seconds=None)
    env = detect_environment(environ={}, shell=None, kind="local")
    # The documented one line: Python looks trainer.train up before prepare() runs.
    trainer.train(resume_from_checkpoint=prepare(trainer, environment=env, **kw))
    chosen = AtheriaCallback.of(trainer).resumed_from
    return trainer, str(chosen.folder) if chosen is not None else None, stream.getvalue()


def test_a_short_budget_stops_with_a_verified_checkpoint_and_a_line_and_the_resume_matches_an_unbroken_run(tmp_path):
    """Stop point by hand: 10 s budget, 1 s reserve, 1 s first-save estimate, 1 s per step. After k steps the next
    step fits while 10 - k - 2 >= forecast; the forecast of a constant 1 s step after 7 steps is
    exp(3.5 * (1 + 1/sqrt(7)) * 0.02) * 1.05 = 1.16 s, so step 7 leaves 1 s < 1.16 s: stop after step 7.
    The resumed run is bit-identical to the unbroken one on CPU (transformers restores the RNG state, the optimizer,
    the scheduler and skips the batches already seen)."""
    out = tmp_path / "out"
    _, said = stopped_run(out)
    assert "stopped before step 8/12: the next step (~1 s) and the final save (~1 s) would not fit in the 3 s left" \
        in said
    assert "saved checkpoint-7 (sealed and verified)" in said and "press Run all in the next session" in said
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-7"]
    assert verify_folder(out / "checkpoint-7").ok

    trainer, resume, said = resumed_run(out)
    assert resume == str(out / "checkpoint-7")
    assert "resumed from checkpoint-7 (local copy, verified) at step 7, session 2 of this run" in said
    cb = AtheriaCallback.of(trainer)
    assert cb.budget.forecaster.count == 7 + 5  # the forecaster's 7 measured steps came back with the checkpoint
    assert trainer.state.global_step == MAX_STEPS
    assert_same_weights(weights(trainer), uninterrupted(tmp_path))


def test_run_all_after_the_end_finds_the_run_complete_and_trains_no_step_past_max_steps(tmp_path):
    """12 steps of 8 per epoch end inside an epoch; resumed from checkpoint-12, the Trainer alone would train a
    13th step (it checks max_steps only after a step). Every later "Run all" must leave the run at step 12 with
    the final weights of the run that ended."""
    out = tmp_path / "out"
    finished, resume, said = resumed_run(out)
    assert resume is None and "training finished at step 12/12; saved checkpoint-12" in said
    final = weights(finished)
    for _ in range(2):
        trainer, resume, said = resumed_run(out)
        assert resume == str(out / "checkpoint-12")
        assert "the run is already complete: checkpoint-12 (verified) holds step 12/12; nothing left to train" \
            in said
        assert trainer.state.global_step == MAX_STEPS
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-12"]
        assert_same_weights(weights(trainer), final)


def test_a_fresh_vm_resumes_from_the_newest_verified_remote_copy(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "drive"
    closed: list[str] = []  # Drive's flush_and_unmount would run here: what forces the copy to Drive
    _, said = stopped_run(out, remote=DirectoryTarget(remote, on_close=lambda: closed.append("flushed")))
    assert f"copy on {remote} holds checkpoint-7 (verified)" in said
    assert closed == ["flushed"]
    shutil.rmtree(out)  # a new VM: the local disk is gone

    trainer, resume, said = resumed_run(out, remote=DirectoryTarget(remote))
    assert resume == str(out / "checkpoint-7") and verify_folder(out / "checkpoint-7").ok
    assert f"resumed from checkpoint-7 (copy in {remote}, verified) at step 7" in said
    assert_same_weights(weights(trainer), uninterrupted(tmp_path))


def test_an_unreachable_remote_at_start_is_not_taken_for_an_empty_one(tmp_path):
    out, mount = tmp_path / "out", tmp_path / "drive"  # Drive not mounted: MyDrive is missing
    target = DirectoryTarget(mount / "MyDrive" / "run", mount_root=mount)
    trainer = tiny_trainer(out, max_steps=MAX_STEPS)
    stream, kw = quiet(remote=target, remote_retry_seconds=0)
    with pytest.raises(UserError, match=r"could not be read .* Nothing was trained"):
        prepare(trainer, **kw)
    assert not out.exists() or not any(out.iterdir())

    # With a verified local checkpoint the run goes on from it, and says the remote could not be read.
    local = tiny_trainer(out, max_steps=4, save_steps=4)
    local.train()
    seal_folder(out / "checkpoint-4", lineage="run-a")
    trainer = tiny_trainer(out, max_steps=MAX_STEPS)
    stream, kw = quiet(remote=DirectoryTarget(mount / "MyDrive" / "run", mount_root=mount), remote_retry_seconds=0)
    assert prepare(trainer, **kw) == str(out / "checkpoint-4")
    assert "cannot be read" in stream.getvalue() and "continuing from what is here" in stream.getvalue()


def test_a_drive_folder_given_as_a_path_while_drive_is_not_mounted_stops_the_start(tmp_path):
    """The docs' remote="/content/drive/MyDrive/..." on a VM where Drive is not mounted (this machine has no
    /content): not a new run whose copies land on the VM's own disk, but a stop that says why."""
    trainer = tiny_trainer(tmp_path / "out", max_steps=MAX_STEPS)
    stream, kw = quiet(remote="/content/drive/MyDrive/atheria/run", remote_retry_seconds=0)
    with pytest.raises(UserError, match=r"not mounted.* Nothing was trained"):
        prepare(trainer, **kw)
    assert not Path("/content").exists()


def test_prepare_given_something_else_than_a_trainer_says_what_it_expected(tmp_path):
    with pytest.raises(ValueError, match=r"trainer='out' is invalid; expected a transformers.Trainer"):
        prepare("out")  # the output folder instead of the Trainer


CHILD = textwrap.dedent("""
    import os, sys, threading, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from tests.integrations.hf_tiny import tiny_trainer
    from atheria_kit.integrations.huggingface import prepare

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        # The Trainer's save of checkpoint-8: write half of optimizer.pt, say so, and hang until killed.
        if isinstance(f, str) and f.endswith(os.path.join("checkpoint-8", "optimizer.pt")):
            real_save(obj, f, *args, **kwargs)
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
            print("SAVING checkpoint-8", flush=True)
            threading.Event().wait()
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    trainer = tiny_trainer(sys.argv[1], max_steps=12, save_steps=4)
    trainer.train(resume_from_checkpoint=prepare(trainer, live_view="off", monitor=False))
""")


def test_a_sigkill_during_the_trainers_own_save_resumes_from_the_newest_complete_folder(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(REPO_ROOT)))
    child = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    try:
        for line in child.stdout:
            if line.startswith("SAVING checkpoint-8"):
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (out / "checkpoint-8" / "model.safetensors").exists()  # half-written: weights there, the rest not
    assert not (out / "checkpoint-8" / SEAL_NAME).exists()
    assert get_last_checkpoint(out) == str(out / "checkpoint-8")  # what resume_from_checkpoint=True would take

    trainer = tiny_trainer(out, max_steps=MAX_STEPS, save_steps=4)
    stream, kw = quiet()
    resume = prepare(trainer, **kw)
    assert resume == str(out / "checkpoint-4")
    assert f"skipped checkpoint-8 in {out}: it has no {SEAL_NAME}" in stream.getvalue()
    trainer.train(resume_from_checkpoint=resume)
    assert trainer.state.global_step == MAX_STEPS and verify_folder(out / "checkpoint-8").ok  # rewritten, sealed
    assert_same_weights(weights(trainer), uninterrupted(tmp_path, save_steps=4))


def test_a_lora_adapter_run_saves_only_the_adapter_and_resumes_to_the_same_adapter_weights(tmp_path):
    out = tmp_path / "out"
    stopped_run(out, lora=True)
    files = {p.name for p in (out / "checkpoint-7").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert verify_folder(out / "checkpoint-7").ok
    trainer, resume, _ = resumed_run(out, lora=True)
    assert resume == str(out / "checkpoint-7")
    assert_same_weights(weights(trainer), uninterrupted(tmp_path, lora=True))


def test_rotation_by_save_total_limit_keeps_folders_verified_and_prunes_only_this_runs_remote_copies(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "drive"
    target = DirectoryTarget(remote)
    trainer = tiny_trainer(out, max_steps=MAX_STEPS, save_steps=2, save_total_limit=2)
    stream, kw = quiet(remote=target)
    assert prepare(trainer, **kw) is None
    # Another run's folder and a file of the user's in the same remote, added while this run trains.
    theirs = tmp_path / "theirs" / "checkpoint-3"
    theirs.mkdir(parents=True)
    (theirs / "model.safetensors").write_bytes(b"their weights")
    seal_folder(theirs, lineage="another-run")
    shutil.copytree(theirs, remote / "checkpoint-3")
    (remote / "README.txt").write_text("the user's notes")
    trainer.train()

    local = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert local == ["checkpoint-10", "checkpoint-12"]
    assert all(verify_folder(out / name).ok for name in local)
    assert sorted(f.name for f in list_remote_folders(target)) == ["checkpoint-10", "checkpoint-12", "checkpoint-3"]
    assert all(f.sealed for f in list_remote_folders(target))
    assert verify_folder(remote / "checkpoint-3").ok and (remote / "README.txt").exists()
    assert "training finished at step 12/12; saved checkpoint-12 (sealed and verified)" in stream.getvalue()


def test_with_save_total_limit_1_the_remote_always_holds_a_sealed_folder_and_the_risk_is_said(tmp_path):
    """The Trainer deletes checkpoint-N before the kit seals checkpoint-N+4: locally there is a moment without a
    verified folder, which is said; on the remote a rotated folder's seal is removed only after its successor's
    seal has arrived, so the remote is never without one."""
    events: list[tuple[str, str]] = []

    class Recording(DirectoryTarget):
        def put(self, src, key, *, sha256=None):
            n = super().put(src, key, sha256=sha256)
            if key.endswith(SEAL_NAME):
                events.append(("sealed", key.split("/")[0]))
            return n

        def delete(self, key, *, truncate=False):
            if key.endswith(SEAL_NAME):
                events.append(("unsealed", key.split("/")[0]))
            return super().delete(key, truncate=truncate)

    class UploadsDone(TrainerCallback):
        """After the kit's on_save: wait until its upload and prune are done (a slow step, not a race)."""

        def on_save(self, args, state, control, **kwargs):
            assert AtheriaCallback.of(trainer).pusher.flush(30)

    out, remote = tmp_path / "out", tmp_path / "drive"
    trainer = tiny_trainer(out, max_steps=MAX_STEPS, save_steps=4, save_total_limit=1)
    stream, kw = quiet(remote=Recording(remote))
    assert prepare(trainer, **kw) is None
    trainer.add_callback(UploadsDone())
    trainer.train()
    assert "save_total_limit=1: the Trainer deletes the previous checkpoint before the kit can seal the new one" \
        in stream.getvalue()
    assert events == [("sealed", "checkpoint-4"), ("sealed", "checkpoint-8"), ("unsealed", "checkpoint-4"),
                      ("sealed", "checkpoint-12"), ("unsealed", "checkpoint-8")]
    assert [f.name for f in list_remote_folders(DirectoryTarget(remote))] == ["checkpoint-12"]


class Boom(TrainerCallback):
    """The user's code fails at step 5 (after checkpoint-4 was saved)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise RuntimeError("boom")


def test_a_run_that_fails_says_which_checkpoint_is_kept_and_gives_back_the_signal_handlers(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "drive"
    before = signal.getsignal(signal.SIGINT)
    trainer = tiny_trainer(out, max_steps=MAX_STEPS, save_steps=4, callbacks=[Boom()])
    stream = io.StringIO()
    with pytest.raises(RuntimeError, match="boom"):  # the documented one line
        trainer.train(resume_from_checkpoint=prepare(trainer, remote=DirectoryTarget(remote), say=Say(stream),
                                                     live_view="off", monitor=True))
    said = stream.getvalue()
    assert ("training stopped at step 5: RuntimeError: boom; the last verified checkpoint (checkpoint-4) is kept; "
            f"copy on {remote} holds checkpoint-4 (verified)") in said
    assert signal.getsignal(signal.SIGINT) is before
    assert AtheriaCallback.of(trainer).monitor is None  # its thread was stopped
    assert verify_folder(remote / "checkpoint-4").ok
