"""``ParallelStrategyTrainer``: run several training tasks at once, each with a timeout that really stops it.

Why not ``joblib.Parallel(timeout=...)``: joblib raises in the parent but leaves the hung worker running (and then
breaks the whole batch). Here every concurrent *slot* is its own one-worker loky executor: loky gives joblib's
process start-up and cloudpickle (so functions defined in a notebook work), while the isolation means a timed-out task
is stopped by SIGKILL of its own worker process tree only, and a task that crashes its worker (exception,
``os._exit``, SIGKILL, segfault) breaks only its own slot, which is replaced. Healthy workers are reused from task to
task, so the per-process start cost is paid once per slot, not once per task.

On a dask cluster (``backend="dask"``) the same interface submits futures through the ``distributed`` client (the
machinery joblib's dask backend uses, but with per-task futures we can time out). A timed-out task is cancelled and
reported on time, but dask cannot kill a running Python thread: the task's thread keeps its worker slot until it
returns (see docs/trainers.md).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import logging
import math
import os
import signal
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from atheria_kit._validation import require_choice, require_int, require_positive

logger = logging.getLogger(__name__)

BACKENDS = ("loky", "dask")
STATUSES = ("ok", "timeout", "error")


@dataclass
class Task:
    """One unit of work: ``fn(*args, **kwargs)`` under a unique ``name``; ``timeout`` overrides the trainer's."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Task name={self.name!r} is invalid; expected a non-empty string")
        if not callable(self.fn):
            raise ValueError(f"Task {self.name!r}: fn={self.fn!r} is invalid; expected a callable")
        self.args = tuple(self.args)
        self.kwargs = dict(self.kwargs)
        if self.timeout is not None:
            require_positive(f"Task {self.name!r} timeout", self.timeout)


@dataclass
class TaskResult:
    """What happened to one task: ``status`` is ``"ok"``, ``"timeout"`` or ``"error"`` (with ``error`` saying why)."""

    name: str
    status: str
    seconds: float
    result: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed summary (no ``result`` object): name, status, seconds, error, worker and the metrics."""
        return {"name": self.name, "status": self.status, "seconds": self.seconds, "error": self.error,
                "worker": self.worker, **{f"metric.{k}": v for k, v in self.metrics.items()}}


def summarize(results: Iterable[TaskResult]):
    """One row per task (a pandas DataFrame): status, time, error message and each numeric metric."""
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in results]).set_index("name")


def extract_metrics(result: Any) -> dict[str, float]:
    """Numeric scalars of a result mapping (or of its ``"metrics"`` entry when there is one)."""
    if not isinstance(result, Mapping):
        return {}
    source = result.get("metrics", result)
    if not isinstance(source, Mapping):
        return {}
    return {str(k): float(v) for k, v in source.items() if isinstance(v, Real) and not isinstance(v, bool)}


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


@dataclass
class _Slot:
    executor: Any
    future: cf.Future | None = None
    warming: bool = True
    started_warming: float = 0.0
    pid: int | None = None
    index: int | None = None  # the task running here
    started: float = 0.0
    deadline: float = math.inf


class ParallelStrategyTrainer:
    """Run :class:`Task` s concurrently and return one :class:`TaskResult` per task, in the tasks' order.

    ``max_workers`` defaults to the usable CPU count (``joblib.cpu_count()``, which respects cgroup limits) on loky
    and to the cluster's thread count on dask. ``timeout`` (seconds, default 300) counts from the moment a task is
    handed to a started worker. ``on_result(result)`` is called in the parent as each task ends (progress, messages).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        timeout: float = 300.0,
        backend: str = "loky",
        client: Any = None,
        start_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_workers is not None:
            require_int("max_workers", max_workers, minimum=1)
        self.max_workers = max_workers
        self.timeout = float(require_positive("timeout", timeout))
        self.backend = require_choice("backend", backend, BACKENDS)
        self.client = client
        self.start_timeout = float(require_positive("start_timeout", start_timeout))
        self._clock = clock

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> ParallelStrategyTrainer:
        """Use ``config.max_workers`` (a :class:`TrainingConfig`) as the worker count."""
        return cls(max_workers=config.max_workers, **kwargs)

    def run(self, tasks: Sequence[Task | tuple], on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
        items = [_as_task(t) for t in tasks]
        names = [t.name for t in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names {duplicates} are repeated; expected unique names")
        if not items:
            return []
        runner = self._run_loky if self.backend == "loky" else self._run_dask
        results = runner(items, on_result)
        by_status = {s: sum(r.status == s for r in results) for s in STATUSES}
        logger.info("parallel run finished: %s", by_status)
        return results

    @staticmethod
    def _finish(results: list[TaskResult | None], on_result: Callable[[TaskResult], None] | None, i: int,
                res: TaskResult) -> None:
        """Store task ``i``'s result, log it and pass it to ``on_result`` (both backends)."""
        results[i] = res
        log = logger.info if res.ok else logger.warning
        log("task %r: %s in %.2fs%s", res.name, res.status, res.seconds, f" ({res.error})" if res.error else "")
        if on_result is not None:
            try:
                on_result(res)
            except Exception as exc:  # a progress callback must not lose the other tasks' results
                logger.warning("on_result callback failed for %r: %s", res.name, exc)

    # ------------------------------------------------------------------ loky
    def _workers(self, n_tasks: int) -> int:
        import joblib

        return max(1, min(self.max_workers or joblib.cpu_count(), n_tasks))

    def _new_slot(self) -> _Slot:
        from joblib.externals.loky import ProcessPoolExecutor

        executor = ProcessPoolExecutor(max_workers=1)
        return _Slot(executor=executor, future=executor.submit(os.getpid), started_warming=self._clock())

    def _run_loky(self, tasks: list[Task], on_result: Callable[[TaskResult], None] | None) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        slots = [self._new_slot() for _ in range(self._workers(len(tasks)))]
        start_error: str | None = None

        finish = functools.partial(self._finish, results, on_result)

        def retire(slot: _Slot, replace: bool) -> None:
            _kill_executor(slot.executor)
            slots.remove(slot)
            if replace and pending:
                slots.append(self._new_slot())

        try:
            while any(r is None for r in results):
                # hand pending tasks to started, idle workers
                for slot in slots:
                    if not slot.warming and slot.index is None and pending:
                        i = pending.popleft()
                        t = tasks[i]
                        slot.index, slot.started = i, self._clock()
                        slot.deadline = slot.started + (t.timeout or self.timeout)
                        slot.future = slot.executor.submit(_call, t.fn, t.args, t.kwargs)
                if not slots:  # no worker could be started: report instead of waiting forever
                    while pending:
                        i = pending.popleft()
                        finish(i, TaskResult(tasks[i].name, "error", 0.0, error=f"no worker could start: {start_error}"))
                    break
                deadlines = [s.deadline if not s.warming else s.started_warming + self.start_timeout for s in slots]
                wait_for = max(0.0, min(deadlines) - self._clock())
                active = {s.future: s for s in slots if s.future is not None}
                done, _ = cf.wait(active, timeout=wait_for, return_when=cf.FIRST_COMPLETED)
                now = self._clock()
                for fut in done:
                    slot = active[fut]
                    slot.future = None
                    if slot.warming:
                        try:
                            slot.pid, slot.warming = fut.result(), False
                        except BaseException as exc:
                            start_error = _describe(exc)
                            logger.warning("a worker failed to start: %s", start_error)
                            retire(slot, replace=False)
                        continue
                    i, slot.index = slot.index, None
                    t = tasks[i]
                    try:
                        value = fut.result()
                    except BaseException as exc:  # the task raised, or its worker died (TerminatedWorkerError)
                        finish(i, TaskResult(t.name, "error", now - slot.started, error=_describe(exc),
                                             traceback=_format_tb(exc), worker=f"pid {slot.pid}"))
                        if not _executor_alive(slot.executor):
                            retire(slot, replace=True)
                        continue
                    finish(i, TaskResult(t.name, "ok", now - slot.started, result=value,
                                         metrics=extract_metrics(value), worker=f"pid {slot.pid}"))
                for slot in list(slots):
                    if slot.warming and now >= slot.started_warming + self.start_timeout:
                        start_error = f"worker did not start within {self.start_timeout:g}s"
                        logger.warning("a worker failed to start: %s", start_error)
                        retire(slot, replace=False)
                    elif not slot.warming and slot.index is not None and now >= slot.deadline:
                        i, t = slot.index, tasks[slot.index]
                        limit = t.timeout or self.timeout
                        retire(slot, replace=True)  # SIGKILL of this task's worker process tree only
                        finish(i, TaskResult(t.name, "timeout", now - slot.started,
                                             error=f"timed out after {limit:g}s; worker pid {slot.pid} killed",
                                             worker=f"pid {slot.pid}"))
        finally:
            for slot in slots:
                if slot.index is not None or slot.warming:
                    _kill_executor(slot.executor)
                else:
                    slot.executor.shutdown(wait=True)
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ dask
    def _run_dask(self, tasks: list[Task], on_result: Callable[[TaskResult], None] | None) -> list[TaskResult]:
        import distributed

        client = self.client if self.client is not None else distributed.get_client()
        capacity = self.max_workers or max(1, sum(client.nthreads().values()))
        results: list[TaskResult | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        running: dict[Any, tuple[int, float, float]] = {}  # future -> (index, started, deadline)

        finish = functools.partial(self._finish, results, on_result)
        try:
            while pending or running:
                while pending and len(running) < capacity:
                    i = pending.popleft()
                    t = tasks[i]
                    fut = client.submit(_call, t.fn, t.args, t.kwargs, key=f"{t.name}-{uuid.uuid4().hex}", pure=False)
                    start = self._clock()
                    running[fut] = (i, start, start + (t.timeout or self.timeout))
                wait_for = max(0.0, min(d for _, _, d in running.values()) - self._clock())
                with contextlib.suppress(TimeoutError):
                    distributed.wait(list(running), timeout=wait_for, return_when="FIRST_COMPLETED")
                now = self._clock()
                for fut, (i, start, deadline) in list(running.items()):
                    t = tasks[i]
                    if fut.status == "finished":
                        value = fut.result()
                        finish(i, TaskResult(t.name, "ok", now - start, result=value, metrics=extract_metrics(value)))
                    elif fut.status in ("error", "cancelled", "lost"):
                        exc = fut.exception() if fut.status == "error" else None
                        msg = _describe(exc) if exc is not None else f"future {fut.status}"
                        tb = "".join(traceback.format_tb(fut.traceback())) if exc is not None else None
                        finish(i, TaskResult(t.name, "error", now - start, error=msg, traceback=tb))
                    elif now >= deadline:
                        fut.cancel()
                        finish(i, TaskResult(t.name, "timeout", now - start,
                                             error=f"timed out after {t.timeout or self.timeout:g}s; cancelled on the "
                                                   "cluster (a running task keeps its worker thread until it returns)"))
                    else:
                        continue
                    del running[fut]
        finally:
            for fut in running:
                fut.cancel()
        return [r for r in results if r is not None]


def _as_task(item: Task | tuple) -> Task:
    if isinstance(item, Task):
        return item
    if isinstance(item, tuple) and 2 <= len(item) <= 4:
        return Task(*item)
    raise ValueError(f"task={item!r} is invalid; expected a Task or a tuple (name, fn[, args[, kwargs]])")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _format_tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _executor_alive(executor: Any) -> bool:
    return not getattr(executor, "_flags", None) or not executor._flags.broken


def _kill_executor(executor: Any) -> None:
    """SIGKILL the executor's worker process tree (loky's kill_workers) and reap it, so nothing keeps running."""
    processes = list(getattr(executor, "_processes", {}).values())
    with contextlib.suppress(Exception):
        executor.shutdown(wait=False, kill_workers=True)
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():  # the manager thread had not got to it yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.join(timeout=10)
