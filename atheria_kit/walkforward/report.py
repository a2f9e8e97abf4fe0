"""Artifacts of a walk-forward stage: model, fold metrics (CSV + JSON), Markdown report and PNG plots."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from atheria_kit import _io

#: At most this many test rows go into the ROC and calibration plots (an even subsample beyond it).
PLOT_POINTS = 250_000
_FOLD_COLUMNS = ("fold", "test_start", "test_end", "train_size", "test_size", "auc", "majority_auc", "last_bar_auc",
                 "accuracy", "precision", "recall", "f1", "brier", "log_loss", "positive_rate", "seconds")


def _sampled_predictions(ds, folds, predictions: list[Path]) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and predictions of every ``step``-th test row of all folds (at most ``PLOT_POINTS``), read fold by
    fold from the prediction files: ROC and calibration over all rows of a 10-million-bar run would need ~40
    bytes per row (sorts, cumulative sums), and a subsample draws the same curves."""
    from atheria_kit.walkforward.disk import DiskColumn

    columns = [DiskColumn.open(p) for p in predictions]
    step = max(1, -(-sum(len(c) for c in columns) // PLOT_POINTS))
    y = np.concatenate([np.asarray(ds.y[folds[i].test[::step]]) for i in range(len(columns))])
    p = np.concatenate([c[::step] for c in columns])
    return y, p, step


def _plots(result, ds, folds, predictions: list[Path]) -> dict[str, str]:
    # Figure objects, not pyplot: no global backend switch inside a notebook, and safe when several runs
    # share a process (joblib threading backend, a dask worker with threads).
    from matplotlib.figure import Figure
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
    ax.set(xlabel="fold", ylabel="out-of-sample ROC AUC", title=f"AUC per fold ({result.mode})")
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
    return out


def _markdown(result, ds, config) -> str:
    summary = result.summary
    cols = ["auc", "accuracy", "precision", "recall", "f1", "brier", "log_loss", "positive_rate"]
    lines = [
        f"# Walk-forward direction report: {config.run_name(result.mode)}",
        "",
        f"- data: {ds.source}{' (SYNTHETIC, not market data)' if ds.synthetic else ''}; {len(ds.y)} labelled samples; "
        f"{ds.gaps} missing bars (not filled)",
        f"- horizon {config.horizon} bars, embargo {config.embargo_minutes:g} min, mode {result.mode}, "
        f"{len(result.folds)} folds, status {result.status}" + (f" ({result.stop_reason})" if result.stop_reason else ""),
        f"- best fold {result.best_fold}; convergence warnings {result.convergence_warnings}; "
        f"peak RSS {result.peak_rss_bytes / 2**20:.0f} MB",
        "",
        "## Mean (std) over folds",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, row in summary.iterrows():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f} ({row[c + '_std']:.4f})" for c in cols) + " |")
    lines += ["", "## Folds", "", "| " + " | ".join(_FOLD_COLUMNS) + " |", "|" + "---|" * len(_FOLD_COLUMNS)]
    for f in result.folds:
        lines.append("| " + " | ".join(f"{f[c]:.4f}" if isinstance(f[c], float) else str(f[c]) for c in _FOLD_COLUMNS)
                     + " |")
    if result.leak_warning:
        lines += ["", f"**Leak warning:** {result.leak_warning}"]
    lines += ["", "Out-of-sample predictions of each fold (P(up) per test row, float32): `predictions/fold_NNN.npy`."]
    lines += ["", "Realistic out-of-sample AUC for bar direction from OHLCV features is 0.50-0.53; see docs/walk-forward.md.",
              "", "![AUC per fold](auc_per_fold.png)", "", "![ROC and calibration](roc_calibration.png)", ""]
    return "\n".join(lines)


def write_artifacts(result, ds, folds, predictions: list[Path], config) -> dict[str, str]:
    """Write everything for one stage into ``result.run_dir``; returns name -> path. ``predictions``: the
    completed folds' test-prediction files, in fold order."""
    import pandas as pd

    d: Path = result.run_dir
    out: dict[str, str] = {}
    table = pd.DataFrame(result.folds)
    _io.atomic_write_bytes(d / "fold_metrics.csv", table.to_csv(index=False).encode())
    _io.atomic_write_json(d / "fold_metrics.json", {"folds": result.folds, "summary": result.summary.to_dict("index")})
    out["fold_metrics_csv"], out["fold_metrics_json"] = str(d / "fold_metrics.csv"), str(d / "fold_metrics.json")
    if (d / "best_model.joblib").is_file():
        model_path = d / f"{config.run_name(result.mode)}.joblib"
        shutil.copyfile(d / "best_model.joblib", model_path)
        out["model"] = str(model_path)
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
