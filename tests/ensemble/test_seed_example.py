"""The seed system's usage example runs as written (the block in docs/ensemble.md), strategy names are accepted
wherever strategy objects are, and an unknown name is a clear error listing the valid ones."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from atheria_kit.ensemble import DynamicEnsemble, strategies
from atheria_kit.ensemble.turnover import TurnoverControl
from tests._paths import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "ensemble.md"
HEADING = "## The seed system's usage example"


def seed_example() -> str:
    text = GUIDE.read_text()
    section = text[text.index(HEADING):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_seed_example_runs_on_the_shipped_data(tmp_path):
    code = seed_example()
    assert 'strategies=["atr_breakout", "rsi_mean_reversion", "macd_momentum"]' in code
    assert "update_weights(market_data, performance_metrics)" in code and "get_weighted_signal(" in code
    assert "metrics.loss" in code and "metrics.learning_rate" in code
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.match(r"regime (trending|ranging|volatile|choppy); weights \{'atr_breakout': .*'rsi_mean_reversion': "
                    r".*'macd_momentum': .*\}; signal (-1|0|1), confidence \d\.\d\d$", lines[0])
    assert [line.split(":")[0] for line in lines[1:]] == [f"epoch {i}" for i in range(5)]
    assert "learning rate 0.05" in lines[1]


def test_names_and_objects_mix_and_the_seed_name_gets_the_seed_weights():
    named = DynamicEnsemble(strategies=["atr_breakout", "rsi_mean_reversion", strategies.MACDMomentum()],
                            turnover=TurnoverControl.off())
    assert named.names == ["atr_breakout", "rsi_mean_reversion", "macd_momentum"]
    assert isinstance(named.strategies[1], strategies.RSIMeanReversion)
    # ranging: the seed's 0.2 / 0.5 / 0.3, not equal weights
    assert named.update_weights("ranging") == pytest.approx(
        {"atr_breakout": 0.2, "rsi_mean_reversion": 0.5, "macd_momentum": 0.3})
    # mappings may use either name of the RSI strategy
    both = {"atr_breakout": 1, "rsi_reversion": -1, "macd_momentum": 0}
    conf = {"atr_breakout": 1.0, "rsi_mean_reversion": 1.0, "macd_momentum": 0.0}
    assert named.get_weighted_signal(both, conf) == (-1, pytest.approx(0.3))  # 0.2 - 0.5
    with pytest.raises(ValueError, match="two names of one strategy"):
        named.get_weighted_signal({**both, "rsi_mean_reversion": 1}, conf)


def test_an_unknown_strategy_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        DynamicEnsemble(strategies=["atr_breakout", "bollinger_bands"])
    message = str(info.value)
    assert "strategy='bollinger_bands' is invalid" in message
    for valid in ("'atr_breakout'", "'rsi_reversion'", "'rsi_mean_reversion'", "'macd_momentum'"):
        assert valid in message
    with pytest.raises(ValueError, match=r"strategies\[1\]=42 is invalid"):
        DynamicEnsemble(strategies=["atr_breakout", 42])


def test_performance_given_as_dicts_must_have_the_keys_the_adjustment_reads():
    with pytest.raises(ValueError, match=r"performance_metrics\['atr_breakout'\] lacks \['max_drawdown'"):
        DynamicEnsemble().update_weights("trending", {"atr_breakout": {"n_trades": 9, "win_rate": 0.6,
                                                                       "profit_factor": 1.2}})
