"""Specification of atheria_kit.state: every RNG and counter comes back exactly, through weights_only loading."""

from __future__ import annotations

import collections
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from atheria_kit.state import (
    SeededGenerators,
    TrainingProgress,
    capture_rng_state,
    collect_state,
    restore_rng_state,
    restore_state,
    seed_everything,
    validate_plain,
)
from tests.helpers import weights_only_round_trip

BIT_GENERATORS = [np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64]


def draws(gens: dict | None = None) -> list:
    """A few draws from every global source and from each generator handed in."""
    out = [random.random(), random.getrandbits(64), random.gauss(0, 1), np.random.rand(3).tolist(),
           np.random.standard_normal(), torch.rand(4).tolist(), torch.randint(0, 10**9, (2,)).tolist()]
    for gen in (gens or {}).values():
        if isinstance(gen, torch.Generator):
            out.append(torch.rand(3, generator=gen).tolist())
        else:
            out.append(gen.random(3).tolist() + [int(gen.integers(0, 2**62))])
    return out


def test_the_raw_numpy_state_is_what_breaks_weights_only_loading():
    # The failure this module exists to avoid (transformers #34631, #40500): NumPy's state holds arrays.
    with pytest.raises(pickle.UnpicklingError):
        weights_only_round_trip({"numpy": np.random.get_state()})


@pytest.mark.parametrize("bit_generator", BIT_GENERATORS, ids=lambda c: c.__name__)
def test_rng_state_round_trips_weights_only_and_continues_every_stream(bit_generator):
    gens = {"np": np.random.Generator(bit_generator(11)), "torch": torch.Generator().manual_seed(5)}
    seed_everything(3)
    draws(gens)  # move every stream away from its seed; also leaves a cached Gaussian in random and NumPy
    random.gauss(0, 1)
    np.random.standard_normal()
    state = weights_only_round_trip(capture_rng_state(gens))
    expected = draws(gens)
    seed_everything(999)  # scramble everything, including the generators handed in
    gens["np"].random(7)
    gens["torch"].manual_seed(0)
    restore_rng_state(state, gens)
    assert draws(gens) == expected


def test_pcg64_128_bit_state_survives_weights_only_loading_exactly():
    gen = np.random.default_rng(2**100 + 12345)
    gen.random(5)
    gen.integers(0, 2**32, dtype=np.uint32)  # PCG64 then buffers a 32-bit half: has_uint32 == 1
    raw = gen.bit_generator.state
    assert raw["state"]["state"] > 2**64 and raw["has_uint32"] == 1  # the hard case is really exercised
    loaded = weights_only_round_trip(capture_rng_state({"g": gen}))
    fresh = np.random.default_rng(0)
    restore_rng_state(loaded, {"g": fresh})
    assert fresh.bit_generator.state == raw
    assert fresh.integers(0, 2**32, size=5).tolist() == gen.integers(0, 2**32, size=5).tolist()


def test_numpy_random_state_objects_are_captured_too():
    legacy = np.random.RandomState(8)
    legacy.rand(2)
    state = weights_only_round_trip(capture_rng_state({"legacy": legacy}))
    expected = legacy.rand(4).tolist()
    other = np.random.RandomState(0)
    restore_rng_state(state, {"legacy": other})
    assert other.rand(4).tolist() == expected


@pytest.mark.parametrize(
    ("saved", "given", "message"),
    [
        ({"a": np.random.default_rng(1)}, {}, r"in the saved state but not given: \['a'\]"),
        ({}, {"b": np.random.default_rng(1)}, r"missing from the saved state: \['b'\]"),
    ],
)
def test_restore_rng_state_names_mismatched_generators(saved, given, message):
    state = capture_rng_state(saved)
    with pytest.raises(ValueError, match=message):
        restore_rng_state(state, given)
    restore_rng_state(state, given, strict=False)  # the common ones (none here) are restored


def test_restore_rng_state_refuses_a_generator_of_another_kind():
    state = capture_rng_state({"g": np.random.default_rng(1)})
    with pytest.raises(ValueError, match=r"generators\['g'\].*kind 'numpy'.*'torch'"):
        restore_rng_state(state, {"g": torch.Generator()})


def test_seeded_generators_continue_both_streams_after_a_weights_only_round_trip():
    gens = SeededGenerators(42)
    torch.rand(2, generator=gens.torch)
    gens.numpy.normal(size=3)
    state = weights_only_round_trip(gens.state_dict())
    expected = (torch.rand(5, generator=gens.torch).tolist(), gens.numpy.normal(size=5).tolist())
    other = SeededGenerators(7)
    other.load_state_dict(state)
    assert (torch.rand(5, generator=other.torch).tolist(), other.numpy.normal(size=5).tolist()) == expected
    assert other.seed == 42


def test_seeded_generators_with_the_same_seed_agree_and_differ_from_another_seed():
    a, b, c = SeededGenerators(1), SeededGenerators(1), SeededGenerators(2)
    assert torch.equal(torch.rand(8, generator=a.torch), torch.rand(8, generator=b.torch))
    assert not torch.equal(torch.rand(8, generator=a.torch), torch.rand(8, generator=c.torch))


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "7"])
def test_seed_everything_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed="):
        seed_everything(seed)


def test_training_progress_round_trips_counters_and_history():
    progress = TrainingProgress()
    progress.step, progress.episode, progress.epoch, progress.batch = 17, 3, 2, 5
    progress.record(loss=0.5, acc=np.float32(0.25))
    progress.record(loss=torch.tensor(0.125))
    progress.record(loss=float("nan"))
    other = TrainingProgress()
    other.load_state_dict(weights_only_round_trip(progress.state_dict()))
    assert (other.step, other.episode, other.epoch, other.batch) == (17, 3, 2, 5)
    assert other.history["loss"][:2] == [0.5, 0.125] and np.isnan(other.history["loss"][2])
    assert other.history["acc"] == [0.25]
    assert other.last("acc") == 0.25 and np.isnan(other.last("missing"))


@pytest.mark.parametrize("value", ["high", None, True, [1.0]])
def test_training_progress_rejects_non_numeric_metrics(value):
    with pytest.raises(ValueError, match="metric loss="):
        TrainingProgress().record(loss=value)


def test_training_progress_load_names_missing_keys():
    with pytest.raises(ValueError, match=r"missing \['history'\]"):
        TrainingProgress().load_state_dict({"step": 1, "episode": 0, "epoch": 0, "batch": 0})


# ------------------------------------------------------------------------------- collect / restore


class Counter:
    """A user object with the state_dict()/load_state_dict() pair."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def make_objects(seed: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    return {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler, "counter": Counter(),
            "progress": TrainingProgress(), "gens": SeededGenerators(seed), "np_gen": np.random.default_rng(seed)}


def train_steps(objs: dict, n: int) -> None:
    model, opt, sched = objs["model"], objs["optimizer"], objs["scheduler"]
    for _ in range(n):
        x = torch.randn(16, 4, generator=objs["gens"].torch) + float(objs["np_gen"].normal())
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        objs["scaler"].scale(loss).backward()
        objs["scaler"].step(opt)
        objs["scaler"].update()
        sched.step()
        objs["counter"].n += 1
        objs["progress"].step += 1
        objs["progress"].record(loss=loss.item())


def test_collect_and_restore_continue_training_identically_after_weights_only_loading():
    objs = make_objects(0)
    train_steps(objs, 3)
    state = weights_only_round_trip(collect_state(objs, note="hello", epoch_seconds=[1.5]))
    train_steps(objs, 4)
    expected = [p.detach().clone() for p in objs["model"].parameters()]

    fresh = make_objects(123)  # different seed: whatever is not restored shows up as a difference
    extra = restore_state(fresh, state)
    train_steps(fresh, 4)
    assert extra == {"note": "hello", "epoch_seconds": [1.5]}
    assert all(torch.equal(a, b) for a, b in zip(expected, fresh["model"].parameters(), strict=True))
    assert fresh["counter"].n == 7 and fresh["progress"].history == objs["progress"].history
    assert fresh["scheduler"].state_dict() == objs["scheduler"].state_dict()
    assert fresh["scaler"].get_scale() == objs["scaler"].get_scale()


@pytest.mark.parametrize(
    ("drop", "add", "message"),
    [
        ("counter", None, r"missing from the saved state: \['counter'\]"),
        (None, "stranger", r"in the saved state but not given: \['stranger'\]"),
    ],
)
def test_restore_state_strict_names_missing_and_extra_objects_and_changes_nothing(drop, add, message):
    objs = make_objects(0)
    saved_objs = dict(objs)
    if drop:
        saved_objs.pop(drop)
    if add:
        saved_objs[add] = Counter()
    state = collect_state(saved_objs)
    target = make_objects(5)
    before = [p.detach().clone() for p in target["model"].parameters()]
    with pytest.raises(ValueError, match=message):
        restore_state(target, state)
    assert all(torch.equal(a, b) for a, b in zip(before, target["model"].parameters(), strict=True))
    restore_state(target, state, strict=False)  # restores the common objects
    assert all(torch.equal(a, b) for a, b in zip(objs["model"].parameters(), target["model"].parameters(), strict=True))


def test_restore_state_names_the_object_whose_load_fails():
    state = collect_state({"model": nn.Linear(3, 2)})
    with pytest.raises(ValueError, match=r"restoring objects\['model'\] \(Linear\) failed"):
        restore_state({"model": nn.Linear(4, 2)}, state)


@pytest.mark.parametrize("state", [{"format": "other"}, [1, 2], {"format": "atheria-state", "version": 99}])
def test_restore_state_rejects_foreign_states(state):
    with pytest.raises(ValueError, match="state (format|version)="):
        restore_state({}, state)


def test_collect_state_rejects_objects_without_state_dict_naming_them():
    with pytest.raises(ValueError, match=r"objects\['thing'\] is a object without state_dict"):
        collect_state({"thing": object()})


class NumpyHolder:
    def state_dict(self):
        return {"weights": [1, {"inner": np.zeros(2)}]}


def test_collect_state_names_the_path_of_a_value_weights_only_would_refuse():
    with pytest.raises(ValueError, match=r"objects\['bad'\]\['weights'\]\[1\]\['inner'\] is a numpy.ndarray"):
        collect_state({"bad": NumpyHolder()})
    with pytest.raises(ValueError, match=r"extra\['when'\] is a"):
        collect_state({}, when=np.float64(1.0))


# ------------------------------------------------------------------------------ plain-type walk

Point = collections.namedtuple("Point", "x y")

PLAIN_SAMPLES = [
    None, True, 3, 2**100, 1.5, float("nan"), 1 + 2j, "s", b"bytes", torch.zeros(2, dtype=torch.int64),
    nn.Parameter(torch.ones(2)), torch.Size([2, 3]), torch.float16, torch.device("cpu"),
    {"a": [1, (2, 3)], 4: {5}, (6, "t"): 7}, collections.OrderedDict(x=torch.ones(1)),
]


@pytest.mark.parametrize("value", PLAIN_SAMPLES, ids=repr)
def test_what_validate_plain_accepts_loads_under_weights_only(value):
    validate_plain(value)
    loaded = weights_only_round_trip({"v": value})["v"]
    assert type(loaded) is type(value) or isinstance(value, nn.Parameter)


@pytest.mark.parametrize(
    "value",
    [np.zeros(2), np.int64(3), Point(1, 2), Counter(), object()],
    ids=repr,
)
def test_what_validate_plain_refuses_does_not_load_under_weights_only(value):
    with pytest.raises(ValueError, match="state"):
        validate_plain({"v": value})
    with pytest.raises(pickle.UnpicklingError):
        weights_only_round_trip({"v": value})


def walk(value, path="state"):
    """Independent walk: yield (path, type) of every leaf."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, type(value)


def test_a_full_collected_state_holds_only_tensors_and_plain_types():
    objs = make_objects(0)
    train_steps(objs, 2)
    state = collect_state(objs)
    allowed = {type(None), bool, int, float, str, torch.Tensor, torch.nn.Parameter}
    leaves = list(walk(state))
    assert {t for _p, t in leaves} <= allowed, [(p, t) for p, t in leaves if t not in allowed]
    assert any(path.startswith("state['rng']['numpy']") for path, _t in leaves)
    # A pickle that would run code on load is not in here; a weights_only load proves it rebuilds from plain parts.
    weights_only_round_trip(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_cuda_device_rng_is_captured_and_restored():
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    state = weights_only_round_trip(capture_rng_state())
    assert len(state["cuda"]) == len(devices)
    expected = [torch.rand(3, device=d).tolist() for d in devices]
    torch.cuda.manual_seed_all(123)
    restore_rng_state(state)
    assert [torch.rand(3, device=d).tolist() for d in devices] == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks resuming a GPU run's state on a CPU-only machine")
def test_cuda_states_without_cuda_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture):
    state = capture_rng_state()
    state["cuda"] = [torch.get_rng_state()]  # stands in for the state a GPU session saved
    expected = draws()
    restore_rng_state(state)
    assert draws() == expected  # everything else is still restored
    assert "RNG states for 1 CUDA device(s) but 0 are available" in caplog.text
