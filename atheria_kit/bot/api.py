"""Telegram's Bot API over ``requests``: ``getUpdates`` long polling and ``sendMessage``, token never exposed.

The token is part of every request URL (``{base_url}/bot{token}/{method}``), so it is registered with the
notifier's redaction filter (``urllib3`` logs request URLs at DEBUG) and every error text is redacted before it
is raised; exceptions drop their chain, whose text would carry the URL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests

from atheria_kit._validation import require_positive
from atheria_kit.notify import REDACTED, TELEGRAM_API, check_url, redact, register_secret

logger = logging.getLogger(__name__)

#: Telegram's limit on a message's text.
MAX_MESSAGE_LENGTH = 4096


class BotApiError(Exception):
    """A Bot API call failed; the text is redacted.

    ``status`` is the HTTP status (None when no answer came), ``retry_after`` Telegram's wait for 429, and
    ``permanent`` says that retrying cannot help (the token was rejected).
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def permanent(self) -> bool:
        return self.status in (401, 403, 404)


@dataclass(frozen=True)
class IncomingMessage:
    """The parts of a Telegram ``Update`` with a text message that the bot reads."""

    update_id: int
    chat_id: int
    sender: str  # @username, or the user id when there is none
    text: str
    date: float  # Unix time the message was sent (Telegram's clock)


def parse_update(update: dict[str, Any]) -> IncomingMessage | None:
    """The text message of an ``Update``, or None for anything else (edits, joins, photos, callbacks)."""
    message = update.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return None
    chat = message.get("chat") or {}
    sender = message.get("from") or {}
    if not isinstance(chat.get("id"), int):
        return None
    who = f"@{sender['username']}" if sender.get("username") else f"user {sender.get('id', '?')}"
    return IncomingMessage(int(update["update_id"]), chat["id"], who, message["text"], float(message.get("date", 0)))


class BotApiClient:
    """Calls ``{base_url}/bot{token}/{method}`` with a JSON body; raises :class:`BotApiError` (redacted)."""

    def __init__(self, token: str, *, base_url: str = TELEGRAM_API, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token is invalid; expected the bot token from @BotFather (a non-empty string)")
        self._token = token.strip()
        register_secret(self._token)
        self.base_url = check_url("base_url", base_url)
        self.timeout = float(require_positive("timeout", timeout))
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"BotApiClient(token={REDACTED!r}, base_url={self.base_url!r})"

    def call(self, method: str, payload: dict[str, Any], *, timeout: float | None = None) -> Any:
        """One API call; returns its ``result``."""
        url = f"{self.base_url}/bot{self._token}/{method}"
        try:
            response = self._session.post(url, json=payload, timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            # the exception's text contains the URL (and so the token): redact, and drop the chain
            raise BotApiError(redact(f"{method}: {type(exc).__name__}: {exc}")) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code == 200 and body.get("ok"):
            return body.get("result")
        description = body.get("description") or response.reason
        retry_after = None
        if response.status_code == 429:
            retry_after = float((body.get("parameters") or {}).get("retry_after")
                                or response.headers.get("Retry-After") or 1)
        raise BotApiError(redact(f"{method}: HTTP {response.status_code}: {description}"),
                          status=response.status_code, retry_after=retry_after)

    def get_updates(self, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        """Long poll: waits up to ``timeout`` s for updates from ``offset`` on (confirming those below it)."""
        payload: dict[str, Any] = {"timeout": int(timeout), "allowed_updates": ["message"]}
        if offset is not None:
            payload["offset"] = int(offset)
        result = self.call("getUpdates", payload, timeout=timeout + self.timeout)
        return list(result or [])

    def send_message(self, chat_id: int | str, text: str, *, html: bool = False) -> None:
        """Send ``text`` (cut to Telegram's 4096 characters); ``html`` sends it with ``parse_mode=HTML``."""
        if len(text) > MAX_MESSAGE_LENGTH:
            text = text[: MAX_MESSAGE_LENGTH - 1] + "…"
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text, "disable_web_page_preview": True}
        if html:
            payload["parse_mode"] = "HTML"
        self.call("sendMessage", payload)
