"""The live run over the Binance stand-in: same trades and KPIs as the historical replay of the same bars, a dropped
connection mid-run, a clean stop and a SIGKILL of the real `atheria live` with resume, catch-up skipped by a setting,
and `atheria monitor` reading the run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from atheria_kit.live_trading.config import LiveConfig
from atheria_kit.live_trading.engine import LiveRun
from atheria_kit.market.ohlcv import load_ohlcv
from atheria_kit.replay.engine import ReplayEngine
from atheria_kit.replay.feed import HistoricalFeed
from tests.fakes.binance_exchange import FakeBinance, real_bars
from tests.helpers import free_port, read_until_line

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
N_BARS = 240
SETTINGS = {"symbols": list(SYMBOLS), "cycle_minutes": 60, "update_every_seconds": 300, "max_cycles": 4,
            "warmup_bars": 0, "lookback_bars": 200}
# Deterministic artifacts; live_status.json, the run log, live_feed.json and checkpoints/ hold wall-clock values.
COMPARED = ("cycle_*.json", "strategies_cycle_*.json", "*_trades.jsonl", "*_penalties.jsonl", "updates.jsonl")
TIME = "/api/v3/time"


def _artifacts(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for pattern in COMPARED for p in sorted(run_dir.glob(pattern))}


@pytest.fixture(scope="module")
def bars():
    return real_bars(list(SYMBOLS), N_BARS)


def _config(fake: FakeBinance, out: Path, **kw) -> LiveConfig:
    return LiveConfig.from_mapping({"live": {**SETTINGS, **kw}}, output_dir=str(out), websocket_url=fake.ws_url,
                                   rest_url=fake.rest_url, interval=fake.interval)


@pytest.fixture(scope="module")
def reference(bars, tmp_path_factory) -> Path:
    """The historical replay of the same bars with the same engine settings."""
    frames, interval = bars
    out = tmp_path_factory.mktemp("replay")
    cfg = LiveConfig.from_mapping({"live": SETTINGS}, interval=interval)
    replay_cfg = dataclasses.replace(cfg.replay_config(), out_dir=str(out))
    ReplayEngine(replay_cfg, feed=HistoricalFeed(frames), out_dir=out).run(resume=False)
    assert (out / "cycle_4.json").is_file()
    return out


def _start(live: LiveRun, **kw) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def go() -> None:
        try:
            result.update(live.run(**kw))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            result["error"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    return thread, result


def _finish(thread: threading.Thread, result: dict) -> dict:
    thread.join(120)
    assert not thread.is_alive(), "the live run did not end"
    if "error" in result:
        raise result["error"]
    return result


def _assert_history_complete(out: Path, frames: dict[str, pd.DataFrame], n: int) -> None:
    for sym in SYMBOLS:
        recorded = load_ohlcv(out / "history" / f"{sym}_1m.csv")
        pd.testing.assert_frame_equal(recorded, frames[sym].iloc[:n], check_freq=False, check_names=False)


def test_live_run_trades_like_the_replay_of_the_same_bars(bars, reference, tmp_path):
    frames, interval = bars
    with FakeBinance(frames, interval) as fake:
        live = LiveRun(_config(fake, tmp_path / "live"))
        thread, result = _start(live, resume=False)
        fake.wait_requests(TIME, 2)
        for i in range(0, N_BARS, 20):
            fake.publish(10)
            fake.send_closed("ETHUSDT", i)  # a stale duplicate
            fake.publish(10, reverse=True)  # ten bars whose closed klines come newest first
        result = _finish(thread, result)
    out = tmp_path / "live"
    assert result["status"] == "finished" and result["cycle"] == 4 and result["bars_done"] == N_BARS
    assert _artifacts(out) == _artifacts(reference)
    assert result["trades"] == json.loads((reference / "cycle_4.json").read_text())["trades"]
    assert result["feed"]["duplicates"] >= N_BARS // 20 and result["feed"]["open_klines"] >= N_BARS
    _assert_history_complete(out, frames, N_BARS)
    status = json.loads((out / "live_status.json").read_text())
    assert status["status"] == "finished" and status["bars_done"] == N_BARS


def test_dropped_connection_mid_run_leaves_no_gap_and_no_duplicate(bars, reference, tmp_path):
    frames, interval = bars
    gate = threading.Event()
    with FakeBinance(frames, interval) as fake:
        live = LiveRun(_config(fake, tmp_path / "live"), sleep=lambda s: gate.wait(30))
        thread, result = _start(live, resume=False)
        fake.wait_requests(TIME, 2)
        fake.publish(90)  # into cycle 2
        fake.refuse(True)
        fake.drop()
        fake.wait_refused(1)
        fake.publish(40)  # closed while the run is cut off
        fake.refuse(False)
        gate.set()
        fake.wait_connections(2)
        fake.publish(N_BARS - 130)
        result = _finish(thread, result)
        backfill_starts = [int(q["startTime"]) for p, q in fake.rest_log if p.endswith("klines")]
    out = tmp_path / "live"
    assert result["status"] == "finished" and result["feed"]["dropped"] == 1
    assert fake.open_ms(90) in backfill_starts and result["feed"]["rest_bars"] >= 2 * 40
    _assert_history_complete(out, frames, N_BARS)
    assert _artifacts(out) == _artifacts(reference)
    feed_status = json.loads((out / "live_feed.json").read_text())
    assert feed_status["dropped"] == 1 and feed_status["bars_handed_out"] == N_BARS


def test_bars_closed_while_down_can_be_skipped_by_a_setting(bars, tmp_path):
    frames, interval = bars
    out = tmp_path / "live"
    lines: list[str] = []
    with FakeBinance(frames, interval) as fake:
        first = LiveRun(_config(fake, out, max_cycles=1))  # ends after cycle 1 (60 bars)
        thread, result = _start(first, resume=False)
        fake.wait_requests(TIME, 2)
        fake.publish(60)
        assert _finish(thread, result)["bars_done"] == 60
        fake.publish(30)  # bars 60..89 close while nothing runs
        asked = sum(1 for p, _ in fake.rest_log if p == TIME)
        second = LiveRun(_config(fake, out, max_cycles=3, catch_up="skip"), say=lines.append)  # two more cycles
        thread, result = _start(second)
        fake.wait_requests(TIME, asked + 2)
        fake.publish(120)
        result = _finish(thread, result)
    assert result["status"] == "finished" and result["bars_done"] == 180 and result["feed"]["skipped_bars"] == 30
    assert any("resuming after cycle 1 (bar 60" in line and "30 bars closed since the last processed one are "
               "added to the history, not traded" in line for line in lines), lines
    updates = [json.loads(line) for line in (out / "updates.jsonl").read_text().splitlines()]
    decided_on = {pd.Timestamp(u["timestamp"]) for u in updates}
    index = frames["BTCUSDT"].index
    assert not decided_on & set(index[60:90])  # no decision on a skipped bar
    assert pd.Timestamp(updates[-1]["timestamp"]) == index[209]  # 180 traded bars end at bar 209
    _assert_history_complete(out, frames, 210)  # the skipped bars are recorded all the same


def test_a_stop_while_the_exchange_is_unreachable_ends_cleanly_before_the_first_bar(tmp_path):
    port = free_port()  # nothing listens there: every connection is refused
    out = tmp_path / "live"
    cfg = LiveConfig.from_mapping({"live": SETTINGS}, output_dir=str(out), websocket_url=f"ws://127.0.0.1:{port}",
                                  rest_url=f"http://127.0.0.1:{port}/api")
    lines: list[str] = []
    waits: list[float] = []

    def backoff_wait(seconds: float) -> None:  # the first retry's wait: the user gives up and stops the run
        waits.append(seconds)
        live.request_stop()

    live = LiveRun(cfg, say=lines.append, sleep=backoff_wait)
    result = live.run(resume=False)
    assert (result["status"], result["bars_done"], len(waits)) == ("stopped", 0, 1)
    assert lines == [f"stopped before the first bar (0 bars, cycle 0 + 0 bars); checkpoint saved in {out}: run "
                     "again to continue"]
    assert json.loads((out / "live_status.json").read_text())["status"] == "stopped"
    assert json.loads((out / "progress.json").read_text())["message"].startswith("stopped before the first bar")


def _cli(fake: FakeBinance, tmp_path: Path, out: Path) -> tuple[list[str], dict]:
    """`atheria live` with the test's settings (a YAML file and both option spellings) and its Popen arguments."""
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump({"live": {"warmup_bars": 0, "lookback_bars": 200}}))
    cmd = [sys.executable, "-m", "atheria_kit.cli", "live", "--config", str(config), "--output_dir", str(out),
           "--ws-url", fake.ws_url, "--rest-url", fake.rest_url, "--symbols", ",".join(SYMBOLS),
           "--cycle-minutes", "60", "--update_every", "300", "--max-cycles", "4", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return cmd, dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)


def _wait_recorded(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the history store holds ``n`` bars of every symbol (a file event: the feed fsyncs a bar before
    handing it to the engine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the live run ended early"
        paths = [out / "history" / f"{s}_1m.csv" for s in SYMBOLS]
        if all(p.is_file() and p.read_text().count("\n") >= n + 1 for p in paths):
            return
        time.sleep(0.05)  # polling the files: nothing else signals a recorded bar
    raise AssertionError(f"the history store did not reach {n} bars within {timeout} s")


def _sigkill_and_run_again(fake: FakeBinance, cmd: list[str], start: dict, out: Path, proc: subprocess.Popen, *,
                           recorded: int, cycle: int) -> None:
    """SIGKILL ``proc`` once ``recorded`` bars are in the history (past the checkpoint of ``cycle``), close 20 bars
    while it is down, run the same command again: it resumes after that checkpoint, trades the bars since then in
    order and finishes the 4 cycles."""
    _wait_recorded(out, recorded, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    proc.stdout.close()
    fake.publish(20)
    proc = subprocess.Popen(cmd, **start)
    resumed = read_until_line(proc, "live: resuming", 60)
    assert f"resuming after cycle {cycle} (bar {60 * cycle}" in resumed and "are processed in order" in resumed
    fake.publish(N_BARS - recorded - 20)
    final = read_until_line(proc, "live run finished", 90)
    assert all(f"cycle {c} done" in final for c in range(cycle + 1, 5)), final
    assert proc.wait(30) == 0
    proc.stdout.close()


def _assert_like_the_replay_without_duplicates(out: Path, frames: dict[str, pd.DataFrame], reference: Path) -> None:
    assert _artifacts(out) == _artifacts(reference)
    _assert_history_complete(out, frames, N_BARS)
    trades = [json.loads(line) for s in SYMBOLS for line in (out / f"{s}_trades.jsonl").read_text().splitlines()]
    keys = [(t["symbol"], t["entry_time"], t["exit_time"]) for t in trades]
    assert len(keys) == len(set(keys))


def test_sigkill_of_atheria_live_mid_cycle_resumes_without_lost_or_duplicated_trades(bars, reference, tmp_path):
    frames, interval = bars
    out = tmp_path / "run"
    with FakeBinance(frames, interval) as fake:
        cmd, start = _cli(fake, tmp_path, out)
        proc = subprocess.Popen(cmd, **start)
        read_until_line(proc, "live: starting", 60)
        fake.publish(90)
        read_until_line(proc, "cycle 1 done", 60)
        _sigkill_and_run_again(fake, cmd, start, out, proc, recorded=90, cycle=1)
    _assert_like_the_replay_without_duplicates(out, frames, reference)


def test_a_stop_request_mid_cycle_checkpoints_that_bar_and_the_next_run_continues_there(bars, reference, tmp_path):
    frames, interval = bars
    out = tmp_path / "live"
    lines: list[str] = []
    with FakeBinance(frames, interval) as fake:
        # the stop is asked when the engine, done with bar 75, asks the feed for the next one (the feed's hook)
        first = LiveRun(_config(fake, out), say=lines.append, on_next=lambda n: n == 75 and first.request_stop())
        thread, result = _start(first, resume=False)
        fake.wait_requests(TIME, 2)
        fake.publish(90)  # more bars than it may trade: the stop comes first
        result = _finish(thread, result)
        assert (result["status"], result["bars_done"], result["cycle"]) == ("stopped", 75, 1)
        bar_75 = f"{frames[SYMBOLS[0]].index[74]:%Y-%m-%d %H:%M} UTC"  # the run's first bar is the stand-in's first
        assert lines[-1].startswith(f"stopped after bar {bar_75} (75 bars, cycle 1 + 15 bars)")
        assert lines[-1].endswith("run again to continue")
        assert json.loads((out / "live_status.json").read_text())["status"] == "stopped"
        progress = json.loads((out / "progress.json").read_text())  # what atheria monitor shows
        assert progress["status"] == "stopped" and progress["message"].startswith(
            f"stopped after bar {bar_75} (cycle 1 + 15 bars), checkpoint of that bar")
        asked = sum(1 for p, _ in fake.rest_log if p == TIME)
        second = LiveRun(_config(fake, out), say=lines.append)
        thread, result = _start(second)
        fake.wait_requests(TIME, asked + 2)
        fake.publish(N_BARS - 90)
        result = _finish(thread, result)
    assert any("resuming after cycle 1 (bar 75," in line for line in lines), lines
    assert result["status"] == "finished"
    assert _artifacts(out) == _artifacts(reference)


@pytest.mark.slow
def test_sigterm_then_sigkill_of_atheria_live_resume_without_lost_or_duplicated_trades(bars, reference, tmp_path):
    frames, interval = bars
    out = tmp_path / "run"
    with FakeBinance(frames, interval) as fake:
        cmd, start = _cli(fake, tmp_path, out)
        # 1. a clean stop (what Ctrl-C and the Telegram bot's /stop_training send) in the middle of cycle 2
        proc = subprocess.Popen(cmd, **start)
        read_until_line(proc, "live: starting", 60)
        fake.publish(75)
        read_until_line(proc, "cycle 1 done", 60)
        proc.send_signal(signal.SIGTERM)
        tail = read_until_line(proc, "run again to continue", 60)
        stopped = re.search(r"stopped after bar \S+ \S+ UTC \((\d+) bars, cycle 1 \+ (\d+) bars\)", tail)
        assert stopped, tail
        done = int(stopped.group(1))
        assert 60 <= done <= 75 and int(stopped.group(2)) == done - 60
        assert proc.wait(30) == 0
        proc.stdout.close()
        # 2. a SIGKILL in the middle of cycle 3, after bars were recorded and traded past the last checkpoint
        proc = subprocess.Popen(cmd, **start)
        resumed = read_until_line(proc, "live: resuming", 60)
        assert f"resuming after cycle 1 (bar {done}," in resumed  # the stop's own checkpoint, not cycle 1's
        fake.publish(150 - 75)
        read_until_line(proc, "cycle 2 done", 60)
        # 3. the same command again: the checkpoint of cycle 2, the recorded bars, REST for the rest, then live
        _sigkill_and_run_again(fake, cmd, start, out, proc, recorded=150, cycle=2)
    _assert_like_the_replay_without_duplicates(out, frames, reference)


def test_atheria_monitor_reads_a_live_run(bars, tmp_path):
    frames, interval = bars
    out = tmp_path / "live"
    with FakeBinance(frames, interval) as fake:
        live = LiveRun(_config(fake, out, max_cycles=1))
        thread, result = _start(live, resume=False)
        fake.wait_requests(TIME, 2)
        fake.publish(60)
        _finish(thread, result)
    shown = subprocess.run([sys.executable, "-m", "atheria_kit.cli", "monitor", str(out)], capture_output=True,
                           text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "finished" in shown.stdout and "1/1" in shown.stdout.replace(" ", ""), shown.stdout
