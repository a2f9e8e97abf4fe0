"""ParallelStrategyTrainer: tasks run at once in processes; a hung task is killed, a crash hurts nobody else."""

from __future__ import annotations

import os
import signal
import sys
import threading

import psutil
import pytest

from atheria_kit.trainers.parallel import ParallelStrategyTrainer, Task, TaskResult, summarize

# Task functions live at module level: workers import this module to unpickle them. (Importing it must stay cheap:
# it does not import torch.)


def score(x: float) -> dict:
    return {"value": x * x, "metrics": {"loss": 1.0 / (1.0 + x), "trades": 3}}


def whoami() -> int:
    return os.getpid()


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def exit_hard(code: int) -> None:
    os._exit(code)


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hang_forever() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a polite terminate() would not stop it
    threading.Event().wait()


def spin_forever() -> None:
    while True:
        pass


def _gone(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pid(result: TaskResult) -> int:
    assert result.worker and result.worker.startswith("pid ")
    return int(result.worker.split()[1])


def test_each_task_gets_a_summary_and_failures_stay_isolated():
    tasks = [
        Task("good-1", score, (1.0,)),
        Task("hung", hang_forever, timeout=2.0),
        Task("raises", raise_value_error, ("bad parameter alpha",)),
        Task("exits", exit_hard, (7,)),
        Task("good-2", score, (3.0,)),
        Task("killed", sigkill_self),
        ("good-3", score, (0.0,)),
    ]
    seen: list[str] = []
    results = ParallelStrategyTrainer(max_workers=2).run(tasks, on_result=lambda r: seen.append(r.name))
    by_name = {r.name: r for r in results}
    assert [r.name for r in results] == [t.name if isinstance(t, Task) else t[0] for t in tasks]
    assert sorted(seen) == sorted(by_name)
    assert {n: r.status for n, r in by_name.items()} == {
        "good-1": "ok", "hung": "timeout", "raises": "error", "exits": "error", "good-2": "ok", "killed": "error",
        "good-3": "ok"}
    assert by_name["good-2"].result == {"value": 9.0, "metrics": {"loss": 0.25, "trades": 3}}
    assert by_name["good-2"].metrics == {"loss": 0.25, "trades": 3.0}
    assert "ValueError: bad parameter alpha" in by_name["raises"].error
    assert "raise_value_error" in by_name["raises"].traceback
    assert "terminated" in by_name["exits"].error.lower()
    assert "timed out after 2s" in by_name["hung"].error
    assert _gone(_pid(by_name["hung"]))  # really stopped, although it ignored SIGTERM
    table = summarize(results)
    assert table.loc["good-1", "status"] == "ok" and table.loc["hung", "status"] == "timeout"
    assert table.loc["good-1", "metric.loss"] == 0.5


def test_a_busy_looping_task_is_killed_while_the_others_finish():
    results = ParallelStrategyTrainer(max_workers=2, timeout=60).run(
        [Task("spin", spin_forever, timeout=1.5)] + [Task(f"ok-{i}", score, (float(i),)) for i in range(4)])
    assert [r.status for r in results] == ["timeout", "ok", "ok", "ok", "ok"]
    assert _gone(_pid(results[0]))


def test_workers_are_processes_reused_across_tasks_and_replaced_after_a_crash():
    parent = os.getpid()
    results = ParallelStrategyTrainer(max_workers=1).run(
        [Task("a", whoami), Task("b", whoami), Task("crash", exit_hard, (3,)), Task("c", whoami)])
    pid_a, pid_b, pid_c = results[0].result, results[1].result, results[3].result
    assert parent not in (pid_a, pid_c)
    assert pid_a == pid_b  # the started worker is reused
    assert pid_c != pid_a and results[2].status == "error"  # the crashed one is replaced


def test_default_worker_count_comes_from_the_cpu_count():
    import joblib

    trainer = ParallelStrategyTrainer()
    assert trainer._workers(100) == joblib.cpu_count()
    assert trainer._workers(1) == 1
    assert ParallelStrategyTrainer(max_workers=5)._workers(100) == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [({"timeout": 0}, "timeout=0"), ({"backend": "ray"}, "backend='ray'"), ({"max_workers": 0}, "max_workers=0")],
)
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParallelStrategyTrainer(**kwargs)


def test_bad_tasks_are_rejected_before_anything_runs():
    trainer = ParallelStrategyTrainer(max_workers=1)
    with pytest.raises(ValueError, match="repeated"):
        trainer.run([Task("x", whoami), Task("x", whoami)])
    with pytest.raises(ValueError, match="callable"):
        Task("y", 42)
    with pytest.raises(ValueError, match="expected a Task"):
        trainer.run(["not a task"])
    assert trainer.run([]) == []


# ---------------------------------------------------------------------------------------------- dask

_RELEASE = threading.Event()  # the dask test runs in-process (processes=False), so workers see this very object


def wait_for_release() -> str:
    _RELEASE.wait(120)
    return "released"


@pytest.fixture
def dask_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=3, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def test_dask_backend_same_interface_with_cancellation_on_timeout(dask_client):
    _RELEASE.clear()
    tasks = [Task("ok", score, (2.0,)), Task("raises", raise_value_error, ("nope",)),
             Task("hung", wait_for_release, timeout=1.0), Task("ok-2", score, (1.0,))]
    try:
        results = ParallelStrategyTrainer(backend="dask", client=dask_client).run(tasks)
        # run() returned on time while the hung task's thread is still blocked: dask cancels, it cannot kill
        assert not _RELEASE.is_set()
    finally:
        _RELEASE.set()
    assert [r.status for r in results] == ["ok", "error", "timeout", "ok"]
    assert results[0].metrics == {"loss": pytest.approx(1 / 3), "trades": 3.0}
    assert "ValueError: nope" in results[1].error
    assert "cancelled" in results[2].error


def test_parallel_module_does_not_import_torch():
    """Workers import the task's module and ours; they should not pay for torch unless the task needs it."""
    import subprocess

    code = "import atheria_kit.trainers.parallel, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
