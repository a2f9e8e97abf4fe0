"""Build notebooks/02_walk_forward_direction.ipynb (run: .venv/bin/python notebooks/build/02.py).

The notebook is written without outputs; everything it computes comes from ``atheria_kit.walkforward``, and every
sentence it prints about the results is computed from them.
"""

from _notebook import code, install_cell, md, write

cells = [
    md("# 02 Walk-forward direction models\n"
       "Will the close be higher `HORIZON` bars from now? Honest validation: causal features, purged walk-forward "
       "splits with an embargo, a scaler fit on each fold's train rows only, naive baselines in the same table, "
       "and the predictions traded after costs next to buy-and-hold; then the two-stage workflow: a quick stage, "
       "the gate, and the full stage, whose refit model is the one to deploy.\n\n"
       "Honest out-of-sample AUCs for bar direction from OHLCV features are 0.50 to 0.56 (mostly the short-term "
       "pattern the last-bar baseline also finds); above 0.60 the kit warns of a leak. See `docs/walk-forward.md`. "
       "The same runs from the command line: "
       "`atheria walkforward --mode sequential`."),
    code("KIT_SOURCE = None  # where to install atheria_kit from when it is missing (see the next cell)\n"
         "SMOKE = False      # smoke mode (CI): a short full stage and a small leakage demo\n"
         "SYMBOL = \"BTCUSDT\"\n"
         "TIMEFRAME = \"1h\"   # the shipped sample is 1h; coarser timeframes are resampled from it\n"
         "HORIZON = 1        # label: close[t + HORIZON] > close[t]; an unchanged close is left out\n"
         "DATA = None        # None: shipped real sample; a CSV/Parquet path (normalized or Binance klines); "
         "\"synthetic\"\n"
         "OUTPUT_ROOT = None # None: /content/atheria, /kaggle/working/atheria or ./runs\n"
         "USE_GPU = False    # torch model on CUDA when there is one (says so and uses the CPU otherwise)\n"
         "RUN_FULL = None    # None: follow the gate; True/False: decide yourself",
         metadata={"tags": ["parameters"]}),
    install_cell(),
    code("from pathlib import Path\n\nimport pandas as pd\n"
         "from IPython.display import Image, Markdown, display\n\n"
         "from atheria_kit.market import ohlcv, synthetic\n"
         "from atheria_kit.platform import detect_environment\n"
         "from atheria_kit.session import default_root\n"
         "from atheria_kit.walkforward.config import WalkForwardConfig\n"
         "from atheria_kit.walkforward.gate import evaluate_gate\n"
         "from atheria_kit.walkforward.report import auc_reading, full_stage_decision, shuffle_reading\n"
         "from atheria_kit.walkforward.runner import build_dataset, compare_shuffled_vs_walkforward, load_bars, "
         "run_stage\n\n"
         "root = Path(OUTPUT_ROOT) if OUTPUT_ROOT else default_root(detect_environment())\n"
         "cfg = WalkForwardConfig(symbol=SYMBOL, timeframe=TIMEFRAME, horizon=HORIZON, data=DATA, use_gpu=USE_GPU,\n"
         "                        out=str(root / \"artifacts\"))\n"
         "bars = load_bars(cfg)\n"
         "print(bars.attrs.get(\"source\"), f\"{len(bars):,} bars,\", bars.index[0], \"..\", bars.index[-1])\n"
         "print(ohlcv.count_gaps(bars))\n"
         "ds = build_dataset(bars, HORIZON, chunk_size=cfg.chunk_size)\n"
         "print(f\"{len(ds.y):,} rows, {ds.X.shape[1]} causal features; {ds.ties:,} unchanged closes \"\n"
         "      f\"({100 * ds.tie_rate:.2f} %) left out of training and metrics, {ds.labelled:,} labelled rows\")"),
    md("## Quick stage: the last 12 months, 6-month rolling train window, 60-day test periods\n"
       "The quick stage is a screen: it stops early after `patience` folds without a better AUC, and says how "
       "much of the test period its numbers cover."),
    code("quick = run_stage(cfg, \"quick\", dataset=ds)\n"
         "print(f\"quick stage: {quick.status}: {quick.headline()}\")\n"
         "cols = [\"fold\", \"test_start\", \"train_size\", \"test_size\", \"auc\", \"last_bar_auc\", \"accuracy\", "
         "\"recall\", \"f1\"]\n"
         "display(pd.DataFrame(quick.folds)[cols].round(4))\n"
         "stats = [\"auc\", \"auc_median\", \"auc_std\", \"auc_min\", \"auc_max\", \"accuracy\", \"f1\", \"brier\"]\n"
         "display(quick.summary[stats].round(4))\n"
         "print(auc_reading(quick, cfg.leak_auc))\n"
         "for warning in (quick.leak_warning, quick.data_warning):\n"
         "    if warning:\n        print(\"WARNING:\", warning)\n"
         "display(Image(quick.artifacts[\"auc_per_fold\"]))"),
    md("## Gate (defaults from the seed: recall > 0.35, accuracy > 0.60, AUC > 0.61, F1 > 0.45)\n"
       "These thresholds are far above what bar-direction models reach out of sample, so failing the gate is the "
       "normal outcome; passing it on real data deserves a leak hunt before any money."),
    code("verdict = evaluate_gate(quick.means, cfg.gate)\nprint(verdict)\n"
         "go, why = full_stage_decision(verdict, RUN_FULL, SMOKE)\nprint(why)"),
    md("## Full stage: all data, expanding window, 21-day test periods, every fold tested\n"
       "Then the model to deploy is refit on every labelled row with the same pipeline: expect the walk-forward "
       "mean from it, not the best fold's AUC (that fold was picked on its own test data)."),
    code("full = None\n"
         "if go:\n"
         "    full_bars = bars.iloc[-24 * 200:] if SMOKE else bars  # smoke: the last 200 days (a few folds)\n"
         "    full_ds = build_dataset(full_bars, HORIZON, chunk_size=cfg.chunk_size) if SMOKE else ds\n"
         "    full = run_stage(cfg, \"full\", dataset=full_ds)\n"
         "    print(f\"full stage: {full.status}: {full.headline()}\")\n"
         "    display(full.summary[stats].round(4))\n"
         "    print(auc_reading(full, cfg.leak_auc))\n"
         "    for warning in (full.leak_warning, full.data_warning):\n"
         "        if warning:\n            print(\"WARNING:\", warning)\n"
         "    display(Image(full.artifacts[\"auc_per_fold\"]))\n"
         "    print(f\"model to deploy: {full.artifacts['model']} (refit on {full.refit['labelled']:,} labelled rows)\")\n"
         "else:\n"
         "    print(\"No full stage:\", why)"),
    md("## From AUC to money\n"
       "The out-of-sample predictions traded: long when P(up) > 0.5 (long/flat), or long above and short below "
       "(long/short), at the next bar's open, paying 0.10 % fee + 0.05 % slippage per side on every change, next "
       "to buy-and-hold over the same bars. The numbers are after costs."),
    code("stage = full or quick\n"
         "money = stage.money.table()\n"
         "display(money.style.format({\"total_return\": \"{:+.1%}\", \"max_drawdown\": \"{:.1%}\", \"exposure\": \"{:.0%}\",\n"
         "                            \"cost_paid\": \"{:.1%}\", \"sharpe\": \"{:.2f}\", \"sortino\": \"{:.2f}\",\n"
         "                            \"turnover_per_year\": \"{:,.0f}\", \"bars\": \"{:,.0f}\"}, na_rep=\"n/a\"))\n"
         "lf, bh = stage.money.whole[\"long_flat\"], stage.money.whole[\"buy_hold\"]\n"
         "print(f\"{stage.mode} stage: long/flat {lf['total_return']:+.1%} after paying {lf['cost_paid']:.0%} of equity \"\n"
         "      f\"in costs (turnover {lf['turnover_per_year']:,.0f}x a year), against {bh['total_return']:+.1%} for \"\n"
         "      f\"buy-and-hold; Sharpe {lf['sharpe']:.2f} against {bh['sharpe']:.2f}.\")\n"
         "display(Image(stage.artifacts[\"equity\"]))"),
    md("## Is it real?\n"
       "Each stage records its daily after-cost returns in the trials ledger of the output folder "
       "(`trials.jsonl`), so the deflated Sharpe ratio counts every configuration tried there, not only this one."),
    code("if stage.overfitting is not None:\n"
         "    display(Markdown(stage.overfitting.to_markdown(heading=None)))\n"
         "else:\n"
         "    print(\"not computed:\", stage.overfitting_note)"),
    md("## Why purging matters: shuffled K-fold vs purged walk-forward\n"
       "With overlapping 8-bar labels, shuffled K-fold trains on near-copies of each test sample (its neighbours "
       "share 7 of its 8 future bars), so it reports skill that is not there. First on the data above, then on a "
       "pure random walk, where the true AUC is 0.5 by construction."),
    code("demo = bars.iloc[-1500:] if SMOKE else bars\n"
         "splits = 3 if SMOKE else 5\n"
         "same = compare_shuffled_vs_walkforward(demo, horizon=8, n_splits=splits)\n"
         "rw = synthetic.synthetic_ohlcv(1000 if SMOKE else 6000, seed=1, regimes=synthetic.RANDOM_WALK)\n"
         "control = compare_shuffled_vs_walkforward(rw, horizon=8, n_splits=splits)\n"
         "display(pd.DataFrame({\"this data\": same, \"random walk (true AUC 0.5)\": control}).T.round(3))\n"
         "print(shuffle_reading(same, control))"),
]
write(cells, "02_walk_forward_direction.ipynb")
