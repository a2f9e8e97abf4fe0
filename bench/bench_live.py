"""Live run cost: per-bar decision latency and CPU per symbol at the seed's settings, over the Binance stand-in.

The stand-in (``tests/fakes/binance_exchange.py``) runs in its own process and closes real 1-minute bars one at a
time, the next one when the engine is done with the last (so a latency is one bar's work, not a queue); this process
runs the live run (``LiveRun``: the feed, the
history store and the replay engine) with the seed's settings: 1-minute klines, cycles of 30 minutes, a decision at
every closed bar (``update_every_seconds=5`` rounds up to one bar), a 600-bar lookback, 600 warm-up bars from REST.

- latency: from the moment the last symbol's closed kline of a bar is accepted by the feed to the moment the engine
  asks for the next bar (it has filled orders, decided for every symbol and written the update): median, p90, max.
- CPU: this process's CPU time (user + system, all its threads: websocket reader, feed, engine) over the bars traded,
  per bar and symbol, and as a share of one core at Binance's real pace (a bar a minute).
- baseline, same run: ``ReplayEngine`` over the same bars from files (``HistoricalFeed``), after the same 600-bar
  warm-up, its wall time per bar (timed between the cycle ends that bracket the traded bars).

    .venv/bin/python bench/bench_live.py [--bars 60] [--symbols 3,30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atheria_kit.live_trading.config import LiveConfig  # noqa: E402
from atheria_kit.live_trading.engine import LiveRun  # noqa: E402
from atheria_kit.replay.engine import ReplayEngine  # noqa: E402
from atheria_kit.replay.feed import HistoricalFeed  # noqa: E402
from tests.fakes.binance_exchange import real_bars  # noqa: E402

WARM = 600
SEED = {"cycle_minutes": 30, "update_every_seconds": 5, "lookback_bars": 600, "warmup_bars": WARM}


def symbols_for(n: int) -> list[str]:
    real = ["BTCUSDT", "ETHUSDT"]
    return real[:n] + [f"SYN{i:02d}USDT" for i in range(max(0, n - len(real)))]


class _Done:
    """Bars the engine is done with, from the feed's ``on_next`` hook (it asks for bar k+1 once done with bar k)."""

    def __init__(self) -> None:
        self.bars = 0
        self.cond = threading.Condition()

    def __call__(self, bars: int) -> None:
        with self.cond:
            self.bars = bars
            self.cond.notify_all()


def live_case(symbols: list[str], bars: int) -> dict:
    """Publish one bar, wait until the engine is done with it, repeat: latency without queueing behind other bars."""
    standin = subprocess.Popen([sys.executable, "-m", "tests.fakes.binance_exchange", "--symbols", ",".join(symbols),
                                "--bars", str(WARM + bars + 1), "--position", str(WARM)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    first = standin.stdout.readline().split()
    ws, rest, interval = first[1], first[3], first[5]
    started = threading.Event()
    done = _Done()
    with tempfile.TemporaryDirectory() as out:
        cfg = LiveConfig.from_mapping({"live": {**SEED, "symbols": symbols, "max_cycles": bars // 30}},
                                      websocket_url=ws, rest_url=rest, interval=interval, output_dir=out)
        live = LiveRun(cfg, say=lambda line: started.set() if line.startswith("live:") else None, on_next=done)
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(live.run(resume=False)))
        thread.start()
        started.wait(300)
        t0 = time.process_time()
        for k in range(1, bars + 1):
            standin.stdin.write("publish 1\n")
            standin.stdin.flush()
            standin.stdout.readline()  # "position N": the bar's messages are sent
            with done.cond:  # the engine asked for bar k+1: it is done with bar k
                done.cond.wait_for(lambda k=k: done.bars >= k or not thread.is_alive(), 120)
        thread.join(120)
        assert not thread.is_alive(), "the live run did not end"
        cpu = time.process_time() - t0
        lat = sorted(live.feed.latencies)
    standin.stdin.close()
    standin.wait(30)
    assert result["status"] == "finished" and result["bars_done"] == bars, result
    return {"latency_ms": [1000 * x for x in lat], "cpu_s": cpu, "trades": result["trades"],
            "reconnects": result["feed"]["dropped"] + result["feed"]["stale_reconnects"]}


class _WarmFeed(HistoricalFeed):
    """The same bars from files, starting after the warm-up bars (in the history, not traded), as the live run."""

    def seek(self, position: int) -> None:
        super().seek(max(position, WARM))


def replay_case(symbols: list[str], bars: int) -> tuple[float, float]:
    """Wall and CPU seconds per bar of ReplayEngine over the same bars (between its first and last cycle end)."""
    frames, interval = real_bars(symbols, WARM + bars)
    cfg = LiveConfig.from_mapping({"live": {**SEED, "symbols": symbols}}, interval=interval).replay_config()
    ends: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as out:
        ReplayEngine(cfg, feed=_WarmFeed(frames), out_dir=out).run(
            resume=False, on_cycle=lambda r: ends.__setitem__(r["cycle"], (time.perf_counter(), time.process_time())))
    first, last = ends[1], ends[max(ends)]
    n = (max(ends) - 1) * cfg.cycle_size_bars
    return (last[0] - first[0]) / n, (last[1] - first[1]) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=60, help="bars traded after the warm-up (a multiple of 30, >= 60)")
    ap.add_argument("--symbols", default="3,30")
    args = ap.parse_args()
    if args.bars < 60 or args.bars % 30:  # the replay baseline is timed between cycle ends: two cycles at least
        ap.error(f"--bars={args.bars} is invalid; expected a multiple of 30, at least 60")
    rows = []
    for n in (int(x) for x in args.symbols.split(",")):
        symbols = symbols_for(n)
        live = live_case(symbols, args.bars)
        replay_wall, replay_cpu = replay_case(symbols, args.bars)
        lat = live["latency_ms"]
        cpu_bar_sym = live["cpu_s"] / (args.bars * n)
        rows.append((n, live["reconnects"], statistics.median(lat), lat[int(0.9 * (len(lat) - 1))], lat[-1],
                     1000 * cpu_bar_sym, 100 * cpu_bar_sym / 60, 1000 * replay_wall,
                     1000 * replay_cpu / n))
    print(f"live run over the Binance stand-in: {args.bars} 1m bars per symbol after {WARM} warm-up bars; seed's "
          "settings (cycle 30 min, decision every closed bar, lookback 600)")
    head = ("symbols", "reconnects", "latency p50 ms", "p90 ms", "max ms", "CPU ms/bar/sym", "CPU %/sym @60s",
            "replay ms/bar", "replay CPU ms/bar/sym")
    print("  ".join(f"{h:>14}" for h in head))
    for r in rows:
        print("  ".join(f"{v:>14}" if isinstance(v, int) else f"{v:>14.2f}" for v in r))
    print("(latency: last symbol's closed kline accepted -> engine done with the bar, all symbols decided; CPU: this "
          "process, all threads; replay: ReplayEngine over the same bars from files after the same warm-up, wall ms "
          "per bar for all symbols and CPU ms per bar and symbol)")


if __name__ == "__main__":
    main()
