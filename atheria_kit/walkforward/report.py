"""Artifacts of a walk-forward stage: fold metrics (CSV + JSON), the Markdown report and PNG plots.

The report describes the whole stage: how many of the planned folds ran and what share of the test period
they cover (an early stop says so in its first lines), mean, median and spread of every metric over the folds
next to the baselines, the money view (the predictions traded after costs, next to buy-and-hold), the alarms,
and which model file to deploy (the refit one; the best fold's own model is labelled as selected on its test
data).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from atheria_kit import _io
from atheria_kit.runlog import to_json_safe
from atheria_kit.walkforward.disk import DiskColumn
from atheria_kit.walkforward.money import STRATEGIES

#: At most this many test rows go into the ROC and calibration plots (an even subsample beyond it).
PLOT_POINTS = 250_000
_FOLD_COLUMNS = ("fold", "test_start", "test_end", "train_size", "test_size", "test_ties", "auc", "majority_auc",
                 "last_bar_auc", "accuracy", "precision", "recall", "f1", "brier", "log_loss", "positive_rate",
                 "seconds")
_SUMMARY_METRICS = ("auc", "accuracy", "precision", "recall", "f1", "brier", "log_loss", "positive_rate")
_STRATEGY_NAMES = {"long_flat": "long/flat", "long_short": "long/short", "buy_hold": "buy-and-hold"}


def _sampled_predictions(ds, folds, predictions: list[Path]) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and predictions of every ``step``-th labelled test row of all folds (at most ``PLOT_POINTS``),
    read fold by fold from the prediction files: ROC and calibration over all rows of a 10-million-bar run would
    need ~40 bytes per row (sorts, cumulative sums), and a subsample draws the same curves."""
    columns = [DiskColumn.open(p) for p in predictions]
    step = max(1, -(-sum(len(c) for c in columns) // PLOT_POINTS))
    y = np.concatenate([np.asarray(ds.y[folds[i].test[::step]]) for i in range(len(columns))])
    p = np.concatenate([c[::step] for c in columns])
    keep = ~np.isnan(y)
    return y[keep], p[keep], step


def _plots(result, ds, folds, predictions: list[Path]) -> dict[str, str]:
    # Figure objects, not pyplot: no global backend switch inside a notebook, and safe when several runs
    # share a process (joblib threading backend, a dask worker with threads).
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    out: dict[str, str] = {}
    df = [dict(f) for f in result.folds]
    x = [f["fold"] for f in df]
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.plot(x, [f["auc"] for f in df], "o-", label="model")
    ax.plot(x, [f["last_bar_auc"] for f in df], "s--", label="baseline: last-bar direction")
    ax.axhline(0.5, color="grey", lw=1, label="coin flip / majority")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    title = f"AUC per fold ({result.mode}, {len(df)} of {result.planned_folds} planned folds)"
    ax.set(xlabel="fold", ylabel="out-of-sample ROC AUC", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["auc_per_fold"] = str(result.run_dir / "auc_per_fold.png")
    fig.savefig(out["auc_per_fold"], dpi=100)
    y, p, step = _sampled_predictions(ds, folds, predictions)
    fig = Figure(figsize=(9, 4))
    a1, a2 = fig.subplots(1, 2)
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, p)
        a1.plot(fpr, tpr, label="model (all folds, out of sample" + (f", every {step}th row)" if step > 1 else ")"))
    a1.plot([0, 1], [0, 1], color="grey", lw=1)
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    frac, mean_p = calibration_curve(y, p, n_bins=10, strategy="quantile")
    a2.plot(mean_p, frac, "o-")
    lo, hi = float(min(mean_p.min(), frac.min())), float(max(mean_p.max(), frac.max()))
    a2.plot([lo, hi], [lo, hi], color="grey", lw=1)
    a2.set(xlabel="predicted P(up)", ylabel="observed up-rate", title="calibration (quantile bins)")
    fig.tight_layout()
    out["roc_calibration"] = str(result.run_dir / "roc_calibration.png")
    fig.savefig(out["roc_calibration"], dpi=100)
    if result.money is not None and len(result.money.curve):
        fig = Figure(figsize=(9, 3.8))
        ax = fig.subplots()
        for s in STRATEGIES:
            ax.plot(result.money.curve.index, result.money.curve[s], lw=1.2, label=_STRATEGY_NAMES[s])
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(ylabel="equity (start = 1)", title=f"out-of-sample equity after costs ({result.money.fee:.2%} fee + "
               f"{result.money.slippage:.2%} slippage per side, threshold {result.money.threshold:g})")
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        out["equity"] = str(result.run_dir / "equity.png")
        fig.savefig(out["equity"], dpi=100)
    return out


def _num(v: Any, fmt: str = ".4f") -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return str(v) if isinstance(v, int) else format(v, fmt)


def _turnover_words(settings: dict | None) -> str:
    """The turnover settings in one phrase."""
    if not settings:
        return "off"
    return (f"minimum hold {settings['min_hold_bars']} bars, deadband {settings['deadband']:g} on the score, "
            f"cost-aware entry at {settings['cost_multiple']:g} x the round-trip cost with the volatility of "
            f"{settings['vol_window']} bars")


def _pct(v: float) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{100 * v:.1f} %"


def summary_lines(result, config) -> list[str]:
    """The report's summary section: what ran, what it measured over the whole stage, and the warnings."""
    name = config.run_name(result.mode)
    lines = ["## Summary", "", f"- **status: {result.status}**: {result.headline()}"]
    if result.folds:
        first, last = result.folds[0]["test_start"], result.folds[-1]["test_end"]
        lines.append(f"- tested {first[:10]} .. {last[:10]}: {result.test_rows_done:,} of "
                     f"{result.test_rows_planned:,} planned test bars ({_pct(result.coverage)} of the test period)")
    s = result.summary
    if "model" in s.index:
        m = s.loc["model"]
        base = " ".join(f"{label} {s.loc[b, 'auc']:.4f}," for b, label in (("last_bar", "last-bar direction"),
                                                                            ("majority", "majority class"))
                        if b in s.index).rstrip(",")
        lines.append(f"- AUC over {len(result.folds)} folds: mean {m['auc']:.4f}, median {m['auc_median']:.4f}, "
                     f"sd {m['auc_std']:.4f}, range {m['auc_min']:.4f}..{m['auc_max']:.4f}; baselines' means: {base}")
        if math.isfinite(result.null_auc_se):
            lines.append(f"- chance alone: AUC 0.500 +/- {result.null_auc_se:.4f} (standard error of the mean over "
                         "these folds' test sets)")
    if result.money is not None:
        w = result.money.whole
        lines.append("- money (after costs, whole test period): " + "; ".join(
            f"{_STRATEGY_NAMES[k]} {_pct(w[k]['total_return'])}, Sharpe {_num(w[k]['sharpe'], '.2f')}, "
            f"max drawdown {_pct(w[k]['max_drawdown'])}" for k in STRATEGIES))
        if result.money.uncontrolled:
            u = result.money.uncontrolled
            lines.append("- turnover control (" + _turnover_words(result.money.turnover) + "): " + "; ".join(
                f"{_STRATEGY_NAMES[k]} {_num(w[k]['trades_per_year'], '.1f')} trades/year, "
                f"{_pct(w[k]['total_return'])} (uncontrolled {_num(u[k]['trades_per_year'], '.1f')} trades/year, "
                f"{_pct(u[k]['total_return'])})" for k in u))
    tie_word = "excluded from training and metrics" if result.ties == "drop" else "labelled down (ties='down')"
    lines.append(f"- unchanged closes (ties): {_pct(result.tie_rate)} of the rows, {tie_word}")
    if result.refit is not None:
        r = result.refit
        lines.append(f"- model to deploy: `{Path(r['path']).name}`, refit on all {r['labelled']:,} labelled rows "
                     f"({r['first_bar'][:10]} .. {r['last_bar'][:10]}) with the folds' pipeline; expect the "
                     "walk-forward mean above, not the best fold")
    elif result.status == "stopped":
        lines.append(f"- model to deploy: not yet refit (the stage is incomplete); `atheria walkforward ... --resume` "
                     f"finishes it as `{name}.joblib`")
    if result.best_fold is not None:
        best = next((f for f in result.folds if f["fold"] == result.best_fold), None)
        if best is not None:
            lines.append(f"- best fold {result.best_fold} (AUC {best['auc']:.4f}) was selected on its own test data, "
                         f"so its AUC is optimistic; its model is kept for diagnosis only "
                         f"(`fold_models/fold_{result.best_fold:03d}.joblib`)")
    if result.overfitting is not None:
        lines.append(f"- is it real? {result.overfitting.reading} (long/flat, daily returns after costs, among the "
                     f"{result.overfitting.n_trials} trials recorded in `{Path(config.out).name}/trials.jsonl`)")
    elif result.overfitting_note:
        lines.append(f"- is it real? not computed: {result.overfitting_note}")
    for label, warning in (("Leak warning", result.leak_warning), ("Data warning", result.data_warning)):
        if warning:
            lines.append(f"- **{label}:** {warning}")
    return lines


def _markdown(result, ds, config) -> str:
    summary = result.summary
    lines = [
        f"# Walk-forward direction report: {config.run_name(result.mode)}",
        "",
        f"- data: {ds.source}{' (SYNTHETIC, not market data)' if ds.synthetic else ''}; {len(ds.y):,} rows, "
        f"{ds.labelled:,} labelled; {ds.gaps} missing bars (not filled)"
        + (f"; {ds.partial_bins} partial first/last bins of the resampling "
           f"{'dropped' if config.partial_bins == 'drop' else 'kept'}" if ds.partial_bins else ""),
        f"- horizon {config.horizon} bars, embargo {config.embargo_minutes:g} min, mode {result.mode}, early stopping "
        + (f"on (patience {config.patience})" if config.uses_early_stopping(result.mode) else "off")
        + f"; convergence warnings {result.convergence_warnings}; peak RSS {result.peak_rss_bytes / 2**20:.0f} MB",
        "",
        *summary_lines(result, config),
        "",
        "## Over the folds",
        "",
        "Mean, median and spread over the folds (sd with ddof 0: the spread of these folds). A fold whose "
        "metric is undefined (AUC of a one-class test set) is left out of it.",
        "",
        "| | statistic | " + " | ".join(_SUMMARY_METRICS) + " |",
        "|---|---|" + "---:|" * len(_SUMMARY_METRICS),
    ]
    for name, row in summary.iterrows():
        for stat, suffix in (("mean", ""), ("median", "_median"), ("sd", "_std"), ("min", "_min"), ("max", "_max")):
            if name != "model" and stat not in ("mean", "median"):
                continue
            lines.append(f"| {name if stat == 'mean' else ''} | {stat} | "
                         + " | ".join(_num(row[c + suffix]) for c in _SUMMARY_METRICS) + " |")
    if result.money is not None:
        mv = result.money
        lines += ["", "## Money: the predictions traded after costs", "",
                  f"Signal at each test bar's close, executed at the next bar's open (the ensemble backtest), "
                  f"{mv.fee:.2%} fee + {mv.slippage:.2%} slippage per side on every position change. Long/flat: long "
                  f"when P(up) > {mv.threshold:g}. Long/short: long above {mv.threshold:g}, short below "
                  f"{1 - mv.threshold:g}. Sharpe and Sortino annualised with {mv.periods_per_year:,.0f} bars per "
                  "year (24/7); n/a where undefined (no spread).", "",
                  (f"Turnover control ({_turnover_words(mv.turnover)}): positions decided by the ensemble's "
                   "turnover controller on the score 2 P(up) - 1; the uncontrolled rows trade the raw threshold "
                   "rule at every bar." if mv.uncontrolled else
                   "Turnover control: off (the raw threshold rule decides at every bar)."), "",
                  "| strategy | total return | Sharpe | Sortino | max drawdown | trades / year | turnover / year | "
                  "exposure | cost paid |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = [(_STRATEGY_NAMES[s], mv.whole[s]) for s in STRATEGIES]
        rows += [(f"{_STRATEGY_NAMES[s]}, uncontrolled", w) for s, w in mv.uncontrolled.items()]
        for name, w in rows:
            lines.append(f"| {name} | {_pct(w['total_return'])} | {_num(w['sharpe'], '.2f')} | "
                         f"{_num(w['sortino'], '.2f')} | {_pct(w['max_drawdown'])} | "
                         f"{_num(w['trades_per_year'], '.1f')} | {_num(w['turnover_per_year'], '.1f')} | "
                         f"{_pct(w['exposure'])} | {_pct(w['cost_paid'])} |")
        lines += ["", "Per fold (total return after costs; Sharpe):", "",
                  "| fold | " + " | ".join(_STRATEGY_NAMES[s] for s in STRATEGIES) + " |",
                  "|---|" + "---:|" * len(STRATEGIES)]
        for f, figures in zip(result.folds, mv.folds, strict=True):
            lines.append(f"| {f['fold']} | " + " | ".join(
                f"{_pct(figures[s]['total_return'])} ({_num(figures[s]['sharpe'], '.2f')})" for s in STRATEGIES) + " |")
        lines += ["", "![equity](equity.png)"]
    if result.overfitting is not None:
        lines += ["", "## Is it real? Overfitting statistics", "",
                  "The long/flat rule's daily returns after costs, judged among every trial recorded in the study "
                  f"folder `{config.out}` (`trials.jsonl`: each walk-forward stage records its long/flat and "
                  "long/short returns; re-running a configuration replaces its record). PSR: probability that the "
                  "true Sharpe ratio is above 0; DSR: above the best Sharpe that as many luckless trials would "
                  "reach; PBO: probability that the configuration best in sample is below the median out of "
                  "sample (with several trials).", "",
                  result.overfitting.to_markdown(heading=None).rstrip()]
    lines += ["", "## Folds", "", "| " + " | ".join(_FOLD_COLUMNS) + " |", "|" + "---|" * len(_FOLD_COLUMNS)]
    for f in result.folds:
        lines.append("| " + " | ".join(_num(f[c]) for c in _FOLD_COLUMNS) + " |")
    lines += ["", "Out-of-sample predictions of each fold (P(up) per test row, float32): `predictions/fold_NNN.npy`."]
    lines += ["", "Realistic out-of-sample AUC for bar direction from OHLCV features is 0.50-0.53; see the "
              "walk-forward guide.", "", "![AUC per fold](auc_per_fold.png)", "",
              "![ROC and calibration](roc_calibration.png)", ""]
    return "\n".join(lines)


def write_artifacts(result, ds, folds, predictions: list[Path], config) -> dict[str, str]:
    """Write everything for one stage into ``result.run_dir``; returns name -> path. ``predictions``: the
    completed folds' test-prediction files, in fold order."""
    import pandas as pd

    d: Path = result.run_dir
    out: dict[str, str] = {}
    table = pd.DataFrame(result.folds)
    _io.atomic_write_bytes(d / "fold_metrics.csv", table.to_csv(index=False).encode())
    doc = {"status": result.status, "headline": result.headline(), "planned_folds": result.planned_folds,
           "completed_folds": len(result.folds), "test_rows_planned": result.test_rows_planned,
           "test_rows_done": result.test_rows_done, "coverage": result.coverage, "tie_rate": result.tie_rate,
           "null_auc_se": result.null_auc_se, "folds": result.folds, "summary": result.summary.to_dict("index"),
           "leak_warning": result.leak_warning, "data_warning": result.data_warning, "refit": result.refit,
           "money": result.money.to_dict() if result.money is not None else None}
    _io.atomic_write_json(d / "fold_metrics.json", to_json_safe(doc))
    out["fold_metrics_csv"], out["fold_metrics_json"] = str(d / "fold_metrics.csv"), str(d / "fold_metrics.json")
    if result.refit is not None:
        out["model"] = result.refit["path"]
    if predictions:
        out["predictions"] = str(Path(predictions[0]).parent)
    out.update(_plots(result, ds, folds, predictions))
    _io.atomic_write_bytes(d / "report.md", _markdown(result, ds, config).encode())
    out["report"] = str(d / "report.md")
    return out


def append_gate_verdict(result: Any, go: bool, how: str) -> None:
    """Record the gate's verdict and the decision in the quick stage's report."""
    path = result.run_dir / "report.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    text += f"\n## Gate\n\n```\n{result.gate}\n```\n\nFull stage: {'run' if go else 'not run'} ({how}).\n"
    _io.atomic_write_bytes(path, text.encode())


def auc_reading(result, leak_auc: float) -> str:
    """The stage's AUC table in words, computed from its numbers: how far the model is from chance and from the
    last-bar baseline (in standard errors of chance), how many folds beat 0.5, and any fold above the leak
    threshold (one fold above it is noise on small test sets; the mean above it is the alarm)."""
    if not result.folds:
        return "No fold was completed, so there is nothing to read."
    s = result.summary
    m = s.loc["model"]
    aucs = [f["auc"] for f in result.folds if isinstance(f["auc"], float) and math.isfinite(f["auc"])]
    k = len(aucs)
    base = float(s.loc["last_bar", "auc"]) if "last_bar" in s.index else math.nan
    se = result.null_auc_se
    parts = [f"Over {len(result.folds)} of {result.planned_folds} planned folds ({_pct(result.coverage)} of the "
             f"test period) the mean AUC is {m['auc']:.4f} (median {m['auc_median']:.4f}, folds from "
             f"{m['auc_min']:.4f} to {m['auc_max']:.4f}); {sum(a > 0.5 for a in aucs)} of {k} folds are above 0.5."]
    if math.isfinite(se) and se > 0:
        z = (m["auc"] - 0.5) / se
        strength = ("indistinguishable from chance" if abs(z) < 2 else
                    "measurably above chance" if z > 0 else "measurably below chance (a rule that has flipped)")
        parts.append(f"Chance alone gives 0.500 +/- {se:.4f} here, so the mean is {z:+.1f} standard errors from "
                     f"a coin flip: {strength}.")
    if math.isfinite(base):
        diff = m["auc"] - base
        parts.append(f"The trivial 'same direction as the last bar' rule reaches {base:.4f}; the model is "
                     f"{diff:+.4f} {'above' if diff >= 0 else 'below'} it" + (
                         ", so most of what it finds is that short-term pattern." if abs(diff) < 0.005 else "."))
    above = [f["fold"] for f in result.folds if isinstance(f["auc"], float) and f["auc"] > leak_auc]
    if above:
        mean_note = ("and so is the mean: treat it as a leak until proven otherwise" if m["auc"] > leak_auc else
                     "but the mean is not: with a few hundred test bars a single fold varies by a few hundredths")
        parts.append(f"Fold{'s' if len(above) > 1 else ''} {', '.join(map(str, above))} "
                     f"{'are' if len(above) > 1 else 'is'} above the leak threshold {leak_auc:.3f}, {mean_note}.")
    if result.status == "stopped_early":
        parts.append("The stage stopped early, so these numbers cover only part of the test period and favour "
                     "the folds before the stop.")
    return " ".join(parts)


def shuffle_reading(same: dict[str, float], control: dict[str, float]) -> str:
    """The shuffled-K-fold-versus-purged-walk-forward comparison in words (``compare_shuffled_vs_walkforward`` on
    the data and on a random walk, whose true AUC is 0.5)."""
    gap, rw_gap = same["shuffled_kfold"] - same["purged_walk_forward"], \
        control["shuffled_kfold"] - control["purged_walk_forward"]
    verdict = ("the inflation is leakage through overlapping labels, not skill" if rw_gap > 0.02 else
               "here the leak is small; it grows with the horizon and the model's capacity")
    return (f"On this data shuffled K-fold reports a mean AUC of {same['shuffled_kfold']:.3f} against "
            f"{same['purged_walk_forward']:.3f} for purged walk-forward ({gap:+.3f}). On a random walk, where no "
            f"model can beat 0.5, shuffled K-fold still reports {control['shuffled_kfold']:.3f} and purged "
            f"walk-forward {control['purged_walk_forward']:.3f} ({rw_gap:+.3f}): {verdict}. Only the purged "
            "walk-forward number estimates what the model would do on new data.")


def full_stage_decision(verdict, run_full: bool | None = None, smoke: bool = False) -> tuple[bool, str]:
    """Whether the notebook runs the full stage after the quick stage's gate, and the sentence that says why:
    the gate decides unless ``run_full`` is set; smoke runs exercise every stage."""
    failed = [f"{m} {v:.4f} (needs > {t:.2f})" for m, v, t, ok in verdict.checks if not ok]
    gate = "passed" if verdict.passed else "failed on " + ", ".join(failed)
    if run_full is not None:
        go = bool(run_full)
        why = f"RUN_FULL = {run_full} (the gate {gate})"
    else:
        go = verdict.passed
        why = f"the gate {gate}" + ("" if go else "; set RUN_FULL = True to run it anyway (the gate's thresholds "
                                            "are far above what bar-direction models reach)")
    if smoke and not go:
        return True, f"SMOKE: the full stage runs on a short slice of the data although {why}"
    if go and verdict.passed and run_full is None:
        why += ": passing it on real data deserves a leak hunt before any money"
    return go, f"The full stage {'runs' if go else 'is skipped'}: {why}."
