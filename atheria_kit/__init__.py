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
    "validate_plain": "atheria_kit.state",
    "ResumableLoader": "atheria_kit.resumable",
    # data-parallel (torch.distributed)
    "RankContext": "atheria_kit.distributed",
    "PerRank": "atheria_kit.distributed",
    "launch": "atheria_kit.launch",
    "LaunchError": "atheria_kit.launch",
    # progressive training
    "SessionConfig": "atheria_kit.session_config",
    "TrainingSession": "atheria_kit.session",
    "SessionResult": "atheria_kit.session",
    "LiveView": "atheria_kit.live",
    "export_model": "atheria_kit.export",
    "RunLog": "atheria_kit.runlog",
    "read_progress": "atheria_kit.runlog",
    "SessionPaths": "atheria_kit.session_config",
    "read_summary": "atheria_kit.runlog",
    "read_jsonl": "atheria_kit.runlog",
    "PLATFORM_LIMITS": "atheria_kit.platform",
    "SESSION_LIMITS": "atheria_kit.platform",
    "Alert": "atheria_kit.monitor",
    "LoadedCheckpoint": "atheria_kit.checkpoint",
    "CheckpointWriteError": "atheria_kit.checkpoint",
    "CheckpointLoadError": "atheria_kit.checkpoint",
    "CheckpointInfo": "atheria_kit.retention",
    "RetentionPolicy": "atheria_kit.retention",
    "SessionStorageError": "atheria_kit.session",
    "RemoteUnavailableError": "atheria_kit.session",
    "Lease": "atheria_kit.lease",
    "LeaseHeldError": "atheria_kit.lease",
    "FileLeaseStore": "atheria_kit.lease",
    "Say": "atheria_kit.say",
    "say": "atheria_kit.say",
    "UserError": "atheria_kit.say",
    # persistence
    "SyncTarget": "atheria_kit.sync",
    "SyncSource": "atheria_kit.sync",
    "DirectoryTarget": "atheria_kit.sync",
    "FsspecTarget": "atheria_kit.sync",
    "KaggleDatasetTarget": "atheria_kit.sync",
    "GoogleDriveLinkSource": "atheria_kit.sync",
    "KaggleInputSource": "atheria_kit.sync",
    "SyncWorker": "atheria_kit.sync",
    "SyncSchedule": "atheria_kit.sync",
    "resume_from_best_source": "atheria_kit.sync",
    "colab_drive_target": "atheria_kit.sync",
    "SyncError": "atheria_kit.sync",
    # trainers and notifications
    "TrainingConfig": "atheria_kit.trainers",
    "AdaptiveTrainer": "atheria_kit.trainers",
    "ParallelStrategyTrainer": "atheria_kit.trainers",
    "Task": "atheria_kit.trainers",
    "TaskResult": "atheria_kit.trainers",
    "notifier_from_environment": "atheria_kit.notify",
    "TelegramNotifier": "atheria_kit.notify",
    "NtfyNotifier": "atheria_kit.notify",
    "RunNotifier": "atheria_kit.notify",
    # ensemble experiments
    "DynamicEnsemble": "atheria_kit.ensemble",
    "RegimeDetector": "atheria_kit.ensemble",
    "PerformanceTracker": "atheria_kit.ensemble",
    "backtest": "atheria_kit.ensemble",
    "BacktestConfig": "atheria_kit.ensemble",
    "TurnoverControl": "atheria_kit.ensemble",
    "SignalModelConfig": "atheria_kit.ensemble.signal_model",
    "fit_signal_model": "atheria_kit.ensemble.signal_model",
    # replay
    "ReplayConfig": "atheria_kit.replay.config",
    "ReplayEngine": "atheria_kit.replay.engine",
    # walk-forward
    "WalkForwardConfig": "atheria_kit.walkforward.config",
    "run_walkforward": "atheria_kit.walkforward.runner",
    # overfitting statistics
    "probabilistic_sharpe_ratio": "atheria_kit.stats",
    "deflated_sharpe_ratio": "atheria_kit.stats",
    "minimum_track_record_length": "atheria_kit.stats",
    "probability_of_backtest_overfitting": "atheria_kit.stats",
    "reality_check": "atheria_kit.stats",
    "spa_test": "atheria_kit.stats",
    "TrialsLedger": "atheria_kit.stats",
    "summarize_overfitting": "atheria_kit.stats",
    "OverfittingSummary": "atheria_kit.stats",
    # market data
    "OHLCVError": "atheria_kit.market.ohlcv",
    "resample_ohlcv": "atheria_kit.market.ohlcv",
    "load_ohlcv": "atheria_kit.market.ohlcv",
    "validate_ohlcv": "atheria_kit.market.ohlcv",
    "synthetic_ohlcv": "atheria_kit.market.synthetic",
    "sample_path": "atheria_kit.market.ohlcv",
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
