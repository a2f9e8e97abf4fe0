"""RankContext without a process group is one process; PerRank and sharded models are checked at the boundary."""

from __future__ import annotations

import datetime

import pytest
import torch

from atheria_kit import SessionConfig, TrainingSession
from atheria_kit.distributed import PerRank, RankContext, ShardedStateError, refuse_sharded, unwrap_model
from tests.helpers import free_port


def test_without_a_process_group_every_collective_is_the_identity():
    ctx = RankContext.current()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.broadcast({"a": 1}) == {"a": 1}
    assert ctx.gather(5) == [5]
    assert ctx.mean({"loss": 2.5}) == {"loss": 2.5}
    assert ctx.any(True) and not ctx.any(False)
    ctx.barrier()


def test_ddp_models_are_saved_as_the_module_inside():
    model = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.nn.DataParallel(model)) is model
    assert unwrap_model(model) is model


def test_per_rank_needs_something_with_a_state():
    PerRank(torch.Generator())
    with pytest.raises(ValueError, match=r"PerRank\(object\) is invalid"):
        PerRank(object())


@pytest.fixture
def one_rank_group():
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                         world_size=1, timeout=datetime.timedelta(seconds=30))
    yield
    torch.distributed.destroy_process_group()


def test_a_model_with_sharded_parameters_is_refused_by_name(one_rank_group, tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    model = torch.nn.Linear(4, 4)
    model.weight = torch.nn.Parameter(distribute_tensor(model.weight.detach(), mesh, [Shard(0)]))
    with pytest.raises(ShardedStateError, match="model=Linear holds sharded state"):
        refuse_sharded("model", model)
    cfg = SessionConfig(experiment_name="s", root=str(tmp_path), total_episodes=2, live_view="off",
                        drive_sync_every=0, handle_signals=False)
    with TrainingSession(cfg) as session, pytest.raises(ShardedStateError):
        session.restore(model=model)
    assert not list((tmp_path / "checkpoints" / "s").glob("ckpt-*"))  # refused before anything was saved
