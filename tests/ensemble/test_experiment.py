"""The notebook's orchestration on real data: every comparison is present and consistent, the reading is
computed from the numbers; and notebook 03's own metadata (tests/test_notebooks.py runs it under papermill)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from atheria_kit.ensemble.experiment import (
    BUY_AND_HOLD,
    ENSEMBLE,
    metrics_table,
    plot_overview,
    reading,
    regime_table,
    run_experiments,
)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def results(btc_1h, eth_1h):
    return run_experiments({"BTCUSDT": btc_1h.iloc[-2500:], "ETHUSDT": eth_1h.iloc[-2500:]})


def test_tables_compare_ensemble_strategies_and_buy_and_hold(results, btc_1h):
    table = metrics_table(results)
    assert set(table.index.get_level_values("strategy")) == {ENSEMBLE, BUY_AND_HOLD, "atr_breakout",
                                                             "rsi_reversion", "macd_momentum"}
    bars = btc_1h.iloc[-2500:]
    bh = table.loc[("BTCUSDT", BUY_AND_HOLD)]
    # buy-and-hold: bought at bar 1's open paying fee + slippage, marked at the last close
    expected = (1 - 0.0015) * bars["close"].iloc[-1] / bars["open"].iloc[1] - 1
    assert bh["total_return"] == pytest.approx(expected) and bh["n_trades"] == 0
    reg = regime_table(results)
    assert list(reg.columns[:1]) == ["all"]
    np.testing.assert_allclose(reg["all"].to_numpy(), table["total_return"].to_numpy())


def test_reading_states_the_computed_comparison(results):
    text = reading(results)
    ens = results["ETHUSDT"].summary.loc[ENSEMBLE, "total_return"]
    assert f"ensemble {ens:+.1%}" in text and "beat buy-and-hold on" in text and "of 2 symbols" in text


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
