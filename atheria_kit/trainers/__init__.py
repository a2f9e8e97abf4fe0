"""Trainers: the adaptive single-model trainer and the parallel multi-strategy trainer.

Names are imported lazily so that ``atheria_kit.trainers.parallel`` (which runs in every worker process that
unpickles a task) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AdaptiveTrainer": "atheria_kit.trainers.adaptive",
    "EpochMetrics": "atheria_kit.trainers.adaptive",
    "recency_weights": "atheria_kit.trainers.adaptive",
    "TrainingConfig": "atheria_kit.trainers.config",
    "EarlyStopping": "atheria_kit.trainers.early_stopping",
    "ParallelStrategyTrainer": "atheria_kit.trainers.parallel",
    "Task": "atheria_kit.trainers.parallel",
    "TaskResult": "atheria_kit.trainers.parallel",
    "summarize": "atheria_kit.trainers.parallel",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'atheria_kit.trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
