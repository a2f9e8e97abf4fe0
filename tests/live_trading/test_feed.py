"""The live bar feed against the local Binance stand-in: message format, closed klines only, REST backfill, faults,
reconnects (dropped, stale, planned), settings, and the history store's file format."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from atheria_kit.live_trading.config import LiveConfig, ws_base
from atheria_kit.live_trading.feed import Backoff, BinanceKlineFeed, parse_kline_message
from atheria_kit.live_trading.history import HistoryStore
from atheria_kit.market.ohlcv import load_ohlcv
from tests.fakes.binance_exchange import FakeBinance, real_bars

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
TIME = "/api/v3/time"

# Binance's documented kline event (web-socket-streams.md, "Kline/Candlestick Streams"), written out by hand.
DOC_EVENT = {
    "e": "kline", "E": 1672515782136, "s": "BNBBTC",
    "k": {"t": 1672515780000, "T": 1672515839999, "s": "BNBBTC", "i": "1m", "f": 100, "L": 200, "o": "0.0010",
          "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100, "x": False, "q": "1.0000",
          "V": "500", "Q": "0.500", "B": "123456"},
}


@pytest.fixture(scope="module")
def bars():
    return real_bars(SYMBOLS, 40)


@pytest.fixture
def fake(bars):
    frames, interval = bars
    with FakeBinance(frames, interval) as f:
        yield f


def _feed(fake: FakeBinance, tmp_path: Path, **kw) -> BinanceKlineFeed:
    kw.setdefault("warmup_bars", 0)
    kw.setdefault("window", 50)
    kw.setdefault("poll_s", 0.2)
    return BinanceKlineFeed(SYMBOLS, fake.interval, ws_url=fake.ws_url, rest_url=fake.rest_url,
                            store=HistoryStore(tmp_path / "history", fake.interval), **kw)


def _take(feed: BinanceKlineFeed, n: int) -> list:
    return [feed.next() for _ in range(n)]


def _assert_recorded(tmp_path: Path, frames: dict[str, pd.DataFrame], interval: str, n: int) -> None:
    """The history store holds exactly the first ``n`` bars of every symbol: no gap, no duplicate, same values."""
    for sym in SYMBOLS:
        recorded = load_ohlcv(tmp_path / "history" / f"{sym}_{interval}.csv")
        pd.testing.assert_frame_equal(recorded, frames[sym].iloc[:n], check_freq=False, check_names=False)


# ------------------------------------------------------------------------------------------------- messages


def test_parses_binance_documented_kline_payload_in_both_envelopes():
    raw = parse_kline_message(json.dumps(DOC_EVENT))
    combined = parse_kline_message(json.dumps({"stream": "bnbbtc@kline_1m", "data": DOC_EVENT}))
    assert raw == combined
    assert (raw.symbol, raw.interval, raw.open_ms, raw.close_ms, raw.closed) == (
        "BNBBTC", "1m", 1672515780000, 1672515839999, False)
    assert raw.row == (1672515780000, 0.001, 0.0025, 0.0015, 0.002, 1000.0)
    assert parse_kline_message('{"result": null, "id": 1}') is None  # a SUBSCRIBE answer is not a kline


def test_malformed_kline_message_is_named():
    bad = dict(DOC_EVENT, k={k: v for k, v in DOC_EVENT["k"].items() if k != "x"})
    with pytest.raises(ValueError, match="k.x"):
        parse_kline_message(json.dumps(bad))


def test_backoff_doubles_up_to_the_cap_with_jitter_below():
    b = Backoff(base_s=1, cap_s=8, jitter=0.5)
    assert [b.delay(a, 0.0) for a in range(6)] == [1, 2, 4, 8, 8, 8]
    assert [b.delay(a, 1.0) for a in range(4)] == [0.5, 1, 2, 4]


# ---------------------------------------------------------------------------------------------- the stream


def test_only_closed_klines_become_bars_in_lock_step(fake, tmp_path, bars):
    frames, interval = bars
    feed = _feed(fake, tmp_path)
    # the feed asks the exchange's time when it starts and when it connects; then it listens
    sender = threading.Thread(target=lambda: (fake.wait_requests(TIME, 2), fake.publish(3)))
    sender.start()
    steps = _take(feed, 3)
    sender.join()
    assert [s.timestamp for s in steps] == list(frames["BTCUSDT"].index[:3])
    first = frames["ETHUSDT"].iloc[0]
    assert steps[0].bars["ETHUSDT"].close == first["close"] and steps[0].bars["ETHUSDT"].high == first["high"]
    assert feed.stats["open_klines"] >= 2  # each bar's x=false update was seen and not traded
    hist = feed.history("BTCUSDT", 10)
    pd.testing.assert_frame_equal(hist, frames["BTCUSDT"].iloc[:3], check_freq=False, check_names=False)


def test_duplicates_and_out_of_order_messages_leave_one_copy_of_each_bar(fake, tmp_path, bars):
    frames, interval = bars
    feed = _feed(fake, tmp_path)

    def exchange():
        fake.wait_requests(TIME, 2)
        fake.publish(2)
        fake.send_closed("BTCUSDT", 1)  # a repeated message
        fake.publish(3, reverse=True)  # bars 2, 3, 4 closed newest first
        fake.send_closed("ETHUSDT", 0)  # an old one, long after
        fake.publish(1)

    sender = threading.Thread(target=exchange)
    sender.start()
    steps = _take(feed, 6)
    sender.join()
    feed.close()
    assert [s.timestamp for s in steps] == list(frames["BTCUSDT"].index[:6])
    _assert_recorded(tmp_path, frames, interval, 6)
    assert feed.stats["duplicates"] >= 2 and feed.stats["out_of_order"] >= 1


def test_bars_closed_before_the_start_come_from_rest_as_warm_up(fake, tmp_path, bars):
    frames, interval = bars
    fake.publish(10)  # nobody listens: the exchange has 10 closed bars before the feed starts
    feed = _feed(fake, tmp_path, warmup_bars=8)
    sender = threading.Thread(target=lambda: (fake.wait_connections(1), fake.publish(1)))
    sender.start()
    (step,) = _take(feed, 1)
    sender.join()
    assert step.timestamp == frames["BTCUSDT"].index[10]  # trading starts at the bar open at the start
    assert len(feed.history("BTCUSDT", 100)) == 9  # 8 warm-up bars, then the first live one
    assert feed.stats["warmup_bars"] == 16
    starts = [int(q["startTime"]) for p, q in fake.rest_log if p.endswith("klines")]
    assert min(starts) == fake.open_ms(2)  # 8 bars before bar 10
    # the local clock is a year and more off the exchange's (2025 data, 2026 machine): bars follow the exchange


def test_dropped_connection_reconnects_and_backfills_the_missed_bars(fake, tmp_path, bars):
    frames, interval = bars
    gate = threading.Event()
    feed = _feed(fake, tmp_path, sleep=lambda s: gate.wait(30))

    def exchange():
        fake.wait_requests(TIME, 2)
        fake.publish(3)
        fake.refuse(True)
        fake.drop()
        fake.wait_refused(1)  # the feed tried to reconnect and was turned away
        fake.publish(5)  # closed while the feed is disconnected
        fake.refuse(False)
        gate.set()  # the backoff wait ends
        fake.wait_connections(2)
        fake.publish(2)

    sender = threading.Thread(target=exchange)
    sender.start()
    steps = _take(feed, 10)
    sender.join()
    feed.close()
    assert [s.timestamp for s in steps] == list(frames["BTCUSDT"].index[:10])
    assert feed.stats["dropped"] == 1 and feed.stats["failed_connects"] >= 1 and feed.stats["rest_bars"] >= 10
    backfills = [int(q["startTime"]) for p, q in fake.rest_log if p.endswith("klines")]
    assert fake.open_ms(3) in backfills  # asked from the first bar it missed
    _assert_recorded(tmp_path, frames, interval, 10)


def test_connections_that_drop_before_any_message_are_reopened_with_growing_backoff(fake, tmp_path, bars):
    frames, _ = bars
    sleeps: list[float] = []
    feed = _feed(fake, tmp_path, sleep=sleeps.append, random=lambda: 0.0)  # jitter factor pinned at 1

    def exchange():
        for n in (1, 2, 3):  # three connections aborted before they carry a message
            fake.wait_connections(n)
            fake.drop()
        fake.wait_connections(4)
        fake.publish(1)

    sender = threading.Thread(target=exchange)
    sender.start()
    steps = _take(feed, 1)
    sender.join()
    feed.close()
    assert feed.stats["dropped"] == 3 and fake.connections == 4
    assert sleeps == [1.0, 2.0, 4.0]  # Backoff(): 1 s doubled per quick drop, not an immediate reconnect loop
    assert steps[0].timestamp == frames["BTCUSDT"].index[0]


class _SteppingClock:
    """Monotonic time that moves ``step`` seconds at every reading: stale and 24 h limits come without waiting."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_a_stale_stream_is_reconnected(fake, tmp_path):
    feed = _feed(fake, tmp_path, clock=_SteppingClock(10.0), stale_after_s=35.0, poll_s=0.01)
    sender = threading.Thread(target=lambda: (fake.wait_connections(2), fake.publish(1)))
    sender.start()
    _take(feed, 1)
    sender.join()
    feed.close()
    assert feed.stats["stale_reconnects"] >= 1 and fake.connections >= 2


def test_connections_are_renewed_before_the_24_hour_limit(fake, tmp_path):
    feed = _feed(fake, tmp_path, clock=_SteppingClock(3600.0), stale_after_s=1e9, max_connection_s=23.5 * 3600,
                 poll_s=0.01)
    sender = threading.Thread(target=lambda: (fake.wait_connections(2), fake.publish(1)))
    sender.start()
    _take(feed, 1)
    sender.join()
    feed.close()
    assert feed.stats["planned_reconnects"] >= 1 and feed.stats["stale_reconnects"] == 0


def test_a_stop_request_ends_next_between_bars(fake, tmp_path):
    from atheria_kit.live_trading.feed import StopRequested

    feed = _feed(fake, tmp_path, poll_s=0.05)
    threading.Thread(target=lambda: (fake.wait_connections(1), feed.request_stop())).start()
    with pytest.raises(StopRequested):
        feed.next()
    feed.close()


# ------------------------------------------------------------------------------------------------ settings


def test_endpoints_are_settings_testnet_by_default():
    cfg = LiveConfig()
    assert (cfg.ws_url, cfg.api_url) == ("wss://stream.testnet.binance.vision", "https://testnet.binance.vision/api")
    main = LiveConfig.from_mapping({"live": {"exchanges": {"binance": {"testnet": False}}}})
    assert main.ws_url == "wss://data-stream.binance.vision"
    seed = LiveConfig.from_mapping({"live": {"websocket_url": "wss://testnet.binance.vision/ws/"}})
    assert seed.ws_url == "wss://testnet.binance.vision" == ws_base("wss://testnet.binance.vision/stream")


def test_seed_live_section_maps_to_bars(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text("live:\n  cycle_minutes: 60\n  update_every_seconds: 180\n  symbols: [BTCUSDT, ETHUSDT]\n"
                    "  exchanges: {binance: {testnet: true}}\n  websocket_url: wss://testnet.binance.vision/ws/\n")
    cfg = LiveConfig.from_yaml(path, max_cycles=3)
    assert (cfg.cycle_bars, cfg.update_every_bars, cfg.max_cycles, cfg.testnet) == (60, 3, 3, True)
    rc = cfg.replay_config()
    assert (rc.cycle_size_bars, rc.update_every_bars, rc.timeframe) == (60, 3, "1m")
    assert LiveConfig(update_every_seconds=5).update_every_bars == 1  # never twice on the same closed bars


@pytest.mark.parametrize(("raw", "needle"), [
    ({"cycle_minutes": 0}, "cycle_minutes=0"),
    ({"interval": "7m"}, "interval='7m'"),
    ({"symbols": []}, "symbols=()"),
    ({"websocket_url": "http://x"}, "websocket_url='http://x'"),
    ({"catch_up": "maybe"}, "catch_up='maybe'"),
    ({"exchanges": {"binance": {"key": "x"}}}, "exchanges.binance: unknown keys ['key']"),
    ({"max_connection_hours": 25}, "max_connection_hours=25"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_settings_name_the_field_and_value(raw, needle):
    with pytest.raises(ValueError) as info:
        LiveConfig.from_mapping({"live": raw})
    assert needle in str(info.value)


# -------------------------------------------------------------------------------------------- history store


def test_history_store_appends_once_in_order_and_survives_a_torn_line(tmp_path):
    store = HistoryStore(tmp_path, "1m")
    t0 = 1_747_699_200_000  # 2025-05-20 00:00 UTC
    assert store.append("BTCUSDT", (t0, 1.1, 2.0, 1.0, 1.5, 0.1))
    assert store.append("BTCUSDT", (t0 + 60_000, 1.5, 2.5, 1.25, 2.25, 3.0))
    assert not store.append("BTCUSDT", (t0, 9.0, 9.0, 9.0, 9.0, 9.0))  # already recorded
    store.close()
    path = tmp_path / "BTCUSDT_1m.csv"
    assert path.read_text().splitlines() == [
        "timestamp,open,high,low,close,volume",
        "2025-05-20T00:00:00Z,1.1,2.0,1.0,1.5,0.1",
        "2025-05-20T00:01:00Z,1.5,2.5,1.25,2.25,3.0",
    ]
    with open(path, "a") as fh:
        fh.write("2025-05-20T00:02:00Z,2.2")  # a kill in the middle of a write
    again = HistoryStore(tmp_path, "1m")
    assert again.last_open_ms("BTCUSDT") == t0 + 60_000
    assert again.append("BTCUSDT", (t0 + 120_000, 2.25, 2.5, 2.0, 2.5, 1.0))
    again.close()
    frame = load_ohlcv(path)  # the loaders read it as any data file
    assert list(frame["close"]) == [1.5, 2.25, 2.5]
    assert list(frame.index.strftime("%H:%M")) == ["00:00", "00:01", "00:02"]
