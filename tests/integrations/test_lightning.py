"""The kit inside a real ``lightning.Trainer``: budget stop, exact resume, kill-safe saves, remote resume, rankings.

Every run is a real Trainer (CPU, deterministic, no progress bar) on a tiny MLP and a seeded synthetic dataset:
64 samples in shuffled batches of 8, so one epoch is 8 training steps. Time is an injected clock that each
training step advances by 100 s, so a budget of ``100 * k + 50`` seconds stops after exactly ``k`` steps.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from atheria_kit.budget import TimeBudget  # noqa: E402
from atheria_kit.checkpoint import CheckpointLoadError, CheckpointManager  # noqa: E402
from atheria_kit.integrations.lightning import (  # noqa: E402
    STOP_FILENAME,
    AtheriaCallback,
    AtheriaCheckpointIO,
    ResumableTrainLoader,
    prepare,
)
from atheria_kit.say import Say  # noqa: E402
from atheria_kit.sync import DirectoryTarget, RemoteUnavailableError  # noqa: E402
from tests._paths import REPO_ROOT  # noqa: E402

STEP_SECONDS = 100.0
STEPS_PER_EPOCH = 8


class Clock:
    """The budget's clock; the model advances it by STEP_SECONDS per training step."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tiny(L.LightningModule):
    """A small MLP trained with SGD + momentum (optimizer state matters for an exact resume)."""

    def __init__(self, clock: Clock | None = None, val_seconds: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.clock = clock
        self.val_seconds = val_seconds

    def training_step(self, batch, batch_idx):
        if self.clock is not None:
            self.clock.t += STEP_SECONDS
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        if self.clock is not None:
            self.clock.t += self.val_seconds
        x, y = batch
        self.log("val_loss", ((self.net(x) - y) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(64, 1, generator=g)
    return (DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
            DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8))


def trainer(root: Path, epochs: int = 3, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", deterministic=True, enable_progress_bar=False,
                     logger=False, enable_model_summary=False, default_root_dir=str(root), **kwargs)


def budget(steps: int | None) -> TimeBudget:
    """A budget that stops after ``steps`` training steps (None: never)."""
    seconds = 1e9 if steps is None else STEP_SECONDS * steps + 50.0
    return TimeBudget(seconds, clock=Clock(), reserve_seconds=0.0, initial_save_seconds=1.0)


def kit_run(root: Path, steps: int | None, *, epochs: int = 3, remote=None, callbacks=(), say: Say | None = None,
            resumable: bool = False, seconds: float | None = None, val_seconds: float = 0.0, **trainer_kwargs):
    """One session under the kit: prepare, fit (resuming when the store has a checkpoint); returns its pieces."""
    L.seed_everything(0, verbose=False)
    tb = budget(steps) if seconds is None else TimeBudget(seconds, clock=Clock(), reserve_seconds=0.0,
                                                          initial_save_seconds=1.0)
    say = say or Say(stream=io.StringIO())
    kit = prepare(root / "store", budget=tb, remote=remote, say=say, live="off", monitor=False, retry_seconds=0)
    model = Tiny(tb._clock, val_seconds)
    kwargs = kit.trainer_kwargs | trainer_kwargs
    kwargs["callbacks"] += list(callbacks)
    tr = trainer(root, epochs, **kwargs)
    train, val = loaders()
    tr.fit(model, ResumableTrainLoader(train) if resumable else train, val, **kit.fit_kwargs)
    kit.close(timeout=30)
    return model, tr, kit, say


def plain_run(root: Path, epochs: int = 3, callbacks=()) -> tuple[Tiny, L.Trainer]:
    """The same training without the kit: the independent reference."""
    L.seed_everything(0, verbose=False)
    model = Tiny()
    tr = trainer(root, epochs, callbacks=list(callbacks))
    tr.fit(model, *loaders())
    return model, tr


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def max_difference(a: nn.Module, b: nn.Module) -> float:
    sb = b.state_dict()
    return max((v - sb[k]).abs().max().item() for k, v in a.state_dict().items())


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*(num_workers|LeafSpec|litlogger).*")
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Tiny:
    model, tr = plain_run(tmp_path_factory.mktemp("reference"))
    assert tr.global_step == 3 * STEPS_PER_EPOCH
    return model


# ------------------------------------------------------------------------------------------ budget stop


def test_a_budget_stop_at_an_epoch_end_saves_a_verified_checkpoint_and_the_resume_is_bit_identical(
        tmp_path, reference):
    """Stopped after 16 of 24 steps (the end of epoch 1), then "Run all" again: the final weights equal those of
    a plain Lightning run that never stopped, bit for bit (the callback also restores the RNG states, so the next
    epoch's shuffle is the same)."""
    _, tr1, kit1, say1 = kit_run(tmp_path, steps=16)
    assert tr1.global_step == 16
    stop_line = next(line for line in say1.lines if line.startswith("stopped at"))
    assert "stopped at the end of epoch 1 (global step 16)" in stop_line
    assert "would not fit in the 50 s left" in stop_line
    assert "press Run all in the next session to continue" in stop_line
    stop_file = tmp_path / "checkpoints" / STOP_FILENAME
    assert f"saved {stop_file}" in stop_line
    # The stop checkpoint is listed by the store and verifies, and it is the very file at Lightning's path;
    # ModelCheckpoint's own epoch-end save follows it (same loop state), so the newest is that one.
    store = CheckpointManager(tmp_path / "store", monitor="global_step", mode="max")
    stop_record = next(r for r in store.records() if os.path.samefile(r.path, stop_file))
    assert store.verify(stop_record) is None and stop_record.metrics["global_step"] == 16.0
    newest = store.latest()
    assert newest is not None and newest.metrics["global_step"] == 16.0
    assert os.path.samefile(newest.path, tmp_path / "checkpoints" / "epoch=1-step=16.ckpt")

    # Lightning's path holds an ordinary Lightning checkpoint: plain Lightning loads it without the kit.
    assert same_weights(Tiny.load_from_checkpoint(stop_file, weights_only=True), tr1.lightning_module)

    model, tr2, _, say2 = kit_run(tmp_path, steps=None)
    assert any(line.startswith(f"resumed from {newest.file} (local copy, verified) at epoch 1, global step 16")
               for line in say2.lines)
    assert tr2.global_step == 24
    assert same_weights(model, reference)


def test_a_mid_epoch_budget_stop_resumes_where_lightning_can(tmp_path, reference):
    """Stopped after 12 steps (batch 4 of 8 of epoch 1). The stop checkpoint holds the mid-epoch loop state and
    nothing written after it (Lightning's epoch-end saves after ``should_stop`` are held back, since they would
    claim the epoch done), so the resumed session runs exactly the 12 missing steps.

    Not bit-identical with a plain ``DataLoader``: Lightning restarts it at its first batch when it resumes
    mid-epoch (Lightning #19764, #20550; it warns "resuming from a checkpoint that ended before the epoch ended"),
    so the last 4 batches of epoch 1 are drawn from a new shuffle. Measured on this model: the largest weight
    differs from the uninterrupted run's by about 0.66 (the weights themselves are of order 1). Wrapped in
    ``ResumableTrainLoader`` it is exact (next test); an end-of-epoch stop is exact either way (test above)."""
    _, tr1, kit1, say1 = kit_run(tmp_path, steps=12)
    assert tr1.global_step == 12
    assert any("stopped at epoch 1, after batch 4/8 (global step 12)" in line for line in say1.lines)
    records = kit1.checkpoint_io.manager.records()
    assert records[-1].metrics["global_step"] == 12.0  # nothing saved after the stop
    assert len(records) == 2  # epoch 0's checkpoint and the stop

    model, tr2, kit2, _ = kit_run(tmp_path, steps=None)
    assert tr2.global_step == 24
    assert kit2.callback._steps == 12
    assert max_difference(model, reference) < 5.0  # the same training, not a diverged one


def test_when_min_epochs_keeps_lightning_going_the_stop_is_undone_with_a_warning(tmp_path, reference):
    """``min_epochs`` makes Lightning ignore ``should_stop``: the run then goes on (and keeps saving) instead of
    training on with a frozen store, and the user is told why the budget did not stop it."""
    model, tr, kit, say = kit_run(tmp_path, steps=12, min_epochs=3)
    assert tr.global_step == 24
    assert any("Lightning did not stop at the time budget (min_epochs or min_steps" in line for line in say.lines)
    assert kit.checkpoint_io.manager.records()[-1].metrics["global_step"] == 24.0
    assert max_difference(model, reference) < 5.0


def test_a_mid_epoch_stop_with_a_resumable_loader_resumes_bit_identically(tmp_path, reference):
    """The same mid-epoch stop, with the training loader wrapped in ``ResumableTrainLoader``: the resumed session
    replays epoch 1's shuffle, skips its 4 trained batches, and ends with the uninterrupted run's weights exactly.
    A second stop in the resumed epoch (after 2 more steps) still resumes exactly."""
    _, tr1, _, _ = kit_run(tmp_path, steps=12, resumable=True)
    assert tr1.global_step == 12
    _, tr2, _, say2 = kit_run(tmp_path, steps=2, resumable=True)
    assert tr2.global_step == 14
    assert any("stopped at epoch 1, after batch 6/8 (global step 14)" in line for line in say2.lines)
    model, tr3, kit3, _ = kit_run(tmp_path, steps=None, resumable=True)
    assert tr3.global_step == 24 and kit3.callback._steps == 10
    assert same_weights(model, reference)


def test_sigterm_during_fit_saves_and_stops_at_the_next_batch_end_and_the_resume_is_exact(tmp_path, reference):
    """Kaggle and Colab send SIGTERM before they kill: a real SIGTERM to this process after step 3 (a callback
    placed after the kit's) becomes a save and stop after step 4, the handlers are given back, and the resumed
    run ends with the uninterrupted run's weights."""

    class Sigterm(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    _, tr1, _, say1 = kit_run(tmp_path, steps=None, resumable=True, callbacks=[Sigterm()])
    assert tr1.global_step == 4
    assert any("stopped at epoch 0, after batch 4/8 (global step 4): stop requested (signal SIGTERM)" in line
               for line in say1.lines)
    assert signal.getsignal(signal.SIGTERM) is before
    model, tr2, _, _ = kit_run(tmp_path, steps=None, resumable=True)
    assert tr2.global_step == 24 and same_weights(model, reference)


def test_the_stop_leaves_room_for_the_validation_that_follows_the_next_batch(tmp_path, reference):
    """Each validation batch takes 300 s (600 s per validation, the sanity check included), each step 100 s, and
    the budget is 3050 s. After step 15 (t = 2700 s) the next step would fit, but the validation after it would
    not: the callback stops there, mid-epoch, instead of running into the limit during that validation (at
    t = 3400 s), and skips the validation Lightning would run after a mid-epoch stop. The resumed run is exact."""
    _, tr1, kit1, say1 = kit_run(tmp_path, steps=None, seconds=3050.0, val_seconds=300.0, resumable=True)
    assert tr1.global_step == 15
    stop_line = next(line for line in say1.lines if line.startswith("stopped at"))
    assert "stopped at epoch 1, after batch 7/8 (global step 15): the next step (~" in stop_line
    assert "the validation after it (~12 min)" in stop_line  # 1.25 x the measured 600 s
    assert kit1.budget.elapsed == 2700.0  # no validation ran after the stop
    assert tr1.limit_val_batches == 1.0  # restored for the user's later trainer.validate()

    model, tr2, _, _ = kit_run(tmp_path, steps=None, resumable=True)
    assert tr2.global_step == 24
    assert same_weights(model, reference)


# ----------------------------------------------------------------------------------------- kill -9


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    import lightning as L
    from atheria_kit.integrations.lightning import AtheriaCallback, AtheriaCheckpointIO, LinkedDiskStorage
    from tests.integrations.test_lightning import Tiny, loaders, trainer

    class Announcing(LinkedDiskStorage):
        '''Prints a line in the middle of the second checkpoint's write, then waits for a line on stdin.'''
        def write_chunk(self, name, fh, chunk):
            if name == "ckpt-0000000001.pt":
                half = len(chunk) // 2
                fh.write(chunk[:half])
                fh.flush()
                print("MID-WRITE", name, flush=True)
                sys.stdin.readline()
                fh.write(chunk[half:])
                return
            fh.write(chunk)

    root = Path(sys.argv[1])
    io_ = AtheriaCheckpointIO(root / "store", storage=Announcing(root / "store"))
    L.seed_everything(0, verbose=False)
    tr = trainer(root, 3, plugins=[io_], callbacks=[AtheriaCallback(io_)])
    tr.fit(Tiny(), *loaders())
    print("FINISHED", flush=True)
""")


def test_a_sigkill_during_a_checkpoint_write_resumes_from_the_newest_complete_checkpoint(tmp_path, reference):
    """A child process is killed with SIGKILL while its second checkpoint (end of epoch 1) is half written. The
    next start resumes from epoch 0's checkpoint, never the half-written one, and reaches the uninterrupted
    run's weights exactly."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO_ROOT)))
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(REPO_ROOT))
    try:
        for line in child.stdout:
            if line.startswith("MID-WRITE"):
                break
        else:
            pytest.fail("the child ended without reaching the second checkpoint write")
        half_written = [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".tmp-ckpt-0000000001")]
        assert half_written and half_written[0].stat().st_size > 0
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "store" / "ckpt-0000000001.pt").exists()
    epoch1_files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert epoch1_files == ["epoch=0-step=8.ckpt"]  # the half-written save never reached Lightning's path

    model, tr, kit, say = kit_run(tmp_path, steps=None)
    assert any(line.startswith("resumed from ckpt-0000000000.pt (local copy, verified) at epoch 0, global step 8")
               for line in say.lines)
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "store").iterdir())
    assert tr.global_step == 24
    assert same_weights(model, reference)


def test_a_run_that_fails_says_which_checkpoint_is_kept_and_gives_back_the_signal_handlers(tmp_path):
    """The user's code raises at global step 10, after epoch 0's checkpoint (step 8): Lightning calls no end hook,
    so the callback's on_exception must say what is kept, and the resume continues from it."""

    class Boom(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 10:
                raise RuntimeError("boom")

    before = signal.getsignal(signal.SIGINT)
    say = Say(stream=io.StringIO())
    kit = prepare(tmp_path / "store", budget=budget(None), remote=DirectoryTarget(tmp_path / "drive"), say=say,
                  live="off", monitor=False, retry_seconds=0)
    kwargs = kit.trainer_kwargs
    kwargs["callbacks"].append(Boom())
    L.seed_everything(0, verbose=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, 3, **kwargs).fit(Tiny(), *loaders(), **kit.fit_kwargs)
    kit.close(timeout=30)
    assert signal.getsignal(signal.SIGINT) is before
    line = next(ln for ln in say.lines if "training stopped at" in ln)
    assert ("training stopped at epoch 1, global step 10: RuntimeError: boom; the last verified checkpoint "
            "(ckpt-0000000000.pt, epoch 0, global step 8) is kept; remote copy at") in line
    assert line.endswith("Fix the cause, then Run all again to continue")

    _, tr, _, said = kit_run(tmp_path, steps=None, remote=DirectoryTarget(tmp_path / "drive"))
    assert any(ln.startswith("resumed from ckpt-0000000000.pt (local copy, verified) at epoch 0, global step 8")
               for ln in said.lines)
    assert tr.global_step == 24
    assert signal.getsignal(signal.SIGINT) is before  # after a run that ends normally too


# -------------------------------------------------------------------------------------- fresh VM


def test_a_fresh_vm_resumes_from_the_remote_copy_after_the_local_folders_are_gone(tmp_path, reference):
    remote = tmp_path / "drive" / "run1"
    vm1, vm2 = tmp_path / "vm1", tmp_path / "vm2"
    _, tr1, _, say1 = kit_run(vm1, steps=16, remote=DirectoryTarget(remote))
    assert tr1.global_step == 16
    stop_line = next(line for line in say1.lines if line.startswith("stopped at"))
    assert f"remote copy at {remote} is up to date" in stop_line
    shutil.rmtree(vm1)  # the VM is gone, with its disk

    model, tr2, _, say2 = kit_run(vm2, steps=None, remote=DirectoryTarget(remote))
    resumed = next(line for line in say2.lines if line.startswith("resumed from"))
    assert f"(copy downloaded from {remote}, verified) at epoch 1, global step 16" in resumed
    assert tr2.global_step == 24
    assert same_weights(model, reference)


def test_an_unreachable_remote_at_start_stops_the_start_instead_of_starting_over(tmp_path):
    mount = tmp_path / "MyDrive-not-mounted"
    target = DirectoryTarget(mount / "run1", mount_root=mount)
    with pytest.raises(RemoteUnavailableError):
        prepare(tmp_path / "store", budget=60.0, remote=target, say=Say(stream=io.StringIO()), live="off",
                monitor=False, retry_seconds=0)
    # Going on without it is an explicit choice, and it is said.
    say = Say(stream=io.StringIO())
    kit = prepare(tmp_path / "store", budget=60.0, remote=target, say=say, live="off", monitor=False,
                  retry_seconds=0, unavailable="ignore")
    kit.close(timeout=0)
    assert say.lines[0] == (f"⚠ {mount / 'run1'} could not be read (unavailable='ignore'): a newer checkpoint there "
                            "was not considered")
    assert say.lines[1].startswith("new run: no checkpoint found in")


# -------------------------------------------------------------------------------------- rankings


def top2(dirpath: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=str(dirpath), monitor="val_loss", mode="min", save_top_k=2,
                           filename="{epoch}-{val_loss:.5f}")


def test_rankings_survive_a_restart_into_a_changed_directory(tmp_path):
    """Session 1 ranks into dir ``a`` and stops after 3 of 5 epochs; session 2 uses dir ``b`` (Lightning #18687:
    plain Lightning drops best_k_models when dirpath changes). After the resume the rankings name files in ``b``
    that exist there; at the end, the kept files and the best one are those of a plain Lightning run of 5 epochs
    that never stopped (the reference), and top-k deletion removed exactly the others."""
    ref_model, ref_tr = plain_run(tmp_path / "ref", epochs=5, callbacks=[ref_cb := top2(tmp_path / "ref-ckpt")])
    expected_k = sorted(Path(p).name for p in ref_cb.best_k_models)
    expected_best = Path(ref_cb.best_model_path).name
    assert len(expected_k) == 2

    _, tr1, _, _ = kit_run(tmp_path / "run", steps=24, epochs=5, callbacks=[cb_a := top2(tmp_path / "a")])
    assert tr1.global_step == 24
    ranked_in_a = dict(cb_a.best_k_models)

    seen: dict[str, object] = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            cb = trainer.checkpoint_callback
            seen["best_k"] = {Path(p).name: Path(p).parent for p in cb.best_k_models}
            seen["best"] = cb.best_model_path
            seen["exist"] = all(Path(p).is_file() for p in cb.best_k_models)

    model, tr2, kit2, _ = kit_run(tmp_path / "run", steps=None, epochs=5,
                                  callbacks=[cb_b := top2(tmp_path / "b"), Probe()])
    assert seen["best_k"] == {Path(p).name: tmp_path / "b" for p in ranked_in_a}
    assert Path(seen["best"]).parent == tmp_path / "b" and seen["exist"]
    assert tr2.global_step == 40
    assert same_weights(model, ref_model)
    assert sorted(Path(p).name for p in cb_b.best_k_models) == expected_k
    assert Path(cb_b.best_model_path) == tmp_path / "b" / expected_best
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == expected_k
    # The store holds exactly what Lightning still names: the two kept files in ``b``. Session 1's stop file was
    # removed once resumed from; its ranked files stay in ``a`` with their bytes (hard links are never truncated).
    io2 = kit2.checkpoint_io
    assert sorted(io2.paths) == sorted(str(tmp_path / "b" / n) for n in expected_k)
    assert {r.step for r in io2.manager.records()} == set(io2.paths.values())
    assert all(io2.manager.verify(r) is None for r in io2.manager.records())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(Path(p).name for p in ranked_in_a)
    for p in ranked_in_a:
        assert torch.load(p, weights_only=True)["global_step"] > 0  # still complete checkpoints


# ------------------------------------------------------------------------------------- corrupt / safe


def test_a_corrupt_checkpoint_is_skipped_with_a_warning_and_the_resume_falls_back(tmp_path, caplog):
    _, tr1, kit1, _ = kit_run(tmp_path, steps=None, epochs=2,
                              callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1)])
    assert tr1.global_step == 16
    newest = kit1.checkpoint_io.manager.records()[-1]
    assert newest.metrics["global_step"] == 16.0
    data = bytearray(newest.path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle: torch.load alone would not notice
    newest.path.write_bytes(bytes(data))

    # Through Lightning: asking for the damaged file's path falls back to the newest older verified one.
    io_ = AtheriaCheckpointIO(tmp_path / "store")
    io_.paths[str(tmp_path / "ck" / "epoch=1-step=16.ckpt")] = newest.step
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=newest.file):
        ckpt = io_.load_checkpoint(tmp_path / "ck" / "epoch=1-step=16.ckpt")
    assert ckpt["global_step"] == 8
    assert any(newest.file in r.getMessage() for r in caplog.records)

    # Through prepare: the next session resumes from epoch 0's checkpoint and finishes.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model, tr2, _, say2 = kit_run(tmp_path, steps=None, epochs=2,
                                      callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1)])
    assert any(newest.file in r.getMessage() for r in caplog.records)
    assert any(line.startswith(f"⚠ {newest.path} failed verification (blake3 mismatch (corrupted)); skipped, "
                               "resuming from the previous verified checkpoint ckpt-0000000000.pt")
               for line in say2.lines)
    assert any("global step 8" in line for line in say2.lines if line.startswith("resumed from"))
    assert tr2.global_step == 16


def test_lightning_own_last_checkpoint_logic_keeps_working(tmp_path, reference):
    """``save_last=True`` re-saves ``last.ckpt`` every epoch: each save re-points the path to a new store file and
    the old one is released, so the store holds exactly ``last.ckpt`` and the top-1 file. A new process's
    ``fit(ckpt_path="last")`` (Lightning's own lookup of ``last.ckpt`` in the dirpath) loads it through the store,
    verified, and training continues to the uninterrupted run's weights."""
    ck = tmp_path / "ck"
    _, tr1, kit1, _ = kit_run(tmp_path, steps=None, epochs=2,
                              callbacks=[ModelCheckpoint(dirpath=str(ck), save_last=True, save_top_k=1)])
    assert sorted(p.name for p in ck.iterdir()) == ["epoch=1-step=16.ckpt", "last.ckpt"]
    io1 = kit1.checkpoint_io
    assert sorted(io1.resolve(ck / n).step for n in ("epoch=1-step=16.ckpt", "last.ckpt")) == sorted(
        r.step for r in io1.manager.records())
    assert torch.load(ck / "last.ckpt", weights_only=True)["global_step"] == 16

    L.seed_everything(0, verbose=False)
    io2 = AtheriaCheckpointIO(tmp_path / "store")
    model = Tiny()
    tr2 = trainer(tmp_path, 3, plugins=[io2], callbacks=[AtheriaCallback(io2),
                                                         ModelCheckpoint(dirpath=str(ck), save_last=True)])
    train, val = loaders()
    tr2.fit(model, train, val, ckpt_path="last", weights_only=True)
    assert tr2.global_step == 24
    assert same_weights(model, reference)


def test_a_checkpoint_dir_on_another_filesystem_gets_verified_copies(tmp_path, other_fs_dir):
    """Hard links cannot cross filesystems (a Drive mount, /dev/shm): Lightning's files are then atomic copies of
    the store's, and top-k deletion still releases the store's records."""
    _, tr, kit, _ = kit_run(tmp_path, steps=None, epochs=3,
                            callbacks=[ModelCheckpoint(dirpath=str(other_fs_dir), save_top_k=1)])
    assert tr.global_step == 24
    files = sorted(p.name for p in other_fs_dir.iterdir())
    assert files == ["epoch=2-step=24.ckpt"]
    rec = kit.checkpoint_io.resolve(other_fs_dir / files[0])
    assert rec is not None and kit.checkpoint_io.manager.verify(rec) is None
    assert (other_fs_dir / files[0]).read_bytes() == rec.path.read_bytes()
    assert [r.step for r in kit.checkpoint_io.manager.records()] == [rec.step]


def test_loading_is_weights_only_and_extra_classes_are_allowed_one_by_one(tmp_path):
    io_ = AtheriaCheckpointIO(tmp_path / "store")
    path = tmp_path / "ck" / "x.ckpt"
    io_.save_checkpoint({"global_step": 3, "hyper_parameters": {"data": pathlib.PurePosixPath("/data")}}, path)
    with pytest.raises(CheckpointLoadError, match="allow_pickle=True"):
        io_.load_checkpoint(path)
    trusted = AtheriaCheckpointIO(tmp_path / "store", safe_globals=[pathlib.PurePosixPath])
    assert trusted.load_checkpoint(path)["hyper_parameters"]["data"] == pathlib.PurePosixPath("/data")


def test_a_remote_dirpath_is_refused_with_the_way_to_a_remote_copy(tmp_path):
    with pytest.raises(ValueError, match=r"path='s3://bucket/run/x.ckpt' is invalid .*prepare\(remote=...\)"):
        AtheriaCheckpointIO(tmp_path / "store").save_checkpoint({"global_step": 1}, "s3://bucket/run/x.ckpt")


def test_the_callback_refuses_a_trainer_without_its_plugin(tmp_path):
    io_ = AtheriaCheckpointIO(tmp_path / "store")
    tr = trainer(tmp_path, 1, callbacks=[AtheriaCallback(io_)])
    with pytest.raises(ValueError, match="needs its AtheriaCheckpointIO in the same Trainer"):
        tr.fit(Tiny(), *loaders())


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="budget='soon'"):
        prepare(tmp_path / "s", budget="soon", live="off", monitor=False)
    with pytest.raises(ValueError, match=r"directory=<lightning.pytorch.trainer.*expected the folder for the checkpoint"):
        prepare(trainer(tmp_path, 1), live="off", monitor=False)  # the Trainer instead of the store folder
    with pytest.raises(ValueError, match="stop_filename='stop.pt'"):
        AtheriaCallback(AtheriaCheckpointIO(tmp_path / "s"), stop_filename="stop.pt")
