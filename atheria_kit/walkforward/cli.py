"""``atheria walkforward``: flags -> configuration (YAML < ATHERIA_* < flags) -> one or more walk-forward runs.

Several symbols/timeframes (comma-separated) run in parallel through joblib (``--jobs``), or on a dask cluster
(``--backend dask --scheduler ADDRESS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from atheria_kit import _io
from atheria_kit.walkforward.config import MODES, WalkForwardConfig, load_config
from atheria_kit.walkforward.models import MODELS

_FLAG_TO_FIELD = {"tf": "timeframe", "from_": "start", "to": "end"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``walkforward`` command on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("walkforward", help="walk-forward direction models with purged splits",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = None  # every default lives in WalkForwardConfig; None means "not given on the command line"
    p.add_argument("--symbol", default=d, help="symbol(s), comma-separated (default BTCUSDT)")
    p.add_argument("--tf", default=d, help="timeframe(s), comma-separated, e.g. 1h,4h (default 1h)")
    p.add_argument("--horizon", type=int, default=d, help="label horizon in bars (default 1)")
    p.add_argument("--data", default=d, help="CSV/Parquet file (normalized or Binance klines), or 'synthetic'; "
                   "with several symbols use {symbol} (and {tf}) in the path, e.g. data/{symbol}_1m.csv")
    p.add_argument("--max-bars", type=int, default=d, help="use only the last N bars (0 = all)")
    p.add_argument("--from", dest="from_", default=d, help="first bar (date, UTC)")
    p.add_argument("--to", default=d, help="end (exclusive, date, UTC)")
    p.add_argument("--n-splits", type=int, default=d, help="folds in --mode count (default 5)")
    p.add_argument("--embargo-minutes", type=float, default=d, help="gap between train and test (default 30)")
    p.add_argument("--chunk-size", type=int, default=d, help="feature rows per chunk (default 50000)")
    p.add_argument("--memory-threshold", type=float, default=d, help="RAM fraction that triggers the guard (0.85)")
    p.add_argument("--out-of-core", choices=("auto", "on", "off"), default=d,
                   help="features on disk and SGD over chunks: memory bounded by --chunk-size (default auto: when "
                   "the in-memory run would not fit in --memory-threshold of the available RAM)")
    p.add_argument("--model", choices=MODELS, default=d, help="classifier (default logreg)")
    p.add_argument("--use-gpu", action="store_true", default=d, help="torch model on CUDA when available")
    p.add_argument("--resume", action="store_true", default=d, help="continue after the last completed fold")
    p.add_argument("--seed", type=int, default=d)
    p.add_argument("--mode", choices=MODES, default=d, help="quick, full, sequential (quick, gate, full) or count")
    p.add_argument("--config", default=None, help="YAML file with settings (flags and ATHERIA_* override it)")
    p.add_argument("--jobs", type=int, default=d,
                   help="parallel runs for several symbols/timeframes (-1: all cores, or all dask workers' threads)")
    p.add_argument("--backend", choices=("loky", "threading", "dask"), default=d,
                   help="joblib backend for --jobs (default loky: one process per run)")
    p.add_argument("--scheduler", default=d, help="dask scheduler address for --backend dask, e.g. tcp://host:8786")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--yes", dest="confirm", action="store_const", const=True, default=None,
                   help="sequential: run the full stage whatever the gate says")
    g.add_argument("--no", dest="confirm", action="store_const", const=False, help="sequential: stop after quick")
    p.add_argument("--out", default=d, help="artifacts root (default ./artifacts)")
    p.add_argument("--budget-seconds", type=float, default=d, help="stop cleanly before this much time has passed")


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
    out = []
    for r in run_walkforward(config, confirm=confirm, budget=budget):
        out.append({"name": config.run_name(r.mode), "status": r.status, "stop_reason": r.stop_reason,
                    "folds": len(r.folds), "means": r.means, "gate": str(r.gate) if r.gate else None,
                    "leak_warning": r.leak_warning, "convergence_warnings": r.convergence_warnings,
                    "peak_rss_mb": r.peak_rss_bytes / 2**20, "run_dir": str(r.run_dir)})
    return out


def run_many(configs: list[WalkForwardConfig], jobs: int = 1, backend: str = "loky",
             scheduler: str | None = None) -> list[list[dict[str, Any]]]:
    """Run several configurations with joblib; ``backend='dask'`` sends them to the cluster at ``scheduler``."""
    from joblib import Parallel, delayed, parallel_config

    if len(configs) == 1 and backend != "dask":
        return [_run_one(configs[0])]
    if backend == "dask":
        if not scheduler:
            raise ValueError("scheduler=None is invalid with backend='dask'; expected an address like tcp://host:8786")
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
    Path(base.out).mkdir(parents=True, exist_ok=True)
    _io.atomic_write_bytes(Path(base.out) / "walkforward_config.yaml", effective.encode())
    try:
        results = run_many(configs, base.jobs, base.backend, base.scheduler)
    except ValueError as exc:  # bad data, too-short data, mismatched checkpoint: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = 0
    for stages in results:
        for r in stages:
            m = r["means"]
            print(f"{r['name']}: {r['status']}, {r['folds']} folds, AUC {m.get('auc', float('nan')):.4f}, "
                  f"accuracy {m.get('accuracy', float('nan')):.4f}, peak RSS {r['peak_rss_mb']:.0f} MB -> {r['run_dir']}")
            if r["gate"]:
                print(r["gate"])
            if r["leak_warning"]:
                print("WARNING: " + r["leak_warning"])
            if r["status"] == "stopped":
                print(f"stopped: {r['stop_reason']}; run again with --resume to continue")
                code = 3
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atheria walkforward", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
