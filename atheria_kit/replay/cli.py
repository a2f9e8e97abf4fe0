"""``atheria replay --config FILE``: the multi-symbol historical replay from the command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from atheria_kit.notify import notifier_from_environment
from atheria_kit.replay.config import ReplayConfig
from atheria_kit.replay.engine import ReplayEngine


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("replay", help="multi-symbol historical replay",
                              description="Replay several symbols in lock-step cycles with the dynamic ensemble.")
    p.add_argument("--config", metavar="YAML",
                   help="YAML file with a 'historical:' section (default: the built-in settings)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: out_dir of the config)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue after the last completed cycle (default) or start over")
    p.add_argument("--max-cycles", type=int, default=None, metavar="N", help="stop after this many cycles in this invocation")
    p.add_argument("--max-minutes", type=float, default=None, metavar="MINUTES",
                   help="stop at the first cycle end after this many minutes (a session's budget); run again to continue")
    p.add_argument("--notify-every", type=int, default=10, metavar="N",
                   help="with a notifier configured (ATHERIA_TELEGRAM_* / ATHERIA_NTFY_*), a message every N cycles")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config = ReplayConfig.from_yaml(args.config) if args.config else ReplayConfig()
    if args.max_cycles is not None and args.max_cycles < 1:
        raise ValueError(f"--max-cycles={args.max_cycles!r} is invalid; expected an integer >= 1")
    engine = ReplayEngine(config, out_dir=args.out, notifier=notifier_from_environment(),
                          notify_every=args.notify_every)
    for note in engine.data_notes:
        print(note, flush=True)

    def report(record: dict[str, Any]) -> None:
        print(f"cycle {record['cycle']} done: bars {record['bars_done']}/{record['total_bars']} "
              f"equity {record['equity']:.4f} trades {record['trades']}", flush=True)

    if args.max_minutes is not None and not args.max_minutes >= 0:
        raise ValueError(f"--max-minutes={args.max_minutes!r} is invalid; expected a number >= 0")
    max_seconds = None if args.max_minutes is None else args.max_minutes * 60
    # SIGTERM (a platform shutting down, `kill`, the Telegram bot's /stop_training) stops like Ctrl-C: the run log
    # says stopped and the last cycle's checkpoint is where the next run continues.
    # (Only the main thread may set handlers.)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        summary = engine.run(resume=args.resume, max_cycles=args.max_cycles, max_seconds=max_seconds,
                             on_cycle=report)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(f"replay {summary['status']}: equity {summary['equity']:.4f} trades {summary['trades']} "
          f"win rate {summary['win_rate']:.1%} max drawdown {summary['max_drawdown']:.2%}", flush=True)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
