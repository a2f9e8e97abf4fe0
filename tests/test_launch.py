"""``launch`` runs a function on every local process of a data-parallel job, from a notebook.

Real processes, CPU, the gloo backend, 2 ranks. The fork path runs functions defined here; the torchrun path
(forced by simulating a kernel that already used CUDA, which is the check ``launch`` itself uses) runs functions of
a module written to a temporary folder, or a "notebook" function: source compiled under a cell-like file name and
registered in ``linecache``, exactly as IPython does, in a namespace whose ``__name__`` is ``__main__``.
"""

from __future__ import annotations

import importlib
import io
import json
import linecache
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

from atheria_kit.launch import LaunchError, _cuda_driver_mapped, _Output, launch
from atheria_kit.say import UserError

SIMULATED_CUDA = {"cuda_initialized": lambda: True}  # forces the torchrun fallback


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(folder.glob("pid-*"))]


class Lines(io.StringIO):
    """A stream that keeps what it was given; ``on_write`` sees the text so far after every write."""

    def __init__(self, on_write=None):
        super().__init__()
        self.on_write = on_write

    def write(self, text: str) -> int:
        n = super().write(text)
        if self.on_write is not None:
            self.on_write(self.getvalue())
        return n

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


# ---------------------------------------------------------------------------------------------------------------
# Functions the forked ranks run (fork copies this module: nothing needs importing)


def report_rank(folder: str, scale: float) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # 1 + 2 on two ranks
    env = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    record = {"rank": rank, "world": world, "sum": total.item() * scale, "env": env, "pid": os.getpid(),
              "parent": os.getppid()}
    Path(folder, f"rank-{rank}.json").write_text(json.dumps(record))
    print(f"hello from rank {rank} of {world}")
    return record


def fail_on_rank_one(folder: str, ignore_sigterm: bool) -> None:
    Path(folder, f"pid-{dist.get_rank()}").write_text(str(os.getpid()))
    if dist.get_rank() == 1:
        raise ValueError("rank one broke")
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    threading.Event().wait()  # never returns: only the launcher's teardown ends this rank


def killed_on_rank_one() -> None:
    if dist.get_rank() == 1:
        print("rank 1 is about to be killed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does
    dist.barrier()  # rank 0 then fails too ("connection closed by peer"): a consequence, not the cause


def return_unpicklable() -> object:
    return lambda: None


def block_forever(folder: str) -> None:
    Path(folder, f"pid-{dist.get_rank()}").write_text(str(os.getpid()))
    print("ready", flush=True)
    threading.Event().wait()


# ---------------------------------------------------------------------------------------------------------------
# One process, boundary checks


def test_one_process_just_calls_the_function_here():
    def where(a, b=0):
        return os.getpid(), dist.is_initialized(), a + b

    assert launch(where, 2, b=3, nprocs=1) == (os.getpid(), False, 5)


@pytest.mark.parametrize("nprocs", [0, -2, 1.5, True, "two", None])
def test_bad_nprocs_is_refused_naming_the_field(nprocs):
    with pytest.raises(ValueError, match=r"nprocs=.* is invalid; expected .*integer"):
        launch(print, nprocs=nprocs)


def test_auto_without_gpus_is_one_process_here():
    if torch.cuda.device_count():
        pytest.skip("GPUs visible: auto means one process per GPU")
    assert launch(os.getpid) == os.getpid()


def test_bad_backend_and_nccl_without_gpus_are_refused():
    with pytest.raises(ValueError, match=r"backend='mpi' is invalid; expected one of 'nccl', 'gloo'"):
        launch(print, nprocs=2, backend="mpi")
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match=r"nprocs=2 is invalid with backend='nccl'.*GPU"):
            launch(print, nprocs=2, backend="nccl")


def test_fork_is_refused_when_cuda_is_in_use():
    with pytest.raises(UserError, match=r"launch\(method='fork'\) is not safe here: CUDA is already in use"):
        launch(print, nprocs=2, method="fork", **SIMULATED_CUDA)


def test_a_process_group_already_in_this_process_is_refused(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(UserError, match=r"launch\(nprocs=2\) starts its own process group.*destroy_process_group"):
            launch(print, nprocs=2)
    finally:
        dist.destroy_process_group()


def test_a_loaded_cuda_driver_counts_as_cuda_in_use(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f01-7f02 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert not _cuda_driver_mapped(str(maps))
    maps.write_text(maps.read_text() + "7f03-7f04 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libcuda.so.1\n")
    assert _cuda_driver_mapped(str(maps))


def test_output_lines_are_prefixed_whole_and_progress_bars_keep_their_carriage_returns():
    read, write = os.pipe()
    out = Lines()
    output = _Output(out, {read: 3})
    for chunk in (b"one\r\ntw", b"o\r", b"\nthree\rfo", "ur \u00e9".encode()[:-1], "ur \u00e9".encode()[-1:]):
        os.write(write, chunk)
        output.pump(0, [])
    os.close(write)
    output.drain()
    # "\r\n" split across two reads is one line end; a lone "\r" (a progress bar) redraws the prefixed line.
    assert out.getvalue() == "[rank 3] one\n[rank 3] two\n[rank 3] three\r[rank 3] four \u00e9\n"
    assert list(output.tails[3]) == ["one", "two", "three", "four \u00e9"]
    os.close(read)


# ---------------------------------------------------------------------------------------------------------------
# Fork path


def test_fork_path_runs_every_rank_in_one_process_group(tmp_path):
    out = Lines()
    result = launch(report_rank, str(tmp_path), 10.0, nprocs=2, stream=out)

    records = {r: json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)}
    assert result == records[0]  # rank 0's return value comes back
    for rank, record in records.items():
        assert (record["rank"], record["world"], record["sum"]) == (rank, 2, 30.0)
        assert record["env"]["RANK"] == record["env"]["LOCAL_RANK"] == str(rank)
        assert record["env"]["WORLD_SIZE"] == "2" and record["env"]["MASTER_ADDR"] == "127.0.0.1"
        assert record["parent"] == os.getpid() != record["pid"]  # forked from this process
    assert records[0]["env"]["MASTER_PORT"] == records[1]["env"]["MASTER_PORT"]
    assert sorted(out.lines()) == ["[rank 0] hello from rank 0 of 2", "[rank 1] hello from rank 1 of 2"]
    assert not dist.is_initialized()  # the caller's process never joins the group


def parallel_cpu_work() -> float:
    big = torch.randn(600, 600, generator=torch.Generator().manual_seed(dist.get_rank()))
    return float((big @ big).tanh().sum())


def test_fork_path_ranks_compute_after_the_kernel_used_its_cpu_thread_pool():
    # A notebook has run torch ops before it launches; a forked rank that used the copied OpenMP pool would hang.
    warm = torch.randn(600, 600)
    (warm @ warm).tanh()
    big = torch.randn(600, 600, generator=torch.Generator().manual_seed(0))
    assert launch(parallel_cpu_work, nprocs=2, stream=Lines()) == pytest.approx(float((big @ big).tanh().sum()))


def test_fork_path_failed_rank_stops_the_others_and_is_named(tmp_path):
    with pytest.raises(LaunchError) as caught:
        launch(fail_on_rank_one, str(tmp_path), False, nprocs=2, stream=Lines())
    err = caught.value
    assert (err.rank, err.exitcode) == (1, 1)
    assert "rank 1 of 2 failed with exit code 1: ValueError: rank one broke" in str(err)
    assert err.lines[-1] == "ValueError: rank one broke"
    assert all(_gone(pid) for pid in _pids(tmp_path))


def test_fork_path_names_a_rank_killed_by_a_signal_not_the_peer_that_lost_it():
    with pytest.raises(LaunchError, match=r"rank 1 of 2 was killed by SIGKILL \(exit code -9\)") as caught:
        launch(killed_on_rank_one, nprocs=2, stream=Lines())
    assert (caught.value.rank, caught.value.exitcode) == (1, -9)
    assert caught.value.lines == ("rank 1 is about to be killed",)


def test_fork_path_kills_a_rank_that_ignores_sigterm_after_the_timeout(tmp_path):
    with pytest.raises(LaunchError, match="rank 1 of 2 failed"):
        launch(fail_on_rank_one, str(tmp_path), True, nprocs=2, stream=Lines(), shutdown_timeout=0.5)
    assert all(_gone(pid) for pid in _pids(tmp_path))


def test_fork_path_refuses_an_unpicklable_result_naming_rank_0():
    with pytest.raises(LaunchError, match=r"rank 0 of 2 failed.*return value \(function\) cannot be sent back"):
        launch(return_unpicklable, nprocs=2, stream=Lines())


def test_fork_path_interrupt_kills_every_rank(tmp_path):
    def interrupt_when_both_ready(text):
        if "[rank 0] ready" in text and "[rank 1] ready" in text:
            raise KeyboardInterrupt  # as the notebook's stop button does, while launch waits

    with pytest.raises(KeyboardInterrupt):
        launch(block_forever, str(tmp_path), nprocs=2, stream=Lines(interrupt_when_both_ready))
    assert len(_pids(tmp_path)) == 2 and all(_gone(pid) for pid in _pids(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# torchrun path

TARGETS = '''
import os
import threading
from pathlib import Path

import torch
import torch.distributed as dist


def greet(scale):
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    print(f"hello from rank {dist.get_rank()} of {dist.get_world_size()}")
    print(f"sum {total.item()}")
    return {"rank": dist.get_rank(), "sum": total.item() * scale, "parent": os.getppid(), "total": total}


def fail_on_rank_one(folder):
    Path(folder, f"pid-{dist.get_rank()}").write_text(str(os.getpid()))
    if dist.get_rank() == 1:
        raise ValueError("rank one broke")
    threading.Event().wait()


def block_forever(folder):
    Path(folder, f"pid-{dist.get_rank()}").write_text(str(os.getpid()))
    print("ready", flush=True)
    threading.Event().wait()
'''


@pytest.fixture
def targets(tmp_path, monkeypatch):
    """A module of the user's, next to the notebook: importable here, and by the ranks."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "launch_targets.py").write_text(TARGETS)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("launch_targets")
    yield module
    sys.modules.pop("launch_targets", None)


def test_torchrun_path_streams_every_rank_prefixed_and_returns_rank_0(targets):
    out = Lines()
    result = launch(targets.greet, 10.0, nprocs=2, stream=out, **SIMULATED_CUDA)

    assert result["rank"] == 0 and result["sum"] == 30.0 and torch.equal(result["total"], torch.tensor([3.0]))
    assert result["parent"] != os.getpid()  # rank 0 was started by torchrun, not forked from here
    assert sorted(out.lines()) == ["[rank 0] hello from rank 0 of 2", "[rank 0] sum 3.0",
                                   "[rank 1] hello from rank 1 of 2", "[rank 1] sum 3.0"]


@pytest.mark.slow  # a second and third torchrun start (~10 s each on 2 shared cores); the fork path covers it fast
def test_torchrun_path_failed_rank_is_named_and_no_process_survives(targets, tmp_path):
    with pytest.raises(LaunchError) as caught:
        launch(targets.fail_on_rank_one, str(tmp_path), nprocs=2, stream=Lines(), **SIMULATED_CUDA)
    err = caught.value
    assert (err.rank, err.exitcode) == (1, 1)
    assert "rank 1 of 2 failed with exit code 1: ValueError: rank one broke" in str(err)
    assert err.lines[-1] == "ValueError: rank one broke"
    assert len(_pids(tmp_path)) == 2 and all(_gone(pid) for pid in _pids(tmp_path))


@pytest.mark.slow
def test_torchrun_path_interrupt_kills_torchrun_and_every_rank(targets, tmp_path):
    group: list[psutil.Process] = []

    def interrupt_when_both_ready(text):
        if "[rank 0] ready" in text and "[rank 1] ready" in text:
            group.extend(psutil.Process().children(recursive=True))  # torchrun and its ranks
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch(targets.block_forever, str(tmp_path), nprocs=2, stream=Lines(interrupt_when_both_ready),
               **SIMULATED_CUDA)
    assert set(_pids(tmp_path)) <= {p.pid for p in group}
    assert len(group) >= 3 and all(_gone(p.pid) for p in group)


NOTEBOOK_CELL = '''
import math
import torch.distributed as dist

def train(steps, lr=0.1):
    import torch
    weight = torch.ones(1) * (dist.get_rank() + 1)
    for _ in range(steps):
        dist.all_reduce(weight)
        weight /= dist.get_world_size()
    print(f"weight {weight.item()} lr {lr}")
    return {"weight": weight.item(), "digits": math.floor(math.log10(steps)) + 1}
'''


def notebook_namespace(source: str, cell: str = "/tmp/ipykernel_4242/2718281828.py") -> dict:
    """Run ``source`` as IPython runs a cell: compiled under a cell file name that linecache knows."""
    linecache.cache[cell] = (len(source), None, source.splitlines(keepends=True), cell)
    namespace = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    return namespace


def test_notebook_function_runs_under_torchrun_from_its_source():
    train = notebook_namespace(NOTEBOOK_CELL)["train"]
    out = Lines()
    result = launch(train, 12, lr=0.5, nprocs=2, stream=out, **SIMULATED_CUDA)

    # Both ranks start at 1 and 2; each step all-reduces (sum) and averages: 1.5 after the first, then it stays.
    assert result == {"weight": 1.5, "digits": 2}
    assert sorted(out.lines()) == ["[rank 0] weight 1.5 lr 0.5", "[rank 1] weight 1.5 lr 0.5"]


def test_notebook_functions_that_cannot_run_from_source_are_refused_before_anything_starts():
    cell = notebook_namespace(textwrap.dedent('''
        SCALE = 3.0

        class Config:
            pass

        def uses_a_notebook_variable():
            return SCALE

        def make_closure():
            factor = 2
            def closure():
                return factor
            return closure

        def plain(config):
            return config
    '''), cell="/tmp/ipykernel_4242/3141592653.py")
    with pytest.raises(UserError, match=r"reads SCALE \(float\) from the notebook.*self-contained"):
        launch(cell["uses_a_notebook_variable"], nprocs=2, **SIMULATED_CUDA)
    with pytest.raises(UserError, match="closure over factor"):
        launch(cell["make_closure"](), nprocs=2, **SIMULATED_CUDA)
    with pytest.raises(UserError, match="cannot run a lambda"):
        launch(lambda: 1, nprocs=2, **SIMULATED_CUDA)
    with pytest.raises(UserError, match=r"args given to launch to be picklable.*Config is defined in the notebook"):
        launch(cell["plain"], cell["Config"](), nprocs=2, **SIMULATED_CUDA)
    unregistered: dict = {"__name__": "__main__"}
    exec(compile("def lost():\n    return 1\n", "<string>", "exec"), unregistered)
    with pytest.raises(UserError, match="source code is not available"):
        launch(unregistered["lost"], nprocs=2, **SIMULATED_CUDA)


@pytest.mark.slow  # a Jupyter kernel and a torchrun start: ~30 s on 2 shared cores
def test_both_paths_work_from_a_real_jupyter_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        "import torch.distributed as dist\nfrom atheria_kit.launch import launch\n\n"
        "def train(scale):\n    import torch\n    total = torch.tensor([dist.get_rank() + 1.0])\n"
        "    dist.all_reduce(total)\n    print(f'sum {total.item()}')\n    return total.item() * scale",
        "print('fork', launch(train, 10.0, nprocs=2))",
        "print('torchrun', launch(train, 10.0, nprocs=2, cuda_initialized=lambda: True))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=180, resources={"metadata": {"path": str(tmp_path)}}).execute()
    for cell, path in ((nb.cells[1], "fork"), (nb.cells[2], "torchrun")):
        lines = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout").splitlines()
        assert sorted(lines) == ["[rank 0] sum 3.0", "[rank 1] sum 3.0", f"{path} 30.0"], cell.outputs
