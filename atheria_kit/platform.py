"""Where the notebook runs (Colab, Kaggle, local), what it has (GPUs) and how long it may run.

Why: a long run has to know its session limit, where fast scratch space is and which directories survive
the end of the session. Detection order matters: Kaggle's image is built on Colab's and carries Colab's
environment variables (``COLAB_RELEASE_TAG`` among them), so Kaggle is checked first (``KAGGLE_KERNEL_RUN_TYPE``),
then Colab, recognised by the class of the IPython shell, which lives in ``google.colab``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from atheria_kit._validation import require_choice

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("colab", "kaggle", "local")

#: Environment variable that forces the platform kind (``colab``, ``kaggle``, ``local`` or ``auto``).
OVERRIDE_ENV = "ATHERIA_PLATFORM"
#: Environment variable naming the Colab plan (``free`` or ``pro``; Pro and Pro+ share the 24 h limit).
COLAB_TIER_ENV = "ATHERIA_COLAB_TIER"
COLAB_TIERS: tuple[str, ...] = ("free", "pro")

_HOUR = 3600.0


@dataclass(frozen=True)
class PlatformLimit:
    """One row of the platform limits table (documentation and the time budget read it)."""

    key: str
    platform: str
    session_hours: float | None
    weekly_gpu_hours: float | None
    survives_session: str
    notes: str


#: The limits each platform imposes, as data. Sources: Colab's FAQ (research.google.com/colaboratory/faq.html)
#: and Kaggle's notebook docs (kaggle.com/docs/notebooks). Colab gives no guarantee: sessions can end earlier.
PLATFORM_LIMITS: tuple[PlatformLimit, ...] = (
    PlatformLimit("colab", "Colab (free)", 12.0, None, "Google Drive (MyDrive), when mounted",
                  "at most 12 h, often less; idle sessions are disconnected (about 90 min without interaction)"),
    PlatformLimit("colab_pro", "Colab Pro / Pro+", 24.0, None, "Google Drive (MyDrive), when mounted",
                  "up to 24 h, subject to compute units"),
    PlatformLimit("kaggle", "Kaggle (CPU / GPU)", 12.0, 30.0, "/kaggle/working (saved as the notebook's output)",
                  "GPU quota about 30 h per week; /kaggle/input is read-only"),
    PlatformLimit("kaggle_tpu", "Kaggle (TPU)", 9.0, 20.0, "/kaggle/working (saved as the notebook's output)",
                  "TPU quota about 20 h per week"),
    PlatformLimit("local", "Local Jupyter / script", None, None, "any local directory", "no session limit"),
)

#: Session limit in seconds per key of :data:`PLATFORM_LIMITS` (``None``: no limit).
SESSION_LIMITS: dict[str, float | None] = {
    row.key: (None if row.session_hours is None else row.session_hours * _HOUR) for row in PLATFORM_LIMITS
}


class PlatformError(RuntimeError):
    """An operation is not possible on the platform the code runs on (the message says why)."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_total_bytes: int


@dataclass(frozen=True)
class Environment:
    """What :func:`detect_environment` found. Paths are absolute; ``drive_dir`` is MyDrive when mounted."""

    kind: str
    in_jupyter: bool
    gpus: tuple[GpuInfo, ...]
    session_limit_seconds: float | None
    runtime_started_at: float | None
    work_dir: Path
    persistent_dirs: tuple[Path, ...]
    drive_dir: Path | None
    accelerator: str = "cpu"  # "gpu", "tpu" or "cpu"; decides Kaggle's limit


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


#: Sentinel: look the value up from the running process (the default for ``shell``, ``nvml``, ``torch_module``).
AUTO: Any = _Auto()


def _current_shell() -> Any:
    # IPython is imported by every Jupyter kernel; when it is not loaded there is no shell to find,
    # and importing it here would only cost time.
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        return ipython.get_ipython()
    except Exception:  # a broken IPython must not stop detection
        return None


def is_colab_shell(shell: Any) -> bool:
    """True when ``shell`` is Colab's kernel shell (its class lives in ``google.colab``)."""
    return shell is not None and type(shell).__module__.startswith("google.colab")


def is_jupyter_shell(shell: Any) -> bool:
    """True inside a Jupyter kernel (ipykernel's ``ZMQInteractiveShell`` or Colab's shell), not a terminal IPython."""
    if shell is None:
        return False
    return is_colab_shell(shell) or any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


#: Set in every rank that :func:`atheria_kit.launch.launch` starts (its value: the rank).
LAUNCH_RANK_ENV = "ATHERIA_LAUNCH_RANK"


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (a notebook front end or papermill), False in a plain interpreter.

    False in a rank that ``launch`` forked from a kernel: it has the kernel's objects but not its connection, and
    a display from there would be dumped on stderr instead of reaching the cell."""
    if os.environ.get(LAUNCH_RANK_ENV) is not None:
        return False
    return is_jupyter_shell(_current_shell())


def nvml_devices(nvml: Any) -> list[tuple[int, Any, str]]:
    """``(index, handle, name)`` of every GPU NVML sees; NVML must be initialised. Raises what NVML raises."""
    found = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        name = nvml.nvmlDeviceGetName(handle)
        found.append((i, handle, name.decode() if isinstance(name, bytes) else str(name)))  # bytes before 11.5
    return found


def _kaggle_accelerator(environ: Mapping[str, str], gpus: tuple[GpuInfo, ...]) -> str:
    # Kaggle's TPU image sets ISTPUVM=1 and TPU_ACCELERATOR_TYPE (github.com/Kaggle/docker-python, tpu/Dockerfile);
    # the older TPU-node runtime set TPU_NAME.
    if environ.get("ISTPUVM", "").strip().lower() in ("1", "true") or environ.get("TPU_ACCELERATOR_TYPE") \
            or environ.get("TPU_NAME"):
        return "tpu"
    return "gpu" if gpus else "cpu"


def _import_optional(name: str) -> ModuleType | None:
    try:
        return __import__(name)
    except ImportError:
        return None


def _gpus_from_nvml(nvml: Any) -> tuple[GpuInfo, ...] | None:
    """GPUs via NVML, or None when NVML is not usable (no library, no driver)."""
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without a GPU
        logger.debug("NVML unavailable for GPU detection: %s", exc)
        return None
    try:
        return tuple(GpuInfo(name, int(nvml.nvmlDeviceGetMemoryInfo(handle).total))
                     for _, handle, name in nvml_devices(nvml))
    except Exception as exc:
        logger.debug("NVML GPU query failed: %s", exc)
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _gpus_from_torch(torch_module: Any) -> tuple[GpuInfo, ...]:
    try:
        cuda = torch_module.cuda
        if not cuda.is_available():
            return ()
        return tuple(
            GpuInfo(str(cuda.get_device_properties(i).name), int(cuda.get_device_properties(i).total_memory))
            for i in range(cuda.device_count())
        )
    except Exception as exc:
        logger.debug("torch.cuda GPU query failed: %s", exc)
        return ()


def detect_gpus(nvml: Any = AUTO, torch_module: Any = AUTO) -> tuple[GpuInfo, ...]:
    """GPUs from NVML (``pynvml``) when it works, else from ``torch.cuda``, else none."""
    if nvml is AUTO:
        nvml = _import_optional("pynvml")
    if nvml is not None:
        found = _gpus_from_nvml(nvml)
        if found is not None:
            return found
    if torch_module is AUTO:
        torch_module = _import_optional("torch")
    return () if torch_module is None else _gpus_from_torch(torch_module)


def runtime_start_time() -> float | None:
    """Epoch seconds when this container/VM started: PID 1's start time, else the kernel's boot time.

    Why PID 1: inside a container (Colab, Kaggle) ``boot_time()`` is the host's boot, days ago, while PID 1 starts
    with the runtime.
    """
    import psutil

    try:
        return float(psutil.Process(1).create_time())
    except (psutil.Error, OSError):
        try:
            return float(psutil.boot_time())
        except Exception:
            return None


def _resolve_kind(kind: str | None, environ: Mapping[str, str], shell: Any) -> str:
    if kind is not None:
        return require_choice("kind", kind, (*KINDS, "auto")) if kind != "auto" else _auto_kind(environ, shell)
    override = environ.get(OVERRIDE_ENV, "").strip()
    if override:
        require_choice(OVERRIDE_ENV, override, (*KINDS, "auto"))
        if override != "auto":
            return override
    return _auto_kind(environ, shell)


def _auto_kind(environ: Mapping[str, str], shell: Any) -> str:
    if environ.get("KAGGLE_KERNEL_RUN_TYPE"):  # checked first: Kaggle's image also carries Colab's variables
        return "kaggle"
    if is_colab_shell(shell):
        return "colab"
    if environ.get("COLAB_RELEASE_TAG") and shell is not None:
        logger.debug("COLAB_RELEASE_TAG is set but the shell (%s) is not Colab's; treating as local",
                     type(shell).__module__)
    return "local"


def detect_environment(
    environ: Mapping[str, str] | None = None,
    *,
    shell: Any = AUTO,
    kind: str | None = None,
    colab_tier: str | None = None,
    root: str | os.PathLike = "/",
    cwd: str | os.PathLike | None = None,
    nvml: Any = AUTO,
    torch_module: Any = AUTO,
    runtime_started_at: float | None | Callable[[], float | None] = runtime_start_time,
) -> Environment:
    """Detect the platform, its GPUs, session limit and useful directories.

    ``environ`` defaults to ``os.environ``; ``shell`` to the running IPython shell (``None``: no shell).
    ``kind`` (or the ``ATHERIA_PLATFORM`` variable) forces the platform; ``colab_tier`` (or ``ATHERIA_COLAB_TIER``)
    selects Colab's 24 h Pro limit. ``root`` relocates ``/content`` and ``/kaggle`` (tests); ``nvml``,
    ``torch_module`` and ``runtime_started_at`` (a value or a callable) are injectable for the same reason.
    """
    env = os.environ if environ is None else environ
    if shell is AUTO:
        shell = _current_shell()
    resolved = _resolve_kind(kind, env, shell)
    tier = colab_tier if colab_tier is not None else (env.get(COLAB_TIER_ENV, "").strip() or "free")
    require_choice("colab_tier" if colab_tier is not None else COLAB_TIER_ENV, tier, COLAB_TIERS)

    base = Path(root)
    here = Path(cwd) if cwd is not None else Path.cwd()
    gpus = detect_gpus(nvml, torch_module)
    started = runtime_started_at() if callable(runtime_started_at) else runtime_started_at

    drive_dir: Path | None = None
    accelerator = "gpu" if gpus else "cpu"
    if resolved == "kaggle":
        accelerator = _kaggle_accelerator(env, gpus)
        work_dir = base / "kaggle" / "working"
        persistent: tuple[Path, ...] = (work_dir,)
        limit = SESSION_LIMITS["kaggle_tpu" if accelerator == "tpu" else "kaggle"]
    elif resolved == "colab":
        work_dir = base / "content"
        mydrive = work_dir / "drive" / "MyDrive"
        drive_dir = mydrive if mydrive.is_dir() else None
        persistent = (drive_dir,) if drive_dir is not None else ()
        limit = SESSION_LIMITS["colab_pro" if tier == "pro" else "colab"]
    else:
        work_dir = here
        persistent = (here,)
        limit = SESSION_LIMITS["local"]
        started = None  # locally the budget counts from its own construction

    result = Environment(
        kind=resolved,
        in_jupyter=is_jupyter_shell(shell),
        gpus=gpus,
        session_limit_seconds=limit,
        runtime_started_at=started,
        work_dir=work_dir,
        persistent_dirs=persistent,
        drive_dir=drive_dir,
        accelerator=accelerator,
    )
    logger.debug("detected environment: %s", result)
    return result


def mount_drive(
    mountpoint: str | os.PathLike = "/content/drive",
    *,
    environment: Environment | None = None,
    force_remount: bool = False,
    timeout_ms: int = 120_000,
) -> Path:
    """Mount Google Drive on Colab (``google.colab.drive.mount``) and return MyDrive's path.

    Raises :class:`PlatformError` anywhere else, or when the mount fails, saying why and what to use instead.
    """
    env = environment if environment is not None else detect_environment()
    if env.kind == "kaggle":
        raise PlatformError(
            "cannot mount Google Drive on Kaggle: google.colab.drive only works inside a Colab runtime. "
            "On Kaggle, keep files in /kaggle/working (saved with the notebook's output) or read them from "
            "an attached Kaggle dataset under /kaggle/input."
        )
    if env.kind != "colab":
        raise PlatformError(
            f"cannot mount Google Drive: not running in Google Colab (detected platform: {env.kind!r}). "
            "Locally, use an ordinary directory (or a Drive for desktop folder) as the persistent location."
        )
    try:
        from google.colab import drive  # type: ignore[import-not-found]
    except ImportError as exc:
        raise PlatformError(f"cannot mount Google Drive: google.colab is not importable ({exc})") from exc
    started = time.monotonic()
    try:
        drive.mount(os.fspath(mountpoint), force_remount=force_remount, timeout_ms=timeout_ms)
    except Exception as exc:
        raise PlatformError(f"mounting Google Drive at {os.fspath(mountpoint)!r} failed: {exc}") from exc
    mydrive = Path(mountpoint) / "MyDrive"
    if not mydrive.is_dir():
        raise PlatformError(f"Google Drive was mounted at {os.fspath(mountpoint)!r} but {mydrive} is not a directory")
    logger.info("Google Drive mounted at %s in %.1f s", mydrive, time.monotonic() - started)
    return mydrive
