"""A trials ledger: every configuration evaluated in a study, with its returns, so DSR and PBO count them all.

Layout of a study directory::

    <study_dir>/trials.jsonl        one JSON record per evaluation, appended (one write + flush + fsync each)
    <study_dir>/trials/<id>-<sha12>.npy   the trial's per-period returns and their index

A trial is identified by its ``kind``, ``name`` and ``params``: ``id`` is the first 16 hex digits of the SHA-256 of
their canonical JSON. Recording the same configuration again (a resumed run, a re-run after a fix) *replaces* the
earlier record: readers keep the last record of each id, in the order the ids first appeared, so a resumed run
never counts a configuration twice. The JSONL file is only ever appended to; a reader may open it while a writer
appends (an unterminated last line is a write in progress and is ignored) and a writer killed mid-line leaves a torn
tail that the next writer cuts off before its first append (readers never modify the file). Several processes may
record into one ledger: each record is one ``O_APPEND`` write of one line.

The returns file holds a structured array ``(index int64, returns float64)``: ``index`` is nanoseconds since the
epoch (UTC) for time-stamped returns, or the period position otherwise. The file name carries the first 12 hex
digits of its SHA-256, which the record stores in full and which is checked on every read; the file of a replaced
record is deleted after the new record is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from atheria_kit._io import atomic_write_bytes, sha256_bytes, truncate_and_remove
from atheria_kit.runlog import _cut_torn_tail, read_jsonl, to_json_safe
from atheria_kit.stats.sharpe import has_spread

log = logging.getLogger(__name__)

LEDGER_FILE = "trials.jsonl"
RETURNS_DIR = "trials"
FORMAT_VERSION = 1
#: The kinds the kit records; any lower-case identifier is accepted for other kinds of trials.
KINDS = ("walkforward", "ensemble", "signal_model")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
_RETURNS_DTYPE = np.dtype([("index", "<i8"), ("returns", "<f8")])

ReturnsInput = Union[pd.Series, np.ndarray, Sequence[float]]


class LedgerError(ValueError):
    """The ledger's files do not match its records (a returns file missing or changed after it was recorded)."""


def _canonical(value: Any, path: str) -> Any:
    """``value`` as plain JSON types, or a ValueError naming the first value that has no stable JSON form."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return to_json_safe(float(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a key {key!r} of type {type(key).__name__}; expected str keys")
            out[key] = _canonical(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"{path}={value!r} is invalid: a {type(value).__name__} has no stable JSON form; expected str, int, "
        "float, bool, None, Path, or lists and str-keyed dicts of those"
    )


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(
            f"kind={kind!r} is invalid; expected a lower-case identifier such as {', '.join(map(repr, KINDS))}"
        )
    return kind


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise ValueError(f"name={name!r} is invalid; expected a non-empty one-line string naming the trial")
    return name


def trial_id(kind: str, name: str, params: Mapping[str, Any] | None = None) -> str:
    """The id a configuration gets in a ledger: 16 hex digits of the SHA-256 of its kind, name and params."""
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"params={params!r} is invalid; expected a mapping of setting name to value")
    body = {"kind": _check_kind(kind), "name": _check_name(name), "params": _canonical(dict(params or {}), "params")}
    return hashlib.sha256(_canonical_json(body).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TrialRecord:
    """One evaluated configuration. ``sharpe`` is per period (NaN when its returns do not vary)."""

    id: str
    kind: str
    name: str
    params: dict[str, Any]
    params_hash: str
    n_obs: int
    index_kind: str  # "datetime" or "position"
    tz: str | None
    start: str
    end: str
    returns_file: str
    returns_sha256: str
    sharpe: float
    mean: float
    std: float
    skew: float
    kurtosis: float
    recorded_at: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, rec: Mapping[str, Any]) -> TrialRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: rec[k] for k in names if k in rec})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _moments(values: np.ndarray) -> dict[str, float]:
    mean = float(values.mean())
    std = float(values.std(ddof=1))
    d = values - mean
    m2 = float(np.mean(d**2))
    if not has_spread(values):
        # No spread: the Sharpe ratio and the higher moments are undefined (reported as NaN, not 0).
        return {"sharpe": math.nan, "mean": mean, "std": std, "skew": math.nan, "kurtosis": math.nan}
    return {
        "sharpe": mean / std,
        "mean": mean,
        "std": std,
        "skew": float(np.mean(d**3) / m2**1.5),
        "kurtosis": float(np.mean(d**4) / m2**2),
    }


def _index_array(index: Any, n: int) -> tuple[np.ndarray, str, str | None]:
    """Index values as int64 (UTC nanoseconds or positions), its kind and its time zone."""
    if index is None:
        return np.arange(n, dtype=np.int64), "position", None
    if not isinstance(index, pd.Index):
        index = pd.Index(index)  # infers datetime64 from datetimes, Timestamps or datetime64 values
    if not isinstance(index, pd.DatetimeIndex) and pd.api.types.is_datetime64_any_dtype(index):
        index = pd.DatetimeIndex(index)
    if len(index) != n:
        raise ValueError(f"index has {len(index)} entries; expected {n}, one per return")
    if isinstance(index, pd.DatetimeIndex):
        tz = None if index.tz is None else str(index.tz)
        utc = index if index.tz is None else index.tz_convert("UTC").tz_localize(None)
        values, kind = utc.as_unit("ns").asi8.astype(np.int64), "datetime"
    elif pd.api.types.is_integer_dtype(index):
        values, kind, tz = index.to_numpy(dtype=np.int64), "position", None
    else:
        raise ValueError(
            f"index has dtype {index.dtype}; expected timestamps (a DatetimeIndex) or integer period positions"
        )
    if n > 1 and not (np.diff(values) > 0).all():
        i = int(np.flatnonzero(np.diff(values) <= 0)[0]) + 1
        raise ValueError(f"index[{i}]={index[i]} is invalid; expected strictly increasing, unique index values")
    return values, kind, tz


def _to_index(values: np.ndarray, kind: str, tz: str | None) -> pd.Index:
    if kind == "datetime":
        idx = pd.DatetimeIndex(values.astype("datetime64[ns]"), name="time")
        return idx if tz is None else idx.tz_localize("UTC").tz_convert(tz)
    return pd.Index(values, name="period")


class TrialsLedger:
    """Append-only record of every configuration evaluated in a study directory (see the module docstring).

    ``ledger.record(kind, name, params, returns)`` after each evaluation; ``ledger.n_trials``,
    ``ledger.sharpe_variance()`` and ``ledger.returns_matrix()`` feed the deflated Sharpe ratio and the PBO.
    Reading never changes the files and always sees the records written so far (nothing is cached).
    """

    def __init__(self, study_dir: str | os.PathLike) -> None:
        self.study_dir = Path(study_dir)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        (self.study_dir / RETURNS_DIR).mkdir(exist_ok=True)
        self._tail_checked = False

    @property
    def path(self) -> Path:
        return self.study_dir / LEDGER_FILE

    def __repr__(self) -> str:
        return f"TrialsLedger({str(self.study_dir)!r}, n_trials={self.n_trials})"

    # ------------------------------------------------------------------ writing
    def record(
        self,
        kind: str,
        name: str,
        params: Mapping[str, Any] | None,
        returns: ReturnsInput,
        *,
        index: Any = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> TrialRecord:
        """Record one evaluated configuration and its per-period returns; replaces an earlier record of it.

        ``returns``: per-period (per-bar) simple returns, finite, at least 2; a Series brings its index
        (timestamps or integer positions), otherwise ``index`` gives it, or periods are numbered from 0.
        ``params``: the configuration (str-keyed, JSON-like values). ``metrics``: other numbers to keep with it.
        """
        tid = trial_id(kind, name, params)  # validates kind, name and params
        canon = _canonical(dict(params or {}), "params")
        extra = _canonical(dict(metrics or {}), "metrics") if metrics is not None else {}
        if isinstance(returns, pd.Series) and index is None:
            index = returns.index if not isinstance(returns.index, pd.RangeIndex) else None
        values = self._returns_array(returns)
        idx, index_kind, tz = _index_array(index, values.size)

        table = np.empty(values.size, dtype=_RETURNS_DTYPE)
        table["index"], table["returns"] = idx, values
        buf = io.BytesIO()
        np.save(buf, table, allow_pickle=False)
        data = buf.getvalue()
        digest = sha256_bytes(data)
        rel = f"{RETURNS_DIR}/{tid}-{digest[:12]}.npy"
        atomic_write_bytes(self.study_dir / rel, data)

        previous = self._latest().get(tid)
        bounds = _to_index(idx[[0, -1]], index_kind, tz)
        rec = TrialRecord(
            id=tid, kind=kind, name=name, params=canon,
            params_hash=hashlib.sha256(_canonical_json(canon).encode("utf-8")).hexdigest(),
            n_obs=int(values.size), index_kind=index_kind, tz=tz,
            start=str(bounds[0]), end=str(bounds[1]),
            returns_file=rel, returns_sha256=digest, recorded_at=time.time(), metrics=extra,
            **_moments(values),
        )
        line = json.dumps({"format": FORMAT_VERSION, **to_json_safe(rec.to_dict())}, allow_nan=False,
                          separators=(",", ":")) + "\n"
        if not self._tail_checked:
            # A torn line can only be a writer killed mid-write (live appends are single O_APPEND writes).
            _cut_torn_tail(self.path)
            self._tail_checked = True
        # One O_APPEND write of the whole line, synced: a reader sees all of it or an unterminated tail.
        data_line = line.encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data_line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if written != len(data_line):
            raise OSError(f"{self.path}: wrote {written} of {len(data_line)} bytes of the trial record (disk full?)")
        if previous is not None and previous.returns_file != rel:
            truncate_and_remove(self.study_dir / previous.returns_file)
            log.info("trial %s (%s) re-recorded: replaced its earlier returns", tid, name)
        return rec

    @staticmethod
    def _returns_array(returns: ReturnsInput) -> np.ndarray:
        if isinstance(returns, (str, bytes)):
            raise ValueError(f"returns={returns!r} is invalid; expected a 1-D sequence of per-period returns")
        try:
            values = np.asarray(returns, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"returns is invalid ({exc}); expected a 1-D sequence of numbers") from exc
        if values.ndim != 1 or values.size < 2:
            raise ValueError(f"returns has shape {values.shape}; expected a 1-D sequence of at least 2 returns")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"returns[{i}]={float(values[i])!r} is invalid; expected finite per-period returns "
                "(a period without a position has return 0)"
            )
        return values

    # ------------------------------------------------------------------ reading
    def _latest(self) -> dict[str, TrialRecord]:
        latest: dict[str, TrialRecord] = {}
        for rec in read_jsonl(self.path):
            if rec.get("format") != FORMAT_VERSION:
                raise LedgerError(
                    f"{self.path}: record format {rec.get('format')!r} is not supported; expected {FORMAT_VERSION}"
                )
            tr = TrialRecord.from_dict(rec)
            # Updating an existing key keeps its first position: order of first record, content of the last.
            latest[tr.id] = tr
        return latest

    def records(self, kind: str | Iterable[str] | None = None) -> list[TrialRecord]:
        """The current record of each trial (replaced ones dropped), in the order trials were first recorded."""
        latest = self._latest()
        if kind is None:
            return list(latest.values())
        kinds = {kind} if isinstance(kind, str) else set(kind)
        return [r for r in latest.values() if r.kind in kinds]

    @property
    def n_trials(self) -> int:
        """How many distinct configurations have been evaluated (all kinds)."""
        return len(self._latest())

    def get(self, trial: str) -> TrialRecord:
        """The record with id ``trial`` (or, when unique, with that name or label)."""
        records = self.records()
        labels = _labels(records)
        for rec, label in zip(records, labels, strict=True):
            if trial in (rec.id, label):
                return rec
        matches = [r for r in records if r.name == trial]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(
                f"trial={trial!r} is ambiguous: {len(matches)} trials have that name; pass one of their ids "
                f"{[r.id for r in matches]}"
            )
        raise KeyError(f"trial={trial!r} is not in {self.path}; expected an id, name or label of a recorded trial")

    def find(self, kind: str, name: str, params: Mapping[str, Any] | None = None) -> TrialRecord | None:
        """The record of this exact configuration, or None (lets a resumed run skip what it already evaluated)."""
        return self._latest().get(trial_id(kind, name, params))

    def returns(self, trial: str | TrialRecord) -> pd.Series:
        """A trial's per-period returns with their index (timestamps or period positions)."""
        rec = trial if isinstance(trial, TrialRecord) else self.get(trial)
        try:
            return self._load(rec)
        except FileNotFoundError:
            # Replaced by a writer between our read of the ledger and the file: read the newer record.
            newer = self._latest().get(rec.id)
            if newer is None or newer.returns_file == rec.returns_file:
                raise LedgerError(
                    f"{self.study_dir / rec.returns_file}: the returns of trial {rec.id} ({rec.name}) are missing"
                ) from None
            return self._load(newer)

    def _load(self, rec: TrialRecord) -> pd.Series:
        path = self.study_dir / rec.returns_file
        data = path.read_bytes()
        if sha256_bytes(data) != rec.returns_sha256:
            raise LedgerError(
                f"{path}: SHA-256 differs from the one recorded for trial {rec.id} ({rec.name}); "
                "the file changed after it was recorded"
            )
        table = np.load(io.BytesIO(data), allow_pickle=False)
        return pd.Series(table["returns"], index=_to_index(table["index"], rec.index_kind, rec.tz), name=rec.id)

    def returns_matrix(
        self,
        kind: str | Iterable[str] | None = None,
        *,
        how: str = "inner",
        columns: str = "label",
        trials: Sequence[TrialRecord] | None = None,
    ) -> pd.DataFrame:
        """Trials side by side, aligned on their index (rows = periods, columns = trials), for PBO.

        ``how="inner"`` keeps the periods every trial has (what CSCV needs); ``"outer"`` keeps all, with NaN.
        ``columns="label"``: the trial names (with the id's first 8 digits where names repeat); ``"id"``: ids.
        ``trials``: these records (e.g. one :meth:`records` snapshot) instead of the current ones, in that order.
        """
        if how not in ("inner", "outer"):
            raise ValueError(f"how={how!r} is invalid; expected 'inner' or 'outer'")
        if columns not in ("label", "id"):
            raise ValueError(f"columns={columns!r} is invalid; expected 'label' or 'id'")
        records = self.records(kind) if trials is None else list(trials)
        if not records:
            return pd.DataFrame()
        kinds = {(r.index_kind, r.tz) for r in records}
        if len(kinds) > 1:
            raise ValueError(
                f"the trials' indexes differ in kind/time zone {sorted(kinds, key=str)}; expected all trials "
                "indexed the same way (all by timestamps in one time zone, or all by period position)"
            )
        names = _labels(records) if columns == "label" else [r.id for r in records]
        series = [self.returns(r).rename(n) for r, n in zip(records, names, strict=True)]
        return pd.concat(series, axis=1, join=how, sort=True).sort_index()

    def sharpe_ratios(self, kind: str | Iterable[str] | None = None) -> pd.Series:
        """Each trial's per-period Sharpe ratio on its own returns, by label (NaN for returns without spread)."""
        records = self.records(kind)
        return pd.Series([r.sharpe for r in records], index=_labels(records), name="sharpe", dtype=np.float64)

    def sharpe_variance(self, kind: str | Iterable[str] | None = None) -> float:
        """Variance (ddof 1) of the trials' per-period Sharpe ratios; NaN with fewer than 2 defined ones."""
        sr = self.sharpe_ratios(kind).dropna()
        return float(sr.var(ddof=1)) if sr.size >= 2 else math.nan


def _labels(records: Sequence[TrialRecord]) -> list[str]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.name] = counts.get(r.name, 0) + 1
    return [r.name if counts[r.name] == 1 else f"{r.name} [{r.id[:8]}]" for r in records]
