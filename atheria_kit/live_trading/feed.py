"""``BinanceKlineFeed``: Binance's public kline streams behind the replay's :class:`~atheria_kit.replay.feed.BarFeed`.

One websocket connection to the combined-stream endpoint ``{ws}/stream?streams=btcusdt@kline_1m/...`` carries every
symbol's kline events, each wrapped as Binance documents it: ``{"stream": "btcusdt@kline_1m", "data": {"e":
"kline", "E": event ms, "s": "BTCUSDT", "k": {"t": open ms, "T": close ms, "s", "i": "1m", "o", "h", "l", "c",
"v" (strings), "x": closed?, ...}}}``. Only closed klines (``k.x`` true) become bars. Missing bars (at the start,
after any reconnect, or when a symbol's stream skips one) are fetched from the REST endpoint ``GET
{rest}/v3/klines?symbol=&interval=&startTime=&endTime=&limit=`` (rows ``[open time, open, high, low, close,
volume, close time, ...]``, at most 1000 a call, paginated), so the recorded history has no gap and no duplicate:
every symbol's bars are accepted strictly in open-time order and each once (older or repeated messages are
counted and dropped). Which bars are closed is decided by Binance's clock, never the local one (``GET
{rest}/v3/time`` before every REST backfill, and event times): a skewed local clock changes nothing.

Robustness: reconnect with exponential backoff and jitter (injectable ``sleep``/``random``), also between
connections that drop before their first message (a server that accepts and closes at once is not hammered); a
stale-stream
detector (no message for ``stale_after_s``: reconnect); a planned reconnect before Binance's 24 h connection limit
(``max_connection_s``); a symbol lagging the others by two bars is backfilled from REST. Every accepted bar is
appended to the :class:`~atheria_kit.live_trading.history.HistoryStore` and fsync'd before it is handed out.

The feed advances all symbols in lock-step like ``HistoricalFeed``: a step at open time ``T`` is handed out once
every symbol's history is complete up to ``T``; a symbol without a bar at ``T`` (an exchange gap) gets ``None``.
Its state (steps handed out, last step's open time, the run's first open time) is small; the bars themselves are
re-read from the history store on a restart, and bars recorded after the last checkpoint are handed out again in
order (``catch_up="process"``) or only added to the history (``"skip"``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import random as _random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import requests
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

from atheria_kit._validation import require_choice, require_int, require_positive
from atheria_kit.live_trading.config import INTERVALS
from atheria_kit.live_trading.history import HistoryStore, Row
from atheria_kit.replay.feed import Bar, Step

logger = logging.getLogger(__name__)

KLINES_LIMIT = 1000  # Binance's maximum rows per /api/v3/klines call
_COLUMNS = ("open", "high", "low", "close", "volume")


class StopRequested(KeyboardInterrupt):
    """A stop was asked for (signal or :meth:`BinanceKlineFeed.request_stop`); raised between bars, never inside one.

    A ``KeyboardInterrupt`` so that the engine's run ends the way an interrupt ends it (run log ``stopped``)."""


class BinanceError(RuntimeError):
    """Binance (or the stand-in) answered a REST call with an error or an unexpected body."""


@dataclass(frozen=True)
class KlineEvent:
    symbol: str
    interval: str
    open_ms: int
    close_ms: int
    event_ms: int
    closed: bool
    row: Row


def parse_kline_message(raw: str | bytes) -> KlineEvent | None:
    """A kline event from a combined-stream (``{"stream", "data"}``) or raw-stream message; ``None`` for other
    events. Raises ``ValueError`` naming what is wrong with a malformed kline message."""
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"message={str(raw)[:80]!r} is not JSON ({exc})") from None
    data = msg.get("data", msg) if isinstance(msg, dict) else None
    if not isinstance(data, dict) or data.get("e") != "kline":
        return None
    k = data.get("k")
    try:
        row = (int(k["t"]), float(k["o"]), float(k["h"]), float(k["l"]), float(k["c"]), float(k["v"]))
        return KlineEvent(str(k["s"]).upper(), str(k["i"]), int(k["t"]), int(k["T"]), int(data.get("E", 0)),
                          bool(k["x"]), row)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"kline message={str(raw)[:120]!r} is invalid ({type(exc).__name__}: {exc}); expected "
                         "Binance's kline payload with k.t, k.T, k.s, k.i, k.o/h/l/c/v and k.x") from None


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``min(cap_s, base_s * 2**attempt)`` scaled by a uniform factor in ``[1 - jitter, 1]``
    (jitter spreads the reconnects of many clients after an exchange-wide drop)."""

    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        require_positive("base_s", self.base_s)
        require_positive("cap_s", self.cap_s)
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter={self.jitter!r} is invalid; expected a fraction in [0, 1]")

    def delay(self, attempt: int, rand: float) -> float:
        return min(self.cap_s, self.base_s * 2 ** min(attempt, 30)) * (1 - self.jitter * rand)


class _Window:
    """The newest bars of one symbol (times in ns, OHLCV rows), trimmed to twice ``keep`` now and then."""

    def __init__(self, keep: int) -> None:
        self.keep = max(1, keep)
        self.times: list[int] = []
        self.rows: list[tuple[float, ...]] = []

    def add(self, open_ms: int, values: tuple[float, ...]) -> None:
        self.times.append(open_ms * 1_000_000)
        self.rows.append(values)
        if len(self.times) > 2 * self.keep:
            del self.times[: -self.keep], self.rows[: -self.keep]

    def frame(self, n: int) -> pd.DataFrame:
        times, rows = self.times[-n:], self.rows[-n:]
        values = np.array(rows, dtype=np.float64).reshape(len(rows), 5)
        index = pd.DatetimeIndex(np.array(times, dtype="datetime64[ns]"), name="timestamp").tz_localize("UTC")
        return pd.DataFrame(values, index=index, columns=list(_COLUMNS))


class BinanceKlineFeed:
    """Closed klines of ``symbols`` from Binance's streams, in lock-step steps; see the module docstring.

    ``steps_total``: the feed is exhausted (``next()`` returns ``None``) after that many steps in all (the run's
    ``max_cycles`` x bars per cycle). ``window``: bars of history kept per symbol (the engine's lookback).
    ``on_start(info)`` is called once the feed knows where it starts (fresh, resumed, bars to catch up).
    ``on_next(n)`` is called each time the engine asks for a step, with the number of steps handed out so far (the
    engine has decided on all ``n`` of them): a hook to act at an exact bar, e.g. a stop after bar ``n``.
    """

    def __init__(self, symbols: list[str] | tuple[str, ...], interval: str = "1m", *, ws_url: str, rest_url: str,
                 store: HistoryStore, steps_total: int | None = None, window: int = 600, warmup_bars: int = 600,
                 catch_up: str = "process", stale_after_s: float | None = None,
                 max_connection_s: float = 23.5 * 3600, poll_s: float = 1.0, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] | None = None, random: Callable[[], float] = _random.random,
                 session: Any = None, connect: Callable[..., Any] | None = None,
                 on_start: Callable[[dict[str, Any]], None] | None = None,
                 on_next: Callable[[int], Any] | None = None) -> None:
        if not symbols:
            raise ValueError(f"symbols={symbols!r} is invalid; expected at least one symbol")
        self.symbols = [s.upper() for s in symbols]
        self.interval = require_choice("interval", interval, tuple(INTERVALS))
        self.iv = INTERVALS[interval] * 1000  # interval in ms
        self.ws_url, self.rest_url = ws_url.rstrip("/"), rest_url.rstrip("/")
        self.store = store
        if steps_total is not None:
            require_int("steps_total", steps_total, minimum=1)
        self.steps_total = steps_total
        self.window = require_int("window", window, minimum=1)
        self.warmup_bars = require_int("warmup_bars", warmup_bars, minimum=0)
        self.catch_up = require_choice("catch_up", catch_up, ("process", "skip"))
        self.stale_after_s = float(stale_after_s if stale_after_s is not None else 2 * INTERVALS[interval])
        require_positive("stale_after_s", self.stale_after_s)
        self.max_connection_s = require_positive("max_connection_s", max_connection_s)
        self.poll_s = require_positive("poll_s", poll_s)
        self.backoff = backoff or Backoff()
        self._clock, self._random = clock, random
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._session = session
        self._connect_fn = connect
        self._on_start = on_start
        self._on_next = on_next
        # state (checkpointed)
        self.position = 0  # steps handed out
        self.last_open_ms: int | None = None  # open time of the last step handed out
        self.first_open_ms: int | None = None  # open time of the run's first step
        # runtime
        self._started = False
        self._ws: Any = None
        self._connected_at = -math.inf
        self._last_msg = -math.inf
        self._got_message = False  # on the current connection
        self._quick_drops = 0  # connections in a row that dropped before their first message
        self._next_open = 0
        self._confirmed: dict[str, int] = {}
        self._pending: dict[str, dict[int, Row]] = {s: {} for s in self.symbols}
        self._windows = {s: _Window(self.window) for s in self.symbols}
        self._ready_at: dict[int, float] = {}
        self._handed_at: float | None = None
        self._handed_open: int | None = None
        self._laggard_check: dict[str, float] = dict.fromkeys(self.symbols, -math.inf)
        #: Bar-complete-to-next-request latencies of the last steps (seconds): the engine has decided on a step
        #: when it asks for the next one.
        self.latencies: deque[float] = deque(maxlen=10_000)
        self.stats = dict.fromkeys(("connections", "failed_connects", "dropped", "stale_reconnects",
                                    "planned_reconnects", "ws_bars", "rest_bars", "warmup_bars", "duplicates",
                                    "out_of_order", "open_klines", "bad_messages", "gaps", "caught_up_bars",
                                    "skipped_bars"), 0)

    def __len__(self) -> int:
        return self.steps_total or 0

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols), "interval": self.interval, "position": self.position,
                "last_open_ms": self.last_open_ms, "first_open_ms": self.first_open_ms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["symbols"]) != self.symbols or state.get("interval", self.interval) != self.interval:
            raise ValueError(f"feed state symbols={state['symbols']!r} interval={state.get('interval')!r} do not "
                             f"match this feed's {self.symbols!r} {self.interval!r}")
        if self._started:
            raise RuntimeError("load_state_dict() after the feed started; expected it before the first next()")
        self.position = int(state["position"])
        self.last_open_ms = None if state["last_open_ms"] is None else int(state["last_open_ms"])
        self.first_open_ms = None if state["first_open_ms"] is None else int(state["first_open_ms"])

    def request_stop(self) -> None:
        """Ask the feed to stop: ``next()`` raises :class:`StopRequested` before the next step (within ``poll_s``).
        Safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # --------------------------------------------------------------------------------------------- steps
    def next(self) -> Step | None:
        now = self._clock()
        if self._handed_open is not None and self._handed_open in self._ready_at:
            self.latencies.append(now - self._ready_at.pop(self._handed_open))
        self._handed_open = None
        if self._on_next is not None:
            self._on_next(self.position)
        if self.steps_total is not None and self.position >= self.steps_total:
            return None
        if not self._started:
            self._start()
        while True:
            if self._stop.is_set():
                raise StopRequested(f"stop requested after {self.position} bars")
            step = self._ready_step()
            if step is not None:
                return step
            self._pump()

    def history(self, symbol: str, n: int) -> pd.DataFrame:
        require_int("n", n, minimum=1)
        return self._windows[symbol].frame(n)

    def _ready_step(self) -> Step | None:
        if not self._confirmed:
            return None
        lo = min(self._confirmed.values())
        while self._next_open <= lo:
            t = self._next_open
            self._next_open = t + self.iv
            rows = {s: self._pending[s].pop(t, None) for s in self.symbols}
            if all(r is None for r in rows.values()):
                continue  # no symbol traded in this interval: not a step, as in the historical timeline
            bars: dict[str, Bar | None] = {}
            for s, r in rows.items():
                if r is None:
                    bars[s] = None
                    continue
                self._windows[s].add(t, r[1:])
                bars[s] = Bar(r[1], r[2], r[3], r[4], r[5], t // self.iv)
            self.store.sync()  # what is traded is on disk first
            step = Step(self.position, pd.Timestamp(t, unit="ms", tz="UTC"), bars)
            self.position += 1
            self.last_open_ms = t
            self._handed_open = t
            self._ready_at.setdefault(t, self._clock())
            return step
        return None

    # --------------------------------------------------------------------------------------------- start
    def _start(self) -> None:
        self._started = True
        if self._session is None:
            self._session = requests.Session()
        server_now = self._server_time_until_ok()
        current_open = server_now // self.iv * self.iv  # the kline open now on the exchange
        resumed = self.last_open_ms is not None
        if resumed:
            self._next_open = self.last_open_ms + self.iv
        elif self.first_open_ms is not None:  # restarted before the first checkpoint: same first bar
            self._next_open = self.first_open_ms
        else:
            self._next_open = current_open
        if self.first_open_ms is None:
            self.first_open_ms = self._next_open
        for s in self.symbols:
            frame = self.store.read(s)
            times = (frame.index.asi8 // 1_000_000).tolist() if len(frame) else []
            values = frame[list(_COLUMNS)].to_numpy(np.float64).tolist() if len(frame) else []
            before = [i for i, t in enumerate(times) if t < self._next_open][-self.window:]
            for i in before:
                self._windows[s].add(times[i], tuple(values[i]))
            for t, v in zip(times, values, strict=True):
                if t >= self._next_open:
                    self._pending[s][t] = (t, *v)
            last = times[-1] if times else None
            self.store.last_open_ms(s)  # opens the file (repairs a partial line)
            if len(before) < self.warmup_bars and not resumed and (last is None or last < self._next_open):
                start = self._next_open - self.warmup_bars * self.iv
                if last is not None:
                    start = max(start, last + self.iv)
                n = 0
                rows = self._retrying("fetching the warm-up bars",
                                      lambda s=s, start=start: self._fetch_klines(s, start, self._next_open - 1,
                                                                                  server_now))
                for row in rows:
                    if self.store.append(s, row):
                        self._windows[s].add(row[0], row[1:])
                        n += 1
                self.stats["warmup_bars"] += n
                last = self.store.last_open_ms(s)
            self._confirmed[s] = max(last if last is not None else -math.inf, self._next_open - self.iv)
        self.store.sync()
        recorded = sum(len(p) for p in self._pending.values())
        self._connect()
        behind = max(0, (current_open - self._next_open) // self.iv)
        if self.catch_up == "skip" and behind:
            for s in self.symbols:  # the bars closed while down join the history, untraded
                for t in sorted(k for k in self._pending[s] if k < current_open):
                    self._windows[s].add(t, self._pending[s].pop(t)[1:])
            self._next_open = current_open
            self.stats["skipped_bars"] += behind
        elif resumed or behind:
            self.stats["caught_up_bars"] += behind
        if self._on_start is not None:
            self._on_start({"resumed": resumed, "first_open_ms": self.first_open_ms,
                            "next_open_ms": self._next_open, "server_open_ms": current_open,
                            "bars_behind": behind, "recorded_before": recorded, "catch_up": self.catch_up,
                            "warmup_bars": self.stats["warmup_bars"]})

    # ---------------------------------------------------------------------------------------- connection
    def _stream_url(self) -> str:
        streams = "/".join(f"{s.lower()}@kline_{self.interval}" for s in self.symbols)
        return f"{self.ws_url}/stream?streams={streams}"

    def _open_ws(self) -> Any:
        if self._connect_fn is not None:
            return self._connect_fn(self._stream_url())
        # legacy=True (websockets >= 17): a plain connection whose lifetime the feed manages (it reconnects itself)
        legacy = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}
        # max_queue: the library stops reading the socket when this many frames wait, and then misses the pongs of
        # its keepalive pings (a 1011 disconnect after 20 s); bars can wait while the engine decides, so the queue
        # is large (4096 frames of ~0.5 kB: the messages of 30 symbols for over a minute at Binance's rate)
        return ws_connect(self._stream_url(), open_timeout=10, close_timeout=2, max_size=2**22, max_queue=4096,
                          **legacy)

    def _connect(self) -> None:
        """(Re)connect and backfill every symbol from REST, retrying with backoff until it works or a stop."""
        self._close_ws()
        if self._quick_drops:  # the last connections died at once: back off as after failed attempts
            delay = self.backoff.delay(self._quick_drops - 1, self._random())
            logger.warning("the last %d connection(s) dropped before any message; reconnecting in %.1f s",
                           self._quick_drops, delay)
            self._sleep(delay)
        attempt = 0
        while True:
            if self._stop.is_set():
                raise StopRequested(f"stop requested while connecting after {self.position} bars")
            try:
                self._ws = self._open_ws()
                self._connected_at = self._last_msg = self._clock()
                self._got_message = False
                server_now = self._server_time()
                for s in self.symbols:
                    self._backfill(s, server_now)
                self.store.sync()
                self.stats["connections"] += 1
                logger.info("connected to %s (connection %d)", self.ws_url, self.stats["connections"])
                return
            except (OSError, TimeoutError, requests.RequestException, BinanceError, WebSocketException) as exc:
                self._close_ws()
                self.stats["failed_connects"] += 1
                delay = self.backoff.delay(attempt, self._random())
                attempt += 1
                logger.warning("cannot reach Binance (%s: %s); retrying in %.1f s (attempt %d)",
                               type(exc).__name__, exc, delay, attempt)
                self._sleep(delay)

    def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - a dead socket's close may fail any way; it is gone either way
                logger.debug("closing the old connection failed", exc_info=True)

    def close(self) -> None:
        self._close_ws()
        self.store.close()

    def _pump(self) -> None:
        """Receive what arrives within ``poll_s``; reconnect on a drop, a stale stream or the planned limit."""
        now = self._clock()
        if now - self._connected_at >= self.max_connection_s:
            self.stats["planned_reconnects"] += 1
            logger.info("planned reconnect after %.0f s (Binance closes connections at 24 h)",
                        now - self._connected_at)
            self._connect()
            return
        timeout = max(0.0, min(self.poll_s, self._last_msg + self.stale_after_s - now,
                               self._connected_at + self.max_connection_s - now))
        try:
            raw = self._ws.recv(timeout=timeout)
        except TimeoutError:
            if self._clock() - self._last_msg >= self.stale_after_s:
                self.stats["stale_reconnects"] += 1
                logger.warning("no message for %.0f s: the stream is stale; reconnecting", self.stale_after_s)
                self._connect()
            return
        except WebSocketException as exc:
            self._dropped(exc)
            return
        try:
            self._got_message, self._quick_drops = True, 0
            while True:
                self._last_msg = self._clock()
                self._on_message(raw)
                try:
                    raw = self._ws.recv(timeout=0)
                except TimeoutError:
                    break
            self._backfill_laggards()
        except WebSocketException as exc:
            self._dropped(exc)
        except (OSError, requests.RequestException, BinanceError) as exc:
            logger.warning("REST backfill failed (%s); reconnecting", exc)
            self._connect()
        self.store.sync()

    def _dropped(self, exc: Exception) -> None:
        self.stats["dropped"] += 1
        if not self._got_message:
            self._quick_drops += 1
        logger.warning("connection lost (%s); reconnecting", exc)
        self._connect()

    def _on_message(self, raw: str | bytes) -> None:
        try:
            ev = parse_kline_message(raw)
        except ValueError as exc:
            self.stats["bad_messages"] += 1
            logger.warning("ignored a malformed message: %s", exc)
            return
        if ev is None or ev.symbol not in self._confirmed or ev.interval != self.interval:
            return
        if not ev.closed:
            self.stats["open_klines"] += 1
            return
        self._accept(ev.symbol, ev.row, "ws")

    def _accept(self, s: str, row: Row, source: str) -> None:
        t = row[0]
        last = self._confirmed[s]
        if t <= last:
            self.stats["duplicates"] += 1
            return
        if t > last + self.iv and source == "ws":
            # a skipped bar (lost or out-of-order message): REST has it if it exists; a later copy is a duplicate
            self.stats["out_of_order"] += 1
            self._backfill(s, self._server_time(), until=t - 1)
        if t <= self._confirmed[s]:
            self.stats["duplicates"] += 1
            return
        if t > self._confirmed[s] + self.iv:
            self.stats["gaps"] += (t - self._confirmed[s]) // self.iv - 1
        self.store.append(s, row)
        if t < self._next_open:  # closed while down and skipped (catch_up="skip"): history only
            self._windows[s].add(t, row[1:])
        else:
            self._pending[s][t] = row
        self._confirmed[s] = t
        self._ready_at[t] = self._clock()
        self.stats["ws_bars" if source == "ws" else "rest_bars"] += 1

    # --------------------------------------------------------------------------------------------- REST
    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        r = self._session.get(f"{self.rest_url}{path}", params=params, timeout=10)
        if r.status_code in (418, 429):
            raise BinanceError(f"GET {path}: rate limited (HTTP {r.status_code}, Retry-After "
                               f"{r.headers.get('Retry-After')})")
        if r.status_code != 200:
            raise BinanceError(f"GET {path} {params}: HTTP {r.status_code} {r.text[:200]}")
        return r.json()

    def _server_time(self) -> int:
        body = self._get("/v3/time")
        if not isinstance(body, dict) or "serverTime" not in body:
            raise BinanceError(f"GET /v3/time answered {body!r}; expected {{'serverTime': ms}}")
        return int(body["serverTime"])

    def _server_time_until_ok(self) -> int:
        return self._retrying("asking Binance's time", self._server_time)

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()`` until it works (backoff and jitter between attempts) or a stop is asked."""
        attempt = 0
        while True:
            if self._stop.is_set():
                raise StopRequested(f"stop requested while {what}")
            try:
                return call()
            except (OSError, requests.RequestException, BinanceError) as exc:
                delay = self.backoff.delay(attempt, self._random())
                attempt += 1
                self.stats["failed_connects"] += 1
                logger.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                self._sleep(delay)

    def _fetch_klines(self, symbol: str, start_ms: int, end_ms: int, server_now: int) -> list[Row]:
        """Closed klines of ``symbol`` with open time in [start_ms, end_ms], paginated; oldest first."""
        out: list[Row] = []
        start = start_ms
        while start <= end_ms:
            rows = self._get("/v3/klines", {"symbol": symbol, "interval": self.interval, "startTime": start,
                                             "endTime": end_ms, "limit": KLINES_LIMIT})
            if not isinstance(rows, list):
                raise BinanceError(f"GET /v3/klines answered {str(rows)[:200]}; expected a list of klines")
            for k in rows:
                if int(k[6]) >= server_now:  # the kline still open on the exchange: not a bar yet
                    return out
                out.append((int(k[0]), float(k[1]), float(k[2]), float(k[3]), float(k[4]), float(k[5])))
            if len(rows) < KLINES_LIMIT:
                break
            start = int(rows[-1][0]) + self.iv
        return out

    def _backfill(self, s: str, server_now: int, until: int | None = None) -> None:
        """Fetch ``s``'s closed bars after the last confirmed one (up to ``until`` or now) and accept them."""
        last_closed = server_now // self.iv * self.iv - self.iv
        end = last_closed if until is None else min(until, last_closed)
        start = self._confirmed[s] + self.iv
        if start > end:
            return
        for row in self._fetch_klines(s, start, end, server_now):
            self._accept(s, row, "rest")
        settled = last_closed - self.iv
        if until is None and self._confirmed[s] < settled:
            # REST has every bar closed before the newest one: those it lacks do not exist (no trades then). The
            # newest closed bar is left to the stream (or the next backfill), in case REST has not caught up yet.
            self.stats["gaps"] += (settled - self._confirmed[s]) // self.iv
            self._confirmed[s] = settled

    def _backfill_laggards(self) -> None:
        """A symbol two bars behind the newest one lost messages (or the exchange has none): ask REST, at most
        once per interval per symbol."""
        newest = max(self._confirmed.values())
        now = self._clock()
        for s in self.symbols:
            if newest - self._confirmed[s] >= 2 * self.iv and now - self._laggard_check[s] >= self.iv / 1000:
                self._laggard_check[s] = now
                self._backfill(s, self._server_time())
