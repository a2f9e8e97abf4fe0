"""A fake ``pynvml`` (package nvidia-ml-py) that follows the real module's API, structures and units.

Real API mirrored (nvidia-ml-py's ``pynvml.py``):
- ``nvmlInit()`` / ``nvmlShutdown()`` (calls before init raise ``NVMLError_Uninitialized``);
- ``nvmlDeviceGetCount()``, ``nvmlDeviceGetHandleByIndex(i)`` (``NVMLError_InvalidArgument`` out of range);
- ``nvmlDeviceGetName(handle) -> str`` (decoded, as recent versions return);
- ``nvmlDeviceGetUtilizationRates(handle)`` -> ``c_nvmlUtilization_t`` with ``.gpu``, ``.memory`` in percent;
- ``nvmlDeviceGetMemoryInfo(handle)`` -> ``c_nvmlMemory_t`` with ``.total``, ``.free``, ``.used`` in BYTES;
- ``nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU)`` in degrees Celsius;
- ``nvmlDeviceGetPowerUsage(handle)`` and ``nvmlDeviceGetPowerManagementLimit(handle)`` in MILLIWATTS;
- errors are the real ``pynvml.NVMLError`` hierarchy (``NVMLError(code)`` maps to the subclass).

The structures, constants and exception classes are the real ones from ``pynvml`` (importing it does not load
the NVIDIA library), so code written against this fake catches exactly what it would catch on a GPU machine.
"""

from __future__ import annotations

import threading
import types
from collections import Counter
from dataclasses import dataclass, field

import pynvml


@dataclass
class FakeGpu:
    """One device's readings, in NVML's own units; tests change them between samples."""

    name: str = "Tesla T4"
    memory_total: int = 15_360 * 1024**2  # bytes
    memory_used: int = 0  # bytes
    utilization_gpu: int = 0  # percent
    utilization_memory: int = 0  # percent
    temperature: int = 40  # degrees C
    power_usage: int = 30_000  # milliwatts
    power_limit: int = 70_000  # milliwatts
    #: names of ``nvmlDeviceGet*`` functions that raise NVMLError_NotSupported on this device (e.g. power on some GPUs)
    unsupported: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class FakeHandle:
    index: int


def make_fake_nvml(gpus: list[FakeGpu] | None = None, *, init_error: int | None = None) -> types.ModuleType:
    """Build a fake ``pynvml`` module.

    ``init_error``: an ``NVML_ERROR_*`` code that ``nvmlInit`` raises (e.g. ``pynvml.NVML_ERROR_LIBRARY_NOT_FOUND``
    on a machine without the driver). The module's ``calls`` counts every call by function name; ``gpus`` is the
    mutable list of devices.
    """
    mod = types.ModuleType("pynvml")
    devices = list(gpus or [])
    calls: Counter[str] = Counter()
    lock = threading.Lock()
    refcount = [0]

    # Re-export the real constants, structures and the whole NVMLError hierarchy.
    for name in dir(pynvml):
        if name.startswith(("NVML_", "NVMLError", "c_nvml")):
            setattr(mod, name, getattr(pynvml, name))

    def counted(fn):
        def wrapper(*args, **kwargs):
            with lock:
                calls[fn.__name__] += 1
            return fn(*args, **kwargs)

        wrapper.__name__ = fn.__name__
        setattr(mod, fn.__name__, wrapper)
        return wrapper

    def require_init() -> None:
        if refcount[0] <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def device(handle: FakeHandle, fn_name: str) -> FakeGpu:
        require_init()
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = devices[handle.index]
        if fn_name in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    @counted
    def nvmlInit():
        if init_error is not None:
            raise pynvml.NVMLError(init_error)
        refcount[0] += 1

    @counted
    def nvmlShutdown():
        require_init()
        refcount[0] -= 1

    @counted
    def nvmlDeviceGetCount():
        require_init()
        return len(devices)

    @counted
    def nvmlDeviceGetHandleByIndex(index):
        require_init()
        if not 0 <= index < len(devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    @counted
    def nvmlDeviceGetName(handle):
        return device(handle, "nvmlDeviceGetName").name

    @counted
    def nvmlDeviceGetUtilizationRates(handle):
        gpu = device(handle, "nvmlDeviceGetUtilizationRates")
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization_gpu, memory=gpu.utilization_memory)

    @counted
    def nvmlDeviceGetMemoryInfo(handle, version=None):
        gpu = device(handle, "nvmlDeviceGetMemoryInfo")
        return pynvml.c_nvmlMemory_t(total=gpu.memory_total, free=gpu.memory_total - gpu.memory_used,
                                     used=gpu.memory_used)

    @counted
    def nvmlDeviceGetTemperature(handle, sensor):
        gpu = device(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    @counted
    def nvmlDeviceGetPowerUsage(handle):
        return device(handle, "nvmlDeviceGetPowerUsage").power_usage

    @counted
    def nvmlDeviceGetPowerManagementLimit(handle):
        return device(handle, "nvmlDeviceGetPowerManagementLimit").power_limit

    mod.calls = calls
    mod.gpus = devices
    mod.is_initialized = lambda: refcount[0] > 0
    return mod
