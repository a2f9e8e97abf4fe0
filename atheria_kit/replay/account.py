"""Paper account: one position per symbol, orders filled at the next bar's open with fees and slippage.

Accounting (margin style): opening a position costs only its fee; closing realizes
``direction * qty * (exit - entry)`` minus the exit fee. Equity = cash + unrealized PnL at the last closes.
A new position's notional is ``per_trade_pct`` % of equity, cut so that open notional (at entry prices) stays
within ``max_exposure_pct`` % of equity; an order that would get nothing is rejected and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atheria_kit._validation import require_positive

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountConfig:
    """The seed's risk settings; fees and slippage are percent of notional per side."""

    initial_balance: float = 1000.0
    per_trade_pct: float = 0.5
    max_exposure_pct: float = 20.0
    fee_pct: float = 0.1
    slippage_pct: float = 0.05

    def __post_init__(self) -> None:
        require_positive("initial_balance", self.initial_balance)
        for name in ("per_trade_pct", "max_exposure_pct"):
            value = require_positive(name, getattr(self, name))
            if value > 100:
                raise ValueError(f"{name}={value!r} is invalid; expected a percentage in (0, 100]")
        for name in ("fee_pct", "slippage_pct"):
            value = require_positive(name, getattr(self, name), allow_zero=True)
            if value >= 50:
                raise ValueError(f"{name}={value!r} is invalid; expected a percentage in [0, 50)")


class PaperAccount:
    """Positions, cash and closed trades of a simulated account over several symbols."""

    def __init__(self, symbols: list[str], config: AccountConfig | None = None) -> None:
        self.config = config or AccountConfig()
        self.symbols = list(symbols)
        self.cash = float(self.config.initial_balance)
        self.positions: dict[str, dict[str, Any]] = {}  # symbol -> direction, qty, entry_price, entry_time, fee
        self.pending: dict[str, int] = {}  # symbol -> target direction, filled at its next bar's open
        self.last_close: dict[str, float] = {}
        self.realized_by_symbol = dict.fromkeys(self.symbols, 0.0)  # net of all fees
        self.rejected = 0

    # ---------------------------------------------------------------------------------------------- orders
    def submit(self, symbol: str, direction: int) -> None:
        """Ask for ``direction`` (-1, 0, +1) in ``symbol`` from its next bar's open."""
        if symbol not in self.realized_by_symbol:
            raise ValueError(f"symbol={symbol!r} is invalid; expected one of {self.symbols}")
        if direction not in (-1, 0, 1):
            raise ValueError(f"direction={direction!r} is invalid; expected -1, 0 or 1")
        current = self.positions.get(symbol, {}).get("direction", 0)
        if direction == current:
            self.pending.pop(symbol, None)
        else:
            self.pending[symbol] = direction

    def on_bar(self, symbol: str, timestamp: str, open_: float, close: float) -> list[dict[str, Any]]:
        """Fill ``symbol``'s pending order at ``open_``, then mark it at ``close``; return trades closed."""
        closed: list[dict[str, Any]] = []
        if symbol in self.pending:
            target = self.pending.pop(symbol)
            self.last_close[symbol] = open_  # equity for sizing is measured at the fill price
            if symbol in self.positions:
                closed.append(self._close(symbol, timestamp, open_))
            if target != 0:
                self._open(symbol, target, timestamp, open_)
        self.last_close[symbol] = close
        return closed

    def _fill_price(self, price: float, side: int) -> float:
        # Buying pays above the open, selling receives below it.
        return price * (1 + side * self.config.slippage_pct / 100)

    def _open(self, symbol: str, direction: int, timestamp: str, open_: float) -> None:
        equity = self.equity()
        exposure = sum(p["qty"] * p["entry_price"] for p in self.positions.values())
        notional = min(equity * self.config.per_trade_pct / 100,
                       equity * self.config.max_exposure_pct / 100 - exposure)
        if notional <= 0:
            self.rejected += 1
            logger.debug("%s: order rejected, exposure %.2f at the cap", symbol, exposure)
            return
        price = self._fill_price(open_, direction)
        fee = notional * self.config.fee_pct / 100
        self.cash -= fee
        self.realized_by_symbol[symbol] -= fee
        self.positions[symbol] = {"direction": direction, "qty": notional / price, "entry_price": price,
                                  "entry_time": timestamp, "fee": fee}

    def _close(self, symbol: str, timestamp: str, open_: float) -> dict[str, Any]:
        p = self.positions.pop(symbol)
        price = self._fill_price(open_, -p["direction"])
        gross = p["direction"] * p["qty"] * (price - p["entry_price"])
        fee = p["qty"] * price * self.config.fee_pct / 100
        self.cash += gross - fee
        self.realized_by_symbol[symbol] += gross - fee
        pnl = gross - fee - p["fee"]
        return {"symbol": symbol, "direction": p["direction"], "entry_time": p["entry_time"], "exit_time": timestamp,
                "entry_price": p["entry_price"], "exit_price": price, "qty": p["qty"], "fees": p["fee"] + fee,
                "pnl": pnl, "return": pnl / (p["qty"] * p["entry_price"])}

    # ---------------------------------------------------------------------------------------------- values
    def unrealized(self, symbol: str) -> float:
        p = self.positions.get(symbol)
        if p is None:
            return 0.0
        return p["direction"] * p["qty"] * (self.last_close.get(symbol, p["entry_price"]) - p["entry_price"])

    def equity(self) -> float:
        return self.cash + sum(self.unrealized(s) for s in self.positions)

    def symbol_pnl(self, symbol: str) -> float:
        """Realized (net of fees) plus unrealized PnL of ``symbol``."""
        return self.realized_by_symbol[symbol] + self.unrealized(symbol)

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"cash": self.cash, "positions": {k: dict(v) for k, v in self.positions.items()},
                "pending": dict(self.pending), "last_close": dict(self.last_close),
                "realized_by_symbol": dict(self.realized_by_symbol), "rejected": self.rejected}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cash = float(state["cash"])
        self.positions = {k: dict(v) for k, v in state["positions"].items()}
        self.pending = {k: int(v) for k, v in state["pending"].items()}
        self.last_close = {k: float(v) for k, v in state["last_close"].items()}
        self.realized_by_symbol = {k: float(v) for k, v in state["realized_by_symbol"].items()}
        self.rejected = int(state["rejected"])
