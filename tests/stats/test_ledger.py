"""The trials ledger: what it writes, replace-not-duplicate, torn lines, alignment, and clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atheria_kit.stats import LedgerError, TrialsLedger, trial_id

PARAMS = {"model": "logreg", "C": 0.5, "features": ["rsi_14", "ret_1"], "deadband": 0.002}


def hourly(n: int, start: str = "2024-03-01", tz: str | None = "UTC") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="h", tz=tz)


def noise(n: int, seed: int, drift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(drift, 0.01, n)


def lines(ledger: TrialsLedger) -> list[dict]:
    return [json.loads(x) for x in ledger.path.read_text().splitlines()]


def test_a_record_holds_the_configuration_its_hash_and_its_returns(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path / "study")
    r = pd.Series(noise(300, 1, 0.001), index=hourly(300, tz="Europe/Berlin"))
    rec = ledger.record("walkforward", "SOL 1h logreg", PARAMS, r, metrics={"auc": 0.53})

    canonical = json.dumps(PARAMS, sort_keys=True, separators=(",", ":"))
    assert rec.params_hash == hashlib.sha256(canonical.encode()).hexdigest()
    body = json.dumps({"kind": "walkforward", "name": "SOL 1h logreg", "params": PARAMS}, sort_keys=True,
                      separators=(",", ":"))
    assert rec.id == hashlib.sha256(body.encode()).hexdigest()[:16] == trial_id("walkforward", "SOL 1h logreg", PARAMS)
    assert rec.sharpe == pytest.approx(r.mean() / r.std(ddof=1))
    assert (rec.n_obs, rec.index_kind, rec.tz, rec.metrics) == (300, "datetime", "Europe/Berlin", {"auc": 0.53})

    (line,) = lines(ledger)
    assert line["id"] == rec.id and line["params"] == PARAMS and line["format"] == 1
    stored = tmp_path / "study" / line["returns_file"]
    assert stored.parent.name == "trials" and stored.name.startswith(rec.id)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == line["returns_sha256"]

    back = ledger.returns(rec.id)
    pd.testing.assert_index_equal(back.index, r.index.as_unit("ns").rename("time"), check_freq=False)
    assert back.index.tz is not None and str(back.index.tz) == "Europe/Berlin"
    np.testing.assert_array_equal(back.to_numpy(), r.to_numpy())


def test_the_id_depends_on_the_configuration_not_on_key_order(tmp_path: Path) -> None:
    reordered = dict(reversed(list(PARAMS.items())))
    assert trial_id("ensemble", "v", reordered) == trial_id("ensemble", "v", PARAMS)
    assert trial_id("ensemble", "v", {**PARAMS, "C": 0.6}) != trial_id("ensemble", "v", PARAMS)
    assert trial_id("signal_model", "v", PARAMS) != trial_id("ensemble", "v", PARAMS)
    assert trial_id("ensemble", "v", {"n": np.int64(3)}) == trial_id("ensemble", "v", {"n": 3})


def test_recording_a_configuration_again_replaces_it(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    first = ledger.record("ensemble", "deadband 0.1", {"deadband": 0.1}, noise(100, 1))
    ledger.record("ensemble", "deadband 0.2", {"deadband": 0.2}, noise(100, 2))
    again = ledger.record("ensemble", "deadband 0.1", {"deadband": 0.1}, noise(100, 3))  # a resumed run

    assert ledger.n_trials == 2 and len(lines(ledger)) == 3  # the file is only appended to
    assert [r.name for r in ledger.records()] == ["deadband 0.1", "deadband 0.2"]  # first-recorded order
    np.testing.assert_array_equal(ledger.returns(first.id).to_numpy(), noise(100, 3))
    assert again.id == first.id and again.returns_file != first.returns_file
    assert not (tmp_path / first.returns_file).exists()  # the replaced returns are deleted
    assert len(list((tmp_path / "trials").glob("*.npy"))) == 2
    assert ledger.find("ensemble", "deadband 0.1", {"deadband": 0.1}) == again
    assert ledger.find("ensemble", "deadband 0.1", {"deadband": 0.3}) is None


def test_identical_returns_re_recorded_keep_their_file(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    a = ledger.record("ensemble", "x", {}, noise(50, 1))
    b = ledger.record("ensemble", "x", {}, noise(50, 1))
    assert a.returns_file == b.returns_file and (tmp_path / b.returns_file).exists()
    assert ledger.n_trials == 1


def test_a_reader_sees_records_while_another_instance_writes(tmp_path: Path) -> None:
    writer, reader = TrialsLedger(tmp_path), TrialsLedger(tmp_path)
    assert reader.n_trials == 0
    writer.record("ensemble", "a", {}, noise(50, 1))
    assert reader.n_trials == 1
    writer.record("ensemble", "b", {}, noise(50, 2))
    assert [r.name for r in reader.records()] == ["a", "b"]


def test_a_torn_last_line_is_ignored_by_readers_and_cut_by_the_next_writer(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    ledger.record("ensemble", "a", {}, noise(50, 1))
    ledger.record("ensemble", "b", {}, noise(50, 2))
    whole = ledger.path.read_bytes()
    half_of_b = whole.splitlines(keepends=True)[1][:40]
    ledger.path.write_bytes(whole + half_of_b)  # a writer killed in the middle of a third line

    reader = TrialsLedger(tmp_path)
    assert [r.name for r in reader.records()] == ["a", "b"]
    assert ledger.path.read_bytes().endswith(half_of_b)  # reading changes nothing

    TrialsLedger(tmp_path).record("ensemble", "c", {}, noise(50, 3))
    assert [x["name"] for x in lines(ledger)] == ["a", "b", "c"]  # no garbage left in the middle
    assert TrialsLedger(tmp_path).n_trials == 3


def test_the_returns_matrix_aligns_trials_on_their_timestamps(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    ledger.record("walkforward", "early", {"w": 1}, pd.Series(noise(100, 1), index=hourly(100)))
    ledger.record("walkforward", "late", {"w": 2}, pd.Series(noise(100, 2), index=hourly(100, "2024-03-03")))
    inner = ledger.returns_matrix()
    assert list(inner.columns) == ["early", "late"] and len(inner) == 52  # hours 48..99 of "early"
    assert inner.index[0] == pd.Timestamp("2024-03-03", tz="UTC")
    np.testing.assert_array_equal(inner["late"].to_numpy(), noise(100, 2)[:52])
    outer = ledger.returns_matrix(how="outer")
    assert len(outer) == 148 and outer["late"].isna().sum() == 48
    assert list(ledger.returns_matrix(columns="id").columns) == [r.id for r in ledger.records()]


def test_repeated_names_get_labels_with_the_id(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    a = ledger.record("ensemble", "variant", {"k": 1}, noise(40, 1))
    b = ledger.record("ensemble", "variant", {"k": 2}, noise(40, 2))
    assert list(ledger.returns_matrix().columns) == [f"variant [{a.id[:8]}]", f"variant [{b.id[:8]}]"]
    with pytest.raises(ValueError, match="ambiguous: 2 trials have that name"):
        ledger.get("variant")
    assert ledger.get(b.id) == b


def test_sharpe_variance_and_counts(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    srs = []
    for k in range(5):
        r = noise(200, k, 0.0005 * k)
        srs.append(r.mean() / r.std(ddof=1))
        ledger.record("signal_model", f"threshold {k}", {"k": k}, r)
    ledger.record("ensemble", "flat", {}, np.zeros(200))  # never traded: a trial without a Sharpe ratio
    assert ledger.n_trials == 6
    assert np.isnan(ledger.get("flat").sharpe)
    assert ledger.sharpe_variance() == pytest.approx(np.var(srs, ddof=1))
    assert ledger.sharpe_variance(kind="signal_model") == pytest.approx(np.var(srs, ddof=1))
    assert len(ledger.records(kind="ensemble")) == 1
    assert np.isnan(ledger.sharpe_variance(kind="ensemble"))


def test_arrays_are_indexed_by_position(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    rec = ledger.record("ensemble", "a", {}, [0.01, -0.02, 0.005])
    assert rec.index_kind == "position" and (rec.start, rec.end) == ("0", "2")
    assert list(ledger.returns("a").index) == [0, 1, 2]


def test_a_returns_file_changed_after_recording_is_detected(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    rec = ledger.record("ensemble", "a", {}, noise(50, 1))
    path = tmp_path / rec.returns_file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="SHA-256 differs from the one recorded"):
        ledger.returns(rec.id)
    path.unlink()
    with pytest.raises(LedgerError, match="returns of trial .* are missing"):
        ledger.returns(rec.id)


def test_mixed_index_kinds_are_refused_when_aligning(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    ledger.record("ensemble", "by time", {}, pd.Series(noise(20, 1), index=hourly(20)))
    ledger.record("ensemble", "by position", {}, noise(20, 2))
    with pytest.raises(ValueError, match="indexes differ in kind/time zone"):
        ledger.returns_matrix()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "Walk Forward"}, r"kind='Walk Forward' is invalid; expected a lower-case identifier"),
        ({"name": ""}, r"name='' is invalid; expected a non-empty one-line string"),
        ({"params": {"model": object()}}, r"params\['model'\]=<object.*has no stable JSON form"),
        ({"params": {1: "x"}}, r"params has a key 1 of type int; expected str keys"),
        ({"params": [1, 2]}, r"params=\[1, 2\] is invalid; expected a mapping"),
        ({"returns": [0.01, float("nan"), 0.0]}, r"returns\[1\]=nan is invalid; expected finite per-period returns"),
        ({"returns": [0.01]}, r"returns has shape \(1,\); expected a 1-D sequence of at least 2"),
        ({"index": hourly(2)}, r"index has 2 entries; expected 3"),
        ({"index": [0, 2, 2]}, r"index\[2\]=2 is invalid; expected strictly increasing"),
        ({"index": ["a", "b", "c"]}, r"index has dtype (object|str); expected timestamps"),
    ],
)
def test_bad_records_are_clear_errors_and_write_nothing(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"kind": "ensemble", "name": "x", "params": {}, "returns": [0.01, -0.01, 0.02], **kwargs}
    ledger = TrialsLedger(tmp_path)
    with pytest.raises(ValueError, match=message):
        ledger.record(**args)
    assert ledger.n_trials == 0 and not list((tmp_path / "trials").iterdir())


def test_bad_reading_arguments_are_clear_errors(tmp_path: Path) -> None:
    ledger = TrialsLedger(tmp_path)
    ledger.record("ensemble", "a", {}, noise(20, 1))
    with pytest.raises(ValueError, match=r"how='left' is invalid; expected 'inner' or 'outer'"):
        ledger.returns_matrix(how="left")
    with pytest.raises(KeyError, match=r"trial='nope' is not in"):
        ledger.get("nope")


def test_an_index_of_python_datetimes_is_stored_as_timestamps(tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    stamps = [datetime(2024, 5, 1) + timedelta(minutes=15 * i) for i in range(4)]
    rec = TrialsLedger(tmp_path).record("ensemble", "a", {}, [0.01, -0.02, 0.005, 0.0], index=stamps)
    assert (rec.index_kind, rec.tz, rec.start, rec.end) == ("datetime", None, "2024-05-01 00:00:00",
                                                            "2024-05-01 00:45:00")
    assert list(TrialsLedger(tmp_path).returns("a").index) == [pd.Timestamp(s) for s in stamps]
