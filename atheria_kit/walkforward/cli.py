"""``atheria walkforward``: flags -> configuration (YAML < ATHERIA_* < flags) -> one or more walk-forward runs.

Several symbols/timeframes (comma-separated) run in parallel through joblib (``--jobs``), or on a dask cluster
(``--backend dask --scheduler ADDRESS``). Nothing is written to ``--out`` before the settings and the data have
been validated.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from atheria_kit import _io
from atheria_kit.walkforward.config import MODES, WalkForwardConfig, load_config
from atheria_kit.walkforward.models import MODELS

_FLAG_TO_FIELD = {"tf": "timeframe", "from_": "start", "to": "end"}
_DEFAULTS = WalkForwardConfig()

DESCRIPTION = """\
Train direction classifiers (will the close be higher HORIZON bars later?) with purged walk-forward splits,
naive baselines in the same table, and the predictions traded after costs next to buy-and-hold.

Modes: quick (the last 12 months, rolling 180-day train window, 60-day test periods, early stopping on),
full (all data, expanding window, 21-day test periods, every fold tested), sequential (quick, then the gate,
then full: --yes runs full whatever the gate says, --no never), count (N equal test blocks).

Settings come from defaults, then the --config YAML file, then ATHERIA_* environment variables
(ATHERIA_HORIZON=4, ATHERIA_EARLY_STOPPING=true, any setting name in upper case), then these flags.
Each run writes OUT/direction/SYMBOL_TF_Hh_MODEL_MODE/ (report.md, fold metrics, predictions, the refit
model SYMBOL_TF_Hh_MODEL_MODE.joblib); watch it with: atheria monitor OUT/direction/RUN_NAME
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``walkforward`` command on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("walkforward", help="walk-forward direction models with purged splits",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = None  # every default lives in WalkForwardConfig; None means "not given on the command line"
    c = _DEFAULTS
    p.add_argument("--symbol", default=d, metavar="SYMBOLS", help=f"symbol(s), comma-separated (default {c.symbol})")
    p.add_argument("--tf", default=d, metavar="TIMEFRAMES",
                   help=f"timeframe(s), comma-separated, e.g. 1h,4h (default {c.timeframe})")
    p.add_argument("--horizon", type=int, default=d, metavar="BARS", help=f"label horizon in bars (default {c.horizon})")
    p.add_argument("--data", default=d, metavar="PATH",
                   help="CSV/Parquet file (normalized or Binance klines), or 'synthetic' (default: the shipped "
                   "sample of --symbol); with several symbols put {symbol} (and {tf}) in the path, "
                   "e.g. data/{symbol}_1m.csv")
    p.add_argument("--max-bars", type=int, default=d, metavar="N", help="use only the last N bars (default 0: all)")
    p.add_argument("--from", dest="from_", default=d, metavar="DATE", help="first bar to use (date or date-time, UTC)")
    p.add_argument("--to", default=d, metavar="DATE", help="end of the data to use (exclusive; date or date-time, UTC)")
    p.add_argument("--mode", choices=MODES, default=d, metavar="MODE",
                   help=f"{', '.join(MODES)} (default {c.mode}; see above)")
    p.add_argument("--n-splits", type=int, default=d, metavar="N", help=f"folds in --mode count (default {c.n_splits})")
    p.add_argument("--embargo-minutes", type=float, default=d, metavar="MINUTES",
                   help=f"gap between the last train label and the test start (default {c.embargo_minutes:g})")
    es = p.add_mutually_exclusive_group()
    es.add_argument("--early-stopping", dest="early_stopping", action="store_const", const=True, default=None,
                    help="stop a stage after --patience folds without a better AUC (default: quick mode only); "
                    "reported as stopped_early with the share of the test period covered")
    es.add_argument("--no-early-stopping", dest="early_stopping", action="store_const", const=False,
                    help="test every planned fold, in every mode")
    p.add_argument("--patience", type=int, default=d, metavar="FOLDS",
                   help=f"folds without a better AUC before an early stop (default {c.patience})")
    p.add_argument("--ties", choices=("drop", "down"), default=d, metavar="POLICY",
                   help="an unchanged close over the horizon: drop (excluded from training and metrics; default) "
                   "or down (labelled not up)")
    p.add_argument("--partial-bins", choices=("drop", "mark"), default=d, metavar="POLICY",
                   help="resampling: partial first and last bins dropped (default) or kept and listed (mark)")
    p.add_argument("--model", choices=MODELS, default=d, metavar="MODEL",
                   help=f"classifier: {', '.join(MODELS)} (default {c.model})")
    p.add_argument("--use-gpu", action="store_true", default=d,
                   help="torch model on CUDA when there is one (says so and uses the CPU otherwise)")
    p.add_argument("--seed", type=int, default=d, metavar="N",
                   help=f"seed of the models and of the synthetic data (default {c.seed})")
    p.add_argument("--trade-threshold", type=float, default=d, metavar="P",
                   help=f"money view: long when P(up) > P, short (long/short) below 1 - P (default {c.trade_threshold:g})")
    p.add_argument("--fee", type=float, default=d, metavar="FRACTION",
                   help=f"money view: fee per side as a fraction of the traded value (default {c.fee:g})")
    p.add_argument("--slippage", type=float, default=d, metavar="FRACTION",
                   help=f"money view: slippage per side as a fraction (default {c.slippage:g})")
    p.add_argument("--min-hold-bars", type=int, default=d, metavar="BARS",
                   help="money view's turnover control: hold a position at least BARS bars "
                   f"(default {c.min_hold_bars}; 0 with --deadband 0 --cost-multiple 0 trades the raw rule)")
    p.add_argument("--deadband", type=float, default=d, metavar="SCORE",
                   help="turnover control: keep a position while the score 2 P(up) - 1 stays above the threshold's "
                   f"score minus SCORE (0..1; default {c.deadband:g}, i.e. P(up) {c.deadband / 2:g} below it)")
    p.add_argument("--cost-multiple", type=float, default=d, metavar="X",
                   help="turnover control: enter only when |2 P(up) - 1| x volatility x sqrt(hold) exceeds X times "
                   f"the round-trip cost (default {c.cost_multiple:g}; 0: no cost test)")
    p.add_argument("--cost-vol-window", type=int, default=d, metavar="BARS",
                   help=f"turnover control: bars of returns in that volatility (default {c.cost_vol_window})")
    p.add_argument("--chunk-size", type=int, default=d, metavar="ROWS",
                   help=f"feature rows per chunk (default {c.chunk_size})")
    p.add_argument("--memory-threshold", type=float, default=d, metavar="FRACTION",
                   help=f"RAM fraction that triggers the memory guard (default {c.memory_threshold:g})")
    p.add_argument("--out-of-core", choices=("auto", "on", "off"), default=d, metavar="WHEN",
                   help="auto, on or off: features on disk and SGD over chunks, memory bounded by --chunk-size "
                   "(default auto: when the in-memory run would not fit in --memory-threshold of the available RAM)")
    p.add_argument("--resume", action="store_true", default=d, help="continue after the last completed fold")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML file with settings (ATHERIA_* and flags override it)")
    p.add_argument("--jobs", type=int, default=d, metavar="N",
                   help="parallel runs for several symbols/timeframes (-1: all cores, or all dask workers' threads)")
    p.add_argument("--backend", choices=("loky", "threading", "dask"), default=d, metavar="BACKEND",
                   help="joblib backend for --jobs: loky (default, one process per run), threading or dask")
    p.add_argument("--scheduler", default=d, metavar="ADDRESS",
                   help="dask scheduler address for --backend dask, e.g. tcp://host:8786")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--yes", dest="confirm", action="store_const", const=True, default=None,
                   help="sequential: run the full stage whatever the gate says")
    g.add_argument("--no", dest="confirm", action="store_const", const=False, help="sequential: stop after quick")
    p.add_argument("--out", default=d, metavar="DIR", help=f"artifacts root (default ./{c.out})")
    p.add_argument("--budget-seconds", type=float, default=d, metavar="SECONDS",
                   help="stop cleanly between folds before this much time has passed (continue with --resume)")


def _own_dests() -> set[str]:
    """The argparse destinations of this command's flags (the namespace also holds the top-level ones)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return {a.dest for a in parser._actions} - {"config"}


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> WalkForwardConfig:
    """The effective configuration: defaults < ``--config`` YAML < ``ATHERIA_*`` variables < flags."""
    own = _own_dests()
    overrides = {_FLAG_TO_FIELD.get(k, k): v for k, v in vars(args).items() if k in own}
    return load_config(getattr(args, "config", None), environ=environ, overrides=overrides)


def expand_configs(base: WalkForwardConfig) -> list[WalkForwardConfig]:
    """One configuration per symbol x timeframe of the comma-separated ``symbol`` and ``timeframe`` settings.

    A ``data`` path may name each file with ``{symbol}`` and ``{tf}``; one fixed file for several symbols is an
    error (every "symbol" would silently train on the same bars). Several timeframes of one file are fine: each
    run resamples it.
    """
    symbols = [s.strip() for s in base.symbol.split(",") if s.strip()]
    tfs = [t.strip() for t in base.timeframe.split(",") if t.strip()]
    if not symbols or not tfs:
        raise ValueError(f"symbol={base.symbol!r}, timeframe={base.timeframe!r}: expected at least one of each")
    file = base.data not in (None, "synthetic")
    if file and len(symbols) > 1 and "{symbol}" not in base.data:
        raise ValueError(
            f"data={base.data!r} is one file for symbols {symbols}; put {{symbol}} in the path "
            "(e.g. data/{symbol}_1m.csv) or run one symbol at a time"
        )
    out = []
    for sym in symbols:
        for tf in tfs:
            data = base.data.replace("{symbol}", sym).replace("{tf}", tf) if file else base.data
            out.append(dataclasses.replace(base, symbol=sym, timeframe=tf, data=data))
    return out


def _stage_dict(config: WalkForwardConfig, r) -> dict[str, Any]:
    """A stage's outcome as plain values (it crosses process and cluster boundaries)."""
    s = r.summary
    row = s.loc["model"].to_dict() if "model" in s.index else {}
    return {"name": config.run_name(r.mode), "status": r.status, "headline": r.headline(),
            "stop_reason": r.stop_reason, "folds": len(r.folds), "planned_folds": r.planned_folds,
            "coverage": r.coverage, "means": r.means, "medians": {k[:-7]: v for k, v in row.items() if k.endswith("_median")},
            "stds": {k[:-4]: v for k, v in row.items() if k.endswith("_std")},
            "baselines": {b: float(s.loc[b, "auc"]) for b in ("last_bar", "majority") if b in s.index},
            "money": r.money.whole if r.money is not None else None,
            "reading": r.overfitting.reading if r.overfitting is not None else None,
            "gate": str(r.gate) if r.gate else None, "decision": r.decision,
            "leak_warning": r.leak_warning, "data_warning": r.data_warning,
            "convergence_warnings": r.convergence_warnings, "model": r.refit["path"] if r.refit else None,
            "peak_rss_mb": r.peak_rss_bytes / 2**20, "run_dir": str(r.run_dir)}


def _run_one(config: WalkForwardConfig) -> list[dict[str, Any]]:
    """One symbol/timeframe; returns plain dicts so it can cross process and cluster boundaries."""
    from atheria_kit.walkforward.runner import run_walkforward

    confirm = None
    if config.mode == "sequential" and config.confirm is None and sys.stdin.isatty():
        def confirm(verdict):
            print(verdict)
            return input("Run the full stage? [y/N] ").strip().lower() in ("y", "yes")
    budget = None
    if config.budget_seconds:
        from atheria_kit.budget import TimeBudget

        budget = TimeBudget(config.budget_seconds)
    return [_stage_dict(config, r) for r in run_walkforward(config, confirm=confirm, budget=budget)]


def check_data(configs: list[WalkForwardConfig]) -> None:
    """Validate every configuration's data file before any run writes anything (several runs: one bad file must
    not leave the others' results half written). Streams each file in chunks; raises on the first problem."""
    from atheria_kit.market import ohlcv
    from atheria_kit.walkforward.streaming import iter_ohlcv_chunks

    for config in configs:
        if config.data == "synthetic":
            continue
        lo, hi = ohlcv._to_utc(config.start, "start"), ohlcv._to_utc(config.end, "end")
        selected = 0
        for chunk in iter_ohlcv_chunks(config.data_path(), config.chunk_size):
            ts = chunk.index.asi8
            keep = np.ones(len(ts), dtype=bool)
            if lo is not None:
                keep &= ts >= lo.value
            if hi is not None:
                keep &= ts < hi.value
            selected += int(keep.sum())
        if not selected:
            raise ohlcv.OHLCVError(f"{config.data_path().name}: no bars left after selecting start={config.start!r}, "
                                   f"end={config.end!r}")


def run_many(configs: list[WalkForwardConfig], jobs: int = 1, backend: str = "loky",
             scheduler: str | None = None) -> list[list[dict[str, Any]]]:
    """Run several configurations with joblib; ``backend='dask'`` sends them to the cluster at ``scheduler``."""
    from joblib import Parallel, delayed, parallel_config

    if len(configs) == 1 and backend != "dask":
        return [_run_one(configs[0])]
    if backend == "dask" and not scheduler:
        raise ValueError("scheduler=None is invalid with backend='dask'; expected an address like tcp://host:8786")
    check_data(configs)
    if backend == "dask":
        try:
            from dask.distributed import Client
        except ImportError as exc:
            raise ValueError("backend='dask' needs dask.distributed: pip install 'dask[distributed]'") from exc
        try:
            client = Client(scheduler, timeout=30)
        except OSError as exc:
            raise ValueError(f"scheduler={scheduler!r}: cannot connect to the dask scheduler ({exc})") from exc
        with client, parallel_config(backend="dask", n_jobs=jobs):  # joblib sends the calls to this client
            return Parallel()(delayed(_run_one)(c) for c in configs)
    return Parallel(n_jobs=jobs, backend=backend)(delayed(_run_one)(c) for c in configs)


def _f(v: Any, fmt: str = ".4f") -> str:
    return "n/a" if not isinstance(v, (int, float)) or math.isnan(v) else format(v, fmt)


def stage_lines(r: dict[str, Any]) -> list[str]:
    """What the CLI prints for one stage; the last line is the stage's status and its summary."""
    lines = []
    if r["gate"]:
        lines.append(r["gate"])
    if r["decision"]:
        lines.append(r["decision"])
    for label, w in (("WARNING", r["leak_warning"]), ("DATA WARNING", r["data_warning"])):
        if w:
            lines.append(f"{label}: {w}")
    if r["money"]:
        m = r["money"]
        lines.append("  money after costs: " + ", ".join(
            f"{name} {100 * m[k]['total_return']:+.1f} % (Sharpe {_f(m[k]['sharpe'], '.2f')})"
            for k, name in (("long_flat", "long/flat"), ("long_short", "long/short"), ("buy_hold", "buy-and-hold"))))
    if r.get("reading"):
        lines.append(f"  is it real? {r['reading']}")
    auc = ""
    if r["folds"]:
        base = ", ".join(f"{'last-bar' if b == 'last_bar' else b} {v:.4f}" for b, v in r["baselines"].items())
        auc = (f"; AUC mean {_f(r['means'].get('auc'))} median {_f(r['medians'].get('auc'))} sd "
               f"{_f(r['stds'].get('auc'))} (baselines {base})")
    model = f"; model {Path(r['model']).name}" if r["model"] else ""
    lines.append(f"{r['name']}: {r['status']}: {r['headline']}{auc}{model}; peak RSS {r['peak_rss_mb']:.0f} MB "
                 f"-> {r['run_dir']}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Entry point of ``atheria walkforward``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        base = config_from_args(args)
        configs = expand_configs(base)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    effective = yaml.safe_dump(base.to_dict(), sort_keys=True)
    print("effective configuration:\n" + effective)
    try:
        results = run_many(configs, base.jobs, base.backend, base.scheduler)
    except ValueError as exc:  # bad data, too-short data, mismatched checkpoint: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # written once the inputs were accepted and the runs ran: a failed start leaves --out as it was
    Path(base.out).mkdir(parents=True, exist_ok=True)
    _io.atomic_write_bytes(Path(base.out) / "walkforward_config.yaml", effective.encode())
    code = 0
    for stages in results:
        for r in stages:
            print("\n".join(stage_lines(r)))
            if r["status"] == "stopped":
                code = 3
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atheria walkforward", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
