"""``atheria live``: live paper trading on Binance's public kline streams from the command line.

Every option has the seed's spelling too (``--cycle_minutes`` as well as ``--cycle-minutes``). SIGTERM and SIGINT
stop at the next bar boundary with a checkpoint; running the same command again continues.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from atheria_kit.cli import main as atheria_main
from atheria_kit.live_trading.config import LiveConfig
from atheria_kit.live_trading.engine import LiveRun
from atheria_kit.notify import notifier_from_environment
from atheria_kit.say import say


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "live", help="live paper trading on Binance kline streams",
        description="Trade the dynamic ensemble on a paper account over Binance's live kline streams (testnet by "
                    "default; no API key, no orders). Stops cleanly on SIGTERM/Ctrl-C; run again to continue.")
    p.add_argument("--config", metavar="YAML", help="YAML file with a 'live:' section (options below override it)")
    p.add_argument("--symbols", metavar="A,B", help="comma-separated symbols, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--interval", metavar="1m", help="kline interval (default 1m)")
    p.add_argument("--cycle-minutes", "--cycle_minutes", dest="cycle_minutes", type=int, metavar="N",
                   help="minutes of bars per cycle (default 30)")
    p.add_argument("--update-every", "--update_every", dest="update_every_seconds", type=int, metavar="SECONDS",
                   help="seconds between decisions, rounded to whole bars, at least one bar (default 5)")
    p.add_argument("--max-cycles", "--max_cycles", dest="max_cycles", type=int, metavar="N",
                   help="cycles in all before the run ends (default 1000)")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", metavar="DIR",
                   help="run directory (default runs/live)")
    p.add_argument("--log-level", "--log_level", dest="log_level", metavar="LEVEL",
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("--ws-url", "--websocket_url", dest="websocket_url", metavar="URL",
                   help="websocket endpoint (default: Binance's testnet stream; the seed's .../ws/ form works)")
    p.add_argument("--rest-url", "--rest_url", dest="rest_url", metavar="URL",
                   help="REST endpoint up to /api (default: Binance's testnet API)")
    p.add_argument("--mainnet", action="store_true", help="Binance's public mainnet market data instead of testnet")
    p.add_argument("--catch-up", "--catch_up", dest="catch_up", choices=("process", "skip"),
                   help="bars that closed while the run was down: trade them in order (default) or skip them")
    p.add_argument("--warmup-bars", "--warmup_bars", dest="warmup_bars", type=int, metavar="N",
                   help="closed bars fetched before the first decision (default 600)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue the run in the output directory (default) or start over")
    p.add_argument("--notify-every", type=int, default=10, metavar="N",
                   help="with a notifier configured (ATHERIA_TELEGRAM_* / ATHERIA_NTFY_*), a message every N cycles")
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> LiveConfig:
    overrides = {k: getattr(args, k) for k in ("symbols", "interval", "cycle_minutes", "update_every_seconds",
                                               "max_cycles", "output_dir", "log_level", "websocket_url",
                                               "rest_url", "catch_up", "warmup_bars")}
    if args.mainnet:
        overrides["testnet"] = False
    if overrides["symbols"] is not None:
        overrides["symbols"] = tuple(s.strip() for s in overrides["symbols"].split(",") if s.strip())
    if args.config:
        return LiveConfig.from_yaml(args.config, **overrides)
    return LiveConfig.from_mapping({}, **overrides)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.getLogger().setLevel(config.log_level)
    live = LiveRun(config, notifier=notifier_from_environment(), notify_every=args.notify_every, say=say)
    result = live.run(resume=args.resume, handle_signals=True)
    return 0 if result["status"] in ("finished", "stopped") else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atheria_kit.live_trading.cli [options]``: exactly ``atheria live [options]``."""
    return atheria_main(["live", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
