"""Walk-forward configuration: a validated dataclass read from YAML, ``ATHERIA_*`` variables and CLI flags.

Precedence: defaults < YAML file < environment (``ATHERIA_HORIZON=4``) < flags.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
from atheria_kit.ensemble.turnover import TurnoverControl
from atheria_kit.market import ohlcv
from atheria_kit.walkforward.evaluation import DEFAULT_LEAK_AUC, DEFAULT_LEAK_BASELINE_AUC
from atheria_kit.walkforward.gate import GateCriteria
from atheria_kit.walkforward.labels import TIE_POLICIES
from atheria_kit.walkforward.models import MODELS, effective_model

MODES: tuple[str, ...] = ("quick", "full", "sequential", "count")
ENV_PREFIX = "ATHERIA_"

#: Split presets of the two-stage workflow (days).
MODE_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"test_span_days": 365, "window": "rolling", "train_window_days": 180, "test_period_days": 60,
              "min_train_days": 180},
    "full": {"test_span_days": None, "window": "expanding", "train_window_days": None, "test_period_days": 21,
             "min_train_days": 120},
}


#: Spellings of true and false accepted in ``ATHERIA_*`` variables and for ``out_of_core``.
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _out_of_core_choice(value: Any) -> str:
    """``out_of_core`` as ``"auto"``, ``"on"`` or ``"off"`` (YAML booleans and true/false/1/0/yes/no accepted)."""
    text = str(value).strip().lower()
    for choice, spellings in (("auto", ("auto",)), ("on", _TRUE), ("off", _FALSE)):
        if text in spellings:
            return choice
    raise ValueError(f"out_of_core={value!r} is invalid; expected 'auto', 'on' (true) or 'off' (false)")


@dataclass
class WalkForwardConfig:
    """Everything one walk-forward run needs; defaults work with no configuration (shipped BTCUSDT 1h sample)."""

    symbol: str = "BTCUSDT"
    timeframe: str = "1h"
    horizon: int = 1
    data: str | None = None  # file path; None = shipped sample; "synthetic" = seeded synthetic bars
    synthetic_bars: int = 20_000
    max_bars: int = 0
    start: str | None = None
    end: str | None = None
    mode: str = "quick"
    n_splits: int = 5
    embargo_minutes: float = 30.0
    # time-based modes (quick, full): None keeps the mode's preset (MODE_PRESETS); a value overrides it
    test_period_days: float | None = None
    min_train_days: float | None = None
    window: str | None = None  # "expanding" or "rolling"
    train_window_days: float | None = None
    chunk_size: int = 50_000
    memory_threshold: float = 0.85
    # "auto": out of core when the estimated in-memory peak exceeds memory_threshold of the available RAM;
    # "on"/True, "off"/False (see streaming.py)
    out_of_core: str | bool = "auto"
    model: str = "logreg"
    use_gpu: bool = False
    # early stopping across folds: None = on in quick mode only (a full stage tests every planned fold)
    early_stopping: bool | None = None
    patience: int = 3
    ties: str = "drop"  # an unchanged close: "drop" (excluded from training and metrics) or "down" (labelled 0)
    partial_bins: str = "drop"  # resampling: partial first/last bins "drop"ped or kept and listed ("mark")
    # money view: positions from the out-of-sample P(up), costs of the ensemble backtest (per side, fraction)
    trade_threshold: float = 0.5
    fee: float = 0.001
    slippage: float = 0.0005
    # money view's turnover control (ensemble.turnover, on the score 2 P(up) - 1); all of the first three at 0 = off.
    # Defaults chosen by walk-forward on out-of-sample predictions of 2021-08..2022-06 (shared 1h BTC/ETH/BNB),
    # before the shipped sample begins: bench/bench_walkforward_turnover.py, numbers in docs/walk-forward.md.
    min_hold_bars: int = 0  # a position is held at least this many bars
    deadband: float = 0.0  # held while the score stays above threshold - deadband (0.1 = P(up) 0.05 below it)
    # enter only when |2 P(up) - 1| x sigma x sqrt(max(min_hold_bars, 1)) > cost_multiple x round-trip cost
    cost_multiple: float = 0.5
    cost_vol_window: int = 96  # bars of log returns in the cost-aware entry's volatility (the ensemble's default)
    seed: int = 0
    resume: bool = False
    out: str = "artifacts"
    jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    leak_auc: float = DEFAULT_LEAK_AUC
    leak_baseline_auc: float = DEFAULT_LEAK_BASELINE_AUC
    gate_recall: float = 0.35
    gate_accuracy: float = 0.60
    gate_auc: float = 0.61
    gate_f1: float = 0.45
    confirm: bool | None = None  # sequential mode: True (--yes), False (--no), None (ask when interactive)
    budget_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_int("horizon", self.horizon, minimum=1)
        require_int("max_bars", self.max_bars, minimum=0)
        require_int("synthetic_bars", self.synthetic_bars, minimum=100)
        require_choice("mode", self.mode, MODES)
        require_int("n_splits", self.n_splits, minimum=2)
        require_positive("embargo_minutes", float(self.embargo_minutes), allow_zero=True)
        for name in ("test_period_days", "min_train_days", "train_window_days"):
            if getattr(self, name) is not None:
                require_positive(name, getattr(self, name))
        if self.window is not None:
            require_choice("window", self.window, ("expanding", "rolling"))
        require_int("chunk_size", self.chunk_size, minimum=1)
        require_fraction("memory_threshold", self.memory_threshold, inclusive_high=True)
        require_choice("model", self.model, MODELS)
        self.out_of_core = _out_of_core_choice(self.out_of_core)
        if self.out_of_core == "on" and effective_model(self.model, self.use_gpu) != "logreg":
            raise ValueError(
                f"out_of_core='on' with model={effective_model(self.model, self.use_gpu)!r} is invalid; the "
                "out-of-core path trains logistic regression only (model='logreg', without --use-gpu)"
            )
        if self.early_stopping is not None:
            require_bool("early_stopping", self.early_stopping)
        require_int("patience", self.patience, minimum=1)
        require_choice("ties", self.ties, TIE_POLICIES)
        require_choice("partial_bins", self.partial_bins, ohlcv.PARTIAL_BINS)
        if not (isinstance(self.trade_threshold, (int, float)) and 0.5 <= self.trade_threshold < 1):
            raise ValueError(f"trade_threshold={self.trade_threshold!r} is invalid; expected a probability in "
                             "[0.5, 1): long above it, short (long/short) below 1 - it")
        for name in ("fee", "slippage"):  # the ensemble backtest's rule (BacktestConfig)
            value = require_positive(name, getattr(self, name), allow_zero=True)
            if value >= 0.5:
                raise ValueError(f"{name}={value!r} is invalid; expected a fraction of the traded value in [0, 0.5)")
        require_int("min_hold_bars", self.min_hold_bars, minimum=0)
        if require_positive("deadband", self.deadband, allow_zero=True) > 1:
            raise ValueError(f"deadband={self.deadband!r} is invalid; expected a number in [0, 1] (in units of the "
                             "score 2 P(up) - 1)")
        require_positive("cost_multiple", self.cost_multiple, allow_zero=True)
        require_int("cost_vol_window", self.cost_vol_window, minimum=2)
        require_int("seed", self.seed, minimum=0)
        require_int("jobs", self.jobs, minimum=-1)
        if self.jobs == 0:  # joblib would fail later, deep inside, on n_jobs=0
            raise ValueError("jobs=0 is invalid; expected a number of parallel runs >= 1, or -1 for all cores")
        require_choice("backend", self.backend, ("loky", "threading", "dask"))
        if self.backend == "dask" and not self.scheduler:
            raise ValueError("scheduler=None is invalid with backend='dask'; expected a scheduler address")
        require_fraction("leak_auc", self.leak_auc)
        require_fraction("leak_baseline_auc", self.leak_baseline_auc)
        if self.budget_seconds is not None:
            require_positive("budget_seconds", self.budget_seconds)
        self.gate  # validates the thresholds  # noqa: B018

    @property
    def turnover(self) -> TurnoverControl:
        """The money view's turnover control (off when min_hold_bars <= 1, deadband 0 and cost_multiple 0)."""
        return TurnoverControl(min_hold_bars=self.min_hold_bars, deadband=float(self.deadband),
                               cost_multiple=float(self.cost_multiple), vol_window=self.cost_vol_window)

    @property
    def gate(self) -> GateCriteria:
        return GateCriteria(recall=self.gate_recall, accuracy=self.gate_accuracy, auc=self.gate_auc, f1=self.gate_f1)

    def split_params(self, mode: str) -> dict[str, Any]:
        """Arguments of :func:`splits.time_splits` for a time-based ``mode``: its preset, with any override."""
        params = dict(MODE_PRESETS[mode])
        for name in ("test_period_days", "min_train_days", "window", "train_window_days"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        return params

    def data_path(self) -> Path:
        """The bars file: ``data``, or the shipped 1-hour sample of ``symbol`` (resampled to ``timeframe`` on load).

        Not for ``data="synthetic"``, which names no file."""
        return Path(self.data) if self.data else ohlcv.sample_path(self.symbol, "1h")

    def uses_early_stopping(self, mode: str) -> bool:
        """Whether a stage of ``mode`` stops after ``patience`` folds without a better AUC (default: quick only)."""
        return mode == "quick" if self.early_stopping is None else bool(self.early_stopping)

    @property
    def embargo_ns(self) -> int:
        return int(round(self.embargo_minutes * 60e9))

    def run_name(self, mode: str | None = None) -> str:
        """``{symbol}_{tf}_H{h}_{model}_{mode}``, naming the model actually trained (``--use-gpu`` -> torch)."""
        model = effective_model(self.model, self.use_gpu)
        return f"{self.symbol}_{self.timeframe}_H{self.horizon}_{model}_{mode or self.mode}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change results: a checkpoint only resumes a run with the same fingerprint.

        ``out_of_core`` is left out: the runner adds the model actually trained (``logreg_sgd`` out of core)."""
        skip = {"resume", "out", "jobs", "backend", "scheduler", "confirm", "budget_seconds", "memory_threshold",
                "chunk_size", "out_of_core", "gate_recall", "gate_accuracy", "gate_auc", "gate_f1", "leak_auc",
                "leak_baseline_auc", "trade_threshold", "fee", "slippage", "extra"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


_FIELD_TYPES = {f.name: f.type for f in fields(WalkForwardConfig)}


def _coerce(name: str, raw: str) -> Any:
    kind = str(_FIELD_TYPES[name])
    text = raw.strip()
    if text.lower() in ("none", "null", "") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError as exc:
        expected = {"bool": "true/false (1/0, yes/no, on/off)", "int": "an integer", "float": "a number"}
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is invalid; expected {expected.get(kind.split()[0], kind)}"
        ) from exc
    return text


def load_config(
    path: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> WalkForwardConfig:
    """Build the effective configuration: defaults, then YAML ``path``, then ``ATHERIA_*`` variables, then overrides
    (flags; ``None`` values are ignored)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_yaml_mapping(path))
    env = os.environ if environ is None else environ
    for name in _FIELD_TYPES:
        key = ENV_PREFIX + name.upper()
        if name != "extra" and key in env:
            values[name] = _coerce(name, env[key])
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(_FIELD_TYPES)}")
    return WalkForwardConfig(**values)
