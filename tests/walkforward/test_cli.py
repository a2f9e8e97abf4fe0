"""``atheria walkforward``: flags over environment over YAML, several symbols through joblib (processes) and a real
dask LocalCluster (threads), each giving exactly the fold metrics of running the configuration alone."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atheria_kit.cli import build_parser
from atheria_kit.walkforward import cli
from atheria_kit.walkforward.config import WalkForwardConfig

REPO = Path(__file__).resolve().parents[2]
_VOLATILE = ("seconds",)


def _config(out: Path, symbol: str, seed: int) -> WalkForwardConfig:
    return WalkForwardConfig(symbol=symbol, data="synthetic", synthetic_bars=3000, seed=seed, mode="count",
                             n_splits=3, patience=10, out=str(out))


def _fold_metrics(run_dir: str | Path) -> list[dict]:
    folds = json.loads((Path(run_dir) / "fold_metrics.json").read_text())["folds"]
    return [{k: v for k, v in f.items() if k not in _VOLATILE} for f in folds]


@pytest.fixture(scope="module")
def solo(tmp_path_factory) -> dict[str, list[dict]]:
    """Each configuration run alone, in this process."""
    out = tmp_path_factory.mktemp("solo")
    res = {}
    for symbol, seed in (("AAA", 1), ("BBB", 2)):
        ((stage,),) = cli.run_many([_config(out, symbol, seed)])
        assert stage["status"] == "finished" and stage["folds"] == 3
        res[symbol] = _fold_metrics(stage["run_dir"])
    assert res["AAA"] != res["BBB"]  # different data, so a mix-up between the runs would show
    return res


def test_joblib_processes_give_the_same_fold_metrics_as_solo_runs(tmp_path, solo):
    configs = [_config(tmp_path, "AAA", 1), _config(tmp_path, "BBB", 2)]
    results = cli.run_many(configs, jobs=2, backend="loky")
    assert [r[0]["name"] for r in results] == ["AAA_1h_H1_logreg_count", "BBB_1h_H1_logreg_count"]
    for (stage,), symbol in zip(results, ("AAA", "BBB"), strict=True):
        assert _fold_metrics(stage["run_dir"]) == solo[symbol]
        pid = json.loads((Path(stage["run_dir"]) / "progress.json").read_text())["pid"]
        assert pid != os.getpid()  # it really ran in a worker process


def test_dask_local_cluster_gives_the_same_fold_metrics_as_solo_runs(tmp_path, solo):
    distributed = pytest.importorskip("dask.distributed")
    configs = [_config(tmp_path, "AAA", 1), _config(tmp_path, "BBB", 2)]
    # threads in this process: both runs share one interpreter, the hardest case for logs, warnings and RNG
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc:
        results = cli.run_many(configs, jobs=2, backend="dask", scheduler=lc.scheduler_address)
        prefixes = list(lc.scheduler.task_prefixes)
    assert any("_run_one" in p for p in prefixes), prefixes  # the work went through the scheduler
    for (stage,), symbol in zip(results, ("AAA", "BBB"), strict=True):
        assert _fold_metrics(stage["run_dir"]) == solo[symbol]
        log = (Path(stage["run_dir"]) / "logs" / "walkforward.log").read_text()
        other = "BBB" if symbol == "AAA" else "AAA"
        assert f"{symbol}_1h_H1_logreg_count" in log and f"{other}_1h_H1" not in log  # each run keeps its own log


def test_dask_backend_needs_a_scheduler():
    with pytest.raises(ValueError, match="scheduler=None is invalid with backend='dask'"):
        cli.run_many([WalkForwardConfig(), WalkForwardConfig()], backend="dask")


def test_expand_configs_per_symbol_and_timeframe():
    base = WalkForwardConfig(symbol="BTCUSDT, ETHUSDT", timeframe="1h,4h", data="/d/{symbol}_1m.parquet")
    got = [(c.symbol, c.timeframe, c.data) for c in cli.expand_configs(base)]
    assert got == [("BTCUSDT", "1h", "/d/BTCUSDT_1m.parquet"), ("BTCUSDT", "4h", "/d/BTCUSDT_1m.parquet"),
                   ("ETHUSDT", "1h", "/d/ETHUSDT_1m.parquet"), ("ETHUSDT", "4h", "/d/ETHUSDT_1m.parquet")]
    assert [c.timeframe for c in cli.expand_configs(WalkForwardConfig(timeframe="1h,4h", data="one.csv"))] == ["1h", "4h"]
    with pytest.raises(ValueError, match=r"data='one.csv' is one file for symbols \['A', 'B'\]; put \{symbol\}"):
        cli.expand_configs(WalkForwardConfig(symbol="A,B", data="one.csv"))


def test_flags_override_environment_override_yaml(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("horizon: 4\nn_splits: 7\nembargo_minutes: 15\n")
    # parsed by the top-level ``atheria`` parser, whose namespace also holds its own options (--verbose)
    args = build_parser().parse_args(["-v", "walkforward", "--config", str(path), "--embargo-minutes", "45",
                                      "--tf", "4h", "--from", "2024-01-01", "--yes"])
    cfg = cli.config_from_args(args, environ={"ATHERIA_N_SPLITS": "9", "ATHERIA_EMBARGO_MINUTES": "0"})
    assert (cfg.horizon, cfg.n_splits, cfg.embargo_minutes) == (4, 9, 45.0)
    assert (cfg.timeframe, cfg.start, cfg.confirm, cfg.use_gpu) == ("4h", "2024-01-01", True, False)


def test_bad_settings_exit_2_with_the_setting_named(capsys):
    assert cli.main(["--symbol", "A,B", "--data", "one.csv"]) == 2
    assert "put {symbol} in the path" in capsys.readouterr().err
    assert cli.main(["--backend", "dask", "--data", "synthetic"]) == 2
    assert "scheduler=None is invalid" in capsys.readouterr().err


def test_atheria_walkforward_two_symbols_two_jobs(tmp_path):
    """The real command line, end to end: two symbols in two processes, configuration printed and saved."""
    env = {**os.environ, "ATHERIA_SYNTHETIC_BARS": "3000", "ATHERIA_PATIENCE": "10"}
    cmd = [sys.executable, "-m", "atheria_kit.cli", "walkforward", "--symbol", "AAA,BBB", "--data", "synthetic",
           "--mode", "count", "--n-splits", "3", "--jobs", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "effective configuration:" in proc.stdout and "AAA_1h_H1_logreg_count: finished: all 3 planned folds tested" in proc.stdout
    saved = yaml.safe_load((tmp_path / "walkforward_config.yaml").read_text())
    assert saved["synthetic_bars"] == 3000 and saved["n_splits"] == 3 and saved["jobs"] == 2  # env + flags
    a, b = (_fold_metrics(tmp_path / "direction" / f"{s}_1h_H1_logreg_count") for s in ("AAA", "BBB"))
    assert len(a) == 3 and a == b  # same seed -> same synthetic bars -> same folds, whichever process ran them


def test_help_has_no_markup_and_every_flag_a_metavar_and_help():
    parser = build_parser(only="walkforward")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["walkforward"]
    text = sub.format_help()
    assert "``" not in text and "FROM_" not in text and "ATHERIA_*" in text
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), action.option_strings
        if action.nargs != 0:  # a flag that takes a value names it
            assert action.metavar and action.metavar.isupper(), action.option_strings
    assert "--from DATE" in text and "--seed N" in text


def test_walkforward_modules_import_each_other_without_a_cycle():
    """Each module stands above what it uses: the import graph of atheria_kit.walkforward (function-level
    imports included) has no cycle."""
    package = REPO / "atheria_kit" / "walkforward"
    graph = {}
    for path in package.glob("*.py"):
        name = f"atheria_kit.walkforward.{path.stem}"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "atheria_kit.walkforward":
                    deps |= {f"{node.module}.{a.name}" for a in node.names}
                elif node.module.startswith("atheria_kit.walkforward."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("atheria_kit.walkforward.")}
        graph[name] = deps - {name}
    assert graph["atheria_kit.walkforward.runner"] >= {"atheria_kit.walkforward.streaming"}
    order, state = [], {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join([*trail, node])
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*trail, node])
        state[node] = "done"
        order.append(node)

    for node in sorted(graph):
        visit(node, [])
