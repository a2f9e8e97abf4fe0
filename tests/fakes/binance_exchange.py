"""A local stand-in for Binance's public market data, on 127.0.0.1, speaking Binance's real protocols.

- Websocket streams (the ``websockets`` library's server): ``/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m``
  sends combined-stream events ``{"stream": "btcusdt@kline_1m", "data": {kline event}}``; ``/ws/<stream>`` the raw
  events. The kline event is Binance's documented payload (``e, E, s, k{t, T, s, i, f, L, o, c, h, l, v, n, x, q,
  V, Q, B}``, prices and volumes as strings).
- REST (an HTTP server): ``GET /api/v3/time`` -> ``{"serverTime": ms}``; ``GET /api/v3/klines?symbol=&interval=
  &startTime=&endTime=&limit=`` -> rows ``[open time, open, high, low, close, volume, close time, quote volume,
  trades, taker buy base, taker buy quote, "0"]``, open times in [startTime, endTime], at most ``limit`` (default
  500, max 1000), the kline still open included as Binance does; errors as ``{"code": -1121, "msg": ...}``.

The bars are real ones (the shared 1-minute files, else the shipped 1 h sample). Time on the exchange moves only
when the test says so: bars ``< position`` are closed; :meth:`FakeBinance.publish` sends the open bar's updates
(``x: false``) and then its closed kline (``x: true``) for every symbol, and moves on. Faults on demand:
:meth:`drop` (connections aborted), :meth:`refuse` (handshakes answered 503), a stall (just do not publish),
:meth:`send_closed` (a duplicate or out-of-order closed kline), :meth:`publish` with ``reverse=True`` (two bars
sent newest first). Every REST request is logged in ``rest_log``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
INTERVAL_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000}


def real_bars(symbols: Sequence[str], n: int, *, offset: int = 0) -> tuple[dict[str, pd.DataFrame], str]:
    """``n`` consecutive real bars per symbol and their interval ("1m"): the shared 1-minute files of BTCUSDT/ETHUSDT
    when present, else the shipped 1 h sample's bars (real prices) laid on a 1-minute grid from their first open
    time, so that tests and notebooks see the same interval with or without the development data set. A symbol
    without a file of its own reuses a real symbol's bars shifted by a whole number of bars (for benchmarks with many
    symbols), prices scaled so the symbols differ."""
    from atheria_kit.market.ohlcv import load_ohlcv, sample_path

    minute = {s: SHARED / f"{s}_1m.csv" for s in ("BTCUSDT", "ETHUSDT")}
    interval = "1m"
    if all(p.is_file() for p in minute.values()):
        loaded = {s: load_ohlcv(p) for s, p in minute.items()}
    else:
        loaded = {}
        for s in ("BTCUSDT", "ETHUSDT", "BNBUSDT"):
            frame = load_ohlcv(sample_path(s))
            frame.index = pd.date_range(frame.index[0], periods=len(frame), freq="1min")
            loaded[s] = frame
    names = list(loaded)
    frames = {}
    for i, sym in enumerate(symbols):
        base = loaded[sym] if sym in loaded else loaded[names[i % len(names)]]
        shift = 0 if sym in loaded else (i // len(names) + 1) * 97
        rows = base.iloc[offset + shift: offset + shift + n]
        if len(rows) < n:
            raise ValueError(f"n={n} bars from offset {offset} exceed the {len(base)} bars of the data")
        frame = rows.copy()
        if sym not in loaded:
            frame[["open", "high", "low", "close"]] *= 1 + 0.01 * (i + 1)
            frame.index = base.index[offset: offset + n]  # the same timeline as the real symbols
        frames[sym] = frame[["open", "high", "low", "close", "volume"]]
    return frames, interval


def _num(v: float) -> str:
    return f"{v:.8f}"


class FakeBinance:
    """The stand-in exchange; see the module docstring. ``frames``: each symbol's bars (DatetimeIndex of open times
    on the ``interval`` grid; a symbol may lack some bars). ``position``: bars before it are already closed."""

    def __init__(self, frames: Mapping[str, pd.DataFrame], interval: str = "1m", *, position: int = 0) -> None:
        self.interval = interval
        self.iv = INTERVAL_MS[interval]
        self.frames = {s.upper(): f for s, f in frames.items()}
        timeline = None
        for f in self.frames.values():
            timeline = f.index if timeline is None else timeline.union(f.index)
        self.timeline_ms = timeline.as_unit("ms").asi8.astype(np.int64)
        self.rows = {s: {int(t): tuple(map(float, r)) for t, r in zip(
            f.index.as_unit("ms").asi8, f[["open", "high", "low", "close", "volume"]].to_numpy(), strict=True)}
            for s, f in self.frames.items()}
        self.position = position
        self.rest_log: list[tuple[str, dict[str, str]]] = []
        self.connections = 0  # websocket connections accepted so far
        self.refused = 0
        self._refusing = False
        self._clients: dict[Any, set[str]] = {}
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ws_server: Any = None
        self._http: ThreadingHTTPServer | None = None
        self.ws_url = self.rest_url = ""

    # ------------------------------------------------------------------------------------------- life cycle
    def start(self) -> FakeBinance:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve_ws() -> None:
            from websockets.asyncio.server import serve

            asyncio.set_event_loop(self._loop)

            async def main() -> None:
                self._ws_server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request)
                ready.set()
                await self._ws_server.wait_closed()

            self._loop.run_until_complete(main())

        self._thread = threading.Thread(target=serve_ws, name="fake-binance-ws", daemon=True)
        self._thread.start()
        ready.wait(10)
        port = next(iter(self._ws_server.sockets)).getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{port}"
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-binance-rest",
                         daemon=True).start()
        self.rest_url = f"http://127.0.0.1:{self._http.server_address[1]}/api"
        return self

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._ws_server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._ws_server.close)
            self._thread.join(10)

    def __enter__(self) -> FakeBinance:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- time
    def open_ms(self, index: int) -> int:
        """Open time of timeline bar ``index`` (past the data: the grid continues)."""
        n = len(self.timeline_ms)
        return int(self.timeline_ms[index]) if index < n else int(self.timeline_ms[-1]) + (index - n + 1) * self.iv

    def server_time(self) -> int:
        return self.open_ms(self.position) + 1000  # a second into the bar now open

    # ------------------------------------------------------------------------------------------- messages
    def kline(self, symbol: str, index: int, *, closed: bool) -> dict[str, Any]:
        t = self.open_ms(index)
        o, h, lo, c, v = self.rows[symbol][t]
        if not closed:  # the bar as it looks half-way: the open, a partial range and volume
            h, lo, c, v = max(o, (o + c) / 2), min(o, (o + c) / 2), (o + c) / 2, v / 2
        k = {"t": t, "T": t + self.iv - 1, "s": symbol, "i": self.interval, "f": 100 * index, "L": 100 * index + 99,
             "o": _num(o), "c": _num(c), "h": _num(h), "l": _num(lo), "v": _num(v), "n": 100, "x": closed,
             "q": _num(v * c), "V": _num(v / 2), "Q": _num(v * c / 2), "B": "0"}
        return {"e": "kline", "E": t + self.iv if closed else t + 500, "s": symbol, "k": k}

    def _envelopes(self, symbol: str, index: int, closed: bool) -> tuple[str, str]:
        event = self.kline(symbol, index, closed=closed)
        stream = f"{symbol.lower()}@kline_{self.interval}"
        return stream, json.dumps(event)

    def _send(self, items: list[tuple[str, str, str]]) -> None:
        """Send (symbol, stream, event JSON) to every client subscribed to the stream; wait until written."""
        async def go() -> None:
            for ws, streams in list(self._clients.items()):
                for _sym, stream, event in items:
                    if stream in streams["streams"]:
                        text = event if streams["raw"] else f'{{"stream":"{stream}","data":{event}}}'
                        try:
                            await ws.send(text)
                        except Exception:  # noqa: BLE001 - a client that went away misses the message, like on Binance
                            pass

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(30)

    def publish(self, n: int = 1, *, open_updates: bool = True, reverse: bool = False) -> None:
        """Close the next ``n`` bars: for each, every symbol's open update (x=false), then its closed kline
        (x=true). ``reverse``: the closed klines of the ``n`` bars are sent last, newest bar first (out of order)."""
        items: list[tuple[str, str, str]] = []
        held: list[tuple[str, str, str]] = []
        for _ in range(n):
            i = self.position
            if i >= len(self.timeline_ms):
                raise ValueError(f"publish: no bar {i}; the stand-in holds {len(self.timeline_ms)} bars")
            t = self.open_ms(i)
            symbols = [s for s in self.rows if t in self.rows[s]]
            if open_updates:
                items += [(s, *self._envelopes(s, i, False)) for s in symbols]
            closed = [(s, *self._envelopes(s, i, True)) for s in symbols]
            if reverse:
                held = closed + held
            else:
                items += closed
            with self._cond:
                self.position = i + 1
        self._send(items + held)

    def send_closed(self, symbol: str, index: int) -> None:
        """Send bar ``index``'s closed kline of ``symbol`` again (or early): a duplicate or out-of-order message."""
        self._send([(symbol, *self._envelopes(symbol, index, True))])

    # -------------------------------------------------------------------------------------------- faults
    def drop(self) -> None:
        """Abort every websocket connection (as a network failure would: no close frame)."""
        async def go() -> None:
            for ws in list(self._clients):
                ws.transport.abort()
            for ws in list(self._clients):
                await ws.wait_closed()

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(30)

    def refuse(self, refusing: bool) -> None:
        """While ``True``, websocket handshakes are answered HTTP 503 (the exchange is unreachable)."""
        with self._cond:
            self._refusing = refusing
            self._cond.notify_all()

    def wait_connections(self, n: int, timeout: float = 30) -> None:
        """Wait until ``n`` websocket connections in all were accepted (an event, not a sleep)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.connections >= n, timeout):
                raise AssertionError(f"the client made {self.connections} connections, expected {n}")

    def wait_requests(self, path: str, n: int, timeout: float = 30) -> None:
        """Wait until ``n`` REST requests of ``path`` (e.g. ``/api/v3/time``) were received in all."""
        def seen() -> int:
            return sum(1 for p, _ in self.rest_log if p == path)

        with self._cond:
            if not self._cond.wait_for(lambda: seen() >= n, timeout):
                raise AssertionError(f"{seen()} requests of {path}, expected {n}")

    def wait_refused(self, n: int, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.refused >= n, timeout):
                raise AssertionError(f"{self.refused} handshakes refused, expected {n}")

    # ---------------------------------------------------------------------------------------------- server
    def _process_request(self, connection: Any, request: Any) -> Any:
        with self._cond:
            if self._refusing:
                self.refused += 1
                self._cond.notify_all()
                return connection.respond(503, "Service Unavailable\n")
        return None

    async def _handler(self, ws: Any) -> None:
        parts = urlsplit(ws.request.path)
        if parts.path == "/stream":
            streams = set(parse_qs(parts.query).get("streams", [""])[0].split("/"))
            raw = False
        elif parts.path.startswith("/ws/"):
            streams, raw = {parts.path[len("/ws/"):]}, True
        else:
            await ws.close(1008, "unknown path")
            return
        self._clients[ws] = {"streams": streams, "raw": raw}
        with self._cond:
            self.connections += 1
            self._cond.notify_all()
        try:
            async for _ in ws:  # Binance accepts SUBSCRIBE requests here; the kit never sends any
                pass
        except Exception:  # noqa: BLE001 - an aborted connection ends here
            pass
        finally:
            self._clients.pop(ws, None)

    def klines(self, params: Mapping[str, str]) -> tuple[int, Any]:
        """``GET /api/v3/klines`` as Binance answers it: (HTTP status, body)."""
        sym = params.get("symbol", "").upper()
        if not sym:
            return 400, {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or "
                                               "malformed."}
        if sym not in self.rows:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if params.get("interval") != self.interval:
            return 400, {"code": -1120, "msg": "Invalid interval."}
        limit = int(params.get("limit", 500))
        if not 1 <= limit <= 1000:
            return 400, {"code": -1130, "msg": "Invalid data sent for a parameter."}
        start = int(params["startTime"]) if "startTime" in params else None
        end = int(params["endTime"]) if "endTime" in params else None
        with self._cond:
            last = self.position
        out = []
        idx = [i for i in range(last + 1) if i < len(self.timeline_ms) and self.open_ms(i) in self.rows[sym]]
        if start is None:
            idx = [i for i in idx if end is None or self.open_ms(i) <= end][-limit:]
        else:
            idx = [i for i in idx if self.open_ms(i) >= start and (end is None or self.open_ms(i) <= end)][:limit]
        for i in idx:
            k = self.kline(sym, i, closed=i < last)["k"]
            out.append([k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], "0"])
        return 200, out


def _rest_handler(fake: FakeBinance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet: the test's output stays readable
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            parts = urlsplit(self.path)
            params = {k: v[0] for k, v in parse_qs(parts.query).items()}
            with fake._cond:
                fake.rest_log.append((parts.path, params))
                fake._cond.notify_all()
            if parts.path == "/api/v3/time":
                status, body = 200, {"serverTime": fake.server_time()}
            elif parts.path == "/api/v3/ping":
                status, body = 200, {}
            elif parts.path == "/api/v3/klines":
                status, body = fake.klines(params)
            else:
                status, body = 404, {"code": -1000, "msg": f"Unknown path {parts.path}"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    """``python -m tests.fakes.binance_exchange --symbols BTCUSDT,ETHUSDT --bars N --position P``: serve until
    stdin ends, printing the URLs. Commands on stdin: ``publish K`` closes K more bars; ``run K SECONDS`` closes K
    bars, one every SECONDS (an exchange's pace, for benchmarks); ``drop`` aborts the connections."""
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT")
    ap.add_argument("--bars", type=int, default=2000)
    ap.add_argument("--position", type=int, default=0)
    args = ap.parse_args()
    frames, interval = real_bars(args.symbols.split(","), args.bars)
    with FakeBinance(frames, interval, position=args.position) as fake:
        print(f"ws {fake.ws_url} rest {fake.rest_url} interval {interval}", flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if cmd[:1] == ["publish"]:
                fake.publish(int(cmd[1]) if len(cmd) > 1 else 1)
                print(f"position {fake.position}", flush=True)
            elif cmd[:1] == ["run"]:
                import time

                pace = float(cmd[2])
                for _ in range(int(cmd[1])):
                    t0 = time.monotonic()
                    fake.publish(1)
                    time.sleep(max(0.0, pace - (time.monotonic() - t0)))
                print(f"position {fake.position}", flush=True)
            elif cmd[:1] == ["drop"]:
                fake.drop()
                print("dropped", flush=True)


if __name__ == "__main__":
    main()
