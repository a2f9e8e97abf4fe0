"""Notebook 06 under papermill in SMOKE mode (against the Binance stand-in it starts): it trades, stops with a
checkpoint, resumes within the run, and a second "Run all" continues the same run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "06_live_paper_trading.ipynb"


def _text(executed: Path) -> str:
    cells = json.loads(executed.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))


@pytest.mark.notebook
@pytest.mark.slow  # two "Run all"s (~30 s); test_notebooks.py runs notebook 06 once in the fast suite
def test_notebook_06_stops_resumes_and_continues_on_a_second_run_all(tmp_path):
    papermill = pytest.importorskip("papermill")
    params = {"SMOKE": True, "OUTPUT_ROOT": str(tmp_path / "runs"), "SMOKE_BARS": 10}
    texts = []
    for i in (1, 2):
        out = tmp_path / f"run{i}.ipynb"
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=params, kernel_name="python3",
                                   cwd=str(tmp_path), progress_bar=False, execution_timeout=240)
        texts.append(_text(out))
    first, second = texts
    assert "live: starting at the bar opening" in first and "after 400 warm-up bars in all" in first  # 200 per symbol
    stops = [int(n) for n in re.findall(r"stopped after bar .*? \((\d+) bars", first)]
    assert len(stops) == 2 and 10 <= stops[0] < stops[1]  # a stop, a resume, a second stop
    assert f"live: resuming after cycle {stops[0] // 10} (bar {stops[0]}," in first
    for cycle in range(1, stops[1] // 10 + 1):  # every cycle's line, before and after the resume
        assert f"cycle {cycle} done: bars {cycle * 10}/" in first
    # the second "Run all" starts where the first one stopped
    assert f"live: resuming after cycle {stops[1] // 10} (bar {stops[1]}," in second
    later = [int(n) for n in re.findall(r"stopped after bar .*? \((\d+) bars", second)]
    assert later[0] > stops[1]
    run_dir = tmp_path / "runs" / "live" / "live_btc_eth_smoke"
    history = (run_dir / "history" / "BTCUSDT_1m.csv").read_text().splitlines()[1:]
    stamps = [line.split(",")[0] for line in history]
    assert stamps == sorted(set(stamps)) and len(stamps) >= 200 + later[-1]  # no gap, no duplicate
    assert "status: stopped" in second  # atheria monitor's view of the run
