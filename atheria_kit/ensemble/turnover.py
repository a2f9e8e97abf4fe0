"""Turnover control: from a combined score in [-1, 1] to a position a trader could run after costs.

The raw rule (``sign(score)`` when ``|score| > threshold``, else flat) re-decides at every bar, so a score that
wobbles around the threshold trades thousands of times a year and the costs eat everything. Three settings, each
off at 0, make the decision path-dependent. At the close of bar ``t``, with ``p`` the position decided at the last
bar, ``s`` the score, ``sigma`` the volatility and ``c`` the cost per side (fee + slippage):

1. **Deadband (hysteresis)**: a held position ``p`` is kept while ``p * s > threshold - deadband``; only once the
   score falls back through that level does the raw rule decide again (flat, or the other side if
   ``|s| > threshold``). Entering still needs ``|s| > threshold``.
2. **Cost-aware entry**: a new position (an entry or a flip) is taken only when its expected move exceeds
   ``cost_multiple`` times the round-trip cost: ``|s| * sigma * sqrt(h) > cost_multiple * 2 c``, where ``sigma``
   is the standard deviation (ddof 1) of the last ``vol_window`` log close-to-close returns and
   ``h = max(min_hold_bars, 1)`` is the horizon the position is at least held for. The score is read as the share
   of the typical ``h``-bar move the position is expected to capture (Grinold's alpha = IC x volatility x score with
   the IC folded into ``cost_multiple``). A flip that fails the test goes flat instead (the exit was decided by
   rule 1); no entry while ``sigma`` is undefined (warm-up).
3. **Minimum holding period**: a position, once decided, is held at least ``min_hold_bars`` bars (it cannot be
   exited or flipped before), so its exit is decided no earlier than ``min_hold_bars`` bars after its entry.

Rules apply in this order; each decision ``signal[t]`` is the position held from the open of bar ``t+1``, as in
:func:`~atheria_kit.ensemble.backtest.backtest`. :func:`control_turnover` runs :class:`TurnoverController` (the
per-step form, with ``state_dict``) over whole arrays, so the live path and the series path are the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int, require_positive


@dataclass(frozen=True)
class TurnoverControl:
    """The three turnover settings (see the module docstring); all zero = the raw rule.

    The defaults were chosen by walk-forward on training data only (15-minute BTC/ETH/BNB bars of
    2023-04..2023-09), never on the test period; ``docs/ensemble.md`` gives the procedure and the numbers.
    """

    min_hold_bars: int = 64
    deadband: float = 0.2
    cost_multiple: float = 2.0
    vol_window: int = 96

    def __post_init__(self) -> None:
        require_int("TurnoverControl.min_hold_bars", self.min_hold_bars, minimum=0)
        value = require_positive("TurnoverControl.deadband", self.deadband, allow_zero=True)
        if value > 1:
            raise ValueError(f"TurnoverControl.deadband={value!r} is invalid; expected a number in [0, 1]")
        require_positive("TurnoverControl.cost_multiple", self.cost_multiple, allow_zero=True)
        require_int("TurnoverControl.vol_window", self.vol_window, minimum=2)

    @classmethod
    def off(cls) -> TurnoverControl:
        """No turnover control: the raw threshold rule at every bar."""
        return cls(min_hold_bars=0, deadband=0.0, cost_multiple=0.0)

    @property
    def is_off(self) -> bool:
        return self.min_hold_bars <= 1 and self.deadband == 0 and self.cost_multiple == 0

    @property
    def horizon(self) -> int:
        """Bars over which the expected move of a new position is measured: ``max(min_hold_bars, 1)``."""
        return max(self.min_hold_bars, 1)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | TurnoverControl | None) -> TurnoverControl:
        """From a mapping of the fields (unknown keys are an error), an instance, or ``None`` (the defaults)."""
        if raw is None:
            return cls()
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, Mapping):
            raise ValueError(f"turnover={raw!r} is invalid; expected a TurnoverControl or a mapping of its fields")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"turnover: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**raw)


def volatility(close: pd.Series | np.ndarray, window: int) -> np.ndarray:
    """Per bar, the standard deviation (ddof 1) of the last ``window`` log close-to-close returns; NaN before.

    Each value is computed from its own window only (not a running update), so the value at the last bar of a
    prefix equals the value at that bar of the whole series, bit for bit.
    """
    require_int("window", window, minimum=2)
    c = np.asarray(close, dtype=np.float64)
    out = np.full(len(c), np.nan)
    if len(c) <= window:
        return out
    r = np.diff(np.log(c))
    win = np.lib.stride_tricks.sliding_window_view(r, window)
    dev = win - win.mean(axis=1, keepdims=True)
    out[window:] = np.sqrt((dev * dev).sum(axis=1) / (window - 1))
    return out


def _decide(p: int, age: int, s: float, sigma: float, threshold: float, cfg: TurnoverControl,
            hurdle: float) -> int:
    """One decision (rules 1-3 of the module docstring) from the previous position ``p`` held ``age`` bars."""
    if p != 0 and p * s > threshold - cfg.deadband:
        want = p
    else:
        want = 1 if s > threshold else (-1 if s < -threshold else 0)
    if want != 0 and want != p and cfg.cost_multiple > 0:
        # NaN sigma (warm-up) compares false: no entry without a volatility estimate.
        if not abs(s) * sigma * math.sqrt(cfg.horizon) > hurdle:
            want = 0
    if p != 0 and want != p and age < cfg.min_hold_bars:
        want = p
    return want


class TurnoverController:
    """The per-step form: feed one (score, volatility) per bar, get the position to hold from the next open.

    ``cost`` is the cost per side (fee + slippage, as a fraction). State (position, bars held, the bar clock) is in
    :meth:`state_dict`, so a live or replayed run resumes exactly.
    """

    def __init__(self, config: TurnoverControl | None = None, *, threshold: float = 0.1, cost: float = 0.0015) -> None:
        self.config = config if config is not None else TurnoverControl()
        if not isinstance(self.config, TurnoverControl):
            raise ValueError(f"config={config!r} is invalid; expected a TurnoverControl")
        if not (0 <= threshold < 1):
            raise ValueError(f"threshold={threshold!r} is invalid; expected a number in [0, 1)")
        require_positive("cost", cost, allow_zero=True)
        self.threshold = float(threshold)
        self.cost = float(cost)
        self.position = 0
        self.bar = -1  # the bar clock: index of the last decision's bar
        self.entry_bar = 0  # bar at which the current position was decided

    @property
    def hurdle(self) -> float:
        """``cost_multiple`` x the round-trip cost: what the expected move of a new position must exceed."""
        return self.config.cost_multiple * 2.0 * self.cost

    def step(self, score: float, volatility: float = math.nan, bar: int | None = None) -> int:
        """The decision at this bar. ``bar``: the bar's index (default: the previous one + 1), so a caller that
        decides every few bars still counts the holding period in bars."""
        now = self.bar + 1 if bar is None else int(bar)
        if now <= self.bar:
            raise ValueError(f"bar={bar!r} is invalid; expected a bar index after the last one ({self.bar})")
        s = float(score)
        if not math.isfinite(s):
            raise ValueError(f"score={score!r} is invalid; expected a finite number")
        want = _decide(self.position, now - self.entry_bar, s, float(volatility), self.threshold, self.config,
                       self.hurdle)
        if want != self.position:
            self.position, self.entry_bar = want, now
        self.bar = now
        return want

    def steps(self, score: np.ndarray | pd.Series, volatility: np.ndarray | pd.Series) -> np.ndarray:
        """:meth:`step` for each bar of a block (one bar each, after the last one), carrying the state: a series
        processed block by block gives the positions of one pass over the whole series."""
        s = np.asarray(score, dtype=np.float64)
        v = np.asarray(volatility, dtype=np.float64)
        if s.ndim != 1 or v.shape != s.shape:
            raise ValueError(f"score has shape {s.shape} and volatility {v.shape}; expected two 1-D arrays of one "
                             "length")
        if not np.isfinite(s).all():
            i = int(np.flatnonzero(~np.isfinite(s))[0])
            raise ValueError(f"score[{i}]={s[i]!r} is invalid; expected finite numbers")
        cfg, hurdle, thr = self.config, self.hurdle, self.threshold
        out = np.zeros(len(s), dtype=np.int8)
        p, entry, bar = self.position, self.entry_bar, self.bar
        # Plain Python floats in the loop (numpy scalars are slower); _decide is what step() calls.
        for i, (x, sig) in enumerate(zip(s.tolist(), v.tolist(), strict=True)):
            bar += 1
            want = _decide(p, bar - entry, x, sig, thr, cfg, hurdle)
            if want != p:
                p, entry = want, bar
            out[i] = p
        self.position, self.entry_bar, self.bar = p, entry, bar
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "threshold": self.threshold, "cost": self.cost,
                "position": self.position, "bar": self.bar, "entry_bar": self.entry_bar}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.config = TurnoverControl(**state["config"])
        self.threshold = float(state["threshold"])
        self.cost = float(state["cost"])
        self.position = int(state["position"])
        self.bar = int(state["bar"])
        self.entry_bar = int(state["entry_bar"])


def control_turnover(score: np.ndarray | pd.Series, volatility: np.ndarray | pd.Series, *,
                     config: TurnoverControl | None = None, threshold: float = 0.1,
                     cost: float = 0.0015) -> np.ndarray:
    """Positions (int8 in {-1, 0, 1}) from a score series: :meth:`TurnoverController.steps` from flat.

    ``score`` is any signal strength in [-1, 1] (the ensemble's combined score; for a probability of "up",
    ``2 p - 1``); ``volatility`` the per-bar sigma of the cost-aware entry (:func:`volatility`).
    """
    ctl = TurnoverController(config, threshold=threshold, cost=cost)
    s = np.asarray(score, dtype=np.float64)
    if ctl.config.is_off and s.ndim == 1 and np.shape(volatility) == s.shape and np.isfinite(s).all():
        # The raw rule needs no state: vectorized, identical to the loop.
        return np.where(s > threshold, 1, np.where(s < -threshold, -1, 0)).astype(np.int8)
    return ctl.steps(s, volatility)


def holding_confidence(signal: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Confidence of held positions: the score on the held side, ``max(0, signal * score)`` (0 when flat)."""
    return np.maximum(0.0, np.asarray(signal, dtype=np.float64) * np.asarray(score, dtype=np.float64))
