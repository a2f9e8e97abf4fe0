"""Progress messages to the user's phone during long runs (Telegram Bot API, ntfy).

Why: runs go on for hours with nobody watching. A message at the start, every N units, at an emergency save and at
the end tells the user what happened. Notifying is strictly best effort: failures are logged (redacted) and never
raise into the run; sending happens on a background thread behind a token-bucket rate limit, and bursts are
coalesced into one message (or, beyond a bound, dropped with a count). Tokens and ntfy topics are secrets: they are
redacted from every log line this module, ``requests`` or ``urllib3`` writes, and never appear in ``repr``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from atheria_kit._validation import require_int, require_positive

logger = logging.getLogger(__name__)

TELEGRAM_API = "https://api.telegram.org"
NTFY_SERVER = "https://ntfy.sh"
#: Names looked up in the environment, then in Colab's ``userdata`` / Kaggle's secrets.
ENV_TELEGRAM_TOKEN = "ATHERIA_TELEGRAM_TOKEN"
ENV_TELEGRAM_CHAT_ID = "ATHERIA_TELEGRAM_CHAT_ID"
ENV_TELEGRAM_BASE_URL = "ATHERIA_TELEGRAM_BASE_URL"
ENV_NTFY_TOPIC = "ATHERIA_NTFY_TOPIC"
ENV_NTFY_SERVER = "ATHERIA_NTFY_SERVER"
ENV_NTFY_TOKEN = "ATHERIA_NTFY_TOKEN"
REDACTED = "<redacted>"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class NotificationError(Exception):
    """A message could not be delivered (its text is already redacted)."""


class RateLimited(NotificationError):
    """The service asked us to wait ``retry_after`` seconds (Telegram's 429)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------- redaction
class _RedactingFilter(logging.Filter):
    """Rewrites log records that contain a registered secret (urllib3 logs request URLs at DEBUG)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


_FILTER = _RedactingFilter()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "urllib3", "requests", __name__):
    logging.getLogger(_name).addFilter(_FILTER)


def register_secret(secret: str) -> None:
    """Have every log record and every :func:`redact` call replace ``secret`` (also URL-quoted) with
    ``<redacted>``: for tokens and topics that travel in request URLs, which ``urllib3`` logs at DEBUG."""
    if secret:
        _FILTER.secrets.update({secret, quote(secret, safe=""), quote(secret, safe="/:")})


def redact(text: str) -> str:
    """``text`` with every registered token or topic replaced by ``<redacted>``."""
    return _FILTER.redact(text)


def check_url(field: str, url: str) -> str:
    """``url`` without its trailing ``/`` if it is ``https://`` (plain ``http://`` only for localhost: a token in
    its path must not cross a network in clear); else ``ValueError`` naming ``field``."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return url.rstrip("/")
    raise ValueError(f"{field}={url!r} is invalid; expected an https:// URL (plain http only for localhost)")


# ---------------------------------------------------------------------------------------------- notifiers
class Notifier:
    """Sends one text message synchronously; raises :class:`NotificationError` (redacted) on failure."""

    enabled = True
    max_length = 4096

    def send(self, text: str) -> None:
        raise NotImplementedError


class NullNotifier(Notifier):
    """What you get when nothing is configured: accepts everything, sends nothing."""

    enabled = False

    def send(self, text: str) -> None:
        return None

    def __repr__(self) -> str:
        return "NullNotifier()"


def _post(session: requests.Session, url: str, timeout: float, **kwargs: Any) -> requests.Response:
    try:
        return session.post(url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        # the exception's text contains the URL (and so the token): redact, and drop the chain
        raise NotificationError(redact(f"{type(exc).__name__}: {exc}")) from None


class TelegramNotifier(Notifier):
    """Telegram Bot API ``sendMessage``: ``POST {base_url}/bot{token}/sendMessage`` with ``chat_id`` and ``text``."""

    def __init__(self, token: str, chat_id: str | int, *, base_url: str = TELEGRAM_API, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token is invalid; expected the bot token from @BotFather (a non-empty string)")
        if chat_id is None or str(chat_id).strip() == "":
            raise ValueError(f"chat_id={chat_id!r} is invalid; expected the numeric chat id or @channelname")
        self._token = token.strip()
        register_secret(self._token)
        self.chat_id = str(chat_id).strip()
        self.base_url = check_url("base_url", base_url)
        self.timeout = float(require_positive("timeout", timeout))
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"TelegramNotifier(token={REDACTED!r}, chat_id={self.chat_id!r}, base_url={self.base_url!r})"

    def send(self, text: str) -> None:
        url = f"{self.base_url}/bot{self._token}/sendMessage"
        payload = {"chat_id": self.chat_id, "text": text[: self.max_length], "disable_web_page_preview": True}
        response = _post(self._session, url, self.timeout, json=payload)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 429:
            retry = (body.get("parameters") or {}).get("retry_after") or response.headers.get("Retry-After") or 1
            raise RateLimited(redact(f"Telegram rate limit (HTTP 429), retry after {retry}s"), float(retry))
        if response.status_code != 200 or not body.get("ok", False):
            description = body.get("description", response.reason)
            raise NotificationError(redact(f"Telegram HTTP {response.status_code}: {description}"))


class NtfyNotifier(Notifier):
    """ntfy: ``POST {server}/{topic}`` with the text as body (optional access token as a Bearer header)."""

    def __init__(self, topic: str, *, server: str = NTFY_SERVER, token: str | None = None, title: str | None = None,
                 timeout: float = 10.0, session: requests.Session | None = None) -> None:
        if not isinstance(topic, str) or not topic.strip() or "/" in topic.strip():
            raise ValueError("topic is invalid; expected a non-empty ntfy topic name without '/'")
        self._topic = topic.strip()
        register_secret(self._topic)  # anyone who knows the topic can read it: treat it like a token
        self._token = token
        if token:
            register_secret(token)
        self.server = check_url("server", server)
        self.title = title
        self.timeout = float(require_positive("timeout", timeout))
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"NtfyNotifier(topic={REDACTED!r}, server={self.server!r})"

    def send(self, text: str) -> None:
        headers = {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.title and self.title.isascii():
            headers["Title"] = self.title
        response = _post(self._session, f"{self.server}/{self._topic}", self.timeout,
                         data=text[: self.max_length].encode("utf-8"), headers=headers)
        if response.status_code == 429:
            raise RateLimited("ntfy rate limit (HTTP 429)", float(response.headers.get("Retry-After") or 5))
        if not 200 <= response.status_code < 300:
            raise NotificationError(redact(f"ntfy HTTP {response.status_code}: {response.reason}"))


class MultiNotifier(Notifier):
    """Sends to every notifier; fails only if all of them fail."""

    def __init__(self, notifiers: list[Notifier]) -> None:
        self.notifiers = list(notifiers)

    def __repr__(self) -> str:
        return f"MultiNotifier({self.notifiers!r})"

    def send(self, text: str) -> None:
        errors = []
        for n in self.notifiers:
            try:
                n.send(text)
            except NotificationError as exc:
                errors.append(exc)
        if errors and len(errors) == len(self.notifiers):
            retry = [e.retry_after for e in errors if isinstance(e, RateLimited)]
            msg = "; ".join(str(e) for e in errors)
            raise RateLimited(msg, max(retry)) if retry else NotificationError(msg)


# ---------------------------------------------------------------------------------------------- configuration
def secret_store_lookup(name: str) -> str | None:
    """Colab's ``userdata.get`` or Kaggle's ``UserSecretsClient().get_secret``; None when absent or not allowed."""
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        try:
            return userdata.get(name)
        except Exception as exc:  # SecretNotFoundError, NotebookAccessError (access not granted to this notebook)
            if type(exc).__name__ == "NotebookAccessError":
                logger.info("Colab secret %s exists but this notebook has no access; grant it in the key panel", name)
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return UserSecretsClient().get_secret(name)
    except Exception:  # BackendError: no such secret attached to this notebook
        return None


def notifier_from_environment(environ: Mapping[str, str] | None = None, *, use_secret_stores: bool = True,
                              timeout: float = 10.0) -> Notifier:
    """Telegram and/or ntfy from ``ATHERIA_*`` variables or the platform's secret store; NullNotifier if none."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        if not value and use_secret_stores:
            value = secret_store_lookup(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    found: list[Notifier] = []
    token, chat = get(ENV_TELEGRAM_TOKEN), get(ENV_TELEGRAM_CHAT_ID)
    if token and chat:
        found.append(TelegramNotifier(token, chat, base_url=get(ENV_TELEGRAM_BASE_URL) or TELEGRAM_API,
                                      timeout=timeout))
    elif token or chat:
        missing = ENV_TELEGRAM_CHAT_ID if token else ENV_TELEGRAM_TOKEN
        logger.warning("Telegram notifications are half configured: %s is missing; not sending to Telegram", missing)
    topic = get(ENV_NTFY_TOPIC)
    if topic:
        found.append(NtfyNotifier(topic, server=get(ENV_NTFY_SERVER) or NTFY_SERVER, token=get(ENV_NTFY_TOKEN),
                                  timeout=timeout))
    if not found:
        logger.debug("no notifier configured")
        return NullNotifier()
    logger.info("notifications go to %s", ", ".join(type(n).__name__ for n in found))
    return found[0] if len(found) == 1 else MultiNotifier(found)


# ---------------------------------------------------------------------------------------------- rate limit
class TokenBucket:
    """``capacity`` messages at once, refilled at ``rate`` per second (time from an injectable clock)."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(require_positive("rate", rate))
        self.capacity = float(require_positive("capacity", capacity))
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def try_acquire(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate


# ---------------------------------------------------------------------------------------------- run events
def _fmt_metrics(metrics: Mapping[str, Any] | None, limit: int = 10) -> str:
    if not metrics:
        return ""
    parts = []
    for k, v in list(metrics.items())[:limit]:
        if isinstance(v, float):
            v = f"{v:.4g}" if math.isfinite(v) else str(v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class RunNotifier:
    """Event messages of one run, sent from a background thread behind a token bucket.

    ``started()``, ``progress(done)`` (sends every ``every`` units), ``emergency_save()``, ``finished()``,
    ``failed()`` and ``message()`` return at once and never raise. While the bucket is empty, messages wait and
    go out together as one; more than ``max_pending`` waiting drops the oldest, counted in ``stats()``.
    ``close()`` sends what is still waiting in one last message (ignoring the bucket once) and stops the thread.
    """

    def __init__(self, notifier: Notifier | None = None, *, run_name: str = "run", every: int = 10,
                 rate_per_minute: float = 20.0, burst: int = 3, max_pending: int = 20, max_retries: int = 2,
                 max_retry_after: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, sleep: Callable[[float], Any] | None = None) -> None:
        self.notifier = notifier if notifier is not None else NullNotifier()
        self.run_name = run_name
        self.every = require_int("every", every, minimum=1)
        self.max_pending = require_int("max_pending", max_pending, minimum=1)
        self.max_retries = require_int("max_retries", max_retries, minimum=0)
        self.max_retry_after = float(require_positive("max_retry_after", max_retry_after, allow_zero=True))
        self._bucket = TokenBucket(require_positive("rate_per_minute", rate_per_minute) / 60.0,
                                   require_int("burst", burst, minimum=1), clock)
        self._wall_clock = wall_clock
        self._started_at: float | None = None
        self._wake = threading.Event()
        self._sleep = sleep if sleep is not None else self._wake.wait
        self._cond = threading.Condition()
        self._pending: collections.deque[str] = collections.deque()
        self._dropped_unreported = 0
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._stats = {"queued": 0, "sent": 0, "failed": 0, "coalesced": 0, "dropped": 0}

    # ------------------------------------------------------------------ events
    def message(self, text: str) -> None:
        """Queue ``text``; returns immediately."""
        if not getattr(self.notifier, "enabled", True):
            return
        with self._cond:
            if self._closing:
                logger.debug("notifier closed; message not sent")
                return
            self._pending.append(str(text))
            self._stats["queued"] += 1
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self._dropped_unreported += 1
                self._stats["dropped"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="atheria-notify", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def started(self, total: int | None = None, unit: str = "episode", **info: Any) -> None:
        self._started_at = self._wall_clock()
        extra = f" ({_fmt_metrics(info)})" if info else ""
        target = f": {total} {unit}s planned" if total else ""
        self.message(f"▶ {self.run_name} started{target}{extra}")

    def progress(self, done: int, total: int | None = None, metrics: Mapping[str, Any] | None = None,
                 unit: str = "episode", *, force: bool = False) -> bool:
        """Send a progress message when ``done`` is a multiple of ``every`` (or ``force``); returns whether it did."""
        if not force and (done <= 0 or done % self.every):
            return False
        pct = f" ({100.0 * done / total:.0f}%)" if total else ""
        of = f"/{total}" if total else ""
        m = _fmt_metrics(metrics)
        self.message(f"⏳ {self.run_name}: {unit} {done}{of}{pct}" + (f" — {m}" if m else ""))
        return True

    def emergency_save(self, step: int, reason: str = "", metrics: Mapping[str, Any] | None = None) -> None:
        why = f" ({reason})" if reason else ""
        m = _fmt_metrics(metrics)
        self.message(f"⚠ {self.run_name}: emergency save at step {step}{why}" + (f" — {m}" if m else "")
                     + ". Run the notebook again to resume.")

    def finished(self, metrics: Mapping[str, Any] | None = None, status: str = "finished") -> None:
        took = f" in {_fmt_duration(self._wall_clock() - self._started_at)}" if self._started_at is not None else ""
        m = _fmt_metrics(metrics)
        self.message(f"✅ {self.run_name} {status}{took}" + (f" — {m}" if m else ""))

    def failed(self, error: BaseException | str) -> None:
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        self.message(f"❌ {self.run_name} failed: {redact(text)[:500]}")

    def stats(self) -> dict[str, int]:
        """Counts: queued, sent (requests that succeeded), failed, coalesced, dropped."""
        with self._cond:
            return dict(self._stats)

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout``) until nothing is waiting or in flight; the rate limit still applies."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Send what is left as one message and stop the thread; returns False if it had not finished in time."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> RunNotifier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
            while not self._closing:  # wait for a token; messages that arrive meanwhile join this batch
                wait = self._bucket.wait_time()
                if wait <= 0:
                    self._bucket.try_acquire()
                    break
                self._sleep(wait)
            with self._cond:
                batch = list(self._pending)
                self._pending.clear()
                dropped, self._dropped_unreported = self._dropped_unreported, 0
                self._busy = True
                if len(batch) > 1:
                    self._stats["coalesced"] += len(batch) - 1
            try:
                self._deliver(self._compose(batch, dropped))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _compose(self, batch: list[str], dropped: int) -> str:
        batch = [redact(t) for t in batch]  # a metric or error text must not carry a token out either
        if len(batch) == 1 and not dropped:
            return batch[0]
        lines = [f"[{len(batch)} updates]"] + batch
        if dropped:
            lines.append(f"(+{dropped} earlier updates dropped by the rate limit)")
        text = "\n\n".join(lines)
        limit = self.notifier.max_length
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def _deliver(self, text: str) -> None:
        for attempt in range(self.max_retries + 1):
            try:
                self.notifier.send(text)
            except RateLimited as exc:
                delay = min(exc.retry_after, self.max_retry_after)
                reason = str(exc)
            except NotificationError as exc:
                delay = float(2 ** attempt)
                reason = str(exc)
            except Exception as exc:  # a bug in a custom notifier must not reach the run either
                delay = float(2 ** attempt)
                reason = redact(f"{type(exc).__name__}: {exc}")
            else:
                with self._cond:
                    self._stats["sent"] += 1
                return
            if attempt < self.max_retries:
                logger.info("notification attempt %d failed (%s); retrying in %.3gs", attempt + 1, redact(reason), delay)
                self._sleep(delay)
        with self._cond:
            self._stats["failed"] += 1
        logger.warning("notification not delivered after %d attempts: %s", self.max_retries + 1, redact(reason))
