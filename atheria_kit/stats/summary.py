"""One call from a study's trials to "is the selected result real?": PSR, DSR, PBO and a one-line reading.

:func:`summarize_overfitting` takes a :class:`~atheria_kit.stats.ledger.TrialsLedger` (the number of trials is
then the number of configurations actually evaluated) or a returns matrix, and returns an
:class:`OverfittingSummary` whose :meth:`~OverfittingSummary.to_markdown` a report embeds as is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pandas as pd

from atheria_kit._validation import require_fraction, require_int
from atheria_kit.stats.ledger import TrialsLedger
from atheria_kit.stats.pbo import PBOResult, probability_of_backtest_overfitting
from atheria_kit.stats.sharpe import (
    SharpeStats,
    annualised_sharpe,
    expected_maximum_sharpe,
    has_spread,
    minimum_track_record_length,
    probabilistic_sharpe_ratio,
)

Source = Union[TrialsLedger, pd.DataFrame, pd.Series, np.ndarray]
#: Fewest blocks for which a PBO is reported (C(4, 2) = 6 combinations); below that it says too little.
MIN_PBO_SPLITS = 4


@dataclass(frozen=True)
class OverfittingSummary:
    """PSR, DSR, minimum track record and PBO of the selected trial, with a reading computed from them.

    Sharpe ratios are per period unless named ``_annualised``. ``psr``: P[true Sharpe > 0]. ``dsr``: P[true
    Sharpe > ``expected_max_sharpe``], the Sharpe the best of ``n_trials`` luckless trials would reach.
    ``min_track_record``: periods needed for P[true Sharpe > 0] >= ``confidence`` (inf when the Sharpe is <= 0).
    ``pbo`` is None with fewer than 2 trials or too few common periods (``pbo_note`` says which).
    """

    n_trials: int
    selected: str
    selected_is_best: bool
    sharpe: float
    n_obs: int
    skew: float
    kurtosis: float
    psr: float
    dsr: float
    expected_max_sharpe: float
    trials_sr_variance: float
    min_track_record: float
    confidence: float
    periods_per_year: float | None
    pbo: PBOResult | None
    pbo_note: str
    reading: str

    @property
    def sharpe_annualised(self) -> float | None:
        return None if self.periods_per_year is None else annualised_sharpe(self.sharpe, self.periods_per_year)

    @property
    def is_significant(self) -> bool:
        """Whether the deflated Sharpe probability reaches ``confidence``."""
        return self.dsr >= self.confidence

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (the PBO as its summary numbers)."""
        return {
            "n_trials": self.n_trials,
            "selected": self.selected,
            "selected_is_best": self.selected_is_best,
            "sharpe_per_period": self.sharpe,
            "sharpe_annualised": self.sharpe_annualised,
            "periods_per_year": self.periods_per_year,
            "n_obs": self.n_obs,
            "skew": self.skew,
            "kurtosis": self.kurtosis,
            "psr": self.psr,
            "dsr": self.dsr,
            "expected_max_sharpe_per_period": self.expected_max_sharpe,
            "trials_sr_variance": self.trials_sr_variance,
            "min_track_record_periods": self.min_track_record,
            "confidence": self.confidence,
            "pbo": None if self.pbo is None else self.pbo.to_dict(),
            "pbo_note": self.pbo_note,
            "reading": self.reading,
        }

    def _sr(self, value: float) -> str:
        if self.periods_per_year is None:
            return f"{value:.4f} per period"
        return f"{annualised_sharpe(value, self.periods_per_year):.2f} annualised ({value:.4f} per period)"

    def to_markdown(self, heading: str | None = "### Is it real? Overfitting statistics") -> str:
        """A Markdown table of the statistics and the reading, for reports and notebooks."""
        pct = f"{self.confidence:.0%}"
        mintrl = "never (Sharpe <= 0)" if math.isinf(self.min_track_record) else (
            f"{math.ceil(self.min_track_record):,} periods (have {self.n_obs:,})")
        rows = [
            ("trials evaluated", f"{self.n_trials}"),
            ("selected trial", f"{self.selected}" + (" (best Sharpe)" if self.selected_is_best else "")),
            ("Sharpe ratio", self._sr(self.sharpe)),
            ("observations, skewness, kurtosis", f"{self.n_obs:,}, {self.skew:.2f}, {self.kurtosis:.2f}"),
            ("PSR: P[true Sharpe > 0]", f"{self.psr:.3f}"),
            (f"expected best Sharpe of {self.n_trials} luckless trials", self._sr(self.expected_max_sharpe)),
            ("DSR: P[true Sharpe > that]", f"{self.dsr:.3f}"),
            (f"minimum track record for PSR >= {pct}", mintrl),
        ]
        if self.pbo is not None:
            p = self.pbo
            rows.append((f"PBO (CSCV, {p.n_splits} blocks, {p.n_combinations:,} splits)", f"{p.pbo:.3f}"))
            rows.append(("in-sample best loses out of sample", f"{p.prob_oos_loss:.1%} of splits"))
        else:
            rows.append(("PBO", self.pbo_note))
        lines = [] if heading is None else [heading, ""]
        lines += ["| statistic | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines += ["", f"**Reading:** {self.reading}"]
        return "\n".join(lines) + "\n"


_Trials = tuple[dict[str, pd.Series], "pd.DataFrame | None", dict[str, str]]


def _trials_from(source: Source, kind: str | Iterable[str] | None) -> _Trials:
    """Each trial's own returns (label -> Series), their common-period matrix (2+ trials), and id -> label."""
    if isinstance(source, TrialsLedger):
        records = source.records(kind)
        if not records:
            raise ValueError(f"the ledger at {source.study_dir} has no trials" + (f" of kind {kind!r}" if kind else ""))
        outer = source.returns_matrix(how="outer", trials=records)
        trials = {str(c): outer[c].dropna() for c in outer.columns}
        ids = {r.id: str(c) for r, c in zip(records, outer.columns, strict=True)}
        return trials, outer.dropna() if len(trials) >= 2 else None, ids
    if kind is not None:
        raise ValueError(f"kind={kind!r} applies only to a TrialsLedger source; expected None for a matrix")
    if isinstance(source, pd.Series):
        return {str(source.name if source.name is not None else "trial"): source.dropna()}, None, {}
    if isinstance(source, pd.DataFrame):
        frame = source
    else:
        try:
            arr = np.asarray(source, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"source is invalid ({exc}); expected a TrialsLedger or a T x N returns matrix") from exc
        if arr.ndim == 1:
            return {"trial": pd.Series(arr)}, None, {}
        if arr.ndim != 2:
            raise ValueError(f"source has shape {arr.shape}; expected a T x N returns matrix")
        frame = pd.DataFrame(arr, columns=[f"trial_{i}" for i in range(arr.shape[1])])
    frame = frame.rename(columns=str)
    if frame.shape[1] == 0:
        raise ValueError("source has no trial columns; expected at least one trial's returns")
    if frame.columns.duplicated().any():
        raise ValueError(f"source has duplicate trial names {list(frame.columns[frame.columns.duplicated()])}")
    trials = {c: frame[c].dropna() for c in frame.columns}
    return trials, frame.dropna() if frame.shape[1] >= 2 else None, {}


def _verdict(prob: float, confidence: float) -> str:
    if prob >= confidence:
        return f"unlikely to be luck at {confidence:.0%} confidence"
    return "not distinguishable from luck"


def summarize_overfitting(
    source: Source,
    selected: str | None = None,
    *,
    kind: str | Iterable[str] | None = None,
    n_trials: int | None = None,
    trials_sr_variance: float | None = None,
    periods_per_year: float | None = None,
    n_splits: int = 16,
    confidence: float = 0.95,
) -> OverfittingSummary:
    """PSR, DSR, minimum track record and (with 2+ trials) PBO of the ``selected`` trial among ``source``'s.

    ``source``: a :class:`TrialsLedger` (``kind`` filters its trials) or per-period returns, one column per
    trial (a single Series is one trial). ``selected``: the trial that was chosen (label, id or column name);
    default the one with the highest per-period Sharpe ratio, which is what a selection by Sharpe picks.
    ``n_trials`` / ``trials_sr_variance``: override the count and the Sharpe variance when more configurations
    were tried than ``source`` holds (the count may only grow). ``periods_per_year``: shows annualised Sharpe
    ratios next to the per-period ones (the statistics themselves always use per-period values).
    ``n_splits``: CSCV blocks for the PBO, lowered to fit the common periods (at least 2 rows a block).
    """
    require_fraction("confidence", confidence)
    require_int("n_splits", n_splits, minimum=2)
    if periods_per_year is not None:
        annualised_sharpe(0.0, periods_per_year)  # validates it
    trials, matrix, ids = _trials_from(source, kind)
    stats: dict[str, SharpeStats | None] = {}
    for label, series in trials.items():
        field = f"returns of {label!r}"
        try:
            values = series.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{field} are invalid ({exc}); expected numeric per-period returns") from exc
        if values.size >= 2 and np.isfinite(values).all() and not has_spread(values):
            stats[label] = None  # a trial without spread (never traded) counts as a trial but has no Sharpe
        else:
            stats[label] = SharpeStats.from_returns(values, field=field)
    defined = {k: s for k, s in stats.items() if s is not None}
    if not defined:
        raise ValueError("no trial has returns with a spread; the Sharpe ratio is undefined for all of them")
    best = max(defined, key=lambda k: defined[k].sharpe)
    if selected is None:
        chosen = best
    else:
        chosen = _resolve(source, selected, trials, ids)
        if stats[chosen] is None:
            raise ValueError(f"selected={selected!r} has returns without spread; its Sharpe ratio is undefined")
    s = defined[chosen]

    count = len(trials)
    if n_trials is not None:
        require_int("n_trials", n_trials, minimum=count)
        count = n_trials
    if trials_sr_variance is None:
        srs = np.array([d.sharpe for d in defined.values()])
        if count > 1 and srs.size < 2:
            raise ValueError(
                f"n_trials={count} but only {srs.size} trial has a defined Sharpe ratio; pass trials_sr_variance "
                "(the variance of the per-period Sharpe ratios of all the trials tried)"
            )
        variance = float(np.var(srs, ddof=1)) if srs.size >= 2 else 0.0
    else:
        variance = float(trials_sr_variance)
    sr0 = expected_maximum_sharpe(count, variance)
    psr = probabilistic_sharpe_ratio(s)
    dsr = probabilistic_sharpe_ratio(s, sr0)
    mintrl = minimum_track_record_length(s, 0.0, confidence)

    pbo, note = None, ""
    if matrix is None:
        note = "needs at least 2 trials"
    else:
        splits = min(n_splits - n_splits % 2, (len(matrix) // 2) // 2 * 2)
        if splits < MIN_PBO_SPLITS:
            note = f"too few common periods ({len(matrix)}; needs {2 * MIN_PBO_SPLITS})"
        else:
            pbo = probability_of_backtest_overfitting(matrix, n_splits=splits)

    sr_text = f"{s.sharpe:.4f} per period" if periods_per_year is None else (
        f"{annualised_sharpe(s.sharpe, periods_per_year):.2f} (annualised)")
    who = "best" if chosen == best else "selected"
    if count == 1:
        reading = (f"a single trial: Sharpe {sr_text} has a probabilistic Sharpe ratio of {psr:.2f}: "
                   f"{_verdict(psr, confidence)}")
    else:
        reading = (f"after {count} trials, the {who} Sharpe {sr_text} has a deflated Sharpe probability of "
                   f"{dsr:.2f}: {_verdict(dsr, confidence)}")
    if pbo is not None:
        reading += f"; probability of backtest overfitting {pbo.pbo:.2f}"
        if pbo.pbo > 0.5:
            reading += " (the in-sample best usually ranks below the median out of sample)"
    return OverfittingSummary(
        n_trials=count, selected=chosen, selected_is_best=chosen == best, sharpe=s.sharpe, n_obs=s.n_obs,
        skew=s.skew, kurtosis=s.kurtosis, psr=psr, dsr=dsr, expected_max_sharpe=sr0, trials_sr_variance=variance,
        min_track_record=mintrl, confidence=confidence, periods_per_year=periods_per_year, pbo=pbo,
        pbo_note=note, reading=reading,
    )


def _resolve(source: Source, selected: str, trials: dict[str, pd.Series], ids: dict[str, str]) -> str:
    if selected in trials:
        return selected
    if selected in ids:
        return ids[selected]
    if isinstance(source, TrialsLedger):
        names = {r.id: r.name for r in source.records()}
        matches = [label for tid, label in ids.items() if names.get(tid) == selected]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(f"selected={selected!r} is ambiguous: it names {len(matches)} trials {matches}")
    raise ValueError(f"selected={selected!r} is not one of the trials {sorted(trials)}")
