"""The success gate between the quick validation stage and the full production stage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GateCriteria:
    """Minimum mean-over-folds metrics (strictly greater than). Defaults from the two-stage seed; see the docs for
    why they are far above what bar-direction models usually reach (AUC 0.50-0.53)."""

    recall: float = 0.35
    accuracy: float = 0.60
    auc: float = 0.61
    f1: float = 0.45

    def __post_init__(self) -> None:
        for name in ("recall", "accuracy", "auc", "f1"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"GateCriteria.{name}={v!r} is invalid; expected a number in [0, 1]")


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    checks: tuple[tuple[str, float, float, bool], ...]  # (metric, value, threshold, ok)

    def __str__(self) -> str:
        lines = [f"gate: {'PASSED' if self.passed else 'FAILED'}"]
        lines += [f"  {'ok ' if ok else 'NO '} {m:<9} {v:.4f} > {t:.2f}" for m, v, t, ok in self.checks]
        return "\n".join(lines)


def evaluate_gate(means: Mapping[str, float], criteria: GateCriteria | None = None) -> GateVerdict:
    """Compare mean fold metrics with the criteria; NaN fails."""
    c = criteria or GateCriteria()
    checks = []
    for metric in ("recall", "accuracy", "auc", "f1"):
        value = float(means.get(metric, math.nan))
        threshold = float(getattr(c, metric))
        checks.append((metric, value, threshold, bool(value > threshold)))
    return GateVerdict(all(ok for *_, ok in checks), tuple(checks))
