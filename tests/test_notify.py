"""Notifications: the Bot API and ntfy against a local server, rate limits, failures that never raise, no leaks."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from atheria_kit.notify import (
    MultiNotifier,
    NotificationError,
    NtfyNotifier,
    NullNotifier,
    RunNotifier,
    TelegramNotifier,
    TokenBucket,
    notifier_from_environment,
)
from tests.fakes.bot_api import TOKEN, BotApi


@pytest.fixture
def bot_api():
    api = BotApi()
    yield api
    api.close()


def _telegram(api: BotApi, timeout: float = 5.0) -> TelegramNotifier:
    return TelegramNotifier(TOKEN, "4242", base_url=api.url, timeout=timeout)


# ---------------------------------------------------------------------------------------------- senders


def test_telegram_posts_send_message_with_chat_id_and_text(bot_api):
    _telegram(bot_api).send("hello ✓")
    (req,) = bot_api.requests
    assert req["path"] == f"/bot{TOKEN}/sendMessage"
    body = json.loads(req["body"])
    assert body["chat_id"] == "4242" and body["text"] == "hello ✓"


def test_ntfy_posts_the_text_to_the_topic(bot_api):
    NtfyNotifier("my-private-topic", server=bot_api.url, token="tk_access").send("épisode 10")
    (req,) = bot_api.requests
    assert req["path"] == "/my-private-topic"
    assert req["body"].decode("utf-8") == "épisode 10"
    assert req["headers"]["Authorization"] == "Bearer tk_access"


@pytest.mark.parametrize(
    "script, error",
    [([("500",)], "HTTP 500"), ([("429", 3)], "retry after 3")],
)
def test_send_failures_raise_a_notification_error(bot_api, script, error):
    bot_api.script = script
    with pytest.raises(NotificationError, match=error):
        _telegram(bot_api).send("x")


@pytest.mark.parametrize("url", ["http://api.telegram.org", "ftp://127.0.0.1", "api.telegram.org"])
def test_plain_http_is_refused_except_on_loopback(url):
    with pytest.raises(ValueError, match="base_url"):
        TelegramNotifier(TOKEN, "1", base_url=url)


# ---------------------------------------------------------------------------------------------- rate limit


def test_token_bucket_allows_a_burst_then_refills_at_the_rate():
    now = [100.0]
    bucket = TokenBucket(rate=1.0, capacity=2, clock=lambda: now[0])
    assert bucket.try_acquire() and bucket.try_acquire()
    assert not bucket.try_acquire()
    assert bucket.wait_time() == pytest.approx(1.0)
    now[0] += 0.5
    assert not bucket.try_acquire() and bucket.wait_time() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.try_acquire()
    now[0] += 60
    assert bucket.try_acquire() and bucket.try_acquire() and not bucket.try_acquire()  # never above capacity


def test_messages_waiting_for_the_rate_limit_are_coalesced(bot_api):
    run = RunNotifier(_telegram(bot_api), burst=1, rate_per_minute=1e-6)
    run.message("first")
    bot_api.wait_requests(1)
    for i in range(2, 6):
        run.message(f"update {i}")  # the bucket is empty: these wait together
    assert run.close(timeout=10)
    assert len(bot_api.requests) == 2
    last = bot_api.texts()[1]
    assert last.startswith("[4 updates]") and all(f"update {i}" in last for i in range(2, 6))
    assert run.stats() == {"queued": 5, "sent": 2, "failed": 0, "coalesced": 3, "dropped": 0}


def test_beyond_max_pending_the_oldest_are_dropped_and_counted(bot_api):
    run = RunNotifier(_telegram(bot_api), burst=1, rate_per_minute=1e-6, max_pending=3)
    run.message("first")
    bot_api.wait_requests(1)
    for i in range(6):
        run.message(f"u{i}")
    run.close(timeout=10)
    last = bot_api.texts()[1]
    assert "u3" in last and "u5" in last and "u2" not in last
    assert "+3 earlier updates dropped" in last
    assert run.stats()["dropped"] == 3


def test_a_429_is_retried_after_the_requested_delay(bot_api):
    bot_api.script = [("429", 7)]
    slept: list[float] = []
    run = RunNotifier(_telegram(bot_api), sleep=slept.append)
    run.message("hello")
    assert run.flush(timeout=10)
    run.close()
    assert slept == [7.0]
    assert bot_api.texts() == ["hello", "hello"]
    assert run.stats()["sent"] == 1 and run.stats()["failed"] == 0


def test_server_errors_are_logged_never_raised(bot_api, caplog):
    bot_api.script = [("500",)] * 3
    slept: list[float] = []
    run = RunNotifier(_telegram(bot_api), max_retries=2, sleep=slept.append)
    with caplog.at_level(logging.INFO, logger="atheria_kit.notify"):
        run.message("hello")
        assert run.flush(timeout=10)
        run.close()
    assert len(bot_api.requests) == 3 and slept == [1.0, 2.0]  # exponential back-off between attempts
    assert run.stats()["failed"] == 1 and run.stats()["sent"] == 0
    assert "not delivered after 3 attempts" in caplog.text and "HTTP 500" in caplog.text


def test_a_hanging_server_does_not_block_the_run(bot_api, caplog):
    bot_api.script = [("hang",)]
    run = RunNotifier(_telegram(bot_api, timeout=0.3), max_retries=0)
    with caplog.at_level(logging.WARNING, logger="atheria_kit.notify"):
        t0 = time.monotonic()
        run.message("one")
        took_message = time.monotonic() - t0
        bot_api.wait_requests(1)  # the sender thread is now stuck in the request (0.3 s timeout)...
        t0 = time.monotonic()
        run.progress(10, 100, {"loss": 0.5})  # ...and the training thread still returns at once
        run.message("two")
        took_while_hung = time.monotonic() - t0
        run.close(timeout=10)
    # Far below the 0.3 s HTTP timeout: the calls only queue the message, they never wait on the request.
    assert took_message < 0.1 and took_while_hung < 0.1
    assert run.stats()["failed"] >= 1
    assert "Timeout" in caplog.text


# ---------------------------------------------------------------------------------------------- events


def test_event_messages_carry_the_key_facts(bot_api):
    wall = [1000.0]
    run = RunNotifier(_telegram(bot_api), run_name="ppo-btc", every=5, burst=10, wall_clock=lambda: wall[0])
    run.started(total=20, unit="episode")
    sent = [run.progress(e, 20, {"reward": 1.23456}) for e in range(1, 11)]
    run.emergency_save(step=7, reason="session limit", metrics={"loss": 0.25})
    wall[0] += 3725
    run.finished({"best_reward": 2.5, "episodes": 20})
    run.close(timeout=10)
    assert sent == [e % 5 == 0 for e in range(1, 11)]
    text = "\n".join(bot_api.texts())
    assert "ppo-btc started: 20 episodes planned" in text
    assert "episode 5/20 (25%) — reward=1.235" in text and "episode 10/20 (50%)" in text
    assert "emergency save at step 7 (session limit) — loss=0.25" in text
    assert "ppo-btc finished in 1h02m — best_reward=2.5, episodes=20" in text


def test_null_notifier_sends_nothing_and_starts_no_thread():
    run = RunNotifier(NullNotifier())
    run.started()
    run.finished({"x": 1})
    assert run._thread is None and run.stats()["queued"] == 0
    assert run.close()


# ---------------------------------------------------------------------------------------------- configuration


def test_nothing_configured_gives_the_null_notifier():
    assert isinstance(notifier_from_environment({}), NullNotifier)


def test_environment_variables_configure_telegram_and_ntfy(bot_api):
    env = {"ATHERIA_TELEGRAM_TOKEN": TOKEN, "ATHERIA_TELEGRAM_CHAT_ID": "77",
           "ATHERIA_TELEGRAM_BASE_URL": bot_api.url, "ATHERIA_NTFY_TOPIC": "topic-a",
           "ATHERIA_NTFY_SERVER": bot_api.url}
    notifier = notifier_from_environment(env)
    assert isinstance(notifier, MultiNotifier)
    notifier.send("both")
    assert sorted(r["path"] for r in bot_api.requests) == sorted([f"/bot{TOKEN}/sendMessage", "/topic-a"])


def test_half_configured_telegram_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="atheria_kit.notify"):
        assert isinstance(notifier_from_environment({"ATHERIA_TELEGRAM_TOKEN": TOKEN}), NullNotifier)
    assert "ATHERIA_TELEGRAM_CHAT_ID is missing" in caplog.text and TOKEN not in caplog.text


def test_colab_secrets_configure_telegram(fake_colab, bot_api):
    fake_colab.secrets.update({"ATHERIA_TELEGRAM_TOKEN": TOKEN, "ATHERIA_TELEGRAM_CHAT_ID": "5",
                               "ATHERIA_TELEGRAM_BASE_URL": bot_api.url})
    fake_colab.secret_access_denied.add("ATHERIA_NTFY_TOPIC")  # denied access counts as not configured
    notifier = notifier_from_environment({})
    assert isinstance(notifier, TelegramNotifier)
    notifier.send("from colab")
    assert bot_api.texts() == ["from colab"]


def test_kaggle_secrets_configure_ntfy(fake_kaggle_secrets, bot_api):
    fake_kaggle_secrets.update({"ATHERIA_NTFY_TOPIC": "kaggle-topic", "ATHERIA_NTFY_SERVER": bot_api.url})
    notifier = notifier_from_environment({})
    assert isinstance(notifier, NtfyNotifier)
    notifier.send("from kaggle")
    assert bot_api.requests[0]["path"] == "/kaggle-topic"


# ---------------------------------------------------------------------------------------------- no leaks


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_token_never_appears_in_logs_outputs_or_reprs(bot_api, caplog, capsys):
    bot_api.script = [("ok",), ("500",), ("429", 1), ("hang",)]
    for name in ("urllib3", "requests", "atheria_kit"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        notifiers = [_telegram(bot_api, timeout=0.3),
                     TelegramNotifier(TOKEN, "1", base_url=f"http://127.0.0.1:{_closed_port()}", timeout=0.3)]
        outputs = [repr(n) for n in notifiers]
        for notifier in notifiers:
            run = RunNotifier(notifier, max_retries=3, sleep=lambda s: None)
            run.started(total=3)
            run.flush(timeout=10)
            run.failed(RuntimeError(f"boom with {TOKEN} inside"))
            run.close(timeout=10)
            outputs += [repr(run.stats())]
        for url in (bot_api.url, f"http://127.0.0.1:{_closed_port()}"):
            try:
                TelegramNotifier(TOKEN, "1", base_url=url, timeout=0.3).send("direct")
            except NotificationError as exc:
                outputs.append(str(exc))
                assert exc.__cause__ is None and exc.__suppress_context__
    finally:
        for name in ("urllib3", "requests", "atheria_kit"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    captured = capsys.readouterr()
    everything = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records), captured.out, captured.err,
                            *outputs])
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # urllib3's URL-bearing debug lines were seen
    assert "<redacted>" in everything
    assert TOKEN not in everything
    assert "planted-SECRET" not in everything
    assert "boom with <redacted> inside" in "\n".join(bot_api.texts())  # even the messages' text is scrubbed
