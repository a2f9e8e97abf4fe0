"""The ``atheria`` command line: one sub-command per domain, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from atheria_kit import __version__

# (command, module, purpose). Each module exposes ``add_parser(subparsers)``; the sub-parser sets
# ``func(args) -> int``.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("walkforward", "atheria_kit.walkforward.cli", "walk-forward direction models"),
    ("monitor", "atheria_kit.watch", "watch a running or finished run"),
    ("replay", "atheria_kit.replay.cli", "multi-symbol historical replay"),
    ("live", "atheria_kit.live_trading.cli", "live paper trading on Binance kline streams"),
    ("bot", "atheria_kit.bot.cli", "Telegram bot that starts, watches and stops runs"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``atheria`` parser. With ``only``, just that command's module is imported; the others are listed
    by name and purpose (importing them all pulls in torch and scikit-learn: ~2 s before `monitor` starts)."""
    parser = argparse.ArgumentParser(
        prog="atheria",
        description="atheria_kit: long training runs on notebook GPUs that stop cleanly and resume exactly.",
    )
    parser.add_argument("--version", action="version", version=f"atheria_kit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       help="one of these (atheria COMMAND --help shows its options):")
    for name, module_name, purpose in COMMANDS:
        if only is not None and name != only:
            subparsers.add_parser(name, help=purpose)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A command whose module is not part of this build is simply absent; anything else is a bug.
            if exc.name is not None and module_name.startswith(exc.name):
                continue
            raise
        module.add_parser(subparsers)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """Log lines on stderr (INFO, or DEBUG with ``verbose``), except the status lines ``say`` already printed."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not record.name.startswith("atheria_kit.say"))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), "")  # the command: the first non-option word
    parser = build_parser(only=chosen)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except ValueError as exc:  # bad input is reported plainly, not as a traceback
        print(f"atheria {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
