"""Build notebooks/04_historical_replay.ipynb (without outputs): `.venv/bin/python notebooks/build/04.py`."""

from _notebook import code, install_cell, md, write

cells = [
    md("# 04 · Multi-symbol historical replay: the dynamic ensemble on a paper account\n\n"
       "BTC, ETH and BNB bars are replayed together, bar by bar, in cycles of `CYCLE_SIZE_BARS`. Every "
       "`UPDATE_EVERY_BARS` bars the dynamic ensemble decides per symbol from the trailing window (strategies, "
       "regime, each strategy's recent shadow trades), and a paper account trades its decisions at the next bar's "
       "open with fees and slippage, after turnover control (a minimum holding period counted in bars, a deadband "
       "and a cost-aware entry). Strategies whose drawdown or losing streak crosses the limits are penalized "
       "(weight cut) or reset. At each cycle end the replay writes its KPIs and a checkpoint, so **Run all** again "
       "continues where the last run stopped (after a crash, a `MAX_CYCLES_PER_RUN` / `MAX_MINUTES` stop, or the "
       "session's end; on Colab point `OUTPUT_ROOT` at Drive to keep the run across sessions). Data: the real "
       "Binance 1-hour sample shipped with the package. Details: `docs/replay.md`."),
    code("KIT_SOURCE = None          # where to install atheria_kit from when it is missing (see the next cell)\n"
         "SMOKE = False              # smoke mode: 600 bars per symbol in cycles of 100, for CI\n"
         "SYMBOLS = [\"BTCUSDT\", \"ETHUSDT\", \"BNBUSDT\"]\n"
         "CONFIG = None              # a YAML file with a `historical:` section (as for `atheria replay --config`); "
         "None: the settings below\n"
         "MAX_BARS = 0               # bars per symbol; 0: the whole shipped sample\n"
         "CYCLE_SIZE_BARS = 500      # the seed's defaults\n"
         "UPDATE_EVERY_BARS = 25\n"
         "MIN_HOLD_BARS = 64         # turnover control (the defaults, chosen by walk-forward on training data)\n"
         "DEADBAND = 0.2\n"
         "COST_MULTIPLE = 2.0\n"
         "MAX_CYCLES_PER_RUN = None  # stop after this many cycles in this \"Run all\" (None: to the end); run again to "
         "continue\n"
         "MAX_MINUTES = None         # or stop at the first cycle end after this many minutes\n"
         "RESTART = False            # True: clear this run's artifacts and start over\n"
         "RUN_NAME = \"replay_sample_1h\"\n"
         "OUTPUT_ROOT = None         # None: /content/atheria, /kaggle/working/atheria or ./runs",
         metadata={"tags": ["parameters"]}),
    install_cell(),
    code("import subprocess\nimport sys\nfrom pathlib import Path\n\n"
         "import matplotlib.pyplot as plt\nimport pandas as pd\nimport yaml\nfrom IPython.display import display\n\n"
         "from atheria_kit.notify import notifier_from_environment\n"
         "from atheria_kit.platform import detect_environment\n"
         "from atheria_kit.replay import report\n"
         "from atheria_kit.replay.config import ReplayConfig\n"
         "from atheria_kit.replay.engine import ReplayEngine\n"
         "from atheria_kit.session import default_root\n\n"
         "if SMOKE:\n"
         "    MAX_BARS, CYCLE_SIZE_BARS, UPDATE_EVERY_BARS, RUN_NAME = 600, 100, 10, RUN_NAME + \"_smoke\"\n"
         "root = Path(OUTPUT_ROOT) if OUTPUT_ROOT else default_root(detect_environment())\n"
         "run_dir = root / \"replay\" / RUN_NAME\n"
         "run_dir.mkdir(parents=True, exist_ok=True)\n"
         "config_file = Path(CONFIG) if CONFIG else run_dir / \"replay.yaml\"\n"
         "if not CONFIG:  # the same file `atheria replay --config` reads\n"
         "    config_file.write_text(yaml.safe_dump({\"historical\": {\n"
         "        \"symbols\": SYMBOLS, \"timeframe\": \"1h\", \"data\": \"sample\", \"max_bars\": MAX_BARS,\n"
         "        \"cycle_size_bars\": CYCLE_SIZE_BARS, \"update_every_bars\": UPDATE_EVERY_BARS,\n"
         "        \"risk\": {\"initial_balance\": 1000, \"per_trade_pct\": 0.5, \"max_exposure_pct\": 20},\n"
         "        \"costs\": {\"fee_pct\": 0.1, \"slippage_pct\": 0.05},\n"
         "        \"penalties\": {\"max_drawdown_pct\": 20, \"max_losing_streak\": 5, \"weight_cut\": 0.5, "
         "\"reset_below\": 0.1},\n"
         "        \"turnover\": {\"min_hold_bars\": MIN_HOLD_BARS, \"deadband\": DEADBAND, "
         "\"cost_multiple\": COST_MULTIPLE},\n"
         "    }}, sort_keys=False))\n"
         "config = ReplayConfig.from_yaml(config_file)\n"
         "print(config_file.read_text())\n"
         "print(f\"The same run from a terminal: atheria replay --config {config_file} --out {run_dir}\")"),
    md("## Replay\n`resume=True` continues after the newest checkpoint (nothing to resume on a first run is fine). "
       "With `ATHERIA_TELEGRAM_TOKEN` + `ATHERIA_TELEGRAM_CHAT_ID` or `ATHERIA_NTFY_TOPIC` set (environment, Colab "
       "secrets or Kaggle secrets) progress messages go to your phone; see `docs/notifications.md`."),
    code("engine = ReplayEngine(config, out_dir=run_dir, notifier=notifier_from_environment())\n"
         "print(\"\\n\".join(engine.data_notes))  # one line per file: bars, span, missing bars\n"
         "print(f\"{len(engine.feed):,} timeline bars in cycles of {config.cycle_size_bars}\")\n\n\n"
         "def show_cycle(record):\n"
         "    print(f\"cycle {record['cycle']:>3}: bar {record['bars_done']}/{record['total_bars']}  \"\n"
         "          f\"equity {record['equity']:.2f}  trades {record['trades']}  win rate {record['win_rate']:.1%}  \"\n"
         "          f\"drawdown {record['current_drawdown']:.2%}\", flush=True)\n\n\n"
         "result = engine.run(resume=not RESTART, max_cycles=MAX_CYCLES_PER_RUN,\n"
         "                    max_seconds=None if MAX_MINUTES is None else 60 * MAX_MINUTES, on_cycle=show_cycle)\n"
         "print(f\"status: {result['status']}; this run went from cycle {result['started_after_cycle']} to \"\n"
         "      f\"{result['cycle']}\"\n"
         "      + (\" (run the notebook again to continue)\" if result[\"status\"] != \"finished\" else \"\"))"),
    md("## KPIs\nAccount-level KPIs (`live_status.json`: also latency of the last update, CPU and memory), then per "
       "symbol: the symbol's equity share (initial balance split evenly, plus its PnL), realized PnL after fees, "
       "trades and trades per year, winners, losers and breakeven trades (a trade with a PnL of exactly 0 is "
       "neither a win nor a loss), win rate, profit factor, average holding time, fees (and as a share of the "
       "symbol's starting equity: the cost drag), penalties (weight cuts) and resets."),
    code("display(report.format_kpis(report.kpi_summary(run_dir)).to_frame())\n"
         "report.format_symbol_table(report.symbol_table(run_dir))"),
    md("## Equity, drawdown, trades and regimes\nFrom `updates.jsonl` (one line per update), the trade logs and the "
       "penalty logs."),
    code("report.plot_replay(run_dir)\nplt.show()"),
    md("## Penalties and resets\nThe latest events (all of them are in `{symbol}_penalties.jsonl`)."),
    code("pd.set_option(\"display.float_format\", \"{:.4f}\".format)\n"
         "penalties = report.load_penalties(run_dir)\n"
         "print(penalties.groupby([\"symbol\", \"strategy\", \"action\"]).size().unstack(fill_value=0) "
         "if len(penalties) else \"no penalties\")\n"
         "penalties.tail(10)"),
    md("## The same run through `atheria monitor`\nAnother terminal (or notebook) can watch the run directory while "
       "the replay goes on: `atheria monitor RUN_DIR --refresh 5`."),
    code("print(subprocess.run([sys.executable, \"-m\", \"atheria_kit\", \"monitor\", str(run_dir)],\n"
         "                     capture_output=True, text=True).stdout)"),
]

write(cells, "04_historical_replay.ipynb")
