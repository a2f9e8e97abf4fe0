"""ResourceMonitor: readings and units, GPU-less machines, alerts, summaries, history and the sampler thread."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading

import psutil
import pynvml
import pytest
import torch

from atheria_kit.monitor import Alert, ResourceMonitor
from tests.fakes.clock import ManualClock
from tests.fakes.nvml import FakeGpu, make_fake_nvml

GIB = 1024**3


class ScriptedMemory:
    """Real psutil, except that ``virtual_memory()`` reports ``percent`` (in psutil's own svmem structure)."""

    def __init__(self, percent: float = 50.0) -> None:
        self.percent = percent

    def __getattr__(self, name):
        return getattr(psutil, name)

    def virtual_memory(self):
        real = psutil.virtual_memory()
        available = round(real.total * (1 - self.percent / 100))
        return real._replace(available=available, used=real.total - available, percent=self.percent)


class FakeBudget:
    """The duck-typed budget interface the monitor reads (TimeBudget's elapsed / remaining / fraction_used)."""

    def __init__(self, limit: float = 1000.0) -> None:
        self.limit, self.elapsed = limit, 0.0

    @property
    def remaining(self) -> float:
        return self.limit - self.elapsed

    @property
    def fraction_used(self) -> float:
        return self.elapsed / self.limit


def t4(**kw) -> FakeGpu:
    return FakeGpu(name="Tesla T4", memory_total=16 * GIB, **kw)


@pytest.fixture
def no_subprocess(monkeypatch):
    """Fail the test if anything spawns a process (the monitor must never shell out to nvidia-smi)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was spawned: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr("os.system", refuse)


def monitor(**kw) -> ResourceMonitor:
    kw.setdefault("nvml", make_fake_nvml([]))
    return ResourceMonitor(**kw)


# ---------------------------------------------------------------- GPU readings

def test_gpu_readings_are_converted_to_documented_units(no_subprocess):
    fake = make_fake_nvml([t4(memory_used=6 * GIB, utilization_gpu=87, temperature=71,
                              power_usage=70_500, power_limit=70_000)])
    g, = monitor(nvml=fake).snapshot().gpus
    assert (g.index, g.name) == (0, "Tesla T4")
    assert g.utilization_percent == 87
    assert (g.memory_used_bytes, g.memory_total_bytes) == (6 * GIB, 16 * GIB)  # bytes stay bytes
    assert g.memory_percent == pytest.approx(37.5)
    assert g.temperature_c == 71
    assert (g.power_w, g.power_limit_w) == (70.5, 70.0)  # NVML's milliwatts become watts


def test_every_gpu_is_reported_and_flattened_per_index():
    fake = make_fake_nvml([t4(memory_used=GIB), FakeGpu("NVIDIA A100-SXM4-40GB", 40 * GIB, 20 * GIB)])
    snap = monitor(nvml=fake).snapshot()
    assert [g.name for g in snap.gpus] == ["Tesla T4", "NVIDIA A100-SXM4-40GB"]
    metrics = snap.metrics()
    assert metrics["gpu0_memory_used_bytes"] == GIB
    assert metrics["gpu1_memory_percent"] == pytest.approx(50.0)


def test_nvml_is_initialised_once_across_threads_and_samples(no_subprocess):
    fake = make_fake_nvml([t4()])
    mon = monitor(nvml=fake)
    barrier = threading.Barrier(4)

    def hammer():
        barrier.wait()  # all threads reach the lazy initialisation together
        for _ in range(10):
            mon.sample_once()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetName"] == 1  # names and handles are cached
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 40
    assert len(mon.history) == 40


def test_unsupported_field_is_empty_and_the_rest_still_reported(caplog):
    fake = make_fake_nvml([t4(memory_used=GIB, unsupported={"nvmlDeviceGetPowerUsage"})])
    mon = monitor(nvml=fake)
    with caplog.at_level(logging.DEBUG, logger="atheria_kit.monitor"):
        snaps = [mon.sample_once() for _ in range(5)]
    assert all(s.gpus[0].power_w is None for s in snaps)
    assert snaps[-1].gpus[0].memory_used_bytes == GIB
    assert "gpu0_power_w" not in mon.summary()
    assert sum("nvmlDeviceGetPowerUsage" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "fake",
    [
        make_fake_nvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
        make_fake_nvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED),
        make_fake_nvml([]),  # NVML works but the machine has no GPU
    ],
    ids=["library-not-found", "driver-not-loaded", "no-gpu"],
)
def test_without_gpu_fields_are_empty_and_logged_once(caplog, fake):
    mon = monitor(nvml=fake)
    with caplog.at_level(logging.DEBUG, logger="atheria_kit.monitor"):
        snaps = [mon.sample_once() for _ in range(25)]
    assert all(s.gpus == () for s in snaps)
    assert not any(k.startswith("gpu") for k in mon.summary())
    assert len([r for r in caplog.records if r.name == "atheria_kit.monitor"]) == 1
    assert fake.calls["nvmlInit"] == 1  # not retried at every sample
    assert "GPU none" in mon.status_line()


def test_real_pynvml_on_a_machine_without_gpu(caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    mon = ResourceMonitor()  # the real pynvml module: nvmlInit raises NVMLError_LibraryNotFound here
    with caplog.at_level(logging.INFO, logger="atheria_kit.monitor"):
        assert [mon.sample_once().gpus for _ in range(3)] == [(), (), ()]
    assert len(caplog.records) == 1
    assert "NVMLError_LibraryNotFound" in caplog.records[0].getMessage()


def test_close_shuts_nvml_down_and_a_later_snapshot_reinitialises():
    fake = make_fake_nvml([t4()])
    mon = monitor(nvml=fake)
    mon.snapshot()
    mon.close()
    assert not fake.is_initialized()
    assert mon.snapshot().gpus[0].name == "Tesla T4"
    assert fake.calls["nvmlInit"] == 2


# ---------------------------------------------------------------- CPU and RAM

def test_ram_figures_are_consistent_bytes():
    snap = ResourceMonitor(nvml=make_fake_nvml([])).snapshot()
    vm = psutil.virtual_memory()
    assert snap.ram_total_bytes == vm.total
    assert snap.ram_percent == pytest.approx(100 * snap.ram_used_bytes / snap.ram_total_bytes, abs=0.5)
    assert snap.process_rss_bytes >= psutil.Process().memory_info().rss // 2


BURN = """
import sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
sys.stdout.write(f"{time.process_time() - start}\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_process_tree_cpu_includes_a_running_child():
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        clock = ManualClock()
        mon = monitor(clock=clock)  # baseline includes the child
        child.stdin.write("go\n")
        child.stdin.flush()
        burned = float(child.stdout.readline())  # the child's own measure of the CPU time it used
        clock.t += 1.0
        snap = mon.snapshot()
    finally:
        child.stdin.close()
        child.wait()
    # Over one (fake) second, the tree used at least the child's CPU time (10 ms kernel tick granularity).
    assert snap.process_cpu_percent >= 100 * (burned - 0.02)


def test_process_tree_cpu_includes_a_child_that_finished_between_samples():
    clock = ManualClock()
    mon = monitor(clock=clock)
    done = subprocess.run([sys.executable, "-c", BURN], input="go\n\n", capture_output=True, text=True, check=True)
    burned = float(done.stdout.splitlines()[1])
    clock.t += 2.0
    # the finished child's time reaches this process's children_* CPU times when it is reaped
    assert mon.snapshot().process_cpu_percent >= 100 * (burned - 0.02) / 2.0


def test_machine_cpu_percent_is_a_percentage():
    snap = monitor().snapshot()
    assert 0.0 <= snap.cpu_percent <= 100.0


# ---------------------------------------------------------------- alerts

def test_ram_alert_fires_once_per_crossing_and_rearms(caplog):
    mem = ScriptedMemory()
    mon = monitor(psutil_module=mem)
    alerts: list[Alert] = []
    mon.add_alert_callback(alerts.append)
    with caplog.at_level(logging.INFO, logger="atheria_kit.monitor"):
        for percent in [50, 90, 92, 95, 80, 88, 89, 70]:
            mem.percent = percent
            mon.sample_once()
    assert [(a.metric, a.value, a.threshold) for a in alerts] == [("ram_percent", 90, 85), ("ram_percent", 88, 85)]
    # A callback shows the alert: the log record is INFO, so unconfigured logging does not print it a second time.
    assert [r.levelname for r in caplog.records if "resource alert" in r.getMessage()] == ["INFO", "INFO"]
    assert "RAM use 90.0% >= 85%" in alerts[0].message


def test_without_a_callback_an_alert_is_a_warning_record(caplog):
    mem = ScriptedMemory()
    mon = monitor(psutil_module=mem)
    with caplog.at_level(logging.WARNING, logger="atheria_kit.monitor"):
        mem.percent = 90
        mon.sample_once()
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_gpu_memory_alert_per_device():
    fake = make_fake_nvml([t4(), t4()])
    mon = monitor(nvml=fake, gpu_memory_percent_threshold=75)
    alerts: list[Alert] = []
    mon.add_alert_callback(alerts.append)
    for gib0, gib1 in [(1, 1), (12, 1), (13, 13), (2, 14), (12, 14)]:
        fake.gpus[0].memory_used, fake.gpus[1].memory_used = gib0 * GIB, gib1 * GIB
        mon.sample_once()
    # 12 GiB of 16 = 75 % reaches the threshold; device 1 crosses once, device 0 twice
    assert [(a.metric, a.value) for a in alerts] == [
        ("gpu0_memory_percent", 75.0), ("gpu1_memory_percent", 81.25), ("gpu0_memory_percent", 75.0)]


def test_budget_alert_and_budget_fields():
    budget = FakeBudget(limit=1000.0)
    mon = monitor(budget=budget)
    alerts: list[Alert] = []
    mon.add_alert_callback(alerts.append)
    for elapsed in [100, 899, 900, 950]:
        budget.elapsed = elapsed
        snap = mon.sample_once()
    assert (snap.elapsed_seconds, snap.remaining_seconds, snap.budget_fraction) == (950, 50, 0.95)
    assert [(a.metric, a.value) for a in alerts] == [("budget_fraction", 0.9)]


def test_a_failing_alert_callback_does_not_stop_the_others(caplog):
    mem = ScriptedMemory(percent=99)
    mon = monitor(psutil_module=mem)
    seen: list[Alert] = []
    mon.add_alert_callback(lambda alert: 1 / 0)
    mon.add_alert_callback(seen.append)
    with caplog.at_level(logging.ERROR, logger="atheria_kit.monitor"):
        mon.sample_once()
    assert len(seen) == 1
    assert any("alert callback" in r.getMessage() for r in caplog.records)


def test_thresholds_can_be_switched_off():
    mem = ScriptedMemory(percent=99)
    mon = monitor(psutil_module=mem, ram_percent_threshold=None)
    alerts: list[Alert] = []
    mon.add_alert_callback(alerts.append)
    mon.sample_once()
    assert alerts == []


# ---------------------------------------------------------------- summaries, history, state

def test_summaries_track_last_mean_min_max():
    mem = ScriptedMemory()
    mon = monitor(psutil_module=mem, ram_percent_threshold=None)
    for percent in [40, 10, 70, 20]:
        mem.percent = percent
        mon.sample_once()
    assert mon.summary()["ram_percent"] == {"last": 20, "mean": 35.0, "min": 10, "max": 70, "count": 4}


def test_history_is_bounded_but_summaries_cover_every_sample():
    wall = ManualClock(1_700_000_000.0)
    mon = monitor(history=3, wall_clock=wall)
    for _ in range(10):
        wall.t += 1
        mon.sample_once()
    assert [s.time for s in mon.history] == [1_700_000_008.0, 1_700_000_009.0, 1_700_000_010.0]
    assert mon.summary()["ram_percent"]["count"] == 10


def test_state_dict_round_trip_through_torch_weights_only(tmp_path):
    mem = ScriptedMemory()
    first = monitor(psutil_module=mem, ram_percent_threshold=None)
    for percent in [30, 60]:
        mem.percent = percent
        first.sample_once()
    torch.save(first.state_dict(), tmp_path / "monitor.pt")
    second = monitor(psutil_module=mem, ram_percent_threshold=None)
    second.load_state_dict(torch.load(tmp_path / "monitor.pt", weights_only=True))
    assert second.summary() == first.summary()
    mem.percent = 90
    second.sample_once()  # the summaries continue across sessions
    assert second.summary()["ram_percent"] == {"last": 90, "mean": 60.0, "min": 30, "max": 90, "count": 3}


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({}, "version"),
        ({"version": 1, "summaries": []}, r"state\['summaries'\]"),
        ({"version": 1, "summaries": {"ram_percent": {"last": 1.0}}}, r"state\['summaries'\]\['ram_percent'\]"),
    ],
)
def test_load_state_dict_rejects_bad_state(state, match):
    with pytest.raises(ValueError, match=match):
        monitor().load_state_dict(state)


def test_to_dataframe_has_one_row_per_sample_and_plot_draws_it():
    import matplotlib

    matplotlib.use("Agg")
    fake = make_fake_nvml([t4(utilization_gpu=50)])
    mon = monitor(nvml=fake)
    for _ in range(3):
        mon.sample_once()
    frame = mon.to_dataframe()
    assert len(frame) == 3
    assert {"time", "cpu_percent", "ram_percent", "gpu0_utilization_percent", "gpu0_power_w"} <= set(frame.columns)
    assert str(frame["time"].dtype).startswith("datetime64")
    ax = mon.plot()
    assert {line.get_label() for line in ax.get_lines()} == {
        "cpu_percent", "ram_percent", "gpu0_utilization_percent", "gpu0_memory_percent"}
    with pytest.raises(ValueError, match="'nope'"):
        mon.plot(metrics=["nope"])


def test_empty_dataframe_before_any_sample():
    assert list(monitor().to_dataframe().columns) == ["time"]


# ---------------------------------------------------------------- status line and providers

def test_status_line_shows_gpu_ram_time_and_providers():
    fake = make_fake_nvml([t4(memory_used=6 * GIB, utilization_gpu=87)])
    budget = FakeBudget(limit=12 * 3600.0)
    budget.elapsed = 3725.0
    mon = monitor(nvml=fake, budget=budget)
    mon.add_status_provider("sync", lambda: {"last_success": "12s ago", "pending": 0})
    snap = mon.sample_once()
    assert snap.extra == {"sync": {"last_success": "12s ago", "pending": 0}}
    line = mon.status_line(snap)
    assert "\n" not in line
    assert "GPU0 87% 6.0/16.0 GiB" in line
    assert "time 1:02:05 used, 10:57:55 left" in line
    assert "sync: last_success=12s ago, pending=0" in line
    assert f"RAM {snap.ram_used_bytes / GIB:.1f}/{snap.ram_total_bytes / GIB:.1f} GiB" in line
    assert mon.status_line().startswith("GPU0 87% 6.0/16.0 GiB | RAM ")  # without a snapshot: a fresh one


def test_an_unlimited_budget_reads_no_time_limit_instead_of_failing():
    budget = FakeBudget(limit=math.inf)
    budget.elapsed = 61.0
    line = monitor(budget=budget).status_line()
    assert "time 0:01:01 used (no time limit)" in line


def test_failing_status_provider_is_reported_not_raised(caplog):
    mon = monitor()
    mon.add_status_provider("sync", lambda: {}["missing"])
    with caplog.at_level(logging.WARNING, logger="atheria_kit.monitor"):
        snaps = [mon.snapshot() for _ in range(3)]
    assert snaps[0].extra["sync"] == {"error": "KeyError('missing')"}
    assert len(caplog.records) == 1


@pytest.mark.parametrize(("name", "fn", "field"), [("", dict, "name"), (3, dict, "name"), ("sync", 5, "fn")])
def test_bad_status_provider(name, fn, field):
    with pytest.raises(ValueError, match=f"{field}="):
        monitor().add_status_provider(name, fn)


def test_bad_alert_callback():
    with pytest.raises(ValueError, match="fn="):
        monitor().add_alert_callback("not callable")


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"interval": 0.1}, "interval=0.1"),
        ({"interval": 0}, "interval=0"),
        ({"interval": -1.0}, "interval=-1.0"),
        ({"interval": float("nan")}, "interval=nan"),
        ({"interval": "1"}, "interval='1'"),
        ({"history": 0}, "history=0"),
        ({"history": 2.5}, "history=2.5"),
        ({"ram_percent_threshold": 120}, "ram_percent_threshold=120"),
        ({"gpu_memory_percent_threshold": 0}, "gpu_memory_percent_threshold=0"),
        ({"budget_fraction_threshold": 90}, "budget_fraction_threshold=90"),
        ({"budget_fraction_threshold": 0.0}, "budget_fraction_threshold=0.0"),
    ],
)
def test_bad_configuration_names_field_and_value(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")) as info:
        monitor(**kwargs)
    assert "expected" in str(info.value)


def test_minimum_interval_is_accepted():
    assert monitor(interval=0.2).interval == 0.2


# ---------------------------------------------------------------- sampler thread

def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "atheria-resource-monitor"]


def test_sampler_thread_samples_and_stops_promptly():
    mon = monitor(interval=600.0)  # a sleeping sampler would hold stop() for ten minutes
    sampled = threading.Event()
    mon.add_status_provider("probe", lambda: sampled.set() or {})
    mon.start()
    assert mon.running and sampler_threads()[0].daemon
    assert sampled.wait(30)
    mon.stop()
    assert not mon.running
    assert sampler_threads() == []
    assert len(mon.history) == 1


def test_sampler_repeats_at_the_interval():
    mon = monitor(interval=0.2)
    count = 0
    third = threading.Event()

    def probe():
        nonlocal count
        count += 1
        if count >= 3:
            third.set()
        return {}

    mon.add_status_provider("probe", probe)
    with mon:
        mon.start()  # a second start is a no-op, not a second thread
        assert len(sampler_threads()) == 1
        assert third.wait(30)
    assert sampler_threads() == []
    assert len(mon.history) >= 3


def test_context_manager_releases_nvml():
    fake = make_fake_nvml([t4()])
    sampled = threading.Event()
    mon = monitor(nvml=fake, interval=600.0)
    mon.add_status_provider("probe", lambda: sampled.set() or {})
    with mon:
        assert sampled.wait(30)
    assert sampler_threads() == []
    assert fake.calls["nvmlShutdown"] == 1 and not fake.is_initialized()
