"""Specification of ResumableLoader: shuffled epochs that resume at any batch, bit-identically."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from atheria_kit.resumable import ResumableLoader
from tests.helpers import weights_only_round_trip

N, BATCH = 23, 5  # 5 batches per epoch, the last one has 3 samples


def ids() -> TensorDataset:
    return TensorDataset(torch.arange(N))


def epochs(loader: ResumableLoader, count: int) -> list[list[int]]:
    """The sample ids of each batch, for `count` calls of `for batch in loader`."""
    return [[b[0].tolist() for b in loader] for _ in range(count)]


def test_each_epoch_is_a_fresh_permutation_of_all_samples():
    loader = ResumableLoader(ids(), batch_size=BATCH, seed=0)
    assert len(loader) == 5
    runs = epochs(loader, 3)
    flat = [sorted(sum(batches, [])) for batches in runs]
    assert flat == [list(range(N))] * 3
    assert runs[0] != runs[1] != runs[2]
    assert [len(b) for b in runs[0]] == [5, 5, 5, 5, 3]
    assert loader.epoch == 3 and loader.batch == 0


@pytest.mark.parametrize("stop_after", [1, 3, 5], ids=["batch-1", "mid-epoch", "after-last-batch"])
def test_resumed_loader_yields_exactly_what_the_uninterrupted_one_would(stop_after: int):
    reference = ResumableLoader(ids(), batch_size=BATCH, seed=11)
    expected = epochs(reference, 1)[0] + sum(epochs(reference, 2), [])

    first = ResumableLoader(ids(), batch_size=BATCH, seed=11)
    seen = []
    for batch in first:
        seen.append(batch[0].tolist())
        if len(seen) == stop_after:
            break
    state = weights_only_round_trip(first.state_dict())
    assert (state["epoch"], state["batch"]) == (0, stop_after)

    resumed = ResumableLoader(ids(), batch_size=BATCH, seed=999)  # restored state overrides the seed
    resumed.load_state_dict(state)
    seen += sum(epochs(resumed, 3), [])  # the rest of epoch 0, then epochs 1 and 2
    assert seen == expected


def test_draws_the_user_makes_from_a_shared_generator_mid_epoch_survive_the_resume():
    gen = torch.Generator().manual_seed(5)
    loader = ResumableLoader(ids(), batch_size=BATCH, generator=gen)
    it = iter(loader)
    next(it), next(it)
    torch.rand(3, generator=gen)  # e.g. augmentation noise from the same generator, mid-epoch
    state = weights_only_round_trip(loader.state_dict())
    rest_of_epoch = [b[0].tolist() for b in it]
    next_epoch = epochs(loader, 1)[0]
    next_draw = torch.rand(2, generator=gen)

    gen2 = torch.Generator().manual_seed(0)
    resumed = ResumableLoader(ids(), batch_size=BATCH, generator=gen2)
    resumed.load_state_dict(state)
    assert epochs(resumed, 2) == [rest_of_epoch, next_epoch]
    assert torch.equal(torch.rand(2, generator=gen2), next_draw)


def test_iterating_never_touches_the_global_torch_rng():
    # A plain shuffling DataLoader draws from the global RNG at every epoch, which after a mid-epoch
    # resume would shift every later dropout mask; ResumableLoader does not.
    before = torch.get_rng_state()
    list(DataLoader(ids(), batch_size=BATCH, shuffle=True, generator=None))
    assert not torch.equal(before, torch.get_rng_state())
    loader = ResumableLoader(ids(), batch_size=BATCH, seed=1)
    before = torch.get_rng_state()
    epochs(loader, 2)
    assert torch.equal(before, torch.get_rng_state())


def test_unshuffled_and_drop_last():
    loader = ResumableLoader(ids(), batch_size=BATCH, shuffle=False, drop_last=True, seed=0)
    assert len(loader) == 4
    assert epochs(loader, 1)[0] == [list(range(i, i + 5)) for i in range(0, 20, 5)]


@pytest.mark.parametrize(
    ("change", "field"),
    [({"batch_size": 4}, "batch_size"), ({"shuffle": False}, "shuffle"), ({"drop_last": True}, "drop_last")],
)
def test_load_refuses_a_state_saved_with_other_settings(change: dict, field: str):
    state = ResumableLoader(ids(), batch_size=BATCH, seed=0).state_dict()
    other = ResumableLoader(ids(), **{"batch_size": BATCH, "seed": 0, **change})
    with pytest.raises(ValueError, match=f"{field}=.*saved with {field}="):
        other.load_state_dict(state)


def test_load_refuses_a_state_of_a_dataset_of_another_size():
    state = ResumableLoader(ids(), batch_size=BATCH, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_samples=24 but the checkpoint was saved with num_samples=23"):
        ResumableLoader(TensorDataset(torch.arange(24)), batch_size=BATCH).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"sampler": None}, r"sets \['sampler'\] itself"),
        ({"shuffle": True, "generator": torch.Generator(), "seed": 1}, "either generator= or seed="),
    ],
)
def test_bad_arguments_are_refused_early(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        ResumableLoader(ids(), **kwargs)


def test_an_iterable_dataset_without_len_is_refused():
    with pytest.raises(ValueError, match="dataset=.*map-style"):
        ResumableLoader(iter(range(3)), batch_size=2)


# --- data-parallel: shards of one permutation, a position that means the same on any number of processes ---

def _shard_batches(num_replicas, batch_size, state=None, passes=1, seed=3):
    """Each rank's batches (sample ids) for ``passes`` loops, every rank from the same (optional) state."""
    out = []
    for rank in range(num_replicas):
        loader = ResumableLoader(ids(), batch_size=batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        if state is not None:
            loader.load_state_dict(state)
        out.append([[b[0].tolist() for b in loader] for _ in range(passes)])
    return out


def test_ranks_take_interleaved_shards_of_one_permutation():
    # 23 samples on 2 ranks, batch 2: the one-process order cut into global batches of 4 (rank 0 gets positions
    # 0 and 2 of each, rank 1 positions 1 and 3); the odd tail is padded with the first index, as DistributedSampler.
    order = [b for batch in _shard_batches(1, 4)[0][0] for b in batch]
    shards = _shard_batches(2, 2)
    padded = order + order[:1]
    assert [i for batch in shards[0][0] for i in batch] == padded[0::2]
    assert [i for batch in shards[1][0] for i in batch] == padded[1::2]


def test_a_position_saved_on_two_processes_resumes_on_one_at_the_same_sample():
    one = ResumableLoader(ids(), batch_size=4, seed=3)
    full_order = [i for batch in one for i in batch[0].tolist()]
    two = [ResumableLoader(ids(), batch_size=2, seed=3, num_replicas=2, rank=r) for r in range(2)]
    iters = [iter(loader) for loader in two]
    for _ in range(3):  # three global batches of 4 = the first 12 samples of the permutation
        for it in iters:
            next(it)
    state = two[0].state_dict()
    assert state["consumed"] == 12 and two[1].state_dict()["consumed"] == 12
    resumed = ResumableLoader(ids(), batch_size=4, seed=99, num_replicas=1, rank=0)
    resumed.load_state_dict(state)
    rest = [i for batch in resumed for i in batch[0].tolist()]
    assert rest == full_order[12:]  # nothing of the epoch seen twice or skipped


def test_a_position_saved_on_one_process_resumes_on_two():
    one = ResumableLoader(ids(), batch_size=4, seed=3)
    it = iter(one)
    first = [next(it)[0].tolist() for _ in range(2)]
    state = one.state_dict()
    rest = _shard_batches(2, 2, state=state)
    seen = sorted(sum(first, []) + [i for r in rest for batch in r[0] for i in batch])
    # 8 consumed + the remaining 15 split over 2 ranks (padded to 16): every sample, one padding repeat
    assert sorted(set(seen)) == list(range(N)) and len(seen) == N + 1


def test_shard_settings_are_checked():
    with pytest.raises(ValueError, match="rank=2 is invalid"):
        ResumableLoader(ids(), batch_size=2, seed=0, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        ResumableLoader(ids(), batch_size=2, seed=0, num_replicas=0, rank=0)
