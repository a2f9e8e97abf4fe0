"""``TrainingConfig``: the adaptive trainer's settings (the seed's fields and defaults), validated at the boundary."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atheria_kit._io import read_yaml_mapping
from atheria_kit._validation import (
    require_bool,
    require_choice,
    require_fraction,
    require_int,
    require_positive,
)

#: Loss functions the trainer knows by name (all applied per sample, then recency-weighted).
LOSSES = ("mse", "bce_with_logits", "cross_entropy")


@dataclass
class TrainingConfig:
    """Settings of :class:`~atheria_kit.trainers.AdaptiveTrainer` (and the worker count of the parallel trainer).

    The first twelve fields and their defaults are the seed's. The rest make its implicit choices explicit:
    ``lr_plateau_patience`` (epochs without improvement before ``ReduceLROnPlateau`` cuts the rate by
    ``learning_rate_decay``), ``recency_weight_min`` (weight of the oldest sample; the newest weighs 1),
    ``loss`` and ``seed`` (mini-batch shuffling).
    """

    max_workers: int = 6
    learning_rate_initial: float = 0.1
    learning_rate_min: float = 0.001
    learning_rate_decay: float = 0.95
    batch_size: int = 256
    early_stopping_patience: int = 20
    early_stopping_threshold: float = 0.0001
    gradient_clip: float | None = 1.0
    use_adaptive_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 0.0001
    sample_weights: bool = True
    lr_plateau_patience: int = 5
    recency_weight_min: float = 0.5
    loss: str = "mse"
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("max_workers", self.max_workers, minimum=1)
        require_positive("learning_rate_initial", self.learning_rate_initial)
        require_positive("learning_rate_min", self.learning_rate_min)
        if self.learning_rate_min > self.learning_rate_initial:
            raise ValueError(
                f"learning_rate_min={self.learning_rate_min!r} is invalid; expected a number <= "
                f"learning_rate_initial={self.learning_rate_initial!r}"
            )
        require_fraction("learning_rate_decay", self.learning_rate_decay, inclusive_high=True)
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("early_stopping_patience", self.early_stopping_patience, minimum=1)
        require_positive("early_stopping_threshold", self.early_stopping_threshold, allow_zero=True)
        if self.gradient_clip is not None:
            require_positive("gradient_clip", self.gradient_clip)
        require_bool("use_adaptive_lr", self.use_adaptive_lr)
        require_fraction("momentum", self.momentum, inclusive_low=True)
        require_positive("weight_decay", self.weight_decay, allow_zero=True)
        require_bool("sample_weights", self.sample_weights)
        require_int("lr_plateau_patience", self.lr_plateau_patience, minimum=0)
        require_fraction("recency_weight_min", self.recency_weight_min, inclusive_high=True)
        require_choice("loss", self.loss, LOSSES)
        require_int("seed", self.seed, minimum=0)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error, not silently ignored."""
        if not isinstance(values, Mapping):
            raise ValueError(f"training config={values!r} is invalid; expected a mapping of field names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"training config has unknown field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_yaml(cls, source: str | os.PathLike, section: str | None = None) -> TrainingConfig:
        """Load from a YAML file (optionally one top-level ``section`` of it, e.g. ``training``)."""
        path = Path(source)
        data = read_yaml_mapping(path)
        if section is not None:
            if section not in data:
                raise ValueError(f"section={section!r} is missing from {str(path)!r}; expected a top-level key")
            data = data[section] or {}
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

