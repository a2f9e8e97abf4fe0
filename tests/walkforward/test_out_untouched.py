"""A run that fails on bad data or bad settings leaves ``--out`` exactly as it was: every file, byte for byte.

``--out`` holds a previous good run of the same name (its report, model, checkpoints, predictions and
``walkforward_config.yaml``); each bad input must stop with exit status 2 and a message before anything there
changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atheria_kit.market import synthetic
from atheria_kit.walkforward import cli

BASE = ["--mode", "count", "--n-splits", "3"]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``root``."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    good = synthetic.synthetic_ohlcv(2500, timeframe="1h", seed=3).reset_index()
    good["timestamp"] = good["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {"good": d / "good.csv"}
    good.to_csv(out["good"], index=False)

    def variant(name: str, frame: pd.DataFrame) -> None:
        out[name] = d / f"{name}.csv"
        frame.to_csv(out[name], index=False)

    variant("header_typo", good.rename(columns={"timestamp": "timestmp"}))
    nan = good.copy()
    nan.loc[2000, "close"] = np.nan  # late in the file: an out-of-core run has written chunks by then
    variant("nan", nan)
    unsorted = good.copy()
    unsorted.loc[[100, 101], "timestamp"] = unsorted.loc[[101, 100], "timestamp"].to_numpy()
    variant("unsorted", unsorted)
    variant("duplicate", pd.concat([good.iloc[:500], good.iloc[499:]], ignore_index=True))
    price = good.copy()
    price.loc[700, ["open", "low"]] = [0.0, 0.0]
    variant("non_positive", price)
    variant("short", good.iloc[:300])
    return out


@pytest.fixture(scope="module")
def previous(tmp_path_factory, files) -> Path:
    """An output folder with a finished good run in it."""
    out = tmp_path_factory.mktemp("out")
    assert cli.main(["--data", str(files["good"]), *BASE, "--out", str(out)]) == 0
    assert (out / "walkforward_config.yaml").is_file() and (out / "direction").is_dir()
    return out


@pytest.mark.parametrize("args, message", [
    (["--data", "{missing}"], "file not found"),
    (["--data", "{header_typo}"], "no time column"),
    (["--data", "{nan}"], "row 2000 .*close is NaN"),
    (["--data", "{unsorted}"], "row 101: timestamp .* is earlier than the previous row's"),
    (["--data", "{duplicate}"], "row 500: duplicate timestamp"),
    (["--data", "{non_positive}"], "row 700 .*open is not positive"),
    (["--data", "{nan}", "--out-of-core", "on", "--chunk-size", "500"], "row 2000 .*close is NaN"),
    # a run name not yet in --out: the directories made for the out-of-core work files go again
    (["--data", "{nan}", "--symbol", "ETHUSDT", "--out-of-core", "on", "--chunk-size", "500"], "row 2000 .*close"),
    (["--data", "{good}", "--horizon", "0"], "horizon=0 is invalid"),
    (["--data", "{good}", "--ties", "up"], "invalid choice: 'up'"),
    (["--data", "{short}", "--mode", "full"], "needs at least min_train_days"),
    (["--data", "{good}", "--resume", "--seed", "7"], "made with different settings"),
    (["--data", "{dir}/{{symbol}}.csv", "--symbol", "good,nan", "--jobs", "2"], "row 2000 .*close is NaN"),
])
def test_a_failed_start_leaves_out_byte_for_byte(previous, files, capsys, args, message):
    before = _snapshot(previous)
    names = {k: str(v) for k, v in files.items()} | {"missing": str(files["good"].parent / "nope.csv"),
                                                    "dir": str(files["good"].parent)}
    argv = [a.format(**names) for a in args]
    if "--mode" not in argv:
        argv += BASE
    try:
        code = cli.main([*argv, "--out", str(previous)])
    except SystemExit as exc:  # argparse rejects a bad choice before the command runs
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert pd.Series([err]).str.contains(message).iloc[0], err
    assert _snapshot(previous) == before
