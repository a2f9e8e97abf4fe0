"""Platform detection: which platform, which limit, which directories; Drive mounting; bad overrides."""

from __future__ import annotations

from pathlib import Path

import pynvml
import pytest

from atheria_kit.platform import (
    PLATFORM_LIMITS,
    SESSION_LIMITS,
    Environment,
    GpuInfo,
    PlatformError,
    detect_environment,
    detect_gpus,
    mount_drive,
    runtime_start_time,
)
from tests.fakes.nvml import FakeGpu, make_fake_nvml

HOUR = 3600.0

# Variables the real images set (values as seen on each platform).
COLAB_VARS = {"COLAB_RELEASE_TAG": "release-colab_20240920-060127_RC00", "COLAB_GPU": "1"}
KAGGLE_VARS = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive", "KAGGLE_URL_BASE": "https://www.kaggle.com"}
KAGGLE_TPU_VARS = {**KAGGLE_VARS, "ISTPUVM": "1", "TPU_ACCELERATOR_TYPE": "v3-8"}


class ZMQInteractiveShell:  # named like ipykernel's shell class: a plain Jupyter kernel
    pass


class TerminalInteractiveShell:  # IPython in a terminal: not Jupyter
    pass


def colab_shell():
    """An instance of the fake google.colab._shell.Shell (the fake_colab fixture must be active)."""
    from google.colab import _shell

    return _shell.Shell()


def detect(tmp_path: Path, environ: dict, shell=None, **kw) -> Environment:
    """Detection with no real GPU lookups, paths under tmp_path and a fixed runtime start."""
    kw.setdefault("nvml", make_fake_nvml([]))
    kw.setdefault("torch_module", None)
    kw.setdefault("runtime_started_at", 1_700_000_000.0)
    kw.setdefault("cwd", tmp_path / "project")
    return detect_environment(environ, shell=shell, root=tmp_path, **kw)


@pytest.mark.parametrize(
    ("environ", "shell_kind", "expected"),
    [
        ({}, None, "local"),
        ({}, "jupyter", "local"),
        (COLAB_VARS, None, "local"),  # COLAB_RELEASE_TAG alone is not proof
        (COLAB_VARS, "jupyter", "local"),  # nor with an ordinary Jupyter kernel
        ({}, "colab", "colab"),
        (COLAB_VARS, "colab", "colab"),
        (KAGGLE_VARS, "jupyter", "kaggle"),
        ({**COLAB_VARS, **KAGGLE_VARS}, "jupyter", "kaggle"),  # Kaggle's image carries Colab's variables
        ({**COLAB_VARS, **KAGGLE_VARS}, "colab", "kaggle"),  # Kaggle is checked first
        (KAGGLE_VARS, None, "kaggle"),  # a Kaggle batch run (script) has no shell
    ],
)
def test_detection_matrix(tmp_path, fake_colab, environ, shell_kind, expected):
    shell = {None: None, "jupyter": ZMQInteractiveShell(), "colab": colab_shell()}[shell_kind]
    env = detect(tmp_path, environ, shell)
    assert env.kind == expected
    assert env.in_jupyter is (shell_kind is not None)


def test_terminal_ipython_is_not_jupyter(tmp_path):
    assert detect(tmp_path, {}, TerminalInteractiveShell()).in_jupyter is False


def test_local_uses_the_current_directory_and_has_no_limit(tmp_path):
    env = detect(tmp_path, {})
    assert env.work_dir == tmp_path / "project"
    assert env.persistent_dirs == (tmp_path / "project",)
    assert env.session_limit_seconds is None
    assert env.runtime_started_at is None  # the budget counts from its own construction locally
    assert env.drive_dir is None


def test_colab_without_drive_has_no_persistent_place(tmp_path, fake_colab):
    env = detect(tmp_path, COLAB_VARS, colab_shell())
    assert env.work_dir == tmp_path / "content"
    assert env.drive_dir is None
    assert env.persistent_dirs == ()
    assert env.session_limit_seconds == 12 * HOUR
    assert env.runtime_started_at == 1_700_000_000.0


def test_colab_with_drive_mounted_offers_mydrive(tmp_path, fake_colab):
    from google.colab import drive

    drive.mount(str(tmp_path / "content" / "drive"))
    env = detect(tmp_path, COLAB_VARS, colab_shell())
    assert env.drive_dir == tmp_path / "content" / "drive" / "MyDrive"
    assert env.persistent_dirs == (env.drive_dir,)


@pytest.mark.parametrize(("tier", "hours"), [("free", 12), ("pro", 24)])
def test_colab_tier_selects_the_limit(tmp_path, fake_colab, tier, hours):
    by_param = detect(tmp_path, {}, colab_shell(), colab_tier=tier)
    by_env = detect(tmp_path, {"ATHERIA_COLAB_TIER": tier}, colab_shell())
    assert by_param.session_limit_seconds == by_env.session_limit_seconds == hours * HOUR


@pytest.mark.parametrize(
    ("environ", "gpus", "accelerator", "hours"),
    [
        (KAGGLE_VARS, [], "cpu", 12),
        (KAGGLE_VARS, [FakeGpu("Tesla P100-PCIE-16GB", 16 * 1024**3)], "gpu", 12),
        (KAGGLE_TPU_VARS, [], "tpu", 9),
        ({**KAGGLE_VARS, "TPU_NAME": "grpc://10.0.0.2:8470"}, [], "tpu", 9),  # the older TPU-node runtime
    ],
)
def test_kaggle_limit_and_directories(tmp_path, environ, gpus, accelerator, hours):
    env = detect(tmp_path, environ, ZMQInteractiveShell(), nvml=make_fake_nvml(gpus))
    assert env.kind == "kaggle"
    assert env.accelerator == accelerator
    assert env.session_limit_seconds == hours * HOUR
    assert env.work_dir == tmp_path / "kaggle" / "working"
    assert env.persistent_dirs == (tmp_path / "kaggle" / "working",)  # the only directory that survives


@pytest.mark.parametrize(("override", "expected"), [("local", "local"), ("colab", "colab"), ("kaggle", "kaggle")])
def test_override_by_variable_and_parameter(tmp_path, override, expected):
    # Start from Kaggle's variables so the override visibly wins over detection.
    assert detect(tmp_path, {**KAGGLE_VARS, "ATHERIA_PLATFORM": override}).kind == expected
    assert detect(tmp_path, KAGGLE_VARS, kind=override).kind == expected


def test_auto_override_means_detect(tmp_path):
    assert detect(tmp_path, {**KAGGLE_VARS, "ATHERIA_PLATFORM": "auto"}).kind == "kaggle"


@pytest.mark.parametrize(
    ("call", "field", "value"),
    [
        (lambda p: detect(p, {"ATHERIA_PLATFORM": "sagemaker"}), "ATHERIA_PLATFORM", "sagemaker"),
        (lambda p: detect(p, {}, kind="Colab"), "kind", "Colab"),
        (lambda p: detect(p, {"ATHERIA_COLAB_TIER": "gold"}), "ATHERIA_COLAB_TIER", "gold"),
        (lambda p: detect(p, {}, colab_tier="plus"), "colab_tier", "plus"),
    ],
)
def test_bad_override_names_field_value_and_choices(tmp_path, call, field, value):
    with pytest.raises(ValueError) as info:
        call(tmp_path)
    message = str(info.value)
    assert field in message and repr(value) in message
    assert "'local'" in message or "'free'" in message  # lists what is allowed


def test_gpus_come_from_nvml_in_bytes(tmp_path):
    fake = make_fake_nvml([FakeGpu("Tesla T4", 15_360 * 1024**2), FakeGpu("NVIDIA A100-SXM4-40GB", 40 * 1024**3)])
    env = detect(tmp_path, {}, nvml=fake)
    assert env.gpus == (GpuInfo("Tesla T4", 15_360 * 1024**2), GpuInfo("NVIDIA A100-SXM4-40GB", 40 * 1024**3))
    assert fake.calls["nvmlInit"] == fake.calls["nvmlShutdown"] == 1  # balanced: NVML is reference-counted
    assert not fake.is_initialized()


class FakeCuda:
    """torch.cuda's API surface used for the fallback (is_available, device_count, get_device_properties)."""

    class Props:
        def __init__(self, name, total_memory):
            self.name, self.total_memory = name, total_memory

    def __init__(self, devices):
        self.devices = devices

    def is_available(self):
        return bool(self.devices)

    def device_count(self):
        return len(self.devices)

    def get_device_properties(self, i):
        return self.Props(*self.devices[i])


class FakeTorch:
    def __init__(self, devices):
        self.cuda = FakeCuda(devices)


def test_gpus_fall_back_to_torch_when_nvml_is_missing():
    no_nvml = make_fake_nvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    assert detect_gpus(no_nvml, FakeTorch([("Tesla T4", 123)])) == (GpuInfo("Tesla T4", 123),)
    assert detect_gpus(no_nvml, None) == ()


def test_real_libraries_on_a_machine_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert detect_gpus() == ()  # real pynvml raises NVMLError_LibraryNotFound; real torch.cuda finds nothing


def test_runtime_start_time_is_in_the_past():
    import time

    import psutil

    started = runtime_start_time()
    assert started is not None
    assert psutil.boot_time() - 1 <= started <= time.time()


def test_runtime_start_is_injectable_as_a_callable(tmp_path, fake_colab):
    env = detect(tmp_path, {}, colab_shell(), runtime_started_at=lambda: 42.0)
    assert env.runtime_started_at == 42.0


def test_environment_is_frozen(tmp_path):
    env = detect(tmp_path, {})
    with pytest.raises(AttributeError):
        env.kind = "colab"


def test_limits_table_matches_the_published_limits():
    assert SESSION_LIMITS == {"colab": 12 * HOUR, "colab_pro": 24 * HOUR, "kaggle": 12 * HOUR,
                              "kaggle_tpu": 9 * HOUR, "local": None}
    kaggle = next(row for row in PLATFORM_LIMITS if row.key == "kaggle")
    assert kaggle.weekly_gpu_hours == 30


# ---------------------------------------------------------------- mount_drive

def test_mount_drive_on_colab_returns_mydrive(tmp_path, fake_colab):
    env = detect(tmp_path, COLAB_VARS, colab_shell())
    mountpoint = tmp_path / "content" / "drive"
    mydrive = mount_drive(mountpoint, environment=env)
    assert mydrive == mountpoint / "MyDrive"
    assert fake_colab.mounts == [str(mountpoint)]
    (mydrive / "probe.txt").write_text("x")  # writes land in the Drive backing folder
    assert (fake_colab.backing_dir / "probe.txt").read_text() == "x"
    assert detect(tmp_path, COLAB_VARS, colab_shell()).drive_dir == mydrive


def test_mount_drive_failure_is_reported(tmp_path, fake_colab):
    fake_colab.fail_mount = True
    env = detect(tmp_path, {}, colab_shell())
    with pytest.raises(PlatformError, match="mounting Google Drive .* failed: mount failed"):
        mount_drive(tmp_path / "content" / "drive", environment=env)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (KAGGLE_VARS, r"on Kaggle.*/kaggle/working.*Kaggle dataset"),
        ({}, r"not running in Google Colab \(detected platform: 'local'\)"),
        (COLAB_VARS, r"not running in Google Colab"),  # Colab's variables without Colab's shell
    ],
)
def test_mount_drive_elsewhere_says_why(tmp_path, fake_colab, environ, expected):
    env = detect(tmp_path, environ, ZMQInteractiveShell())
    with pytest.raises(PlatformError, match=expected):
        mount_drive(tmp_path / "content" / "drive", environment=env)
    assert fake_colab.mounts == []


def test_a_rank_forked_from_a_kernel_is_not_in_the_kernel(monkeypatch):
    # ak.launch marks its ranks; a display from a fork of the kernel would be dumped on stderr, not shown
    from atheria_kit import platform as plat

    class ZMQInteractiveShell:  # the class name is what is_jupyter_shell recognises
        pass

    monkeypatch.setattr(plat, "_current_shell", lambda: ZMQInteractiveShell())
    monkeypatch.delenv(plat.LAUNCH_RANK_ENV, raising=False)
    assert plat.in_jupyter_kernel()
    monkeypatch.setenv(plat.LAUNCH_RANK_ENV, "0")
    assert not plat.in_jupyter_kernel()
