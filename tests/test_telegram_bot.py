"""The Telegram bot against the local Bot-API stand-in: commands, allowed chats, validation, one run of each kind,
a clean stop of a real ``atheria replay`` with a verified checkpoint, restart without replaying old commands,
bounded retries, and the token in no file, log or reply."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from atheria_kit.bot.api import BotApiClient, BotApiError, parse_update
from atheria_kit.bot.app import TelegramBot
from atheria_kit.bot.commands import Command, parse_command
from atheria_kit.bot.runs import RunManager, available_commands
from atheria_kit.bot.state import BotState
from atheria_kit.checkpoint import CheckpointManager
from atheria_kit.runlog import read_progress
from tests._paths import REPO_ROOT
from tests.fakes.bot_api import TOKEN, BotApi

CHAT = 4242
STRANGER = 666


@pytest.fixture
def api():
    server = BotApi()
    yield server
    server.close()


@pytest.fixture
def replay_yaml(tmp_path: Path) -> Path:
    """Cycles of 100 bars over the shipped sample: 132 cycles, so a run is still going when it is stopped."""
    path = tmp_path / "base.yaml"
    path.write_text("historical:\n  cycle_size_bars: 100\n  update_every_bars: 25\n")
    return path


def make_bot(tmp_path: Path, api: BotApi, *, replay_yaml: Path | None = None, commands=None, sleeps=None,
             live_args=(), **kwargs) -> TelegramBot:
    runs = RunManager(tmp_path / "runs", replay_config=replay_yaml, stop_timeout=60, commands=commands,
                      live_args=live_args, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    client = BotApiClient(TOKEN, base_url=api.url, timeout=5)
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return TelegramBot(client, [CHAT], runs, BotState(tmp_path / "runs" / "state.json"), poll_timeout=0,
                       sleep=record, jitter=lambda: 1.0, **kwargs)


def ask(api: BotApi, bot: TelegramBot, text: str, chat: int = CHAT) -> list[str]:
    """Send ``text`` from ``chat``, let the bot take it, return the replies it sent for it."""
    before = len(api.replies())
    api.push(chat, text)
    assert bot.poll_once() >= 1
    return api.replies()[before:]


def wait_until(condition, timeout: float = 60.0, what: str = "") -> None:
    """Wait for a file event the test names (polled every 20 ms, bounded), not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def assert_no_token(*places: Path | str) -> None:
    for place in places:
        if isinstance(place, Path):
            for f in [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]:
                assert TOKEN.encode() not in f.read_bytes(), f"the token is in {f}"
        else:
            assert TOKEN not in place


# ---------------------------------------------------------------------------------------------- parsing


def test_options_accept_both_spellings_equals_and_a_phones_long_dash():
    assert parse_command("/train_live —cycle_minutes 60 --update-every=10") == Command(
        "train_live", {"cycle_minutes": 60, "update_every": 10})
    assert parse_command("/train_hist@atheria_bot --cycle-size 200 --symbols btcusdt,ethusdt --restart",
                         "atheria_bot") == Command(
        "train_hist", {"cycle_size": 200, "symbols": ("BTCUSDT", "ETHUSDT"), "restart": True})
    assert parse_command("/stop_training live --kill") == Command("stop_training", {"kill": True}, ("live",))
    assert parse_command("/training_status@other_bot", "atheria_bot") is None  # a group command for another bot
    assert parse_command("hello") is None


def test_only_text_messages_are_read_from_updates():
    text = {"update_id": 5, "message": {"message_id": 1, "date": 100, "chat": {"id": -1001, "type": "group"},
                                        "from": {"id": 7, "username": "ana"}, "text": "/help"}}
    photo = {"update_id": 6, "message": {"message_id": 2, "date": 100, "chat": {"id": 1, "type": "private"},
                                         "photo": []}}
    edit = {"update_id": 7, "edited_message": text["message"]}
    parsed = parse_update(text)
    assert (parsed.update_id, parsed.chat_id, parsed.sender, parsed.text) == (5, -1001, "@ana", "/help")
    assert parse_update(photo) is None and parse_update(edit) is None


# ---------------------------------------------------------------------------------------------- commands


def test_help_and_start_list_every_command(tmp_path, api):
    bot = make_bot(tmp_path, api)
    for text in ("/help", "/start"):
        (reply,) = ask(api, bot, text)
        for usage in ("/train_hist [--cycle_size N --update_every N", "/train_live [--cycle_minutes N "
                      "--update_every N", "/training_status", "/stop_training [hist|live|all]"):
            assert usage in reply


def test_a_command_for_another_bot_is_left_alone_and_plain_text_gets_a_hint(tmp_path, api):
    bot = make_bot(tmp_path, api, bot_username="atheria_test_bot")
    assert ask(api, bot, "/training_status@another_bot") == []  # in a group: the other bot answers it
    assert ask(api, bot, "hello") == ["I only understand commands; send /help for the list."]
    (status,) = ask(api, bot, "/training_status@atheria_test_bot")
    assert "train_hist: no run yet" in status


def test_a_strangers_chat_gets_no_reply_and_is_logged_without_the_token(tmp_path, api, caplog):
    caplog.set_level(logging.DEBUG)
    bot = make_bot(tmp_path, api)
    api.push(STRANGER, "/train_hist --cycle_size 100", username="mallory")
    api.push(STRANGER, "/stop_training")
    assert bot.poll_once() == 2
    assert api.replies() == []
    assert not (tmp_path / "runs" / "hist").exists() and bot.runs.records == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("chat 666 (@mallory)" in w and "--chat-id 666" in w and "'/train_hist'" in w for w in warnings)
    assert_no_token(caplog.text, tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("/train_hist --cycle_size abc", "--cycle_size='abc' is invalid; expected an integer >= 1"),
    ("/train_hist --cycle_size 0", "--cycle_size='0' is invalid; expected an integer >= 1"),
    ("/train_live --cycle_minutes -5", "--cycle_minutes='-5' is invalid; expected an integer >= 1"),
    ("/train_live --update_every", "--update_every has no value; expected an integer >= 1"),
    ("/train_hist --speed 3", "/train_hist: unknown option --speed; expected one of: --cycle_size, --update_every"),
    ("/train_hist --cycle_size 50 --update_every 100",
     "--update_every=100 is invalid; expected an integer <= the cycle size (50 bars)"),
    ("/train_live --cycle_minutes 1 --update_every 120",
     "--update_every=120 is invalid; expected seconds <= the cycle (1 minutes = 60 s)"),
    ("/train_live --update_every 3600",  # the default cycle is 30 minutes: checked before the run starts
     "refused: the live settings are invalid: update_every_seconds=3600 is invalid; expected at most a cycle (1800 s)"),
    ("/train_live --symbols BTC-USD", "--symbols='BTC-USD' is invalid; expected symbols separated by commas"),
    ("/train_hist --symbols DOGEUSDT", "no shipped sample DOGEUSDT_1h.csv.gz"),
    ("/stop_training everything", "/stop_training: unexpected 'everything'; expected one of hist, live, all"),
    ("/train_hist --max_cycles 2 --max_cycles 3", "--max_cycles is given twice"),
    ("/frobnicate", "unknown command /frobnicate; send /help"),
])
def test_bad_arguments_are_answered_and_nothing_starts(tmp_path, api, text, expected):
    bot = make_bot(tmp_path, api)
    (reply,) = ask(api, bot, text)
    assert expected in reply
    assert bot.runs.records == {} and not list((tmp_path / "runs").glob("*/*.log"))


def test_train_live_without_a_live_command_is_refused_and_says_why(tmp_path, api):
    bot = make_bot(tmp_path, api, commands={"replay", "monitor"})
    (reply,) = ask(api, bot, "/train_live --cycle_minutes 60 --update_every 10")
    assert reply == ("refused: this installation has no `atheria live` command, so /train_live cannot start a run.")
    assert bot.runs.records == {}
    (status,) = ask(api, bot, "/training_status")
    assert "train_live: no run yet (no `atheria live` here)" in status


def test_stale_commands_are_answered_but_not_carried_out(tmp_path, api):
    bot = make_bot(tmp_path, api, max_age=600)
    api.push(CHAT, "/train_hist", date=time.time() - 3600)
    bot.poll_once()
    (reply,) = api.replies()
    assert reply.startswith("not carried out: /train_hist was sent at ") and "60 min ago" in reply
    assert bot.runs.records == {}


# ---------------------------------------------------------------------------------------------- runs


def test_one_replay_at_a_time_and_stop_leaves_a_verified_checkpoint(tmp_path, api, caplog, replay_yaml):
    caplog.set_level(logging.DEBUG)
    bot = make_bot(tmp_path, api, replay_yaml=replay_yaml)
    run_dir = tmp_path / "runs" / "hist"
    (started,) = ask(api, bot, "/train_hist")
    pid = bot.runs.records["hist"].pid
    assert started.startswith(f"train_hist started (pid {pid}) in {run_dir}: cycle_size_bars=100, "
                              "update_every_bars=25, symbols=['BTCUSDT', 'ETHUSDT', 'BNBUSDT']")
    assert psutil.Process(pid).cmdline()[1:] == ["-m", "atheria_kit", "replay", "--config",
                                                 str(run_dir / "replay_config.yaml"), "--out", str(run_dir)]

    (refused,) = ask(api, bot, "/train_hist --cycle_size 100")
    assert refused.startswith(f"refused: a train_hist run is already running (pid {pid}, started ")
    assert "send /stop_training hist first" in refused
    assert [p.pid for p in psutil.Process().children() if "replay" in p.cmdline()] == [pid]

    def first_cycle_logged() -> bool:  # the run log records a cycle after its checkpoint is saved
        return (run_dir / "progress.json").is_file() and (read_progress(run_dir) or {}).get("done", 0) >= 1

    wait_until(first_cycle_logged, what="the first cycle's checkpoint")
    (status,) = ask(api, bot, "/training_status")
    assert f"train_hist: running (pid {pid}" in status and "[replay]" in status and "/132 cycles (" in status
    assert "train_live: no run yet" in status

    replies = ask(api, bot, "/stop_training")
    assert replies[0] == "stopping train_hist (SIGTERM: it saves a checkpoint and exits); waiting up to 60 s…"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    manager = CheckpointManager(run_dir / "checkpoints", monitor="equity", mode="max", async_save=False)
    saved = manager.latest().step
    manager.close()
    progress = read_progress(run_dir)
    assert progress["status"] == "stopped" and progress["done"] == saved >= 1
    assert replies[1].startswith("train_hist stopped cleanly after ")
    assert f"checkpoint cycle {saved} saved and verified (equity " in replies[1]
    assert f"Run log: stopped at cycle {saved}/132." in replies[1]  # 13,147 bars in cycles of 100
    assert replies[1].endswith("/train_hist continues from it.")
    assert bot.runs.records == {}
    (idle,) = ask(api, bot, "/stop_training hist")
    assert idle == "nothing to stop: no train_hist run is running."
    assert_no_token(tmp_path, caplog.text, "\n".join(api.replies()))


@pytest.mark.slow
def test_a_replay_that_ends_is_reported_and_continues_only_with_its_own_settings(tmp_path, api, replay_yaml):
    bot = make_bot(tmp_path, api, replay_yaml=replay_yaml)
    for cycle in (1, 2):
        (started,) = ask(api, bot, "/train_hist --max_cycles 1")
        how = "started" if cycle == 1 else "continuing from its last checkpoint"
        assert started.startswith(f"train_hist {how} (pid ")
        assert bot.runs.wait("hist", 120)
        bot.poll_once()  # reports the run that ended by itself to the chat that started it
        ended = api.replies(CHAT)[-1]
        assert ended.startswith("train_hist ended after ") and ": stopped." in ended
        assert f"Run log: stopped at cycle {cycle}/132. checkpoint cycle {cycle} saved and verified" in ended
        if cycle == 1:
            (changed,) = ask(api, bot, "/train_hist --cycle_size 200")
            assert changed.startswith(f"refused: the replay in {tmp_path / 'runs' / 'hist'} continues only with "
                                      "its own settings (cycle_size_bars=100 -> 200)")
            assert "add --restart to start over" in changed
    ask(api, bot, "/train_hist")
    pid = bot.runs.records["hist"].pid
    replies = ask(api, bot, "/stop_training hist --kill")
    assert replies[0] == "stopping train_hist (SIGKILL); waiting up to 60 s…"
    assert not psutil.pid_exists(pid)  # waited for (reaped) before the reply
    assert replies[1].startswith("train_hist killed (SIGKILL) after ")
    assert "checkpoint cycle 2 saved and verified" in replies[1] or "checkpoint cycle 3 saved and verified" in \
        replies[1]  # the kill may land before or after the third run's first cycle


def test_a_run_that_fails_is_reported_with_the_end_of_its_output(tmp_path, api):
    config = tmp_path / "missing.yaml"
    config.write_text('historical:\n  data: "/nonexistent/{symbol}_1h.csv"\n')
    bot = make_bot(tmp_path, api, replay_yaml=config)
    ask(api, bot, "/train_hist")
    assert bot.runs.wait("hist", 120)  # it fails at once (exit code 2, reported below)
    log = tmp_path / "runs" / "hist" / "train_hist.log"
    # A bot started after the run ended (the first one died meanwhile) reports it from the state file...
    restarted = make_bot(tmp_path, api, replay_yaml=config)
    restarted.poll_once()
    # ...and so does the bot that started it, which also knows the exit status of its child.
    bot.poll_once()
    while_away, failed = api.replies(CHAT)[-2:]
    assert while_away.startswith("train_hist ended after ") and ": FAILED." in while_away
    assert failed.startswith("train_hist ended after ") and ": FAILED (exit code 2)." in failed
    for report in (while_away, failed):
        assert f"Last lines of {log}:" in report
        assert "data['BTCUSDT']='/nonexistent/BTCUSDT_1h.csv' is invalid; no such file" in report
    assert restarted.runs.records == {} and bot.runs.records == {}


def test_a_restarted_bot_neither_reruns_old_commands_nor_loses_its_run(tmp_path, api, replay_yaml):
    first = make_bot(tmp_path, api, replay_yaml=replay_yaml)
    taken = api.push(CHAT, "/train_hist")
    first.poll_once()
    pid = first.runs.records["hist"].pid
    assert api.pending_update_ids() == [taken]  # the bot stops before its next getUpdates confirms it
    try:
        second = make_bot(tmp_path, api, replay_yaml=replay_yaml)  # same state file: a restarted bot
        assert second.runs.running("hist").pid == pid  # found again by pid and process start time
        (status,) = ask(api, second, "/training_status")
        assert api.polls[-1]["offset"] == taken + 1  # it asked only for updates after the one it took
        assert taken not in api.pending_update_ids()  # which confirmed the old command at Telegram
        assert f"train_hist: running (pid {pid}" in status
        assert len([r for r in api.replies() if r.startswith("train_hist started")]) == 1
        (stopped,) = ask(api, second, "/stop_training hist")[1:]
        assert stopped.startswith("train_hist stopped cleanly")  # a run it did not start itself
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- network


def test_network_errors_are_retried_with_growing_back_off_and_a_rate_limit_is_obeyed(tmp_path, api):
    sleeps: list[float] = []
    bot = make_bot(tmp_path, api, sleeps=sleeps)
    api.poll_script = [("500",), ("drop",), ("500",), ("429", 7)]
    api.push(CHAT, "/help")
    assert [bot.poll_once() for _ in range(5)] == [0, 0, 0, 0, 1]
    assert sleeps == [1.0, 2.0, 4.0, 7.0]  # 1, 2, 4 s (jitter pinned at its top), then Telegram's retry_after
    assert len(api.replies()) == 1


def test_a_second_bot_polling_with_the_same_token_is_named_in_the_log(tmp_path, api, caplog):
    sleeps: list[float] = []
    first = make_bot(tmp_path / "a", api, sleeps=sleeps)
    first.poll_timeout = 20
    second = make_bot(tmp_path / "b", api)
    waiting = threading.Thread(target=first.poll_once)
    waiting.start()
    api.wait_polls(1)  # the first bot's long poll is open
    second.poll_once()  # Telegram ends the older poll with 409 Conflict
    waiting.join(30)
    assert not waiting.is_alive() and sleeps == [1.0]
    assert "HTTP 409: Conflict: terminated by other getUpdates request" in caplog.text
    assert "another bot instance is polling with this token?" in caplog.text


def test_the_loop_gives_up_after_max_failures_and_at_once_on_a_rejected_token(tmp_path, api):
    bot = make_bot(tmp_path, api, max_failures=3)
    api.poll_script = [("500",)] * 3
    bot.poll_once()
    bot.poll_once()
    with pytest.raises(BotApiError, match="giving up after 3 failed getUpdates calls in a row"):
        bot.poll_once()
    wrong = "111:wrong-token"
    runs = RunManager(tmp_path / "r2", commands=set())
    stranger = TelegramBot(BotApiClient(wrong, base_url=api.url), [CHAT], runs, BotState(tmp_path / "s.json"),
                           poll_timeout=0)
    with pytest.raises(BotApiError, match="Telegram rejected the bot .*HTTP 401: Unauthorized") as err:
        stranger.poll_once()
    assert wrong not in str(err.value)


def test_the_command_line_bot_answers_stops_on_sigterm_and_writes_no_token(tmp_path, api):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ATHERIA_TELEGRAM_TOKEN": TOKEN,
           "ATHERIA_TELEGRAM_BASE_URL": api.url, "ATHERIA_TELEGRAM_CHAT_ID": f"{CHAT}, 77"}
    runs_dir = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "atheria_kit.bot", "--runs-dir", str(runs_dir),
                             "--poll-timeout", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        api.push(77, "/help@atheria_test_bot")
        api.wait_for_reply(lambda t: t.startswith("Commands:"), timeout=60)
        api.push(CHAT, "/training_status@another_bot")  # in a group, for another bot: left alone
        last = api.push(CHAT, "/training_status")
        status = api.wait_for_reply(lambda t: "train_hist: no run yet" in t, timeout=60)
        n = len(api.polls)
        api.wait_polls(n + 1)  # it is waiting in its next long poll
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"bot @atheria_test_bot polling {api.url} for chats 77, {CHAT}" in out
    assert out.rstrip().endswith("bot stopped")
    assert len([t for t in api.replies() if "train_hist: no run yet" in t]) == 1
    assert not [t for t in api.replies() if "I only understand" in t]  # the other bot's command got no answer
    assert "<pre>" in api.sent()[-1]["text"] and api.sent()[-1]["parse_mode"] == "HTML" and status
    state = BotState(runs_dir / "telegram_bot_state.json")
    assert state.load() and state.offset == last + 1
    assert_no_token(runs_dir, out)


def test_the_command_line_refuses_to_start_without_a_valid_token_or_chats(tmp_path, api):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATHERIA_TELEGRAM")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    cmd = [sys.executable, "-m", "atheria_kit.bot", "--runs-dir", str(tmp_path)]
    no_token = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2
    assert "ATHERIA_TELEGRAM_TOKEN is not set; expected the bot token from @BotFather" in no_token.stderr
    bad_chat = subprocess.run(cmd + ["--chat-id", "@me"], env={**env, "ATHERIA_TELEGRAM_TOKEN": TOKEN},
                              capture_output=True, text=True, timeout=60)
    assert bad_chat.returncode == 2 and "--chat-id='@me' is invalid; expected a numeric Telegram chat id" in \
        bad_chat.stderr
    assert_no_token(bad_chat.stderr + bad_chat.stdout)
    wrong = "111:not-the-bots-token"
    rejected = subprocess.run(cmd + ["--chat-id", "1"], env={**env, "ATHERIA_TELEGRAM_TOKEN": wrong,
                                                             "ATHERIA_TELEGRAM_BASE_URL": api.url},
                              capture_output=True, text=True, timeout=60)
    assert rejected.returncode == 1
    assert "Telegram rejected the token (getMe: HTTP 401: Unauthorized); check ATHERIA_TELEGRAM_TOKEN" in \
        rejected.stderr
    assert wrong not in rejected.stderr + rejected.stdout


@pytest.mark.skipif("live" not in available_commands(), reason="this build has no `atheria live`")
def test_train_live_runs_the_real_live_command_on_the_exchange_stand_in_and_stops_it_cleanly(tmp_path, api):
    from tests.fakes.binance_exchange import FakeBinance, real_bars

    frames, interval = real_bars(["BTCUSDT", "ETHUSDT"], 700)
    with FakeBinance(frames, interval, position=620) as exchange:
        bot = make_bot(tmp_path, api, live_args=["--ws-url", exchange.ws_url, "--rest-url", exchange.rest_url])
        run_dir = tmp_path / "runs" / "live"
        (started,) = ask(api, bot, "/train_live --cycle_minutes 5 --update_every 60 --symbols BTCUSDT,ETHUSDT")
        record = bot.runs.records["live"]
        try:
            assert started.startswith(f"train_live started (pid {record.pid}) in {run_dir}: cycle_minutes=5, "
                                      "update_every=60, symbols=['BTCUSDT', 'ETHUSDT']")
            assert psutil.Process(record.pid).cmdline()[1:] == [
                "-m", "atheria_kit", "live", "--output-dir", str(run_dir), "--cycle-minutes", "5",
                "--update-every", "60", "--symbols", "BTCUSDT,ETHUSDT", "--ws-url", exchange.ws_url,
                "--rest-url", exchange.rest_url]
            (refused,) = ask(api, bot, "/train_live")
            assert refused.startswith(f"refused: a train_live run is already running (pid {record.pid}")

            exchange.wait_connections(1, timeout=60)
            exchange.publish(5)  # one cycle of 5 one-minute bars closes

            def first_cycle_logged() -> bool:
                return (run_dir / "progress.json").is_file() and (read_progress(run_dir) or {}).get("done", 0) >= 1

            wait_until(first_cycle_logged, what="the live run's first cycle")
            exchange.publish(2)  # two more bars into cycle 2
            (status,) = ask(api, bot, "/training_status")
            assert f"train_live: running (pid {record.pid}" in status and "cycles (" in status

            replies = ask(api, bot, "/stop_training live")
        finally:
            if psutil.pid_exists(record.pid):
                os.kill(record.pid, signal.SIGKILL)
    assert replies[0].startswith("stopping train_live (SIGTERM")
    manager = CheckpointManager(run_dir / "checkpoints", monitor="equity", mode="max", async_save=False)
    saved = manager.latest().step
    manager.close()
    assert read_progress(run_dir)["status"] == "stopped" and saved >= 1
    assert replies[1].startswith("train_live stopped cleanly after ")
    assert f"checkpoint cycle {saved} saved and verified" in replies[1]
    assert replies[1].endswith("/train_live continues from it.")
    assert_no_token(tmp_path, "\n".join(api.replies()))
