"""Multi-symbol historical replay: feed, paper account, penalties, config, artifacts and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.ensemble.performance import PerformanceTracker
from atheria_kit.ensemble.regime import REGIMES
from atheria_kit.ensemble.strategies import SignalFrame
from atheria_kit.ensemble.turnover import TurnoverControl
from atheria_kit.replay.account import AccountConfig, PaperAccount
from atheria_kit.replay.config import ReplayConfig
from atheria_kit.replay.engine import ReplayEngine, penalty_decision
from atheria_kit.replay.feed import HistoricalFeed

REPO = Path(__file__).resolve().parent.parent
SMALL = {"symbols": ["BTCUSDT", "ETHUSDT"], "timeframe": "1h", "data": "sample", "max_bars": 400,
         "cycle_size_bars": 80, "update_every_bars": 10, "lookback_bars": 200}
# Compared byte for byte between runs; live_status.json, progress.json, metrics.jsonl, resources.jsonl,
# summary.json (the run log) and checkpoints/ hold wall-clock times, latency, CPU and memory and are excluded.
COMPARED = ("cycle_*.json", "strategies_cycle_*.json", "*_trades.jsonl", "*_penalties.jsonl", "updates.jsonl",
            "replay_summary.json")


def _bars(times: list[str], price: float) -> pd.DataFrame:
    idx = pd.DatetimeIndex(pd.to_datetime(times, utc=True))
    p = [price + i for i in range(len(times))]
    return pd.DataFrame({"open": p, "high": p, "low": p, "close": p, "volume": 1.0}, index=idx)


def _artifacts(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for pattern in COMPARED for p in sorted(run_dir.glob(pattern))}


def _write_config(path: Path, **overrides) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"historical": {**SMALL, **overrides}}), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------ feed


def test_feed_advances_symbols_in_lock_step_across_gaps():
    t = ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00", "2024-01-01 03:00"]
    feed = HistoricalFeed({"A": _bars(t, 10), "B": _bars([t[0], t[2], t[3]], 20), "C": _bars(t[1:], 30)})
    steps = []
    while (step := feed.next()) is not None:
        steps.append({s: (None if b is None else b.open) for s, b in step.bars.items()})
    assert steps == [
        {"A": 10, "B": 20, "C": None},
        {"A": 11, "B": None, "C": 30},
        {"A": 12, "B": 21, "C": 31},
        {"A": 13, "B": 22, "C": 32},
    ]
    assert list(feed.history("B", 10)["open"]) == [20, 21, 22]
    assert list(feed.history("A", 2)["open"]) == [12, 13]


def test_feed_state_restores_position_and_histories():
    t = ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00"]
    frames = {"A": _bars(t, 10), "B": _bars([t[0], t[2]], 20)}
    feed = HistoricalFeed(frames)
    feed.next(), feed.next()
    other = HistoricalFeed(frames)
    other.load_state_dict(feed.state_dict())
    assert list(other.history("B", 5)["open"]) == [20]
    assert other.next().bars["B"].open == 21


# --------------------------------------------------------------------------------------------------- account


def test_account_fills_at_next_open_with_fees_and_exposure_cap():
    acc = PaperAccount(["A", "B"], AccountConfig(initial_balance=1000, per_trade_pct=10, max_exposure_pct=15,
                                                 fee_pct=0.1, slippage_pct=0))
    acc.submit("A", 1)
    assert acc.positions == {} and acc.equity() == 1000  # nothing happens until A's next bar
    acc.on_bar("A", "t1", 100.0, 110.0)
    # notional 10 % of 1000 = 100 at 100 -> qty 1; fee 0.1; marked at 110 -> +10
    assert acc.positions["A"]["qty"] == pytest.approx(1.0)
    assert acc.cash == pytest.approx(999.9)
    assert acc.equity() == pytest.approx(1009.9)
    acc.submit("B", -1)
    acc.on_bar("B", "t1", 50.0, 50.0)
    # 10 % of 1009.9 = 100.99, but the cap leaves 15 % of 1009.9 - 100 = 51.485
    assert acc.positions["B"]["qty"] * 50.0 == pytest.approx(51.485)
    assert acc.cash == pytest.approx(999.9 - 0.051485)
    acc.submit("A", 0)
    (trade,) = acc.on_bar("A", "t2", 120.0, 130.0)
    # gross 1 * (120 - 100) = 20, exit fee 0.12, entry fee 0.1
    assert trade["pnl"] == pytest.approx(19.78)
    assert trade["return"] == pytest.approx(0.1978)
    assert acc.realized_by_symbol["A"] == pytest.approx(19.78)
    assert "A" not in acc.positions


def test_account_slippage_moves_fills_against_the_trader():
    acc = PaperAccount(["A"], AccountConfig(per_trade_pct=10, fee_pct=0, slippage_pct=1))
    acc.submit("A", -1)
    acc.on_bar("A", "t1", 100.0, 100.0)
    assert acc.positions["A"]["entry_price"] == pytest.approx(99.0)  # a short sells below the open
    acc.submit("A", 1)
    (trade,) = acc.on_bar("A", "t2", 100.0, 100.0)
    assert trade["exit_price"] == pytest.approx(101.0)
    assert acc.positions["A"]["entry_price"] == pytest.approx(101.0)


def test_account_rejects_an_order_beyond_the_exposure_cap():
    acc = PaperAccount(["A", "B"], AccountConfig(per_trade_pct=20, max_exposure_pct=20, fee_pct=0, slippage_pct=0))
    acc.submit("A", 1), acc.on_bar("A", "t", 10.0, 10.0)
    acc.submit("B", 1), acc.on_bar("B", "t", 10.0, 10.0)
    assert "B" not in acc.positions and acc.rejected == 1


# ------------------------------------------------------------------------------------------------- penalties


def _stats(returns):
    t = PerformanceTracker(50)
    t.record_trades(returns)
    return t.stats()


@pytest.mark.parametrize(
    ("returns", "multiplier", "expected", "action", "why"),
    [
        ([-0.01] * 5, 1.0, 0.5, "cut", "losing streak 5"),
        ([-0.01] * 4, 1.0, 1.0, None, ""),
        ([0.1, -0.25], 1.0, 0.5, "cut", "drawdown 25.00%"),  # 1 - 1.1 * 0.75 / 1.1 = 25 %
        ([-0.01] * 6, 0.15, 1.0, "reset", "losing streak 6"),  # 0.075 < reset_below 0.1
    ],
)
def test_penalty_cuts_then_resets_past_limits(returns, multiplier, expected, action, why):
    cfg = ReplayConfig(max_drawdown_pct=20, max_losing_streak=5, weight_cut=0.5, reset_below=0.1)
    new, act, reason = penalty_decision(_stats(returns), multiplier, cfg)
    assert (new, act) == (pytest.approx(expected), action)
    assert why in reason


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"cycle_size_bars": 0}, "cycle_size_bars=0"),
        ({"update_every_bars": 200}, "update_every_bars=200"),
        ({"risk": {"per_trade_pct": -1}}, "per_trade_pct=-1"),
        ({"costs": {"fee_pct": 60}}, "fee_pct=60"),
        ({"symbols": []}, "symbols=()"),
        ({"bogus": 1}, "bogus"),
        ({"data": "nowhere.csv"}, "data='nowhere.csv'"),
        ({"timeframe": "7x"}, "timeframe='7x'"),
        ({"penalties": {"weight_cut": 1.5}}, "weight_cut=1.5"),
    ],
)
def test_bad_config_names_field_and_value(tmp_path, override, needle):
    with pytest.raises(ValueError) as info:
        ReplayConfig.from_yaml(_write_config(tmp_path / "c.yaml", **override))
    assert needle in str(info.value)


def test_config_reads_nested_sections(tmp_path):
    cfg = ReplayConfig.from_yaml(_write_config(tmp_path / "c.yaml", risk={"initial_balance": 500},
                                               penalties={"max_losing_streak": 3}))
    assert (cfg.initial_balance, cfg.max_losing_streak, cfg.symbols) == (500, 3, ("BTCUSDT", "ETHUSDT"))
    assert ReplayConfig().cycle_size_bars == 500 and ReplayConfig().update_every_bars == 25


# ---------------------------------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted replay of 400 bars of the shipped BTC/ETH sample in cycles of 80."""
    out = tmp_path_factory.mktemp("reference")
    ReplayEngine(ReplayConfig(**{**SMALL, "symbols": tuple(SMALL["symbols"])}), out_dir=out).run(resume=False)
    return out


def test_replay_writes_every_artifact(reference_run):
    names = {p.name for p in reference_run.iterdir()}
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert {f"{sym}_trades.jsonl", f"{sym}_penalties.jsonl"} <= names
    assert {f"cycle_{i}.json" for i in range(1, 6)} <= names
    assert {f"strategies_cycle_{i}.json" for i in range(1, 6)} <= names
    assert {"live_status.json", "progress.json", "metrics.jsonl", "replay_summary.json"} <= names
    last = json.loads((reference_run / "cycle_5.json").read_text())
    trades = [json.loads(line) for s in ("BTCUSDT", "ETHUSDT")
              for line in (reference_run / f"{s}_trades.jsonl").read_text().splitlines()]
    assert last["trades"] == len(trades) > 0
    assert last["winners"] == sum(t["pnl"] > 0 for t in trades)
    assert last["win_rate"] == pytest.approx(last["winners"] / len(trades))
    assert last["bars_done"] == 400 and last["progress"] == 1.0
    # realized PnL of closed trades + open positions' marks add up to the equity change
    assert sum(last["symbol_pnl"].values()) == pytest.approx(last["cumulative_pnl"])
    assert 0 <= last["current_drawdown"] <= last["max_drawdown"] < 1
    live = json.loads((reference_run / "live_status.json").read_text())
    assert live["status"] == "finished"
    assert {"latency_ms", "cpu_percent", "memory_rss_bytes"} <= set(live)
    progress = json.loads((reference_run / "progress.json").read_text())
    assert (progress["kind"], progress["unit"], progress["done"], progress["total"]) == ("replay", "cycle", 5, 5)


def test_penalty_events_follow_the_configured_cut(reference_run):
    events = [json.loads(line) for s in ("BTCUSDT", "ETHUSDT")
              for line in (reference_run / f"{s}_penalties.jsonl").read_text().splitlines()]
    assert events, "the real sample's losing streaks should trigger penalties"
    for e in events:
        if e["action"] == "cut":
            assert e["multiplier_after"] == pytest.approx(e["multiplier_before"] * 0.5)
            assert e["multiplier_after"] >= 0.1
        else:
            assert e["action"] == "reset" and e["multiplier_after"] == 1.0
        assert e["losing_streak"] >= 5 or e["max_drawdown_pct"] >= 20


def test_resume_after_sigkill_ends_with_identical_artifacts(tmp_path, reference_run):
    config = _write_config(tmp_path / "replay.yaml")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "atheria_kit.replay.cli", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    for line in proc.stdout:
        if line.startswith("cycle 2 done"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "replay_summary.json").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    # one data-quality line per file first, printed (not logged to stderr)
    assert lines[0] == "BTCUSDT_1h.csv.gz: 400 bars 2022-07-01 .. 2022-07-17; no missing bars"
    assert lines[2].startswith("cycle 3 done")  # continued after the last checkpoint
    assert "missing" not in resumed.stderr
    assert _artifacts(out) == _artifacts(reference_run)


def test_truncates_lines_written_after_the_checkpoint(tmp_path, reference_run):
    cfg = ReplayConfig(**{**SMALL, "symbols": tuple(SMALL["symbols"])})
    out = tmp_path / "run"
    ReplayEngine(cfg, out_dir=out).run(resume=False, max_cycles=3)
    with open(out / "BTCUSDT_trades.jsonl", "a") as fh:  # as if killed mid-cycle after writing a trade
        fh.write('{"partial": true}\n')
    (out / "cycle_4.json").write_text("{}")
    ReplayEngine(cfg, out_dir=out).run(resume=True)
    assert _artifacts(out) == _artifacts(reference_run)


def test_a_time_budget_stops_at_a_cycle_end_and_the_next_run_continues(tmp_path, reference_run):
    cfg = ReplayConfig(**{**SMALL, "symbols": tuple(SMALL["symbols"])})
    out = tmp_path / "run"
    first = ReplayEngine(cfg, out_dir=out).run(resume=False, max_seconds=0)
    assert (first["status"], first["cycle"], first["bars_done"]) == ("stopped", 1, 80)
    assert json.loads((out / "progress.json").read_text())["status"] == "stopped"
    assert not (out / "replay_summary.json").exists()
    second = ReplayEngine(cfg, out_dir=out).run(resume=True)
    assert (second["status"], second["cycle"]) == ("finished", 5)
    assert _artifacts(out) == _artifacts(reference_run)


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path):
    cfg = ReplayConfig(**{**SMALL, "symbols": tuple(SMALL["symbols"])})
    ReplayEngine(cfg, out_dir=tmp_path).run(resume=False, max_cycles=1)
    changed = ReplayConfig(**{**SMALL, "symbols": tuple(SMALL["symbols"]), "update_every_bars": 20})
    with pytest.raises(ValueError, match=r"update_every_bars=20 \(checkpoint: 10\)"):
        ReplayEngine(changed, out_dir=tmp_path).run(resume=True)
    assert ReplayEngine(changed, out_dir=tmp_path).run(resume=False, max_cycles=1)["cycle"] == 1


def test_report_tables_agree_with_the_artifacts(reference_run):
    from atheria_kit.replay import report

    summary = json.loads((reference_run / "replay_summary.json").read_text())
    table = report.symbol_table(reference_run)
    assert list(table.index) == ["BTCUSDT", "ETHUSDT"]
    assert table["trades"].sum() == summary["trades"] and table["winners"].sum() == summary["winners"]
    assert table["resets"].sum() == summary["resets"]
    assert table["penalties"].sum() + table["resets"].sum() == summary["penalties"]
    assert table["equity"].sum() == pytest.approx(summary["equity"])
    updates = report.load_updates(reference_run)
    assert len(updates) == 400 // 10 and updates["bar"].tolist() == list(range(10, 401, 10))
    assert updates["max_drawdown"].is_monotonic_increasing
    assert updates["trades"].iloc[-1] <= summary["trades"]
    assert list(report.load_cycles(reference_run).index) == [1, 2, 3, 4, 5]
    fig = report.plot_replay(reference_run)
    assert len(fig.axes) == 5  # four panels and the per-symbol equity axis
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_kpis_and_symbol_table_read_as_counts_percentages_and_mib():
    from atheria_kit.replay import report

    kpis = pd.Series({"status": "running", "trades": 532.0, "progress": 0.25, "max_drawdown": 0.008,
                      "equity": 995.3456, "memory_rss_bytes": 389468160, "latency_ms": 12.345, "cpu_percent": None})
    assert report.format_kpis(kpis).to_dict() == {
        "status": "running", "trades": "532", "progress": "25.00%", "max_drawdown": "0.80%", "equity": "995.35",
        "memory_rss_bytes": "371 MiB", "latency_ms": "12.3 ms", "cpu_percent": "n/a"}
    assert report.format_kpis(pd.Series({"memory_rss_bytes": 3 * 2**30}))["memory_rss_bytes"] == "3.00 GiB"
    table = pd.DataFrame({"trades": [56.0], "win_rate": [0.5], "fees": [0.5612], "fees_pct_of_start": [0.17]},
                         index=["BNBUSDT"])
    assert report.format_symbol_table(table).loc["BNBUSDT"].tolist() == ["56", "50.0%", "0.56", "0.2%"]


def test_cli_notifies_start_progress_and_end_without_leaking_the_token(tmp_path):
    from tests.fakes.bot_api import TOKEN, BotApi

    api = BotApi()
    try:
        config = _write_config(tmp_path / "replay.yaml", max_bars=240)
        out = tmp_path / "run"
        env = {**os.environ, "PYTHONPATH": str(REPO), "ATHERIA_TELEGRAM_TOKEN": TOKEN,
               "ATHERIA_TELEGRAM_CHAT_ID": "4242", "ATHERIA_TELEGRAM_BASE_URL": api.url}
        cmd = [sys.executable, "-m", "atheria_kit.cli", "-v", "replay", "--config", str(config), "--out", str(out),
               "--notify-every", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        texts = "\n".join(api.texts())
    finally:
        api.close()
    assert "replay started: 3 cycles planned" in texts
    assert "cycle 1/3" in texts and "cycle 3/3" in texts
    assert "replay finished" in texts and "win_rate=" in texts
    assert all(r["path"].startswith("/bot") for r in api.requests)  # the token travels in the URL only
    everything = [done.stdout, done.stderr] + [p.read_bytes().decode("utf-8", "replace")
                                               for p in out.rglob("*") if p.is_file()]
    assert not any(TOKEN in text for text in everything)


def test_update_regimes_match_the_whole_series_detection(tmp_path):
    """The default trailing window is long enough for every regime, 'volatile' included."""
    from atheria_kit.ensemble.regime import RegimeDetector
    from atheria_kit.market.ohlcv import load_ohlcv, sample_path
    from atheria_kit.replay import report

    cfg = ReplayConfig(symbols=("BTCUSDT",), max_bars=1500, cycle_size_bars=750, update_every_bars=25)
    ReplayEngine(cfg, out_dir=tmp_path).run(resume=False)
    updates = report.load_updates(tmp_path)
    full = RegimeDetector().detect(load_ohlcv(sample_path("BTCUSDT")).iloc[:1500])
    expected = full.loc[updates.index].astype(str).tolist()
    assert updates["regime_BTCUSDT"].tolist() == expected
    assert "volatile" in expected


# ------------------------------------------------------------------------- win/loss convention and turnover


@dataclass(frozen=True)
class VolumeSays:
    """A test strategy that wants the position written in each bar's volume column (1 or 0), at full confidence."""

    name: ClassVar[str] = "volume_says"

    def compute(self, bars: pd.DataFrame) -> SignalFrame:
        sig = bars["volume"].to_numpy(float)
        return SignalFrame.from_arrays(bars.index, sig, np.ones(len(bars)), self.name)


def _scripted_bars() -> pd.DataFrame:
    """150 bars: flat at 100 to bar 60, up 1 a bar to 140 at bar 100, then down 1 a bar; open = previous close.

    The volume column scripts the wanted position at each decision (bars 29, 39, ..., 149): long at 29 and 39,
    flat at 49, long at 59-79, flat at 89, long at 99-129, flat at 139 and 149.
    """
    t = np.arange(150)
    close = np.where(t <= 60, 100.0, np.where(t <= 100, 100.0 + (t - 60), 140.0 - (t - 100)))
    open_ = np.r_[100.0, close[:-1]]
    want = np.select([t < 40, t < 59, t < 89, t < 99, t < 139], [1.0, 0.0, 1.0, 0.0, 1.0], 0.0)
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
                         "close": close, "volume": want},
                        index=pd.date_range("2024-01-01", periods=150, freq="1h", tz="UTC"))


def _scripted_replay(out: Path, **settings) -> tuple[dict, ReplayEngine]:
    cfg = ReplayConfig(symbols=("A",), data={"A": "scripted.csv"}, cycle_size_bars=50, update_every_bars=10,
                       lookback_bars=30, fee_pct=0.0, slippage_pct=0.0, per_trade_pct=10.0, **settings)
    equal = {r: {"volume_says": 1.0} for r in REGIMES}
    engine = ReplayEngine(cfg, feed=HistoricalFeed({"A": _scripted_bars()}), out_dir=out,
                          ensemble_factory=lambda: DynamicEnsemble([VolumeSays()], regime_weights=equal))
    return engine.run(resume=False), engine


def test_a_zero_pnl_trade_is_neither_a_win_nor_a_loss_in_the_replay_and_its_report(tmp_path):
    from atheria_kit.replay import report

    summary, _ = _scripted_replay(tmp_path, min_hold_bars=0, deadband=0.0, cost_multiple=0.0)
    trades = report.load_trades(tmp_path)
    # long 30 -> 50 at 100 both ways (no costs): PnL exactly 0; long 60 -> 90: 100 -> 129; long 100 -> 140: 139 -> 101
    assert trades["entry_price"].tolist() == [100.0, 100.0, 139.0]
    assert trades["exit_price"].tolist() == [100.0, 129.0, 101.0]
    assert trades["pnl"].iloc[0] == 0.0 and trades["pnl"].iloc[1] > 0 > trades["pnl"].iloc[2]
    assert (summary["winners"], summary["losers"], summary["breakeven"]) == (1, 1, 1)
    assert summary["win_rate"] == pytest.approx(0.5)  # the zero trade counts for neither side
    row = report.symbol_table(tmp_path).loc["A"]
    assert (row["winners"], row["losers"], row["breakeven"], row["win_rate"]) == (1, 1, 1, 0.5)
    # the ensemble's tracker reads trade returns with the same convention
    assert PerformanceTracker(None).stats().win_rate == 0.0
    tracker = PerformanceTracker(None)
    tracker.record_trades(trades["return"])
    assert tracker.stats().win_rate == pytest.approx(0.5)


def test_the_replay_holds_positions_the_configured_minimum_number_of_bars(tmp_path):
    from atheria_kit.replay import report

    summary, engine = _scripted_replay(tmp_path, min_hold_bars=40, deadband=0.0, cost_multiple=0.0)
    assert engine.ensembles["A"].turnover == TurnoverControl(min_hold_bars=40, deadband=0.0, cost_multiple=0.0)
    trades = report.load_trades(tmp_path)
    # entered at bar 29's decision: flat at 49 is 20 bars too early, so the long runs to the flat at 89;
    # entered again at 99, the flat at 139 comes after exactly 40 bars
    assert trades["entry_time"].dt.hour.tolist() == [6, 4] and trades["exit_time"].dt.hour.tolist() == [18, 20]
    assert trades["entry_price"].tolist() == [100.0, 139.0] and trades["exit_price"].tolist() == [129.0, 101.0]
    assert (summary["winners"], summary["losers"], summary["breakeven"]) == (1, 1, 0)


def test_turnover_section_of_the_config(tmp_path):
    cfg = ReplayConfig.from_yaml(_write_config(tmp_path / "c.yaml", turnover={"min_hold_bars": 8, "deadband": 0.1,
                                                                                "cost_multiple": 0}))
    assert cfg.turnover() == TurnoverControl(min_hold_bars=8, deadband=0.1, cost_multiple=0.0)
    assert ReplayConfig().turnover() == TurnoverControl()  # the defaults chosen on training data
    with pytest.raises(ValueError, match="deadband=2"):
        ReplayConfig.from_yaml(_write_config(tmp_path / "d.yaml", turnover={"deadband": 2}))


@pytest.mark.notebook
def test_notebook_04_continues_on_a_second_run_all(tmp_path):
    papermill = pytest.importorskip("papermill")
    notebook = REPO / "notebooks" / "04_historical_replay.ipynb"
    params = {"SMOKE": True, "OUTPUT_ROOT": str(tmp_path / "runs"), "MAX_CYCLES_PER_RUN": 2}
    texts = []
    for i in (1, 2):
        out = tmp_path / f"run{i}.ipynb"
        papermill.execute_notebook(str(notebook), str(out), parameters=params, kernel_name="python3",
                                   cwd=str(tmp_path), progress_bar=False, execution_timeout=240)
        texts.append("".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                             for o in c.get("outputs", [])))
    assert "this run went from cycle 0 to 2" in texts[0]
    assert "this run went from cycle 2 to 4" in texts[1] and "cycle   3:" in texts[1]
    run_dir = tmp_path / "runs" / "replay" / "replay_sample_1h_smoke"
    assert json.loads((run_dir / "progress.json").read_text())["done"] == 4
    assert "replay" in texts[1] and "4/6" in texts[1]  # atheria monitor's view of the run


def test_the_same_engine_can_start_over(tmp_path, reference_run):
    engine = ReplayEngine(ReplayConfig(**{**SMALL, "symbols": tuple(SMALL["symbols"])}), out_dir=tmp_path)
    engine.run(resume=False, max_cycles=2)
    assert engine.run(resume=False)["started_after_cycle"] == 0
    assert _artifacts(tmp_path) == _artifacts(reference_run)
