"""The notebook's orchestration on real data: every comparison is present and consistent, the reading is
computed from the numbers; and notebook 03's own metadata (tests/test_notebooks.py runs it under papermill)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble.backtest import BacktestConfig, backtest
from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.ensemble.experiment import (
    BUY_AND_HOLD,
    ENSEMBLE,
    ENSEMBLE_RAW,
    TURNOVER_COLUMNS,
    data_notes,
    formatted,
    is_it_real,
    load_sample,
    metrics_table,
    plot_overview,
    reading,
    regime_table,
    run_experiments,
    run_symbol,
    turnover_table,
)
from atheria_kit.ensemble.turnover import TurnoverControl
from atheria_kit.market.ohlcv import data_note, load_ohlcv, sample_path

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def results(btc_1h, eth_1h):
    return run_experiments({"BTCUSDT": btc_1h.iloc[-2500:], "ETHUSDT": eth_1h.iloc[-2500:]})


def test_tables_compare_ensemble_strategies_and_buy_and_hold(results, btc_1h):
    table = metrics_table(results)
    assert set(table.index.get_level_values("strategy")) == {ENSEMBLE, ENSEMBLE_RAW, BUY_AND_HOLD, "atr_breakout",
                                                             "rsi_reversion", "macd_momentum"}
    bars = btc_1h.iloc[-2500:]
    bh = table.loc[("BTCUSDT", BUY_AND_HOLD)]
    # buy-and-hold: bought at bar 1's open paying fee + slippage, marked at the last close
    expected = (1 - 0.0015) * bars["close"].iloc[-1] / bars["open"].iloc[1] - 1
    assert bh["total_return"] == pytest.approx(expected) and bh["n_trades"] == 0
    reg = regime_table(results)
    assert list(reg.columns[:1]) == ["all"]
    np.testing.assert_allclose(reg["all"].to_numpy(), table["total_return"].to_numpy())


def test_the_same_score_with_and_without_turnover_control(results, btc_1h):
    r = results["BTCUSDT"]
    raw = (r.run.score > 0.1).astype(int) - (r.run.score < -0.1).astype(int)  # the raw rule, by hand
    expected = backtest(r.bars, raw.to_numpy(), BacktestConfig())
    pd.testing.assert_series_equal(r.backtests[ENSEMBLE_RAW].equity, expected.equity)
    table = turnover_table(results)
    assert list(table.columns) == list(TURNOVER_COLUMNS)
    assert table.index.tolist() == [(s, v) for s in ("BTCUSDT", "ETHUSDT") for v in (ENSEMBLE_RAW, ENSEMBLE, BUY_AND_HOLD)]
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert table.loc[(sym, ENSEMBLE), "trades_per_year"] < table.loc[(sym, ENSEMBLE_RAW), "trades_per_year"]
        assert table.loc[(sym, ENSEMBLE), "avg_hold_hours"] >= 64 * 0.5  # a 64-bar minimum hold, some trades still open


def test_formatted_tables_show_percentages_and_integers():
    table = pd.DataFrame({"total_return": [0.1234, -1.0], "n_trades": [12.0, 3.0], "sharpe": [1.234, math.nan],
                          "max_drawdown": [-0.05, 0.0], "profit_factor": [math.inf, 0.5]})
    shown = formatted(table)
    assert shown["total_return"].tolist() == ["+12.3%", "-100.0%"]
    assert shown["n_trades"].tolist() == ["12", "3"] and shown["sharpe"].tolist() == ["1.23", "n/a"]
    assert shown["max_drawdown"].tolist() == ["-5.0%", "0.0%"] and shown["profit_factor"].tolist() == ["inf", "0.50"]


def test_reading_states_the_computed_comparison(results):
    text = reading(results)
    ens = results["ETHUSDT"].summary.loc[ENSEMBLE]
    raw = results["ETHUSDT"].summary.loc[ENSEMBLE_RAW]
    assert f"the ensemble returned {ens['total_return']:+.1%} after costs" in text
    assert f"without it {raw['total_return']:+.1%}" in text and f"{raw['trades_per_year']:,.0f} trades a year" in text
    assert "beat the same ensemble without it on" in text and "buy-and-hold on" in text and "of 2 symbols" in text


def test_an_undefined_ratio_is_reported_with_its_reason(btc_1h):
    flat = btc_1h.iloc[:300].copy()
    flat[["open", "high", "low", "close"]] = 100.0  # no move: no strategy signals, no returns at all
    r = run_symbol(flat, "FLAT")
    assert math.isnan(r.summary.loc[ENSEMBLE, "sharpe"]) and math.isnan(r.summary.loc[ENSEMBLE, "sortino"])
    assert "all 300 returns are 0" in r.notes[ENSEMBLE]
    assert "FLAT ensemble: Sharpe and Sortino undefined: zero variance" in reading({"FLAT": r})
    assert "Sharpe undefined" in reading({"FLAT": r})


def test_every_compared_variant_is_a_trial_and_the_ensemble_is_judged_against_them(results, tmp_path):
    from atheria_kit.stats import summarize_overfitting

    table = is_it_real(results, tmp_path)
    assert table["trials"].tolist() == [5, 5]  # ensemble, without control, three strategies (not buy-and-hold)
    r = results["ETHUSDT"]
    variants = [v for v in r.backtests if v != BUY_AND_HOLD]
    direct = summarize_overfitting(pd.DataFrame({v: r.backtests[v].returns for v in variants}), ENSEMBLE,
                                   periods_per_year=8760)
    assert table.loc["ETHUSDT", "dsr"] == pytest.approx(direct.dsr, rel=1e-9)
    assert table.loc["ETHUSDT", "reading"] == direct.reading
    assert is_it_real(results, tmp_path)["trials"].tolist() == [5, 5]  # the same configurations: still 5
    other = run_symbol(r.bars, "ETHUSDT", ensemble=DynamicEnsemble(turnover=TurnoverControl(min_hold_bars=8)))
    again = is_it_real({"ETHUSDT": other}, tmp_path)
    assert again.loc["ETHUSDT", "trials"] == 6  # a new turnover setting tried on the same bars counts


def test_data_quality_is_one_printed_line_per_file_not_a_logged_warning(caplog, capsys):
    with caplog.at_level(logging.DEBUG):
        bars = load_ohlcv(sample_path("ETHUSDT"))
        data = load_sample(("BTCUSDT",), max_bars=500)
    note = bars.attrs["data_note"]
    # the loader states the gap as information (INFO record), never as a WARNING on a notebook's stderr
    assert not [r for r in caplog.records if r.name == "atheria_kit.market.ohlcv" and r.levelno >= logging.WARNING]
    assert capsys.readouterr().err == ""
    # the shipped sample's one gap: the 2023-03-24 13:00 bar (Binance spot halt)
    assert note == "ETHUSDT_1h.csv.gz: 13,147 bars 2022-07-01 .. 2023-12-30; 1 missing bar (2023-03-24 13:00 UTC), not filled"
    assert data_notes(data) == "BTCUSDT_1h.csv.gz: 500 bars 2023-12-09 .. 2023-12-30; no missing bars"
    two_gaps = bars.drop(index=bars.index[[5, 6, 9]])
    assert data_note(two_gaps, "x.csv").endswith("; 4 missing bars (in 3 gaps, the first at 2022-07-01 05:00 UTC), "
                                                 "not filled")


def test_overview_figure_has_the_three_panels(results):
    fig = plot_overview(results["BTCUSDT"])
    assert len(fig.axes) == 3
    matplotlib.pyplot.close(fig)


NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03_ensemble_experiments.ipynb"


def test_notebook_defaults_to_the_full_run_on_a_python3_kernel():
    # tests/test_notebooks.py checks outputs, the GPU request, the parameters cell and the smoke run of every
    # notebook; this adds what is specific to notebook 03.
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"]["kaggle"]["isGpuEnabled"] is True
    params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and "SMOKE = False" in "".join(params[0]["source"])
