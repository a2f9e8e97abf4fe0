"""Replay configuration: a validated dataclass, loadable from the ``historical:`` section of a YAML file.

YAML shape (every key optional; nested sections are flattened into the dataclass fields)::

    historical:
      symbols: [BTCUSDT, ETHUSDT, BNBUSDT]
      timeframe: 1h
      data: sample              # or {BTCUSDT: path, ...} or a pattern "data/{symbol}_15m.csv"
      max_bars: 0               # 0 = all bars
      cycle_size_bars: 500
      update_every_bars: 25
      lookback_bars: 600        # > the regime detector's vol_lookback + vol_window (524 bars)
      risk: {initial_balance: 1000, per_trade_pct: 0.5, max_exposure_pct: 20}
      costs: {fee_pct: 0.1, slippage_pct: 0.05}
      penalties: {max_drawdown_pct: 20, max_losing_streak: 5, weight_cut: 0.5, reset_below: 0.1}
      turnover: {min_hold_bars: 64, deadband: 0.2, cost_multiple: 2, vol_window: 96}   # 0, 0, 0: the raw rule
      out_dir: runs/replay
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from atheria_kit._io import read_yaml_mapping
from atheria_kit._validation import require_fraction, require_int, require_positive
from atheria_kit.ensemble.backtest import BacktestConfig
from atheria_kit.ensemble.turnover import TurnoverControl
from atheria_kit.market.ohlcv import sample_path, timeframe_to_timedelta
from atheria_kit.replay.account import AccountConfig

SECTIONS = ("risk", "costs", "penalties", "turnover")


def config_section(raw: Any, name: str, what: str) -> dict[str, Any]:
    """The ``name:`` section of a parsed YAML document (or the document itself when it has none)."""
    if not isinstance(raw, dict):
        raise ValueError(f"config={raw!r} is invalid; expected a mapping (the '{name}:' section)")
    section = raw.get(name, raw)
    if not isinstance(section, dict):
        raise ValueError(f"{name}={section!r} is invalid; expected a mapping of {what}")
    return section


def flatten_sections(section: dict[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    """``section`` with the nested :data:`SECTIONS` (``risk:``, ``costs:``, ...) merged into one level; a key
    that is not in ``known`` raises ``ValueError`` naming it and the keys expected."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{key}={value!r} is invalid; expected a mapping")
            flat.update(value)
        else:
            flat[key] = value
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; expected some of {sorted(known)}")
    return flat
_TURNOVER = TurnoverControl()


@dataclass(frozen=True)
class ReplayConfig:
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    timeframe: str = "1h"
    data: Any = "sample"
    max_bars: int = 0
    cycle_size_bars: int = 500
    update_every_bars: int = 25
    lookback_bars: int = 600
    initial_balance: float = 1000.0
    per_trade_pct: float = 0.5
    max_exposure_pct: float = 20.0
    fee_pct: float = 0.1
    slippage_pct: float = 0.05
    max_drawdown_pct: float = 20.0
    max_losing_streak: int = 5
    weight_cut: float = 0.5
    reset_below: float = 0.1
    min_hold_bars: int = _TURNOVER.min_hold_bars
    deadband: float = _TURNOVER.deadband
    cost_multiple: float = _TURNOVER.cost_multiple
    vol_window: int = _TURNOVER.vol_window
    out_dir: str = "runs/replay"

    def __post_init__(self) -> None:
        syms = self.symbols
        if isinstance(syms, str) or not syms or not all(isinstance(s, str) and s for s in syms) \
                or len(set(syms)) != len(syms):
            raise ValueError(f"symbols={syms!r} is invalid; expected a non-empty list of unique symbol names")
        object.__setattr__(self, "symbols", tuple(s.upper() for s in syms))
        timeframe_to_timedelta(self.timeframe)
        require_int("max_bars", self.max_bars, minimum=0)
        require_int("cycle_size_bars", self.cycle_size_bars, minimum=1)
        require_int("update_every_bars", self.update_every_bars, minimum=1, maximum=self.cycle_size_bars)
        require_int("lookback_bars", self.lookback_bars, minimum=30)
        require_positive("max_drawdown_pct", self.max_drawdown_pct)
        require_int("max_losing_streak", self.max_losing_streak, minimum=1)
        require_fraction("weight_cut", self.weight_cut)
        require_fraction("reset_below", self.reset_below)
        if not isinstance(self.out_dir, (str, os.PathLike)) or not str(self.out_dir):
            raise ValueError(f"out_dir={self.out_dir!r} is invalid; expected a directory path")
        self.account_config()  # validates the risk and cost fields
        self.turnover()
        self.data_paths()

    def account_config(self) -> AccountConfig:
        return AccountConfig(self.initial_balance, self.per_trade_pct, self.max_exposure_pct, self.fee_pct,
                             self.slippage_pct)

    def turnover(self) -> TurnoverControl:
        """The ensembles' turnover control (``turnover:`` section), counted in bars of ``timeframe``."""
        return TurnoverControl(self.min_hold_bars, self.deadband, self.cost_multiple, self.vol_window)

    def costs(self) -> BacktestConfig:
        """The costs as the ensemble's cost-aware entry and shadow backtests read them (fractions per side)."""
        return BacktestConfig(fee=self.fee_pct / 100, slippage=self.slippage_pct / 100)

    def data_paths(self) -> dict[str, Path]:
        """Each symbol's data file: the shipped sample, an explicit mapping, or a ``{symbol}`` pattern."""
        d = self.data
        if d == "sample":
            return {s: sample_path(s) for s in self.symbols}
        if isinstance(d, dict):
            missing = [s for s in self.symbols if s not in d]
            if missing:
                raise ValueError(f"data={d!r} is invalid; it lacks paths for symbols {missing}")
            return {s: Path(d[s]) for s in self.symbols}
        if isinstance(d, str) and "{symbol}" in d:
            return {s: Path(d.format(symbol=s)) for s in self.symbols}
        raise ValueError(f"data={d!r} is invalid; expected 'sample', a mapping symbol -> path, "
                         "or a pattern containing '{symbol}'")

    @classmethod
    def from_mapping(cls, raw: Any) -> ReplayConfig:
        """Build from a parsed YAML document (its ``historical`` section if present)."""
        section = config_section(raw, "historical", "replay settings")
        flat = flatten_sections(section, "historical", {f.name for f in fields(cls)})
        if "symbols" in flat and isinstance(flat["symbols"], list):
            flat["symbols"] = tuple(flat["symbols"])
        return cls(**flat)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ReplayConfig:
        return cls.from_mapping(read_yaml_mapping(path))
