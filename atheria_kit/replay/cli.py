"""``atheria replay --config FILE``: the multi-symbol historical replay from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from atheria_kit.notify import notifier_from_environment
from atheria_kit.replay.config import ReplayConfig
from atheria_kit.replay.engine import ReplayEngine


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("replay", help="multi-symbol historical replay",
                              description="Replay several symbols in lock-step cycles with the dynamic ensemble.")
    p.add_argument("--config", help="YAML file with a 'historical:' section (default: built-in defaults)")
    p.add_argument("--out", help="run directory (overrides out_dir)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue after the last completed cycle (default) or start over")
    p.add_argument("--max-cycles", type=int, default=None, help="stop after this many cycles in this invocation")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config = ReplayConfig.from_yaml(args.config) if args.config else ReplayConfig()
    if args.max_cycles is not None and args.max_cycles < 1:
        raise ValueError(f"--max-cycles={args.max_cycles!r} is invalid; expected an integer >= 1")
    engine = ReplayEngine(config, out_dir=args.out, notifier=notifier_from_environment())

    def report(record: dict[str, Any]) -> None:
        print(f"cycle {record['cycle']} done: bars {record['bars_done']}/{record['total_bars']} "
              f"equity {record['equity']:.4f} trades {record['trades']}", flush=True)

    summary = engine.run(resume=args.resume, max_cycles=args.max_cycles, on_cycle=report)
    print(f"replay done: equity {summary['equity']:.4f} trades {summary['trades']} "
          f"win rate {summary['win_rate']:.1%} max drawdown {summary['max_drawdown']:.2%}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atheria_kit.replay.cli")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["replay", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
