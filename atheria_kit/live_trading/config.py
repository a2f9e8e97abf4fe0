"""Live paper-trading configuration: a validated dataclass, loadable from the ``live:`` section of a YAML file.

YAML shape (every key optional; ``exchanges.binance.*`` and the strategy sections are flattened)::

    live:
      symbols: [BTCUSDT, ETHUSDT]
      interval: 1m                  # Binance kline interval; bars of this length are traded and recorded
      cycle_minutes: 30             # a cycle's artifacts and checkpoint every 30 minutes of bars
      update_every_seconds: 5       # the ensemble decides every max(1, this // interval) closed bars
      max_cycles: 1000              # the run ends after this many cycles in all (a restart continues the count)
      output_dir: runs/live
      log_level: INFO
      exchanges: {binance: {testnet: true}}    # false: Binance's public mainnet market-data endpoints
      websocket_url: null           # overrides the endpoint chosen by testnet (the seed's .../ws/ form works)
      rest_url: null
      warmup_bars: 600              # closed bars fetched before the first decision (history only, not traded)
      catch_up: process             # bars that closed while the run was down: process (trade them) or skip
      stale_after_intervals: 2      # no message for this many intervals: reconnect
      max_connection_hours: 23.5    # planned reconnect before Binance's 24 h connection limit
      lookback_bars: 600
      risk: {initial_balance: 1000, per_trade_pct: 0.5, max_exposure_pct: 20}
      costs: {fee_pct: 0.1, slippage_pct: 0.05}
      penalties: {max_drawdown_pct: 20, max_losing_streak: 5, weight_cut: 0.5, reset_below: 0.1}
      turnover: {min_hold_bars: 64, deadband: 0.2, cost_multiple: 2, vol_window: 96}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from atheria_kit._io import read_yaml_mapping
from atheria_kit._validation import require_bool, require_choice, require_int, require_positive
from atheria_kit.replay.config import ReplayConfig, config_section, flatten_sections

#: Binance's documented endpoints (no API key needed for market data).
TESTNET_WS = "wss://stream.testnet.binance.vision"
TESTNET_REST = "https://testnet.binance.vision/api"
MAINNET_WS = "wss://data-stream.binance.vision"  # market data only
MAINNET_REST = "https://data-api.binance.vision/api"  # market data only
#: Binance's kline intervals and their length in seconds (1M, a calendar month, is not a fixed length).
INTERVALS = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200,
             "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400, "3d": 259200, "1w": 604800}
_REPLAY_KEYS = ("lookback_bars", "initial_balance", "per_trade_pct", "max_exposure_pct", "fee_pct", "slippage_pct",
                "max_drawdown_pct", "max_losing_streak", "weight_cut", "reset_below", "min_hold_bars", "deadband",
                "cost_multiple", "vol_window")
_DEFAULT_REPLAY = ReplayConfig()


def ws_base(url: str) -> str:
    """The stream host of a websocket URL: ``wss://host[:port]`` without ``/ws``, ``/ws/`` or ``/stream``.

    The seed's configuration names ``wss://testnet.binance.vision/ws/`` (a raw-stream path); the feed opens the
    combined-stream path ``/stream?streams=...`` on the same host.
    """
    base = url.rstrip("/")
    for tail in ("/ws", "/stream"):
        if base.endswith(tail):
            base = base[: -len(tail)]
    return base


@dataclass(frozen=True)
class LiveConfig:
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    interval: str = "1m"
    cycle_minutes: int = 30
    update_every_seconds: int = 5
    max_cycles: int = 1000
    output_dir: str = "runs/live"
    log_level: str = "INFO"
    testnet: bool = True
    websocket_url: str | None = None
    rest_url: str | None = None
    warmup_bars: int = 600
    catch_up: str = "process"
    stale_after_intervals: float = 2.0
    max_connection_hours: float = 23.5
    lookback_bars: int = _DEFAULT_REPLAY.lookback_bars
    initial_balance: float = _DEFAULT_REPLAY.initial_balance
    per_trade_pct: float = _DEFAULT_REPLAY.per_trade_pct
    max_exposure_pct: float = _DEFAULT_REPLAY.max_exposure_pct
    fee_pct: float = _DEFAULT_REPLAY.fee_pct
    slippage_pct: float = _DEFAULT_REPLAY.slippage_pct
    max_drawdown_pct: float = _DEFAULT_REPLAY.max_drawdown_pct
    max_losing_streak: int = _DEFAULT_REPLAY.max_losing_streak
    weight_cut: float = _DEFAULT_REPLAY.weight_cut
    reset_below: float = _DEFAULT_REPLAY.reset_below
    min_hold_bars: int = _DEFAULT_REPLAY.min_hold_bars
    deadband: float = _DEFAULT_REPLAY.deadband
    cost_multiple: float = _DEFAULT_REPLAY.cost_multiple
    vol_window: int = _DEFAULT_REPLAY.vol_window

    def __post_init__(self) -> None:
        syms = self.symbols
        if isinstance(syms, str):
            syms = tuple(s.strip() for s in syms.split(",") if s.strip())
        if not isinstance(syms, (list, tuple)) or not syms or not all(isinstance(s, str) and s.isalnum()
                                                                      for s in syms) \
                or len({s.upper() for s in syms}) != len(syms):
            raise ValueError(f"symbols={self.symbols!r} is invalid; expected a non-empty list of unique symbol names "
                             "such as BTCUSDT,ETHUSDT")
        object.__setattr__(self, "symbols", tuple(s.upper() for s in syms))
        require_choice("interval", self.interval, tuple(INTERVALS))
        require_int("cycle_minutes", self.cycle_minutes, minimum=1)
        if (self.cycle_minutes * 60) % self.interval_seconds:
            raise ValueError(f"cycle_minutes={self.cycle_minutes!r} is invalid; expected a whole number of "
                             f"{self.interval} bars")
        require_int("update_every_seconds", self.update_every_seconds, minimum=1)
        if self.update_every_seconds > self.cycle_minutes * 60:
            raise ValueError(f"update_every_seconds={self.update_every_seconds!r} is invalid; expected at most a "
                             f"cycle ({self.cycle_minutes * 60} s)")
        require_int("max_cycles", self.max_cycles, minimum=1)
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir):
            raise ValueError(f"output_dir={self.output_dir!r} is invalid; expected a directory path")
        level = str(self.log_level).upper()
        require_choice("log_level", level, ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
        object.__setattr__(self, "log_level", level)
        require_bool("testnet", self.testnet)
        for name, schemes in (("websocket_url", ("ws://", "wss://")), ("rest_url", ("http://", "https://"))):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.startswith(schemes)):
                raise ValueError(f"{name}={value!r} is invalid; expected a URL starting with {' or '.join(schemes)}")
        require_int("warmup_bars", self.warmup_bars, minimum=0)
        require_choice("catch_up", self.catch_up, ("process", "skip"))
        require_positive("stale_after_intervals", self.stale_after_intervals)
        require_positive("max_connection_hours", self.max_connection_hours)
        if self.max_connection_hours >= 24:
            raise ValueError(f"max_connection_hours={self.max_connection_hours!r} is invalid; expected < 24 (Binance "
                             "closes a connection at 24 hours)")
        self.replay_config()  # validates the strategy, risk, cost, penalty and turnover fields

    # ------------------------------------------------------------------------------------------ derived
    @property
    def interval_seconds(self) -> int:
        return INTERVALS[self.interval]

    @property
    def cycle_bars(self) -> int:
        """Bars of ``interval`` in one cycle."""
        return self.cycle_minutes * 60 // self.interval_seconds

    @property
    def update_every_bars(self) -> int:
        """Closed bars between two decisions: ``update_every_seconds`` rounded down to whole bars, at least 1 (a
        decision needs a new closed bar: deciding twice on the same bars gives the same answer)."""
        return max(1, self.update_every_seconds // self.interval_seconds)

    @property
    def ws_url(self) -> str:
        return ws_base(self.websocket_url or (TESTNET_WS if self.testnet else MAINNET_WS))

    @property
    def api_url(self) -> str:
        return (self.rest_url or (TESTNET_REST if self.testnet else MAINNET_REST)).rstrip("/")

    @property
    def timeframe(self) -> str:
        """The interval as the kit's timeframe name (Binance's names are the same: ``1m``, ``1h``, ``1d``)."""
        return self.interval

    def history_pattern(self, out_dir: str | os.PathLike | None = None) -> str:
        """``{out}/history/{symbol}_{interval}.csv``: where the recorded bars are (a ``data:`` pattern for replay)."""
        root = os.fspath(out_dir if out_dir is not None else self.output_dir)
        return os.path.join(root, "history", "{symbol}_" + self.interval + ".csv")

    def replay_config(self) -> ReplayConfig:
        """The engine settings: a replay over ``interval`` bars with cycles of ``cycle_bars``, deciding every
        ``update_every_bars``. ``data`` names the recorded history relative to the run directory (the engine
        never loads it: the live feed supplies the bars)."""
        return ReplayConfig(symbols=self.symbols, timeframe=self.timeframe,
                            data=os.path.join("history", "{symbol}_" + self.interval + ".csv"),
                            cycle_size_bars=self.cycle_bars,
                            update_every_bars=min(self.update_every_bars, self.cycle_bars),
                            out_dir=str(self.output_dir), **{k: getattr(self, k) for k in _REPLAY_KEYS})

    # --------------------------------------------------------------------------------------------- load
    @classmethod
    def from_mapping(cls, raw: Any, **overrides: Any) -> LiveConfig:
        """Build from a parsed YAML document (its ``live`` section if present); ``overrides`` (not ``None``)
        win over the file, as command-line options do."""
        section = dict(config_section(raw, "live", "live settings"))
        exchanges = section.pop("exchanges", None)
        known = {f.name for f in fields(cls)}
        flat = flatten_sections(section, "live", known)
        if exchanges is not None:
            binance = exchanges.get("binance", {}) if isinstance(exchanges, dict) else None
            if not isinstance(binance, dict):
                raise ValueError(f"exchanges={exchanges!r} is invalid; expected {{binance: {{testnet: true}}}}")
            unknown = sorted(set(binance) - {"testnet"})
            if unknown:
                raise ValueError(f"exchanges.binance: unknown keys {unknown}; expected 'testnet'")
            if "testnet" in binance:
                flat["testnet"] = binance["testnet"]
        flat.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"live: unknown keys {unknown}; expected some of {sorted(known)}")
        if isinstance(flat.get("symbols"), list):
            flat["symbols"] = tuple(flat["symbols"])
        return cls(**flat)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> LiveConfig:
        return cls.from_mapping(read_yaml_mapping(path), **overrides)
