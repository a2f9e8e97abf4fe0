"""``EarlyStopping``: stop when the validation loss has not improved by more than a threshold for N epochs."""

from __future__ import annotations

import math
from typing import Any

from atheria_kit._validation import require_int, require_positive


class EarlyStopping:
    """Counts epochs without an improvement of more than ``threshold`` (absolute) over the best loss so far.

    ``should_stop`` becomes true after exactly ``patience`` such epochs in a row. torch has no early stopping of
    its own; this is the small piece of state the trainer needs, and it is resumable.
    """

    def __init__(self, patience: int, threshold: float = 0.0) -> None:
        self.patience = require_int("patience", patience, minimum=1)
        self.threshold = float(require_positive("threshold", threshold, allow_zero=True))
        self.best: float = math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, loss: float, epoch: int) -> bool:
        """Record one epoch's loss; returns True when it is a new best."""
        if not math.isfinite(loss):
            self.bad_epochs += 1
            return False
        if loss < self.best - self.threshold:
            self.best, self.best_epoch, self.bad_epochs = float(loss), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = int(state["bad_epochs"])
