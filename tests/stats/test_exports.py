"""The stats package's public names resolve, and using the statistics does not import arch (statsmodels)."""

from __future__ import annotations

import subprocess
import sys

import atheria_kit.stats as stats
from tests._paths import REPO_ROOT


def test_every_public_name_resolves() -> None:
    for name in stats.__all__:
        assert getattr(stats, name).__module__.startswith("atheria_kit.stats."), name
    assert sorted(dir(stats)) == sorted(stats.__all__)


def test_arch_loads_only_for_the_snooping_tests() -> None:
    code = (
        "import sys\n"
        "from atheria_kit.stats import TrialsLedger, summarize_overfitting, deflated_sharpe_ratio\n"
        "assert 'arch' not in sys.modules, 'arch imported by the ledger or the summary'\n"
        "from atheria_kit.stats import spa_test\n"
        "assert 'arch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
