"""The bot's loop: long-poll ``getUpdates``, answer the allowed chats' commands, report runs that end.

Each update is acknowledged (the offset saved) before its command is carried out: after a crash a command is
never run twice (send it again if it got no answer). Messages from chats that are not allowed get no answer and
are logged with their chat id (never the token). Commands older than ``max_age`` seconds (sent while the bot was
not running) are answered but not carried out. Network errors and Telegram's 5xx/429/409 are retried with
exponential back-off and jitter, capped at ``backoff_cap`` seconds, and the loop gives up after
``max_failures`` failures in a row; a rejected token (401/403/404) stops it at once.
"""

from __future__ import annotations

import html
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from atheria_kit._validation import require_int, require_positive
from atheria_kit.bot.api import BotApiClient, BotApiError, IncomingMessage, parse_update
from atheria_kit.bot.commands import Command, CommandError, help_text, parse_command
from atheria_kit.bot.runs import COMMAND_OF, KINDS, RunManager, RunRefused
from atheria_kit.bot.state import BotState
from atheria_kit.notify import redact

logger = logging.getLogger(__name__)

_REPLY_ATTEMPTS = 3


class TelegramBot:
    """Answers ``/train_hist``, ``/train_live``, ``/training_status``, ``/stop_training`` and ``/help``.

    ``allowed_chats``: the chat ids it obeys. ``state``: where the offset and the runs are kept.
    ``poll_timeout``: seconds a ``getUpdates`` call waits for a message (Telegram's long polling); runs that
    ended are reported after each call. ``clock``, ``sleep`` and ``jitter`` (a number in [0, 1)) are injectable.
    """

    def __init__(self, client: BotApiClient, allowed_chats: Iterable[int], runs: RunManager, state: BotState, *,
                 poll_timeout: int = 25, max_age: float = 600.0, backoff_base: float = 1.0,
                 backoff_cap: float = 60.0, max_failures: int = 30, bot_username: str | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Any] = time.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self.client = client
        self.allowed = {int(c) for c in allowed_chats}
        if not self.allowed:
            raise ValueError("allowed_chats=[] is invalid; expected at least one chat id the bot obeys")
        self.runs = runs
        self.state = state
        self.poll_timeout = require_int("poll_timeout", poll_timeout, minimum=0, maximum=600)
        self.max_age = float(require_positive("max_age", max_age))
        self.backoff_base = float(require_positive("backoff_base", backoff_base))
        self.backoff_cap = float(require_positive("backoff_cap", backoff_cap))
        self.max_failures = require_int("max_failures", max_failures, minimum=1)
        self.bot_username = bot_username
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._failures = 0
        if state.load():
            logger.info("bot state read from %s: next update %s", state.path, state.offset)
        runs.load_state_dict({"runs": state.runs})
        self._save()

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` is set (a KeyboardInterrupt also ends it; the runs go on)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self.poll_once()

    def poll_once(self) -> int:
        """One ``getUpdates`` call (waiting up to ``poll_timeout``), its updates handled, ended runs reported.

        Returns the number of updates received; on a failure, waits the back-off and returns 0.
        """
        try:
            updates = self.client.get_updates(self.state.offset, self.poll_timeout)
        except BotApiError as exc:
            self._poll_failed(exc)
            return 0
        self._failures = 0
        for update in updates:
            update_id = int(update["update_id"])
            if self.state.offset is not None and update_id < self.state.offset:
                continue  # already taken (a server that resends must not make us run it twice)
            self.state.offset = update_id + 1
            self._save()  # acknowledged before it is carried out
            message = parse_update(update)
            if message is not None:
                self.handle(message)
        self.check_runs()
        return len(updates)

    def _poll_failed(self, exc: BotApiError) -> None:
        if exc.permanent:
            raise BotApiError(f"Telegram rejected the bot ({exc}); check the token (ATHERIA_TELEGRAM_TOKEN)",
                              status=exc.status) from None
        self._failures += 1
        if self._failures >= self.max_failures:
            raise BotApiError(f"giving up after {self._failures} failed getUpdates calls in a row; last: {exc}",
                              status=exc.status) from None
        if exc.retry_after is not None:
            delay = min(exc.retry_after, self.backoff_cap)
        else:
            delay = min(self.backoff_cap, self.backoff_base * 2 ** (self._failures - 1))
            delay *= 0.5 + 0.5 * self._jitter()  # jitter: many bots that lost the network do not return at once
        hint = " (another bot instance is polling with this token?)" if exc.status == 409 else ""
        logger.warning("getUpdates failed: %s%s; retry %d/%d in %.1f s", exc, hint, self._failures,
                       self.max_failures - 1, delay)
        self._sleep(delay)

    def check_runs(self) -> None:
        """Tell each run's chat when it ended by itself (finished, stopped at max_cycles, failed)."""
        ended = self.runs.reap()
        for record, text in ended:
            self.reply(record.chat_id, text)
        if ended:
            self._save()

    def _save(self) -> None:
        self.state.runs = self.runs.state_dict()["runs"]
        self.state.save()

    # ------------------------------------------------------------------ messages
    def reply(self, chat_id: int, text: str, *, pre: bool = False) -> bool:
        """Send ``text`` (``pre``: as a monospace block); retried with back-off, never raises."""
        if pre:
            body = text if len(text) <= 3900 else text[:3899] + "…"
            text, as_html = f"<pre>{html.escape(body)}</pre>", True
        else:
            as_html = False
        for attempt in range(_REPLY_ATTEMPTS):
            try:
                self.client.send_message(chat_id, text, html=as_html)
                return True
            except BotApiError as exc:
                if exc.permanent or attempt == _REPLY_ATTEMPTS - 1:
                    logger.warning("reply to chat %d not delivered: %s", chat_id, exc)
                    return False
                delay = min(exc.retry_after or self.backoff_base * 2 ** attempt, self.backoff_cap)
                self._sleep(delay)
        return False

    def handle(self, message: IncomingMessage) -> None:
        """Answer one message (or ignore it, logged, when its chat is not allowed)."""
        if message.chat_id not in self.allowed:
            word = message.text.split()[0][:40] if message.text.split() else ""
            logger.warning("ignored %r from chat %d (%s): not an allowed chat (if it is yours, allow it with "
                           "--chat-id %d)", word, message.chat_id, message.sender, message.chat_id)
            return
        try:
            command = parse_command(message.text, self.bot_username)
        except CommandError as exc:
            self.reply(message.chat_id, str(exc))
            return
        if command is None:
            if message.text.lstrip().startswith("/"):  # "/cmd@other_bot" in a group: another bot's to answer
                logger.debug("left alone: a command for another bot from chat %d", message.chat_id)
            else:
                self.reply(message.chat_id, "I only understand commands; send /help for the list.")
            return
        age = self._clock() - message.date
        if age > self.max_age:
            sent = time.strftime("%H:%M UTC", time.gmtime(message.date))
            self.reply(message.chat_id, f"not carried out: /{command.name} was sent at {sent}, {age / 60:.0f} min "
                                        "ago, while the bot was not running. Send it again if you still want it.")
            return
        logger.info("/%s from chat %d (%s)", command.name, message.chat_id, message.sender)
        try:
            self.dispatch(command, message.chat_id)
        except (CommandError, RunRefused) as exc:
            self.reply(message.chat_id, str(exc))
        except ValueError as exc:  # a configuration file the run needs is wrong
            self.reply(message.chat_id, f"refused: {exc}")
        except Exception as exc:  # one failing command must not end the bot (or go unanswered)
            logger.exception("/%s failed", command.name)
            self.reply(message.chat_id, redact(f"/{command.name} failed: {type(exc).__name__}: {exc}"))

    def dispatch(self, command: Command, chat_id: int) -> None:
        if command.name == "help":
            self.reply(chat_id, help_text())
        elif command.name in ("train_hist", "train_live"):
            kind = "hist" if command.name == "train_hist" else "live"
            record = self.runs.start(kind, command.options, chat_id)
            self._save()
            settings = ", ".join(f"{k}={v}" for k, v in record.settings.items() if k != "resumed")
            how = "continuing from its last checkpoint" if record.settings.get("resumed") else "started"
            self.reply(chat_id, f"{command.name} {how} (pid {record.pid}) in {record.run_dir}"
                                + (f": {settings}" if settings else "") + f". Output: {record.log_file}. "
                                f"/training_status to follow it, /stop_training {kind} to stop it.")
        elif command.name == "training_status":
            self.check_runs()
            self.reply(chat_id, "\n\n".join(self.runs.status(kind) for kind in KINDS), pre=True)
        elif command.name == "stop_training":
            self.stop(command, chat_id)
        else:  # every name in SPECS is handled above
            raise AssertionError(command.name)

    def stop(self, command: Command, chat_id: int) -> None:
        which = command.words[0] if command.words else "all"
        kinds = KINDS if which == "all" else (which,)
        running = [k for k in kinds if self.runs.running(k) is not None]
        if not running:
            names = " or ".join(COMMAND_OF[k] for k in kinds)
            self.reply(chat_id, f"nothing to stop: no {names} run is running.")
            self.check_runs()
            return
        kill = bool(command.options.get("kill"))
        for kind in running:
            how = "SIGKILL" if kill else "SIGTERM: it saves a checkpoint and exits"
            self.reply(chat_id, f"stopping {COMMAND_OF[kind]} ({how}); waiting up to "
                                f"{self.runs.stop_timeout:.0f} s…")
            report = self.runs.stop(kind, kill=kill)
            self._save()
            self.reply(chat_id, report.text)
