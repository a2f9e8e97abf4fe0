"""Build notebooks/03_ensemble_experiments.ipynb (without outputs): `.venv/bin/python notebooks/build/03.py`."""

from _notebook import code, install_cell, md, write

cells = [
    md("# 03 · Ensemble experiments: regimes, a dynamic ensemble and honest backtests\n\n"
       "Three rule strategies (ATR breakout, RSI mean reversion, MACD momentum) are combined with weights that "
       "follow the market regime (trending, ranging, volatile, choppy) and each strategy's recent trades. "
       "Everything is causal (a bar sees only bars up to itself), signals execute at the next bar's open and every "
       "position change pays fee + slippage. The combined signal goes through **turnover control** (a minimum "
       "holding period, a deadband and a cost-aware entry, with defaults chosen on other, training data); the same "
       "experiment is shown with and without it, next to buy-and-hold. Data: the real Binance 1-hour sample shipped "
       "with the package. Definitions: `docs/ensemble.md`."),
    code("KIT_SOURCE = None      # where to install atheria_kit from when it is missing (see the next cell)\n"
         "SMOKE = False          # smoke mode: the last 1500 bars per symbol, for CI\n"
         "SYMBOLS = [\"BTCUSDT\", \"ETHUSDT\", \"BNBUSDT\"]\n"
         "FEE = 0.001            # per side, fraction of traded notional (Binance spot taker)\n"
         "SLIPPAGE = 0.0005      # per side\n"
         "SIGNAL_THRESHOLD = 0.1 # |weighted score| needed to take a position\n"
         "MIN_HOLD_BARS = 64     # turnover control (the defaults, chosen by walk-forward on training data):\n"
         "DEADBAND = 0.2         #   hold a position this many bars at least; keep it until the score falls below\n"
         "COST_MULTIPLE = 2.0    #   threshold - deadband; enter only if the expected move > this x round-trip cost\n"
         "HORIZON = 1            # direction forecast: bars ahead\n"
         "MAX_EPOCHS = 100       # AdaptiveTrainer's upper bound (early stopping usually ends sooner)\n"
         "OUTPUT_ROOT = None     # trials ledger and the forecast model's checkpoints; None: /content/atheria, "
         "/kaggle/working/atheria or ./runs",
         metadata={"tags": ["parameters"]}),
    install_cell(),
    code("from pathlib import Path\n\nimport matplotlib.pyplot as plt\n\n"
         "from atheria_kit.ensemble.backtest import BacktestConfig\n"
         "from atheria_kit.ensemble.dynamic import DynamicEnsemble\n"
         "from atheria_kit.ensemble import experiment as ex\n"
         "from atheria_kit.ensemble.turnover import TurnoverControl\n"
         "from atheria_kit.platform import detect_environment\n"
         "from atheria_kit.session import default_root\n\n"
         "root = Path(OUTPUT_ROOT) if OUTPUT_ROOT else default_root(detect_environment())\n"
         "data = ex.load_sample(SYMBOLS, max_bars=1500 if SMOKE else 0)\n"
         "print(ex.data_notes(data))  # one line per file: bars, span, missing bars\n"
         "config = BacktestConfig(fee=FEE, slippage=SLIPPAGE)\n"
         "turnover = TurnoverControl(min_hold_bars=MIN_HOLD_BARS, deadband=DEADBAND, cost_multiple=COST_MULTIPLE)\n"
         "results = {s: ex.run_symbol(bars, s, config=config,\n"
         "                            ensemble=DynamicEnsemble(signal_threshold=SIGNAL_THRESHOLD, turnover=turnover))\n"
         "           for s, bars in data.items()}"),
    md("## Price and regimes, ensemble weights, equity curves\n\nEighteen months of hourly bars are summarized per "
       "day: the shading is each day's most frequent regime and the weights are daily means averaged over a week. "
       "`ensemble` is the ensemble with turnover control, `ensemble_no_control` the same score traded at every bar."),
    code("for r in results.values():\n    ex.plot_overview(r)\n    plt.show()"),
    md("## Turnover control: the same experiment with and without it, and buy-and-hold\n\n"
       "After costs; `gross_return` is the same positions before costs. `trades_per_year` counts trades entered, "
       "`avg_hold_hours` their mean holding time, `cost_per_year` the costs paid per year as a share of equity "
       "(the cost drag)."),
    code("ex.formatted(ex.turnover_table(results))"),
    md("## Metrics after costs (overall)\n\n`max_drawdown` is <= 0; `cost_paid` is the sum of per-bar costs as a "
       "share of equity; `profit_factor` is `inf` when there were no losing trades; a ratio that is undefined "
       "(no variance) shows as `n/a` and the reading below says why."),
    code("ex.formatted(ex.metrics_table(results))"),
    md("## Total return per regime\n\nEach bar is attributed to the regime in force when its position was "
       "chosen (the previous bar's label)."),
    code("ex.formatted(ex.regime_table(results))"),
    md("## Reading (computed from the numbers above)"),
    code("print(ex.reading(results))"),
    md("## Is it real? PSR, deflated Sharpe and PBO over every variant tried on these bars\n\n"
       "Each variant compared above (the ensemble with and without turnover control, each strategy alone; "
       "buy-and-hold is the benchmark, not a trial) is recorded as a trial in a ledger per symbol and span of bars "
       "under `OUTPUT_ROOT/studies`. The ensemble with turnover control is then judged against all the trials "
       "recorded there: `psr` is the probability that its true Sharpe ratio is above 0, `dsr` (deflated Sharpe) "
       "the probability that it is above what the best of that many luckless trials would show, `pbo` the "
       "probability of backtest overfitting by combinatorially symmetric cross-validation. Run the notebook again "
       "with other settings and each new variant is added to the count. `sharpe` is annualised. Details: "
       "`docs/statistics.md`."),
    code("real = ex.is_it_real(results, root / \"studies\")\n"
         "print(\"\\n\".join(f\"{sym}: {text}\" for sym, text in real[\"reading\"].items()))\n"
         "ex.formatted(real.drop(columns=\"reading\"))"),
    md("## A direction forecast from the strategies' signals and the regime (`AdaptiveTrainer`)\n\n"
       "Can the strategies' signals (signal x confidence of each), the ensemble's weights and signal, and the "
       "regime at bar *t* forecast whether the close `HORIZON` bars later is higher? The three symbols' samples "
       "are pooled and split by time (70 % train, 15 % validation, 15 % test), with samples whose label would reach "
       "into the next part dropped; scaling uses training statistics only. A small MLP is trained by "
       "`AdaptiveTrainer` (SGD with momentum and weight decay, `ReduceLROnPlateau`, gradient clipping, recency "
       "weights, early stopping on the validation loss), checkpointed every few epochs: run the notebook again "
       "and the fit continues (or is reloaded) instead of starting over. Its test AUC and accuracy stand next to "
       "always predicting the training majority and the ensemble's own signal read as a forecast. Code: "
       "`atheria_kit/ensemble/signal_model.py`."),
    code("from atheria_kit.ensemble import signal_model as sm\n\n"
         "model_config = sm.SignalModelConfig(horizon=HORIZON, max_epochs=min(MAX_EPOCHS, 15) if SMOKE else MAX_EPOCHS)\n"
         "fit = sm.fit_signal_model(results, model_config, checkpoint_dir=root / \"checkpoints\" / \"ensemble_signal_model\")\n"
         "print(f\"{len(fit.feature_names)} features; resumed from epoch {fit.resumed_from_epoch}\")\n"
         "sm.formatted_table(fit)"),
    code("sm.plot_training(fit)\nplt.show()\nprint(sm.reading(fit))"),
]

write(cells, "03_ensemble_experiments.ipynb")
