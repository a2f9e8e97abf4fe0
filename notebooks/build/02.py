"""Build notebooks/02_walk_forward_direction.ipynb (run: .venv/bin/python notebooks/build/02.py).

The notebook is written without outputs; everything it computes comes from ``atheria_kit.walkforward``.
"""

from _notebook import code, md, write

cells = [
    md("# 02 Walk-forward direction models\n"
       "Will the close be higher `HORIZON` bars from now? Honest validation: causal features, purged walk-forward "
       "splits with an embargo, a scaler fit on each fold's train rows only, naive baselines in the same table; "
       "then the two-stage workflow: a quick stage, the gate, and the full stage.\n\n"
       "Realistic out-of-sample AUC for bar direction from OHLCV features is 0.50 to 0.53; above about 0.56 suspect "
       "a leak first. See `docs/walk-forward.md`. The same runs from the command line: "
       "`atheria walkforward --mode sequential`."),
    code("try:\n    import atheria_kit  # noqa: F401\nexcept ImportError:  # Colab / Kaggle\n"
         "    %pip install -q git+https://github.com/atheria/atheria_kit"),
    code("SMOKE = False      # smoke mode (CI): a short full stage and a small leakage demo\n"
         "SYMBOL = \"BTCUSDT\"\n"
         "TIMEFRAME = \"1h\"   # the shipped sample is 1h; coarser timeframes are resampled from it\n"
         "HORIZON = 1        # label: close[t + HORIZON] > close[t]\n"
         "DATA = None        # None: shipped real sample; a CSV/Parquet path (normalized or Binance klines); "
         "\"synthetic\"\n"
         "OUTPUT_ROOT = None # None: /content/atheria, /kaggle/working/atheria or ./runs\n"
         "USE_GPU = False    # torch model on CUDA when there is one (says so and uses the CPU otherwise)\n"
         "RUN_FULL = None    # None: follow the gate; True/False: decide yourself"),
    code("from pathlib import Path\n\nimport pandas as pd\n"
         "from IPython.display import Image, Markdown, display\n\n"
         "from atheria_kit import ohlcv\n"
         "from atheria_kit.platform import detect_environment\n"
         "from atheria_kit.session import default_root\n"
         "from atheria_kit.walkforward.config import WalkForwardConfig\n"
         "from atheria_kit.walkforward.gate import evaluate_gate\n"
         "from atheria_kit.walkforward.runner import build_dataset, compare_shuffled_vs_walkforward, load_bars, "
         "run_stage\n\n"
         "root = Path(OUTPUT_ROOT) if OUTPUT_ROOT else default_root(detect_environment())\n"
         "cfg = WalkForwardConfig(symbol=SYMBOL, timeframe=TIMEFRAME, horizon=HORIZON, data=DATA, use_gpu=USE_GPU,\n"
         "                        out=str(root / \"artifacts\"))\n"
         "bars = load_bars(cfg)\n"
         "print(bars.attrs.get(\"source\"), f\"{len(bars)} bars,\", bars.index[0], \"..\", bars.index[-1])\n"
         "print(ohlcv.count_gaps(bars))\n"
         "ds = build_dataset(bars, HORIZON, chunk_size=cfg.chunk_size)\n"
         "print(f\"{len(ds.y)} labelled samples, {ds.X.shape[1]} causal features\")"),
    md("## Quick stage: the last 12 months, 6-month rolling train window, 60-day test periods"),
    code("quick = run_stage(cfg, \"quick\", dataset=ds)\n"
         "cols = [\"fold\", \"test_start\", \"train_size\", \"test_size\", \"auc\", \"last_bar_auc\", \"accuracy\", "
         "\"recall\", \"f1\"]\n"
         "display(pd.DataFrame(quick.folds)[cols].round(4))\n"
         "display(quick.summary[[\"auc\", \"auc_std\", \"accuracy\", \"recall\", \"f1\", \"brier\"]].round(4))\n"
         "if quick.leak_warning:\n    print(\"WARNING:\", quick.leak_warning)\n"
         "display(Image(quick.artifacts[\"auc_per_fold\"]))\n"
         "display(Image(quick.artifacts[\"roc_calibration\"]))"),
    md("## Gate (defaults from the seed: recall > 0.35, accuracy > 0.60, AUC > 0.61, F1 > 0.45)\n"
       "These thresholds are far above what bar-direction models reach out of sample, so failing the gate is the "
       "normal outcome; passing it on real data deserves a leak hunt before any money."),
    code("verdict = evaluate_gate(quick.means, cfg.gate)\nprint(verdict)\n"
         "go = verdict.passed if RUN_FULL is None else RUN_FULL\n"
         "go = go or SMOKE  # smoke runs exercise every stage"),
    md("## Full stage: all data, expanding window, 21-day test periods"),
    code("if go:\n"
         "    full_bars = bars.iloc[-24 * 200:] if SMOKE else bars  # smoke: the last 200 days (a few folds)\n"
         "    full_ds = build_dataset(full_bars, HORIZON, chunk_size=cfg.chunk_size) if SMOKE else ds\n"
         "    full = run_stage(cfg, \"full\", dataset=full_ds)\n"
         "    display(full.summary[[\"auc\", \"auc_std\", \"accuracy\", \"recall\", \"f1\"]].round(4))\n"
         "    display(Image(full.artifacts[\"auc_per_fold\"]))\n"
         "    display(Markdown(f\"Report: `{full.artifacts['report']}`\"))"),
    md("## Why purging matters: shuffled K-fold vs purged walk-forward\n"
       "With overlapping 8-bar labels, shuffled K-fold trains on near-copies of each test sample (its neighbours "
       "share 7 of its 8 future bars), so it reports skill that is not there. First on the data above, then on a "
       "pure random walk, where the true AUC is 0.5 by construction."),
    code("demo = bars.iloc[-1500:] if SMOKE else bars\n"
         "splits = 3 if SMOKE else 5\n"
         "same = compare_shuffled_vs_walkforward(demo, horizon=8, n_splits=splits)\n"
         "rw = ohlcv.synthetic_ohlcv(1000 if SMOKE else 6000, seed=1, regimes=ohlcv.RANDOM_WALK)\n"
         "control = compare_shuffled_vs_walkforward(rw, horizon=8, n_splits=splits)\n"
         "pd.DataFrame({\"this data\": same, \"random walk (true AUC 0.5)\": control}).T.round(3)"),
]
cells[2].metadata["tags"] = ["parameters"]
write(cells, "02_walk_forward_direction.ipynb")
