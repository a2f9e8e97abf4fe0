"""``atheria monitor``: reading live and finished runs, flagging stalled and crashed ones."""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atheria_kit import watch
from atheria_kit.runlog import RunLog
from tests._paths import REPO_ROOT

WALL0 = 1_700_000_000.0

CHILD = textwrap.dedent(
    """
    import sys
    from atheria_kit.runlog import RunLog
    rl = RunLog(sys.argv[1], kind="walkforward", total=3, unit="fold")
    rl.log({"auc": 0.51})
    print("logged", flush=True)
    sys.stdin.readline()                      # the parent has looked at the live run
    rl.log({"auc": 0.53})
    rl.log({"auc": float("nan")})
    rl.finish("finished", "all folds done")
    print("finished", flush=True)
    sys.stdin.readline()
    """
)


def monitor_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atheria_kit.watch", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def child(tmp_path: Path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield proc, run_dir
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()


def test_monitor_reads_a_run_while_another_process_writes_it(child):
    proc, run_dir = child
    assert proc.stdout.readline().strip() == "logged"
    live = monitor_cli(str(run_dir), "--summary")
    assert live.returncode == 0, live.stdout + live.stderr
    assert "status: running" in live.stdout
    assert "1/3 folds (33.3 %)" in live.stdout and "auc=0.51" in live.stdout
    assert "ETA" in live.stdout and "RSS" in live.stdout and "ago" in live.stdout

    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "finished"
    done = monitor_cli(str(run_dir))
    assert done.returncode == 0
    assert "status: finished" in done.stdout and "3/3 folds (100.0 %)" in done.stdout
    assert "auc=nan" in done.stdout and "all folds done" in done.stdout
    assert "last 3 of 3 folds" in done.stdout  # the recent-units table appears without --summary


def test_a_killed_run_is_flagged_as_stopped_or_crashed(child):
    proc, run_dir = child
    assert proc.stdout.readline().strip() == "logged"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = monitor_cli(str(run_dir), "--summary")
    assert out.returncode == watch.EXIT_UNHEALTHY
    assert "STOPPED/CRASHED" in out.stdout and f"process {proc.pid}" in out.stdout


def _args(path: Path, refresh: float | None = None, summary: bool = True) -> argparse.Namespace:
    return argparse.Namespace(run_dir=path, refresh=refresh, summary=summary)


def _runlog(path: Path, wall: list[float], mono: list[float], **kw) -> RunLog:
    return RunLog(path, kind=kw.pop("kind", "progressive"), clock=lambda: mono[0], wall_clock=lambda: wall[0], **kw)


def test_stall_threshold_is_five_minutes_or_three_typical_units(tmp_path):
    wall, mono = [WALL0], [0.0]
    rl = _runlog(tmp_path, wall, mono, total=100)
    for _ in range(3):
        wall[0] += 200.0
        mono[0] += 200.0
        rl.log({"loss": 1.0})  # typical unit: 200 s, so stalled after 600 s (more than the 5 min minimum)
    last = wall[0]
    out = io.StringIO()
    assert watch.run(_args(tmp_path), out=out, wall_clock=lambda: last + 599.0) == 0
    assert "status: running" in out.getvalue() and "STALLED" not in out.getvalue()
    out = io.StringIO()
    assert watch.run(_args(tmp_path), out=out, wall_clock=lambda: last + 601.0) == watch.EXIT_UNHEALTHY
    assert "STALLED: no update for 10m01s (threshold 10m00s)" in out.getvalue()
    rl.close()


def test_short_units_still_get_five_minutes(tmp_path):
    wall, mono = [WALL0], [0.0]
    rl = _runlog(tmp_path, wall, mono)
    wall[0] += 1.0
    mono[0] += 1.0
    rl.log({"loss": 1.0})
    view = watch.inspect_run(tmp_path, now=wall[0] + 299.0)
    assert view.state == "running" and view.stall_after == 300.0
    assert watch.inspect_run(tmp_path, now=wall[0] + 301.0).state == "stalled"
    rl.close()


def test_refresh_redraws_until_the_run_ends(tmp_path):
    wall, mono = [WALL0], [0.0]
    rl = _runlog(tmp_path, wall, mono, total=2, kind="replay", unit="cycle")
    rl.log({"pnl": 1.0})
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:  # the run advances while the monitor waits
        sleeps.append(seconds)
        rl.log({"pnl": 2.0})
        rl.finish("finished")

    out = io.StringIO()
    assert watch.run(_args(tmp_path, refresh=2.0), out=out, sleep=fake_sleep, wall_clock=lambda: wall[0]) == 0
    assert sleeps == [2.0]
    text = out.getvalue()
    assert text.count("--- ") == 2 and "1/2 cycles" in text and "2/2 cycles (100.0 %)" in text


def test_ctrl_c_stops_watching_cleanly(tmp_path):
    wall, mono = [WALL0], [0.0]
    rl = _runlog(tmp_path, wall, mono)

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    out = io.StringIO()
    assert watch.run(_args(tmp_path, refresh=1.0), out=out, sleep=interrupted, wall_clock=lambda: wall[0]) == 0
    assert "stopped watching" in out.getvalue()
    rl.close()


def test_a_folder_of_runs_is_listed(tmp_path):
    wall, mono = [WALL0], [0.0]
    a = _runlog(tmp_path / "btc", wall, mono, kind="walkforward", total=5, unit="fold")
    a.log({"auc": 0.52})
    b = _runlog(tmp_path / "exp" / "eth", wall, mono, total=10)
    b.log({"loss": 0.3})
    b.finish("stopped", "budget")
    out = io.StringIO()
    assert watch.run(_args(tmp_path), out=out, wall_clock=lambda: wall[0]) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("btc") and "running" in lines[0] and "1/5 folds" in lines[0]
    assert lines[1].startswith("eth") and "stopped" in lines[1] and "1/10 episodes" in lines[1]
    a.close()


def test_missing_and_corrupt_runs_are_reported(tmp_path):
    out = io.StringIO()
    assert watch.run(_args(tmp_path), out=out) == watch.EXIT_NO_RUN
    assert "no run found" in out.getvalue()
    (tmp_path / "progress.json").write_text('{"kind": "walkf')
    out = io.StringIO()
    assert watch.run(_args(tmp_path), out=out) == watch.EXIT_NO_RUN
    assert "not valid JSON" in out.getvalue()
    assert watch.run(_args(tmp_path / "nope"), out=io.StringIO()) == watch.EXIT_NO_RUN


def test_bad_refresh_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="--refresh=0.0"):
        watch.run(_args(tmp_path, refresh=0.0), out=io.StringIO())


def test_add_parser_registers_the_monitor_command(tmp_path):
    parser = argparse.ArgumentParser(prog="atheria")
    watch.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["monitor", str(tmp_path), "--refresh", "5", "--summary"])
    assert args.func is watch.run
    assert (args.run_dir, args.refresh, args.summary) == (tmp_path, 5.0, True)


def test_a_wide_run_fits_a_notebook_cell_with_its_numbers_readable(tmp_path):
    # A replay-like run: many metrics, a long metric name, a long run path; the monitor's default output must
    # fit ~100 columns (a notebook cell) and show counts as integers, fractions as percentages, bytes in GiB.
    run_dir = tmp_path / "experiments" / ("replay_BTCUSDT_ETHUSDT_SOLUSDT_BNBUSDT_XRPUSDT_1h_" + "x" * 60)
    wall, mono = [WALL0], [0.0]
    rl = _runlog(run_dir, wall, mono, kind="replay", total=40, unit="cycle")
    for c in range(1, 13):
        wall[0] += 30.0
        mono[0] += 30.0
        rl.log({"cycle": c, "bars_done": 120.0 * c, "total_bars": 4800, "progress": 120 * c / 4800,
                "equity": 10_000 + 37.5 * c, "trades": 1000 + 3 * c, "winners": 2 * c, "losers": c,
                "win_rate": 0.5625, "max_drawdown": 0.0831, "current_drawdown": 0.01 * c, "latency_ms": 12.345,
                "validation_directional_accuracy_by_regime_high_volatility": 0.61,
                "gpu_memory_peak_bytes": 3 * 1024**3 + 512 * 1024**2}, done=c)
    for summary in (True, False):
        out = io.StringIO()
        assert watch.run(_args(run_dir, summary=summary), out=out, wall_clock=lambda: wall[0] + 5.0) == 0
        text = out.getvalue()
        too_wide = [line for line in text.splitlines() if len(line) > 100]
        assert not too_wide, text
        assert "12/40 cycles (30.0 %)" in text and "ETA 14m00s" in text  # 28 cycles left x 30 s
        assert "trades=1,036" in text and "bars_done=1,440" in text  # counts: 1000 + 3*12, 120.0*12
        assert "win_rate=56.25 %" in text and "max_drawdown=8.31 %" in text and "current_drawdown=12.00 %" in text
        assert "gpu_memory_peak_bytes=3.5 GiB" in text and "equity=10,450" in text  # 10_000 + 37.5*12
        assert "validation_directional_accuracy_by_regime_high_volatility=0.61" in text
        assert "e+0" not in text and "120.0000" not in text
    # The table (default view) shows the columns that change, with the last cycle's numbers, and names the rest.
    rows = text.splitlines()
    header = next(i for i, line in enumerate(rows) if line.split()[:1] == ["done"])
    assert rows[header - 1].strip() == "last 10 of 12 cycles:"
    last = rows[header + 10].split()
    assert last[0] == "12" and "1,440" in last and "1,036" in last and "10,450" in last
    assert "cycle" not in rows[header].split()  # the same numbers as done: not repeated
    assert any(line.strip().startswith("not shown") and "metrics.jsonl" in line for line in rows)
    rl.close()


def test_listing_and_problems_fit_the_cell_too(tmp_path):
    wall, mono = [WALL0], [0.0]
    long_name = "walkforward_BTCUSDT_1h_H1_logreg_count_with_a_very_long_experiment_suffix"
    rl = _runlog(tmp_path / long_name, wall, mono, kind="walkforward", total=8, unit="fold")
    rl.log({"auc": 0.52})
    out = io.StringIO()
    later = wall[0] + 4000.0
    assert watch.run(_args(tmp_path), out=out, wall_clock=lambda: later) == watch.EXIT_UNHEALTHY
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 100 for line in lines), lines
    assert "stalled" in lines[0] and "1/8 folds" in lines[0]
    assert lines[1].startswith("  !! STALLED: no update for 1:06:40")  # 4000 s
    rl.close()
