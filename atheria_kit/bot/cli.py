"""``python -m atheria_kit.bot`` (``atheria bot``): run the Telegram bot that controls training runs.

The token is read from ``ATHERIA_TELEGRAM_TOKEN`` in the environment or the platform's secret store (Colab's
key panel, Kaggle's secrets), never from the command line (it would land in the shell's history and in ``ps``).
The chats it obeys: ``--chat-id`` (repeatable), else ``ATHERIA_TELEGRAM_CHAT_ID`` (ids separated by commas).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atheria_kit.cli import main as atheria_main
from atheria_kit.notify import (
    ENV_TELEGRAM_BASE_URL,
    ENV_TELEGRAM_CHAT_ID,
    ENV_TELEGRAM_TOKEN,
    TELEGRAM_API,
    secret_store_lookup,
)

logger = logging.getLogger(__name__)

STATE_FILE = "telegram_bot_state.json"


def default_runs_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where runs go by default: /kaggle/working/atheria/bot on Kaggle, /content/atheria/bot on Colab, else
    ./runs/bot (the same roots as the notebooks')."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_KERNEL_RUN_TYPE"):
        return Path("/kaggle/working/atheria/bot")
    if env.get("COLAB_RELEASE_TAG"):
        return Path("/content/atheria/bot")
    return Path("runs/bot")


def lookup(name: str, environ: Mapping[str, str] | None = None, *, use_secret_stores: bool = True) -> str | None:
    """``name`` from the environment, else from Colab's / Kaggle's secret store; None when absent."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if not value and use_secret_stores:
        value = secret_store_lookup(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_chat_ids(field: str, raw: Sequence[str]) -> list[int]:
    """Chat ids from ``--chat-id`` values or a comma-separated variable (groups have negative ids)."""
    ids = []
    for item in (part.strip() for value in raw for part in str(value).split(",")):
        if not item:
            continue
        try:
            ids.append(int(item))
        except ValueError:
            raise ValueError(f"{field}={item!r} is invalid; expected a numeric Telegram chat id (e.g. 123456789, "
                             "or -100123456789 for a group)") from None
    return ids


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bot", help="Telegram bot that starts, watches and stops runs",
                              description="Long-poll Telegram and answer /train_hist, /train_live, "
                                          "/training_status, /stop_training from the allowed chats.")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-id", action="append", default=[], metavar="ID",
                   help=f"a chat id the bot obeys (repeatable; default: {ENV_TELEGRAM_CHAT_ID}, ids separated "
                        "by commas)")
    p.add_argument("--runs-dir", metavar="DIR", default=None,
                   help="folder of the runs (hist/, live/) and of the bot's state (default: ./runs/bot; "
                        "/content/atheria/bot on Colab, /kaggle/working/atheria/bot on Kaggle)")
    p.add_argument("--state", metavar="FILE", default=None,
                   help=f"the bot's state file: offset and runs (default: RUNS_DIR/{STATE_FILE})")
    p.add_argument("--replay-config", metavar="YAML", default=None,
                   help="YAML with a 'historical:' section that /train_hist starts from")
    p.add_argument("--live-config", metavar="YAML", default=None,
                   help="YAML with a 'live:' section passed to atheria live --config")
    p.add_argument("--ws-url", metavar="URL", default=None, help="atheria live --ws-url (the exchange's stream)")
    p.add_argument("--rest-url", metavar="URL", default=None, help="atheria live --rest-url (its REST klines)")
    p.add_argument("--base-url", metavar="URL", default=None,
                   help=f"Bot API address (default: {ENV_TELEGRAM_BASE_URL} or {TELEGRAM_API})")
    p.add_argument("--poll-timeout", type=int, default=25, metavar="SECONDS",
                   help="long-polling wait per getUpdates call; ended runs are reported after each (default 25)")
    p.add_argument("--stop-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long /stop_training waits for a run to save and exit (default 60)")
    p.add_argument("--max-age", type=float, default=600.0, metavar="SECONDS",
                   help="commands older than this (sent while the bot was down) are not carried out (default 600)")


def run(args: argparse.Namespace) -> int:
    from atheria_kit.bot.api import BotApiClient, BotApiError
    from atheria_kit.bot.app import TelegramBot
    from atheria_kit.bot.runs import RunManager
    from atheria_kit.bot.state import BotState

    token = lookup(ENV_TELEGRAM_TOKEN)
    if token is None:
        raise ValueError(f"{ENV_TELEGRAM_TOKEN} is not set; expected the bot token from @BotFather in the "
                         "environment or the platform's secret store (Colab: the key panel; Kaggle: Add-ons > "
                         "Secrets)")
    chats = parse_chat_ids("--chat-id", args.chat_id) if args.chat_id else \
        parse_chat_ids(ENV_TELEGRAM_CHAT_ID, [lookup(ENV_TELEGRAM_CHAT_ID) or ""])
    if not chats:
        raise ValueError(f"no chat id: expected --chat-id ID or {ENV_TELEGRAM_CHAT_ID} (send the bot a message; "
                         "it logs the chat id of every message it ignores)")
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    live_args = []
    if args.ws_url:
        live_args += ["--ws-url", args.ws_url]
    if args.rest_url:
        live_args += ["--rest-url", args.rest_url]
    client = BotApiClient(token, base_url=args.base_url or lookup(ENV_TELEGRAM_BASE_URL) or TELEGRAM_API)
    try:  # checks the token at once, and names the bot so that "/cmd@other_bot" in a group is left alone
        username = (client.call("getMe", {}) or {}).get("username")
    except BotApiError as exc:
        if exc.permanent:
            print(f"bot: error: Telegram rejected the token ({exc}); check {ENV_TELEGRAM_TOKEN}", file=sys.stderr)
            return 1
        logger.warning("getMe failed (%s); starting anyway, commands addressed to other bots are not told apart",
                       exc)
        username = None
    manager = RunManager(runs_dir, replay_config=args.replay_config, live_config=args.live_config,
                         live_args=live_args, stop_timeout=args.stop_timeout)
    state = BotState(Path(args.state) if args.state else runs_dir / STATE_FILE)
    bot = TelegramBot(client, chats, manager, state, poll_timeout=args.poll_timeout, max_age=args.max_age,
                      bot_username=username)
    stop = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # ends the current long poll at once; the offset of each taken update is saved

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    print(f"bot @{username or '?'} polling {client.base_url} for chats {', '.join(map(str, sorted(chats)))}; runs in {runs_dir}",
          flush=True)
    try:
        bot.run(stop)
    except KeyboardInterrupt:
        running = [k for k in ("hist", "live") if manager.running(k)]
        print("bot stopped" + (f"; these runs go on: {', '.join(running)} (a restarted bot finds them)"
                               if running else ""), flush=True)
    except BotApiError as exc:
        print(f"bot: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atheria_kit.bot [options]``: exactly ``atheria bot [options]`` (same parser, logging and errors)."""
    return atheria_main(["bot", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
