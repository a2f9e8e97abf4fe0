"""The live run: the replay engine (strategies, regimes, dynamic ensemble, paper account, cycles, penalties,
artifacts, checkpoints) driven by :class:`~atheria_kit.live_trading.feed.BinanceKlineFeed`.

Nothing here decides or trades: :class:`~atheria_kit.replay.engine.ReplayEngine` does, on the live feed's
lock-step bars, exactly as it does on historical ones, so a live run over some bars and a replay over the same
bars make the same trades and KPIs (tested). What this module adds: the run directory's anchor (the run's first
bar, ``live_run.json``), so a restart before the first checkpoint starts at the same bar; a clean stop (SIGTERM,
SIGINT, :meth:`LiveRun.request_stop`) between two bars that fsyncs the artifacts and saves a checkpoint of that
instant through the kit's checkpoint manager; and the feed's counters (reconnects, backfilled bars, duplicates)
in ``live_feed.json``. After a SIGKILL the next run resumes from the last checkpoint: the engine truncates its
JSONL files to the checkpoint's lengths, and the bars since then come back in order from the history store, then
from REST, so no trade is lost or written twice.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from atheria_kit._io import atomic_write_json
from atheria_kit.live_trading.config import LiveConfig
from atheria_kit.live_trading.feed import Backoff, BinanceKlineFeed, StopRequested
from atheria_kit.live_trading.history import HistoryStore
from atheria_kit.replay.engine import ReplayEngine
from atheria_kit.runlog import PROGRESS_FILE, SUMMARY_FILE, read_progress, read_summary

logger = logging.getLogger(__name__)

ANCHOR = "live_run.json"
FEED_STATUS = "live_feed.json"


def _iso(ms: int | None) -> str:
    return "-" if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def _stopped_at(ms: int | None) -> str:
    """Where a stop happened: after which bar, or before the first one (e.g. while the exchange was unreachable)."""
    return "stopped before the first bar" if ms is None else f"stopped after bar {_iso(ms)}"


class LiveRun:
    """One live paper-trading run of ``config`` into ``out_dir`` (default ``config.output_dir``).

    ``say`` receives the lines a user must see (start, resume, each cycle, stop); the CLI prints them.
    ``feed_options`` go to :class:`BinanceKlineFeed` (tests inject ``sleep``, ``random``, ``clock``,
    ``stale_after_s``, ``poll_s``).
    """

    def __init__(self, config: LiveConfig, *, out_dir: str | os.PathLike | None = None, notifier: Any = None,
                 notify_every: int = 10, say: Callable[[str], Any] | None = None,
                 backoff: Backoff | None = None, **feed_options: Any) -> None:
        if not isinstance(config, LiveConfig):
            raise ValueError(f"config={config!r} is invalid; expected a LiveConfig")
        self.config = config
        self.out_dir = Path(out_dir if out_dir is not None else config.output_dir)
        self.notifier = notifier
        self.notify_every = notify_every
        self._say = say or (lambda line: logger.info("%s", line))
        self.backoff = backoff
        self.feed_options = feed_options
        self.feed: BinanceKlineFeed | None = None
        self.engine: ReplayEngine | None = None
        self._stop_asked = threading.Event()

    # ------------------------------------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop at the next bar boundary with a checkpoint (safe from a signal handler or another thread)."""
        self._stop_asked.set()
        if self.feed is not None:
            self.feed.request_stop()

    def _anchor(self, resume: bool) -> int | None:
        path = self.out_dir / ANCHOR
        if not resume or not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        cfg = self.config
        if saved.get("symbols") != list(cfg.symbols) or saved.get("interval") != cfg.interval:
            raise ValueError(f"the run directory {str(self.out_dir)!r} holds a live run of symbols="
                             f"{saved.get('symbols')!r} interval={saved.get('interval')!r}; expected "
                             f"{list(cfg.symbols)!r} {cfg.interval!r} to resume, or start over (--no-resume) or use "
                             "another output directory")
        return int(saved["first_open_ms"])

    # ---------------------------------------------------------------------------------------------- run
    def run(self, *, resume: bool = True, on_cycle: Callable[[dict[str, Any]], None] | None = None,
            handle_signals: bool = False) -> dict[str, Any]:
        """Trade until ``max_cycles`` cycles are done in all (status ``finished``) or a stop (``stopped``, with a
        checkpoint of that bar). Returns the engine's final KPIs plus ``status``, ``started_after_cycle`` and
        ``feed`` (the feed's counters). ``handle_signals``: SIGTERM and SIGINT request the stop (main thread)."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (self.out_dir / ANCHOR).unlink(missing_ok=True)
        first_open = self._anchor(resume)
        store = HistoryStore(self.out_dir / "history", cfg.interval)
        options = {"stale_after_s": cfg.stale_after_intervals * cfg.interval_seconds,
                   "max_connection_s": cfg.max_connection_hours * 3600,
                   "poll_s": min(1.0, float(cfg.update_every_seconds)), **self.feed_options}
        feed = BinanceKlineFeed(cfg.symbols, cfg.interval, ws_url=cfg.ws_url, rest_url=cfg.api_url, store=store,
                                steps_total=cfg.max_cycles * cfg.cycle_bars, window=cfg.lookback_bars,
                                warmup_bars=cfg.warmup_bars, catch_up=cfg.catch_up, backoff=self.backoff,
                                on_start=self._started, **options)
        feed.first_open_ms = first_open
        self.feed = feed
        if self._stop_asked.is_set():
            feed.request_stop()
        engine = ReplayEngine(cfg.replay_config(), feed=feed, out_dir=self.out_dir, notifier=self.notifier,
                              notify_every=self.notify_every)
        self.engine = engine
        previous = self._install_signals() if handle_signals else None
        started_at = time.monotonic()

        def cycle_done(record: dict[str, Any]) -> None:
            self._write_feed_status("running")
            self._say(f"cycle {record['cycle']} done: bars {record['bars_done']}/{record['total_bars']} "
                      f"(last bar {_iso(feed.last_open_ms)}) equity {record['equity']:.4f} "
                      f"trades {record['trades']}")
            if on_cycle is not None:
                on_cycle(record)

        try:
            try:
                result = engine.run(resume=resume, on_cycle=cycle_done)
            except StopRequested:
                result = self._checkpoint_stop(engine)
            self._write_feed_status(result["status"])
        finally:
            if previous is not None:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            feed.close()
        result["feed"] = dict(feed.stats)
        result["seconds"] = time.monotonic() - started_at
        if result["status"] == "finished":
            self._say(f"live run finished: {result['cycle']} cycles, {result['bars_done']} bars, equity "
                      f"{result['equity']:.4f}, trades {result['trades']}, win rate {result['win_rate']:.1%}")
        else:
            self._say(f"{_stopped_at(feed.last_open_ms)} ({result['bars_done']} bars, cycle "
                      f"{result['cycle']} + {result['bars_done'] - result['cycle'] * cfg.cycle_bars} bars); "
                      f"checkpoint saved in {self.out_dir}: run again to continue")
        return result

    def _started(self, info: dict[str, Any]) -> None:
        """The feed knows where it starts: record the anchor, say how the run starts or resumes."""
        cfg = self.config
        atomic_write_json(self.out_dir / ANCHOR, {"symbols": list(cfg.symbols), "interval": cfg.interval,
                                                  "first_open_ms": info["first_open_ms"],
                                                  "first_bar": _iso(info["first_open_ms"])})
        engine = self.engine
        cycle = engine.kpi["cycle"] if engine is not None else 0
        bars = engine.kpi["bars_done"] if engine is not None else 0
        where = f"{'/'.join(cfg.symbols)} {cfg.interval} from {cfg.ws_url} (REST {cfg.api_url})"
        plan = (f"cycles of {cfg.cycle_minutes} min ({cfg.cycle_bars} bars), a decision every "
                f"{cfg.update_every_bars} closed bar(s), {cfg.max_cycles} cycles in all; output {self.out_dir}")
        if info["resumed"] or bars or cycle:
            behind = info["bars_behind"]
            what = ("processed in order" if info["catch_up"] == "process" else "added to the history, not traded")
            self._say(f"live: resuming after cycle {cycle} (bar {bars}, last processed "
                      f"{_iso(engine.feed.last_open_ms)}); {info['recorded_before']} recorded bars after it and "
                      f"{behind} bars closed since the last processed one are {what}; {where}")
        else:
            self._say(f"live: starting at the bar opening {_iso(info['next_open_ms'])} after "
                      f"{info['warmup_bars']} warm-up bars in all; {where}; {plan}")

    def _checkpoint_stop(self, engine: ReplayEngine) -> dict[str, Any]:
        """A checkpoint of the engine after its last processed bar, so a resume continues here; the run log and
        ``live_status.json`` say so."""
        engine.save_checkpoint_after_last_bar()
        kpis = engine.kpis()
        engine.write_live_status("stopped", kpis)
        # The engine's run log says "interrupted; resumes after cycle N": this stop resumes after this very bar.
        note = (f"{_stopped_at(engine.feed.last_open_ms)} (cycle {engine.kpi['cycle']} + "
                f"{engine.kpi['bars_done'] - engine.kpi['cycle'] * self.config.cycle_bars} bars), checkpoint of that "
                "bar; run again to continue")
        for read, name in ((read_progress, PROGRESS_FILE), (read_summary, SUMMARY_FILE)):
            record = read(self.out_dir)
            if record is not None:
                atomic_write_json(self.out_dir / name, {**record, "message": note})
        return {**kpis, "status": "stopped", "started_after_cycle": None}

    def _write_feed_status(self, status: str) -> None:
        feed = self.feed
        lat = sorted(feed.latencies)
        atomic_write_json(self.out_dir / FEED_STATUS, {
            "status": status, "ws_url": self.config.ws_url, "rest_url": self.config.api_url,
            "symbols": list(self.config.symbols), "interval": self.config.interval,
            "bars_handed_out": feed.position, "last_bar": _iso(feed.last_open_ms), "catch_up": self.config.catch_up,
            "latency_ms_median": 1000 * lat[len(lat) // 2] if lat else None,
            "latency_ms_p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "updated_at": time.time(), **feed.stats})

    def _install_signals(self) -> dict[int, Any]:
        previous = {}

        def handler(signum: int, _frame: Any) -> None:
            logger.info("signal %d: stopping at the next bar boundary", signum)
            self.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        return previous
