"""The replay engine: lock-step cycles over several symbols, ensemble decisions, KPIs, penalties, resume.

Every ``update_every_bars`` timeline bars the engine, per symbol, computes the strategies' signals on the last
``lookback_bars`` bars, updates each strategy's shadow trades (its standalone position, marked at the update's
close), penalizes strategies past the drawdown or losing-streak limits, sets the ensemble's weights and submits
its decision, after the configured turnover control (minimum holding period counted in the symbol's bars,
deadband, cost-aware entry), to the paper account (filled at the next bar's open). Trades are wins, losses or
neither by the kit's one convention (:func:`~atheria_kit.ensemble.performance.outcome`). Every ``cycle_size_bars`` it writes the
cycle's artifacts and a checkpoint of the whole engine state, with the byte length of every JSONL file it
covers; a restart truncates those files back and continues, so the artifacts end byte-identical to a run that
never stopped. Wall-clock quantities (latency, CPU, memory, times) live only in ``live_status.json`` and the
run log, never in the per-cycle artifacts. Each update's KPIs (equity, per-symbol equity, drawdown, trades,
regimes) are appended to ``updates.jsonl``, the series the notebook plots.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from atheria_kit._io import atomic_write_json
from atheria_kit._validation import require_int, require_positive
from atheria_kit.checkpoint import CheckpointManager
from atheria_kit.ensemble import strategies as strat
from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.ensemble.performance import PerformanceTracker, TradeStats, outcome, win_rate_of
from atheria_kit.market.ohlcv import (
    data_note,
    infer_interval,
    load_ohlcv,
    resample_ohlcv,
    timeframe_to_timedelta,
)
from atheria_kit.notify import RunNotifier
from atheria_kit.replay.account import PaperAccount
from atheria_kit.replay.config import ReplayConfig
from atheria_kit.replay.feed import BarFeed, HistoricalFeed
from atheria_kit.runlog import RunLog

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LIVE_STATUS = "live_status.json"
SUMMARY = "replay_summary.json"
UPDATES = "updates.jsonl"
#: Settings that may differ between a run and its resumption (where it writes, not what it computes).
RESUMABLE_CHANGES = ("out_dir",)
MIN_HISTORY = 30  # bars a symbol needs before the ensemble decides for it


def penalty_decision(stats: TradeStats, multiplier: float, config: ReplayConfig) -> tuple[float, str | None, str]:
    """New weight multiplier and action (``None``, ``"cut"`` or ``"reset"``) for a strategy's stats.

    Past a limit (|max drawdown| >= ``max_drawdown_pct`` % or losing streak >= ``max_losing_streak``) the
    multiplier is cut by ``weight_cut``; when that takes it below ``reset_below`` the strategy is reset instead
    (multiplier back to 1 and its trade history cleared by the caller).
    """
    reasons = []
    if abs(stats.max_drawdown) * 100 >= config.max_drawdown_pct:
        reasons.append(f"drawdown {abs(stats.max_drawdown) * 100:.2f}% >= {config.max_drawdown_pct:g}%")
    if stats.current_losing_streak >= config.max_losing_streak:
        reasons.append(f"losing streak {stats.current_losing_streak} >= {config.max_losing_streak}")
    if not reasons:
        return multiplier, None, ""
    cut = multiplier * config.weight_cut
    if cut < config.reset_below:
        return 1.0, "reset", "; ".join(reasons)
    return cut, "cut", "; ".join(reasons)


def load_frames(config: ReplayConfig) -> dict[str, pd.DataFrame]:
    """Each symbol's bars from the configured files, resampled to ``timeframe`` where the file is finer.

    Each frame's one-line data-quality note (file, bars, span, missing bars) is in ``attrs["data_note"]``, for the
    notebook or CLI to print (after resampling and trimming: it describes the bars the replay uses).
    """
    frames = {}
    for sym, path in config.data_paths().items():
        if not Path(path).is_file():
            raise ValueError(f"data[{sym!r}]={str(path)!r} is invalid; no such file")
        df = load_ohlcv(path)
        if len(df) >= 2 and infer_interval(df) < timeframe_to_timedelta(config.timeframe):
            df = resample_ohlcv(df, config.timeframe)
        if config.max_bars:
            df = df.iloc[: config.max_bars]
        df.attrs["data_note"] = data_note(df, Path(path).name)
        frames[sym] = df
    return frames


class _Lines:
    """An append-only JSONL artifact whose committed length is recorded in checkpoints."""

    def __init__(self, path: Path, length: int) -> None:
        self.path = path
        with open(path, "ab"):
            pass
        os.truncate(path, length)  # drop what the last checkpoint does not cover
        self.fh = open(path, "ab")

    def write(self, record: Mapping[str, Any]) -> None:
        self.fh.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))

    def commit(self) -> int:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


class ReplayEngine:
    """Runs a :class:`ReplayConfig` over a feed into ``out_dir``; see the module docstring."""

    def __init__(self, config: ReplayConfig, *, feed: BarFeed | None = None, out_dir: str | os.PathLike | None = None,
                 ensemble_factory: Callable[[], DynamicEnsemble] = DynamicEnsemble,
                 notifier: Any = None, notify_every: int = 10, clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.time, live_interval_s: float = 1.0) -> None:
        """``notifier``: a :class:`~atheria_kit.notify.Notifier` (wrapped in a rate-limited ``RunNotifier`` per run)
        or a ``RunNotifier``; messages go out at the start, every ``notify_every`` cycles, on a stop and at the end."""
        if not isinstance(config, ReplayConfig):
            raise ValueError(f"config={config!r} is invalid; expected a ReplayConfig")
        require_int("notify_every", notify_every, minimum=1)
        self.config = config
        self.notify_every = notify_every
        # live_status.json is rewritten (fsync'd) at most this often between cycles: fsync costs ~10-30 ms.
        self.live_interval_s = float(live_interval_s)
        self._last_live = -math.inf
        frames = load_frames(config) if feed is None else {}
        #: One line per data file: its bars, span and missing bars (empty for a feed given by the caller).
        self.data_notes = [str(f.attrs["data_note"]) for f in frames.values()]
        self.feed = feed if feed is not None else HistoricalFeed(frames)
        self.symbols = list(self.feed.symbols)
        self.out_dir = Path(out_dir if out_dir is not None else config.out_dir)
        self.notifier = notifier
        self._notes: RunNotifier | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first reading only sets psutil's baseline
        self._cpu_percent = 0.0
        self._cpu_at = clock()
        self.account = PaperAccount(self.symbols, config.account_config())
        self.ensembles = {s: ensemble_factory() for s in self.symbols}
        for ens in self.ensembles.values():  # the replay's settings are the source of truth for what it trades
            ens.set_trading(config.turnover(), config.costs())
        self.names = self.ensembles[self.symbols[0]].names
        det = self.ensembles[self.symbols[0]].regime_detector
        needed = det.vol_lookback + det.vol_window
        if config.lookback_bars < needed:
            # The volatility percentile is NaN on a shorter window, so 'volatile' could never be detected.
            logger.warning("lookback_bars=%d is shorter than the %d bars the regime detector's volatility "
                           "percentile needs; the 'volatile' regime will never be detected", config.lookback_bars,
                           needed)
        window = self.ensembles[self.symbols[0]].adjustment.window
        self.trackers = {s: {n: PerformanceTracker(window) for n in self.names} for s in self.symbols}
        self.multipliers = {s: dict.fromkeys(self.names, 1.0) for s in self.symbols}
        self.shadow = {s: {n: [0, 0.0] for n in self.names} for s in self.symbols}  # direction, entry price
        self.total_bars = len(self.feed) if hasattr(self.feed, "__len__") else None
        self.kpi: dict[str, Any] = {
            "bars_done": 0, "cycle": 0, "trades": 0, "winners": 0, "losers": 0, "breakeven": 0,
            "peak_equity": config.initial_balance,
            "max_drawdown": 0.0, "cycle_start_equity": config.initial_balance, "cycle_trades": 0,
            "symbol_trades": dict.fromkeys(self.symbols, 0), "penalties": 0, "resets": 0, "updates": 0,
        }
        self.offsets: dict[str, int] = {}
        self._files: dict[str, _Lines] = {}
        self._last_latency = 0.0
        self._initial_state = copy.deepcopy(self.state_dict())  # what run(resume=False) starts from

    # ------------------------------------------------------------------------------------------- state
    def _config_dict(self) -> dict[str, Any]:
        d = {f: getattr(self.config, f) for f in self.config.__dataclass_fields__ if f not in RESUMABLE_CHANGES}
        return json.loads(json.dumps(d, default=str))  # plain types, as a checkpoint stores them

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self._config_dict(),
            "feed": self.feed.state_dict(), "account": self.account.state_dict(),
            "ensembles": {s: e.state_dict() for s, e in self.ensembles.items()},
            "trackers": {s: {n: t.state_dict() for n, t in ts.items()} for s, ts in self.trackers.items()},
            "multipliers": {s: dict(m) for s, m in self.multipliers.items()},
            "shadow": {s: {n: list(v) for n, v in sh.items()} for s, sh in self.shadow.items()},
            "kpi": json.loads(json.dumps(self.kpi)), "offsets": dict(self.offsets),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("config")
        if saved is not None:
            mine = self._config_dict()
            changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            if changed:
                detail = ", ".join(f"{k}={mine.get(k)!r} (checkpoint: {saved.get(k)!r})" for k in changed)
                raise ValueError(f"the run directory holds a replay with other settings: {detail}; expected the "
                                 "same settings to resume, or start over (--no-resume / resume=False) or use "
                                 "another output directory")
        self.feed.load_state_dict(state["feed"])
        self.account.load_state_dict(state["account"])
        for s, e in self.ensembles.items():
            e.load_state_dict(state["ensembles"][s])
        for s, ts in self.trackers.items():
            for n, t in ts.items():
                t.load_state_dict(state["trackers"][s][n])
        self.multipliers = {s: {n: float(v) for n, v in m.items()} for s, m in state["multipliers"].items()}
        self.shadow = {s: {n: [int(v[0]), float(v[1])] for n, v in sh.items()} for s, sh in state["shadow"].items()}
        self.kpi = json.loads(json.dumps(state["kpi"]))
        self.offsets = {k: int(v) for k, v in state["offsets"].items()}

    # --------------------------------------------------------------------------------------------- run
    def run(self, *, resume: bool = True, max_cycles: int | None = None, max_seconds: float | None = None,
            on_cycle: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Replay to the end; return the final KPIs, ``status`` (``finished`` or ``stopped``) and
        ``started_after_cycle`` (0 on a fresh start, else the checkpoint's cycle this call resumed from).

        ``max_cycles`` stops after that many more cycles; ``max_seconds`` stops at the first cycle end after that
        much wall time in this call (a session's budget). A stopped run continues on the next ``run()``.
        """
        if max_cycles is not None:
            require_int("max_cycles", max_cycles, minimum=1)
        if max_seconds is not None:
            require_positive("max_seconds", max_seconds, allow_zero=True)
        started = self._clock()
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir = self.out_dir / CHECKPOINT_DIR
        if not resume:
            self._clear_artifacts(ckpt_dir)
        mgr = self._checkpoint_manager()
        loaded = mgr.load("latest") if resume else None
        if not resume:
            self.load_state_dict(copy.deepcopy(self._initial_state))  # also when this engine has run before
        if loaded is not None:
            try:
                self.load_state_dict(loaded.state)
            except BaseException:
                mgr.close()
                raise
            logger.info("resuming after cycle %d (bar %d)", self.kpi["cycle"], self.kpi["bars_done"])
        else:
            self.offsets = {}
        for cycle_file in self.out_dir.glob("*cycle_*.json"):
            idx = cycle_file.stem.rsplit("_", 1)[-1]
            if idx.isdigit() and int(idx) > self.kpi["cycle"]:
                cycle_file.unlink()  # written after the checkpoint we resume from
        first_cycle = self.kpi["cycle"]
        names = [f"{sym}_{kind}.jsonl" for sym in self.symbols for kind in ("trades", "penalties")] + [UPDATES]
        for name in names:
            self._files[name] = _Lines(self.out_dir / name, self.offsets.get(name, 0))
        n_cycles = math.ceil(self.total_bars / cfg.cycle_size_bars) if self.total_bars else None
        runlog = RunLog(self.out_dir, "replay", total=n_cycles, unit="cycle", resume=resume)
        own_notes = not isinstance(self.notifier, RunNotifier)
        notes = RunNotifier(self.notifier, run_name="replay", every=self.notify_every) if own_notes else self.notifier
        self._notes = notes
        info = {"symbols": "/".join(self.symbols), "bars": self.total_bars}
        if loaded is not None:
            info["resumed_after_cycle"] = self.kpi["cycle"]
        notes.started(total=n_cycles, unit="cycle", **info)
        cycles_run = 0
        status = "finished"
        try:
            while True:
                step = self.feed.next()
                if step is not None:
                    self._on_step(step)
                end_of_cycle = self.kpi["bars_done"] % cfg.cycle_size_bars == 0 and self.kpi["bars_done"] > 0
                if step is None or end_of_cycle:
                    if step is not None or self.kpi["bars_done"] > self.kpi["cycle"] * cfg.cycle_size_bars:
                        record = self._end_cycle(mgr, runlog)
                        cycles_run += 1
                        if on_cycle is not None:
                            on_cycle(record)
                    if step is None:
                        break
                    if (max_cycles is not None and cycles_run >= max_cycles) or (
                            max_seconds is not None and cycles_run and self._clock() - started >= max_seconds):
                        status = "stopped"
                        break
            summary = self.kpis()
            if status == "finished":
                atomic_write_json(self.out_dir / SUMMARY, summary)
            self.write_live_status(status, summary)
            runlog.finish(status, f"{status} after cycle {self.kpi['cycle']}")
            key = {k: summary[k] for k in ("equity", "cumulative_pnl", "trades", "win_rate", "max_drawdown",
                                           "penalties", "resets")}
            if status == "stopped":
                notes.message(f"⏸ replay stopped after cycle {self.kpi['cycle']}/{n_cycles}; run it again to "
                              f"continue — equity={summary['equity']:.2f}, trades={summary['trades']}")
            else:
                notes.finished(key, status=status)
            return {**summary, "status": status, "started_after_cycle": first_cycle}
        except KeyboardInterrupt:
            runlog.finish("stopped", f"interrupted; resumes after cycle {self.kpi['cycle']}")
            notes.message(f"⚠ replay interrupted; the last checkpoint is cycle {self.kpi['cycle']}: run it again to "
                          "resume")
            raise
        except BaseException as exc:
            runlog.finish("error", f"{type(exc).__name__}: {exc}")
            notes.failed(exc)
            raise
        finally:
            for f in self._files.values():
                f.close()
            mgr.close()
            if own_notes:
                notes.close(timeout=15.0)  # delivers what is queued; a dead server costs at most this long
            self._notes = None

    def _clear_artifacts(self, ckpt_dir: Path) -> None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for pattern in ("*cycle_*.json", "*_trades.jsonl", "*_penalties.jsonl", UPDATES, SUMMARY, LIVE_STATUS,
                        "progress.json", "metrics.jsonl", "resources.jsonl"):
            for p in self.out_dir.glob(pattern):
                p.unlink()

    # ------------------------------------------------------------------------------------------- steps
    def _on_step(self, step: Any) -> None:
        ts = step.timestamp.isoformat()
        for sym, bar in step.bars.items():
            if bar is None:
                continue
            for trade in self.account.on_bar(sym, ts, bar.open, bar.close):
                self._files[f"{sym}_trades.jsonl"].write(trade)
                self.kpi["trades"] += 1
                self.kpi["cycle_trades"] += 1
                self.kpi["symbol_trades"][sym] += 1
                self.kpi[{1: "winners", -1: "losers", 0: "breakeven"}[outcome(trade["pnl"])]] += 1
        k = self.kpi
        k["bars_done"] += 1
        equity = self.account.equity()
        k["peak_equity"] = max(k["peak_equity"], equity)
        k["max_drawdown"] = max(k["max_drawdown"], 1 - equity / k["peak_equity"])
        if k["bars_done"] % self.config.update_every_bars == 0:
            started = self._clock()
            for sym, bar in step.bars.items():
                if bar is not None:
                    self._decide(sym, ts, bar.index)
            k["updates"] += 1
            self._files[UPDATES].write(self._update_record(ts, equity))
            now = self._clock()
            self._last_latency = now - started
            if now - self._last_live >= self.live_interval_s:
                self._last_live = now
                self.write_live_status("running", self.kpis())

    def _decide(self, sym: str, ts: str, bar: int) -> None:
        """The ensemble's decision for ``sym`` at its bar number ``bar`` (the holding period counts these)."""
        window = self.feed.history(sym, self.config.lookback_bars)
        if len(window) < MIN_HISTORY:
            return
        ens = self.ensembles[sym]
        sig, conf = strat.compute_signals(window, ens.strategies)
        signals = {n: int(sig[n].iloc[-1]) for n in self.names}
        confidences = {n: float(conf[n].iloc[-1]) for n in self.names}
        price = float(window["close"].iloc[-1])
        cost = 2 * (self.config.fee_pct + self.config.slippage_pct) / 100
        for name in self.names:
            direction, entry = self.shadow[sym][name]
            if signals[name] == direction:
                continue
            if direction != 0:
                self.trackers[sym][name].record_trade(direction * (price / entry - 1) - cost)
                self._penalize(sym, name, ts)
            self.shadow[sym][name] = [signals[name], price if signals[name] != 0 else 0.0]
        ens.update_weights(window, self.trackers[sym], multipliers=self.multipliers[sym])
        direction, _ = ens.get_weighted_signal(signals, confidences, bar=bar)
        self.account.submit(sym, int(direction))

    def _penalize(self, sym: str, name: str, ts: str) -> None:
        tracker = self.trackers[sym][name]
        stats = tracker.stats()
        before = self.multipliers[sym][name]
        after, action, reason = penalty_decision(stats, before, self.config)
        if action is None:
            return
        self.multipliers[sym][name] = after
        self.kpi["penalties"] += 1
        if action == "reset":
            self.kpi["resets"] += 1
            tracker.load_state_dict({**tracker.state_dict(), "returns": [], "n_total": 0})
        event = {"timestamp": ts, "bar": self.kpi["bars_done"], "cycle": self.kpi["cycle"] + 1, "strategy": name,
                 "action": action, "reason": reason, "multiplier_before": before, "multiplier_after": after,
                 "max_drawdown_pct": abs(stats.max_drawdown) * 100,
                 "losing_streak": stats.current_losing_streak, "trades": stats.n_trades}
        self._files[f"{sym}_penalties.jsonl"].write(event)
        logger.info("%s %s: %s (%s)", sym, name, action, reason)

    # -------------------------------------------------------------------------------------------- KPIs
    def _equity_kpis(self, equity: float) -> tuple[dict[str, float], float, float]:
        """Per-symbol equity, win rate and current drawdown at ``equity`` (shared by updates and cycle KPIs)."""
        k = self.kpi
        share = self.config.initial_balance / len(self.symbols)
        symbol_equity = {s: share + self.account.symbol_pnl(s) for s in self.symbols}
        return symbol_equity, win_rate_of(k["winners"], k["losers"]), 1 - equity / k["peak_equity"]

    def _update_record(self, ts: str, equity: float) -> dict[str, Any]:
        """The deterministic KPIs of one update (one line of ``updates.jsonl``)."""
        k, acc = self.kpi, self.account
        symbol_equity, win_rate, drawdown = self._equity_kpis(equity)
        return {"bar": k["bars_done"], "timestamp": ts, "equity": equity,
                "drawdown": drawdown, "max_drawdown": k["max_drawdown"], "symbol_equity": symbol_equity,
                "trades": k["trades"], "win_rate": win_rate,
                "regimes": {s: self.ensembles[s].regime for s in self.symbols},
                "positions": {s: acc.positions.get(s, {}).get("direction", 0) for s in self.symbols}}

    def _checkpoint_manager(self) -> CheckpointManager:
        """The manager of this run's checkpoints (``out_dir/checkpoints``, the best two by equity kept besides the
        newest; saves synchronously)."""
        return CheckpointManager(self.out_dir / CHECKPOINT_DIR, monitor="equity", mode="max", keep_best=2,
                                 async_save=False)

    def save_checkpoint_after_last_bar(self) -> None:
        """Save a checkpoint of this instant, mid-cycle too: the state after the last processed bar and the
        artifacts' lengths now, as a new revision of the current cycle's step, so that the next ``run(resume=True)``
        continues right after that bar. For a clean stop between two bars (the live run's), once :meth:`run`
        ended by an interrupt raised between bars: its files are closed then and hold every line of that bar."""
        if not self._files:
            raise RuntimeError("save_checkpoint_after_last_bar() before run(); expected a run that was stopped")
        offsets = {}
        for name, lines in self._files.items():
            with open(lines.path, "rb+") as fh:
                os.fsync(fh.fileno())
                offsets[name] = fh.seek(0, os.SEEK_END)
        self.offsets = offsets
        mgr = self._checkpoint_manager()
        try:
            mgr.save(self.state_dict(), self.kpi["cycle"], episode=self.kpi["cycle"],
                     metrics={"equity": self.account.equity()}, blocking=True)
        finally:
            mgr.close()

    def kpis(self) -> dict[str, Any]:
        """The run's KPI record now (the fields of ``cycle_N.json`` and ``live_status.json``): progress, equity and
        PnL (whole account and per symbol), trade counts and win rate, drawdowns, open positions, penalties."""
        k, acc, cfg = self.kpi, self.account, self.config
        equity = acc.equity()
        symbol_equity, win_rate, drawdown = self._equity_kpis(equity)
        return {
            "cycle": k["cycle"], "bars_done": k["bars_done"], "total_bars": self.total_bars,
            "progress": k["bars_done"] / self.total_bars if self.total_bars else None,
            "equity": equity, "cumulative_pnl": equity - cfg.initial_balance,
            "cycle_pnl": equity - k["cycle_start_equity"],
            "symbol_equity": symbol_equity,
            "symbol_pnl": {s: acc.symbol_pnl(s) for s in self.symbols},
            "trades": k["trades"], "cycle_trades": k["cycle_trades"], "winners": k["winners"], "losers": k["losers"],
            "breakeven": k["breakeven"], "win_rate": win_rate,
            "max_drawdown": k["max_drawdown"], "current_drawdown": drawdown,
            "open_positions": {s: p["direction"] for s, p in sorted(acc.positions.items())},
            "rejected_orders": acc.rejected, "penalties": k["penalties"], "resets": k["resets"],
        }

    def write_live_status(self, status: str, kpis: dict[str, Any]) -> None:
        """Write ``live_status.json`` atomically: ``kpis`` (a :meth:`kpis` record) with ``status`` (``running``,
        ``finished``, ``stopped``, ...), the last decision's latency, CPU %, memory and the wall-clock time."""
        live = dict(kpis, status=status, latency_ms=self._last_latency * 1000,
                    cpu_percent=self._cpu(), memory_rss_bytes=self._process.memory_info().rss,
                    updated_at=self._wall_clock())
        atomic_write_json(self.out_dir / LIVE_STATUS, live)

    def _cpu(self) -> float:
        """CPU % of this process since the last reading, re-read at most every 0.5 s (shorter spans are noise)."""
        now = self._clock()
        if now - self._cpu_at >= 0.5:
            self._cpu_percent, self._cpu_at = self._process.cpu_percent(None), now
        return self._cpu_percent

    def _end_cycle(self, mgr: CheckpointManager, runlog: RunLog) -> dict[str, Any]:
        self.kpi["cycle"] += 1
        c = self.kpi["cycle"]
        record = self.kpis()
        atomic_write_json(self.out_dir / f"cycle_{c}.json", record)
        atomic_write_json(self.out_dir / f"strategies_cycle_{c}.json", {
            s: {"regime": self.ensembles[s].regime, "weights": dict(self.ensembles[s].weights),
                "multipliers": dict(self.multipliers[s]),
                "stats": {n: self.trackers[s][n].stats().as_dict() for n in self.names}}
            for s in self.symbols})
        self.offsets = {name: f.commit() for name, f in self._files.items()}
        self.kpi["cycle_start_equity"] = record["equity"]
        self.kpi["cycle_trades"] = 0
        mgr.save(self.state_dict(), c, episode=c, metrics={"equity": record["equity"]}, blocking=True)
        runlog.log({k: v for k, v in record.items() if not isinstance(v, dict)}
                   | {"latency_ms": self._last_latency * 1000}, done=c)
        self.write_live_status("running", record)
        if self._notes is not None:  # sends every notify_every cycles, from a background thread
            self._notes.progress(c, runlog.total, {k: record[k] for k in ("equity", "trades", "win_rate",
                                                                          "max_drawdown")}, unit="cycle")
        return record
