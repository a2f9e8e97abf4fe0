"""atheria_kit: long training runs on notebook GPUs that stop cleanly and resume exactly.

The public API is listed in ``__all__``; names are imported on first use, so ``import atheria_kit`` stays fast
(torch, pandas and matplotlib load only when something needs them).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # platform, monitor, budget
    "detect_environment": "atheria_kit.platform",
    "Environment": "atheria_kit.platform",
    "GpuInfo": "atheria_kit.platform",
    "mount_drive": "atheria_kit.platform",
    "PlatformError": "atheria_kit.platform",
    "ResourceMonitor": "atheria_kit.monitor",
    "ResourceSnapshot": "atheria_kit.monitor",
    "TimeBudget": "atheria_kit.budget",
    # checkpoints and state
    "CheckpointManager": "atheria_kit.checkpoint",
    "CheckpointRecord": "atheria_kit.checkpoint",
    "CheckpointError": "atheria_kit.checkpoint",
    "DiskStorage": "atheria_kit.checkpoint",
    "snapshot_state": "atheria_kit.checkpoint",
    "BestN": "atheria_kit.retention",
    "LatestN": "atheria_kit.retention",
    "EveryKth": "atheria_kit.retention",
    "AnyOf": "atheria_kit.retention",
    "capture_rng_state": "atheria_kit.state",
    "restore_rng_state": "atheria_kit.state",
    "collect_state": "atheria_kit.state",
    "restore_state": "atheria_kit.state",
    "seed_everything": "atheria_kit.state",
    "SeededGenerators": "atheria_kit.state",
    "TrainingProgress": "atheria_kit.state",
    # progressive training
    "SessionConfig": "atheria_kit.session_config",
    "TrainingSession": "atheria_kit.session",
    "SessionResult": "atheria_kit.session",
    "LiveView": "atheria_kit.live",
    "export_model": "atheria_kit.export",
    "RunLog": "atheria_kit.runlog",
    "read_progress": "atheria_kit.runlog",
    # market data
    "load_ohlcv": "atheria_kit.ohlcv",
    "validate_ohlcv": "atheria_kit.ohlcv",
    "synthetic_ohlcv": "atheria_kit.ohlcv",
    "sample_path": "atheria_kit.ohlcv",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atheria_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
