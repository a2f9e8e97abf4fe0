"""Walk-forward training: data -> features -> labels -> purged splits -> one model per fold -> metrics and artifacts.

Every fold is a unit of work: it is checked against the time budget before it starts, and a checkpoint holding
all fold results so far is written after it (``CheckpointManager``). The fold's test predictions go to
``predictions/fold_NNN.npy`` beside it (the checkpoint records their SHA-256, checked on resume), so a
checkpoint stays a few kilobytes however large the folds. ``resume=True`` continues after the last
completed fold; each fold is deterministic given the seed, so a resumed run reports exactly the metrics of an
uninterrupted one.

A stage tests every planned fold unless early stopping is on (quick mode by default, or ``early_stopping=True``):
then it stops after ``patience`` folds without a better AUC, and says so everywhere (status ``stopped_early``,
with the share of the test period its metrics cover). After the folds, the model to deploy is refit on every
labelled row (same pipeline and settings) and saved as ``{run_name}.joblib``; its expected performance is the
walk-forward mean, never the best fold's (which was picked on its own test data).

Nothing is written to the output folder before the inputs are validated: bad data or settings that do not fit
the data (a split that needs more days, a checkpoint of other settings) raise before the run directory exists.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import joblib
import numpy as np
import pandas as pd
import psutil

from atheria_kit import _io
from atheria_kit.market import ohlcv
from atheria_kit.runlog import RunLog
from atheria_kit.stats.ledger import TrialsLedger
from atheria_kit.stats.sharpe import has_spread
from atheria_kit.stats.summary import OverfittingSummary, summarize_overfitting
from atheria_kit.walkforward import evaluation as ev
from atheria_kit.walkforward import splits as sp
from atheria_kit.walkforward import streaming
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.dataset import Dataset, build_dataset, load_bars, take_rows
from atheria_kit.walkforward.gate import GateVerdict, evaluate_gate
from atheria_kit.walkforward.models import STREAMING_MODEL, fit_counting_warnings, make_model, resolve_model
from atheria_kit.walkforward.money import MoneyView, money_view

logger = logging.getLogger(__name__)

__all__ = ["Dataset", "StageResult", "build_dataset", "compare_shuffled_vs_walkforward", "load_bars", "make_folds",
           "prepare_dataset", "release_dataset", "run_stage", "run_walkforward", "take_rows"]

#: Out-of-sample predictions of each fold, in the stage's run directory: ``predictions/fold_000.npy``, ...
PREDICTIONS_DIR = "predictions"
#: The best fold's own model (chosen on its test data: for diagnosis, not for deployment).
FOLD_MODELS_DIR = "fold_models"
#: Metrics of the model summarized over folds in ``progress.json`` (mean, median, std, min, max each).
PROGRESS_METRICS: tuple[str, ...] = ("auc", "accuracy", "f1", "brier", "log_loss")


@dataclass
class StageResult:
    """Outcome of one stage (quick, full or count)."""

    mode: str
    run_dir: Path
    folds: list[dict[str, Any]]
    summary: pd.DataFrame
    status: str  # "finished" | "stopped_early" | "stopped"
    stop_reason: str | None = None
    planned_folds: int = 0
    test_rows_planned: int = 0
    convergence_warnings: int = 0
    leak_warning: str | None = None
    data_warning: str | None = None
    null_auc_se: float = math.nan
    peak_rss_bytes: int = 0
    best_fold: int | None = None
    gate: GateVerdict | None = None
    decision: str | None = None  # sequential: what happened to the full stage after this quick stage's gate
    refit: dict[str, Any] | None = None  # the deployable model: rows, period, seconds (None when not refit)
    money: MoneyView | None = None
    overfitting: OverfittingSummary | None = None  # PSR/DSR/PBO of long/flat among the study's trials
    overfitting_note: str = ""  # why there is none
    tie_rate: float = 0.0
    ties: str = "drop"
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def means(self) -> dict[str, float]:
        return self.summary.loc["model"].to_dict() if "model" in self.summary.index else {}

    @property
    def test_rows_done(self) -> int:
        return int(sum(f["test_rows"] for f in self.folds))

    @property
    def coverage(self) -> float:
        """Share of the planned test period's bars that the completed folds tested."""
        return self.test_rows_done / self.test_rows_planned if self.test_rows_planned else 0.0

    def headline(self) -> str:
        """One sentence: how far the stage got and what its metrics cover."""
        k, n = len(self.folds), self.planned_folds
        if self.status == "finished":
            return f"all {n} planned folds tested (100 % of the test period)"
        cover = f"metrics cover {100 * self.coverage:.0f} % of the test period"
        if self.status == "stopped_early":
            return f"stopped early after {k} of {n} folds ({self.stop_reason}): {cover}"
        return f"stopped after {k} of {n} folds ({self.stop_reason}): {cover}; run again with --resume to continue"


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _ram_fraction() -> float:
    return psutil.virtual_memory().percent / 100.0


def _available_memory() -> int:
    return int(psutil.virtual_memory().available)


def prepare_dataset(
    config: WalkForwardConfig, *, bars: pd.DataFrame | None = None,
    memory_guard: Callable[[], float] | None = _ram_fraction, available_memory: Callable[[], int] = _available_memory,
) -> Dataset:
    """The run's dataset, in memory or out of core (``config.out_of_core``; ``auto`` decides from the estimated
    peak and ``available_memory()``); the choice and its reason are logged. Free it with :func:`release_dataset`.

    Raises on bad data before anything stays in the output folder (the out-of-core work files are removed)."""
    n_bars = streaming.estimate_bars(config, bars)
    use, why = streaming.choose_out_of_core(config, n_bars, available_memory())
    logger.info("%s: %s", config.run_name(), why)
    if use:
        return streaming.build_dataset_out_of_core(config, bars=bars, memory_guard=memory_guard)
    bars = load_bars(config) if bars is None else bars
    return build_dataset(bars, config.horizon, ties=config.ties, chunk_size=config.chunk_size,
                         memory_threshold=config.memory_threshold, memory_guard=memory_guard)


def release_dataset(ds: Dataset) -> None:
    """Delete an out-of-core dataset's work files (nothing to do for an in-memory one)."""
    streaming.release(ds)


def make_folds(ds: Dataset, config: WalkForwardConfig, mode: str) -> list[sp.Fold]:
    if mode == "count":
        return sp.walk_forward_splits(ds.times, ds.resolved_at, config.n_splits, embargo_ns=config.embargo_ns)
    bar_ns = ohlcv.timeframe_to_timedelta(config.timeframe).value
    return sp.time_splits(ds.times, ds.resolved_at, embargo_ns=config.embargo_ns, bar_ns=bar_ns,
                          **config.split_params(mode))


def _labelled(X, y) -> tuple[Any, Any]:
    """The rows of an in-memory train set whose label is 0/1 (a view when there is no excluded tie); an
    out-of-core one is returned as is (its model skips NaN labels block by block)."""
    if not isinstance(y, np.ndarray):
        return X, y
    keep = ~np.isnan(y)
    return (X, y) if keep.all() else (X[keep], y[keep])


def _evaluate_in_memory(model, ds: Dataset, fold: sp.Fold, predictions: IO[bytes]) -> dict[str, float]:
    """The fold's metrics (model and both baselines) over its labelled test rows, and its row counts; the
    predictions for every test row go to ``predictions`` (float32 .npy)."""
    proba = model.predict_proba(take_rows(ds.X, fold.test))[:, 1]
    np.save(predictions, proba.astype(np.float32))
    y_tr, y_te = take_rows(ds.y, fold.train), take_rows(ds.y, fold.test)
    lab_tr, lab_te = ~np.isnan(y_tr), ~np.isnan(y_te)
    y = y_te[lab_te]
    rec: dict[str, Any] = {"train_size": int(lab_tr.sum()), "test_size": int(lab_te.sum()),
                           "test_up": int(np.count_nonzero(y == 1)), "test_ties": int(len(y_te) - lab_te.sum())}
    rec.update(ev.classification_metrics(y, proba[lab_te]))
    maj = ev.majority_baseline(y_tr, len(y))
    rec.update({f"majority_{k}": v for k, v in ev.classification_metrics(y, maj).items()})
    last = ev.last_bar_baseline(y_tr, take_rows(ds.last_up, fold.train), take_rows(ds.last_up, fold.test))
    rec.update({f"last_bar_{k}": v for k, v in ev.classification_metrics(y, last[lab_te]).items()})
    return rec


def _fold_record(i: int, fold: sp.Fold, ds: Dataset, metrics: dict[str, float], seconds: float,
                 conv: int) -> dict[str, Any]:
    return {
        "fold": i,
        "test_start": pd.Timestamp(int(ds.times[fold.test[0]]), tz="UTC").isoformat(),
        "test_end": pd.Timestamp(int(ds.times[fold.test[-1]]), tz="UTC").isoformat(),
        "test_rows": int(len(fold.test)),
        "seconds": float(seconds),
        "convergence_warnings": int(conv),
        **metrics,
    }


def _prediction_entry(path: Path, rows: int) -> dict[str, Any]:
    """What the checkpoint state records of a fold's prediction file."""
    return {"file": path.name, "rows": int(rows), "sha256": _io.sha256_file(path)}


def _convert_legacy_predictions(directory: Path, state: dict[str, Any]) -> None:
    """Checkpoints written before predictions moved to files held them as tensors (``proba``): write the files."""
    entries = []
    for i, t in enumerate(state.pop("proba")):
        path = directory / f"fold_{i:03d}.npy"
        with _io.atomic_open(path) as fh:
            np.save(fh, t.numpy().astype(np.float32))
        entries.append(_prediction_entry(path, len(t)))
    state["predictions"] = entries


def _check_predictions(run_dir: Path, state: dict[str, Any], folds: list[sp.Fold]) -> None:
    """On resume: every completed fold's prediction file is there and intact (its SHA-256 as recorded) and has
    as many rows as the fold has now, else a clear error."""
    directory = run_dir / PREDICTIONS_DIR
    for i, entry in enumerate(state.get("predictions", [])):
        path = directory / entry["file"]
        problem = None
        if not path.is_file():
            problem = "is missing"
        elif _io.sha256_file(path) != entry["sha256"]:
            problem = "is corrupt (its SHA-256 differs from the one recorded in the checkpoint)"
        if problem:
            raise ValueError(
                f"--resume: the test predictions of fold {i} ({path}) {problem}; the report needs them. "
                "Restore the file, or start the stage over without --resume."
            )
        if i < len(folds) and entry["rows"] != len(folds[i].test):
            raise ValueError(
                f"--resume: fold {i} had {entry['rows']} test rows when it was run and has {len(folds[i].test)} "
                "now: the data changed under the same settings. Start the stage over without --resume, or use "
                "another --out."
            )


class _PackageLog(logging.Handler):
    """This package's log records of the current thread: held in memory until :meth:`to_file` names the run's
    log file (nothing is written before the inputs are validated), then written there.

    Only records of the thread that opened it are taken: runs sharing a process (joblib's threading backend, a
    dask worker with several threads) each keep their own log. The package logger's level is lowered to INFO
    while any run is active and restored when the last one ends.
    """

    _lock = threading.Lock()
    _active = 0
    _saved_level = logging.NOTSET

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        thread = threading.get_ident()
        self.addFilter(lambda record: record.thread == thread)
        self.held: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None
        self.package = logging.getLogger("atheria_kit")

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            self.held.append(record)
        else:
            self.file.handle(record)

    def to_file(self, path: Path, earlier: Sequence[logging.LogRecord] = ()) -> None:
        """From now on write to ``path``, starting with ``earlier`` records and those held so far."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for record in (*earlier, *self.held):
            self.file.handle(record)
        self.held = []

    def __enter__(self) -> _PackageLog:
        cls = type(self)
        with cls._lock:
            if cls._active == 0:
                cls._saved_level = self.package.level
                if self.package.getEffectiveLevel() > logging.INFO:
                    self.package.setLevel(logging.INFO)
            cls._active += 1
        self.package.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.package.removeHandler(self)
        if self.file is not None:
            self.file.close()
        cls = type(self)
        with cls._lock:
            cls._active -= 1
            if cls._active == 0:
                self.package.setLevel(cls._saved_level)


def run_stage(
    config: WalkForwardConfig,
    mode: str,
    *,
    bars: pd.DataFrame | None = None,
    dataset: Dataset | None = None,
    budget: Any | None = None,
    clock: Callable[[], float] = time.monotonic,
    memory_guard: Callable[[], float] | None = _ram_fraction,
) -> StageResult:
    """Run (or resume) one walk-forward stage and write its artifacts under ``{out}/direction/{run_name}``."""
    return _run_stage(config, mode, bars=bars, dataset=dataset, budget=budget, clock=clock, memory_guard=memory_guard)


def _run_stage(config, mode, *, bars=None, dataset=None, budget=None, clock=time.monotonic, memory_guard=_ram_fraction,
               earlier_logs: Sequence[logging.LogRecord] = ()) -> StageResult:
    run_dir = Path(config.out) / "direction" / config.run_name(mode)
    with _PackageLog() as log:
        model_name, device_note = resolve_model(config.model, config.use_gpu)  # logs a missing GPU
        owned = dataset is None
        ds = prepare_dataset(config, bars=bars, memory_guard=memory_guard) if owned else dataset
        try:
            # everything that can reject the inputs, before the run directory is written
            if streaming.is_out_of_core(ds):
                model_name = STREAMING_MODEL
                device_note = f"out of core: {model_name} (SGD logistic regression over chunks, features on disk) on CPU"
            folds = make_folds(ds, config, mode)
            fingerprint = json.loads(json.dumps(
                config.fingerprint() | {"mode": mode, "model": model_name,
                                        "early_stopping": config.uses_early_stopping(mode)}))
            state, mgr = _fresh_state(fingerprint), None
            if config.resume and (run_dir / "checkpoints").is_dir():
                state, mgr = _resumed_state(run_dir, state, fingerprint, folds, budget)
            log.to_file(run_dir / "logs" / "walkforward.log", earlier_logs)
            logger.info("%s: %s", config.run_name(mode), device_note)
            _io.atomic_write_json(run_dir / "config.json", config.to_dict())
            if ds.synthetic:
                logger.warning("data is SYNTHETIC (%s): metrics say nothing about real markets", ds.source)
            logger.info("%d rows (%d labelled, %d ties %s), %d features, %d folds (%s)", len(ds.y), ds.labelled,
                        ds.ties, "excluded" if ds.tie_policy == "drop" else "labelled down", ds.X.shape[1],
                        len(folds), mode)
            if mgr is None:
                mgr = _start_over(run_dir, config, budget)
            return _run_folds(config, mode, ds, folds, state, mgr, run_dir, model_name, device_note, budget, clock,
                              memory_guard)
        finally:
            if owned:
                release_dataset(ds)


def _fresh_state(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {"fingerprint": fingerprint, "folds": [], "predictions": [], "best_auc": -1.0, "best_fold": None,
            "since_best": 0, "stopped_early": False}


def _checkpoints(run_dir: Path, budget: Any | None):
    # torch comes with the checkpoint manager: imported when a stage runs, not with the CLI or the notebook's setup
    from atheria_kit.checkpoint import CheckpointManager

    return CheckpointManager(run_dir / "checkpoints", monitor="best_auc", mode="max", keep_best=1, async_save=False,
                             budget=budget)


def _resumed_state(run_dir, state, fingerprint, folds, budget):
    """The checkpointed state of a run to resume (checked against the settings and the prediction files), or
    the fresh ``state`` when no valid checkpoint exists."""
    mgr = _checkpoints(run_dir, budget)
    loaded = mgr.load("latest")
    if loaded is None:
        return state, mgr
    if loaded.state.get("fingerprint") != fingerprint:
        mgr.close()
        raise ValueError(
            f"--resume: the checkpoint in {run_dir / 'checkpoints'} was made with different settings "
            f"({loaded.state.get('fingerprint')}); use the same settings or a different --out"
        )
    state = dict(loaded.state)
    directory = run_dir / PREDICTIONS_DIR
    _io.remove_stale_temp_files(directory)  # a fold killed while writing its predictions
    if "proba" in state:
        _convert_legacy_predictions(directory, state)
    try:
        _check_predictions(run_dir, state, folds)
    except ValueError:
        mgr.close()
        raise
    logger.info("resuming after fold %d of %d", len(state["folds"]) - 1, len(folds))
    return state, mgr


def _start_over(run_dir: Path, config: WalkForwardConfig, budget: Any | None):
    """Without --resume (or nothing to resume): an earlier run's checkpoints would outrank this run's first ones
    (higher steps) on a later --resume, and its predictions and fold models are not this run's."""
    if not config.resume and (run_dir / "checkpoints").is_dir():
        logger.warning("no --resume: removing the previous run's checkpoints and predictions in %s; starting over",
                       run_dir)
    for name in ("checkpoints", PREDICTIONS_DIR, FOLD_MODELS_DIR):
        _io.remove_tree(run_dir / name)
    return _checkpoints(run_dir, budget)


def _run_folds(config, mode, ds, folds, state, mgr, run_dir, model_name, device_note, budget, clock,
               memory_guard) -> StageResult:
    runlog = RunLog(run_dir, kind="walkforward", total=len(folds), unit="fold", resume=config.resume, clock=clock)
    runlog.update(done=len(state["folds"]), message=f"{mode}: {len(folds)} folds, {device_note}")
    try:
        status, reason = _fold_loop(config, mode, ds, folds, state, mgr, runlog, model_name, budget, clock,
                                    memory_guard, run_dir)
        mgr.close()
        refit = None
        if status != "stopped":
            if budget is not None and not budget.can_start():
                status, reason = "stopped", "time budget: all folds are done, the deployable model's refit is left"
            else:
                refit = _refit(config, mode, ds, model_name, run_dir, budget)
        result = _finish_stage(config, mode, ds, folds, state, run_dir, status, reason, refit)
    except BaseException as exc:
        mgr.close()
        runlog.finish("error", message=f"{type(exc).__name__}: {exc}")
        raise
    runlog.update(metrics=progress_metrics(result), message=result.headline())
    runlog.finish(result.status, message=result.headline())
    return result


def _fold_loop(config, mode, ds, folds, state, mgr, runlog, model_name, budget, clock, memory_guard, run_dir):
    """Train and evaluate the remaining folds; returns (status, stop reason)."""
    status, reason, reported_tenths = "finished", None, 0
    early = config.uses_early_stopping(mode)
    if state["stopped_early"]:
        return "stopped_early", _early_reason(config)
    for i in range(len(state["folds"]), len(folds)):
        if budget is not None and not budget.can_start():
            status, reason = "stopped", "time budget: not enough time left for another fold and the final save"
            break
        used = memory_guard() if memory_guard is not None else 0.0
        if used > config.memory_threshold:
            status, reason = "stopped", (
                f"RAM use {used:.0%} is above memory_threshold={config.memory_threshold:.0%}; "
                "stopped before the machine swaps (resume later with --resume, or lower --max-bars)"
            )
            break
        fold = folds[i]
        if budget is not None:
            budget.start_unit()
        t0 = clock()
        model = make_model(model_name, len(fold.train), seed=config.seed, use_gpu=config.use_gpu)
        fit = fit_counting_warnings(model, *_labelled(take_rows(ds.X, fold.train), take_rows(ds.y, fold.train)))
        pred_path = run_dir / PREDICTIONS_DIR / f"fold_{i:03d}.npy"
        with _io.atomic_open(pred_path) as fh:
            metrics = (streaming.evaluate_fold if streaming.is_out_of_core(ds) else _evaluate_in_memory)(
                fit.model, ds, fold, fh)
        rec = _fold_record(i, fold, ds, metrics, clock() - t0, fit.convergence_warnings)
        if budget is not None:
            budget.end_unit()
        state["folds"].append(rec)
        state["predictions"].append(_prediction_entry(pred_path, len(fold.test)))
        auc = rec["auc"] if math.isfinite(rec["auc"]) else -1.0
        if auc > state["best_auc"]:
            _keep_fold_model(run_dir, fit.model, i, state["best_fold"])
            state.update(best_auc=float(auc), best_fold=i, since_best=0)
        else:
            state["since_best"] += 1
            if early and state["since_best"] >= config.patience:
                state["stopped_early"] = True
                logger.info("early stop after fold %d of %d: AUC has not improved for %d folds (best: fold %d, "
                            "%.4f)", i + 1, len(folds), config.patience, state["best_fold"], state["best_auc"])
        mgr.save(state, step=i + 1, metrics={"best_auc": state["best_auc"], "auc": auc}, blocking=True)
        done = i + 1
        rss = psutil.Process().memory_info().rss
        runlog.log({k: rec[k] for k in ("fold", "auc", "accuracy", "f1", "majority_auc", "last_bar_auc", "seconds")},
                   done=done, message=f"{mode}: fold {done}/{len(folds)} AUC {rec['auc']:.4f}")
        runlog.log_resources()
        tenths = 10 * done // len(folds)  # whole tenths in integers: adding 0.1 repeatedly drifts
        if tenths > reported_tenths or done == len(folds):
            eta = runlog.eta_seconds  # set: a fold was just logged
            logger.info("%3.0f%% fold %d/%d AUC %.4f (last-bar %.4f) acc %.4f | ETA %.0fs | RSS %.0f MB",
                        100 * done / len(folds), done, len(folds), rec["auc"], rec["last_bar_auc"],
                        rec["accuracy"], eta, rss / 2**20)
            reported_tenths = tenths
        if state["stopped_early"]:
            return "stopped_early", _early_reason(config)
    return status, reason


def _early_reason(config: WalkForwardConfig) -> str:
    return f"AUC not improved for {config.patience} folds"


def _keep_fold_model(run_dir: Path, model: Any, fold: int, previous: int | None) -> None:
    """Keep the best fold's own model in ``fold_models/`` (replacing the previous best)."""
    with _io.atomic_open(run_dir / FOLD_MODELS_DIR / f"fold_{fold:03d}.joblib") as fh:
        joblib.dump(model, fh)
    if previous is not None and previous != fold:
        (run_dir / FOLD_MODELS_DIR / f"fold_{previous:03d}.joblib").unlink(missing_ok=True)


def refit_rows(ds: Dataset, config: WalkForwardConfig, mode: str) -> range:
    """The rows the deployable model is fit on: every row whose label is known by the last bar (nothing after
    them is tested, so nothing is purged), or, with a rolling window, the rows of the last ``train_window_days``
    before the bar after the last labelled one (the window each fold trained on)."""
    m = len(ds.y)
    params = config.split_params(mode) if mode in ("quick", "full") else {}
    if params.get("window") != "rolling":
        return range(0, m)
    end = int(ds.times[m - 1]) + ohlcv.timeframe_to_timedelta(config.timeframe).value
    first = int(ds.times.searchsorted(end - int(params["train_window_days"] * 86_400 * 10**9), "left"))
    return range(first, m)


def _refit(config, mode, ds, model_name, run_dir, budget) -> dict[str, Any]:
    """Fit the deployable model on :func:`refit_rows` with the folds' pipeline and settings; save it as
    ``{run_name}.joblib``."""
    if budget is not None:
        budget.start_unit()
    rows = refit_rows(ds, config, mode)
    t0 = time.monotonic()
    model = make_model(model_name, len(rows), seed=config.seed, use_gpu=config.use_gpu)
    X, y = _labelled(take_rows(ds.X, rows), take_rows(ds.y, rows))
    fit = fit_counting_warnings(model, X, y)
    path = run_dir / f"{config.run_name(mode)}.joblib"
    with _io.atomic_open(path) as fh:
        joblib.dump(fit.model, fh)
    if budget is not None:
        budget.end_unit()
    labelled = len(y) if isinstance(y, np.ndarray) else sum(  # on disk: counted block by block
        int(np.count_nonzero(~np.isnan(block))) for _, _, block in y.iter_blocks(1 << 20))
    info = {"path": str(path), "rows": len(rows), "labelled": int(labelled),
            "first_bar": pd.Timestamp(int(ds.times[rows.start]), tz="UTC").isoformat(),
            "last_bar": pd.Timestamp(int(ds.times[rows.stop - 1]), tz="UTC").isoformat(),
            "seconds": time.monotonic() - t0, "convergence_warnings": fit.convergence_warnings}
    logger.info("deployable model refit on %d rows (%s .. %s, labels known by the last bar) in %.1fs -> %s",
                info["rows"], info["first_bar"], info["last_bar"], info["seconds"], path)
    return info


def progress_metrics(result: StageResult) -> dict[str, Any]:
    """The stage summary as flat numbers for ``progress.json`` (what ``atheria monitor --summary`` shows)."""
    out: dict[str, Any] = {"folds_planned": result.planned_folds, "folds_completed": len(result.folds),
                           "test_coverage": result.coverage}
    if not result.folds:
        return out
    s = result.summary
    for m in PROGRESS_METRICS:
        out[f"{m}_mean"] = s.loc["model", m]
        out.update({f"{m}_{stat}": s.loc["model", f"{m}_{stat}"] for stat in ev.SPREAD})
    for base in ("last_bar", "majority"):
        if base in s.index:
            out[f"{base}_auc_mean"] = s.loc[base, "auc"]
    if result.money is not None:
        for strategy, figures in result.money.whole.items():
            out[f"{strategy}_sharpe"] = figures["sharpe"]
            out[f"{strategy}_total_return"] = figures["total_return"]
    if result.overfitting is not None:
        o = result.overfitting
        out.update({"trials": o.n_trials, "psr": o.psr, "dsr": o.dsr})
    return out


def _finish_stage(config, mode, ds, folds, state, run_dir, status, reason, refit) -> StageResult:
    done = state["folds"]
    result = StageResult(
        mode=mode, run_dir=run_dir, folds=done, summary=ev.summarize(done), status=status, stop_reason=reason,
        planned_folds=len(folds), test_rows_planned=int(sum(len(f.test) for f in folds)),
        convergence_warnings=sum(f["convergence_warnings"] for f in done), peak_rss_bytes=_peak_rss(),
        best_fold=state["best_fold"], refit=refit, tie_rate=ds.tie_rate, ties=ds.tie_policy,
    )
    logger.info("%s: %s", config.run_name(mode), result.headline())
    if not done:
        return result
    result.null_auc_se = ev.null_auc_se([f["test_size"] for f in done], [f["test_up"] for f in done])
    base = result.summary.loc["last_bar", "auc"] if "last_bar" in result.summary.index else math.nan
    result.leak_warning = ev.leak_warning(float(result.means.get("auc", math.nan)), config.leak_auc,
                                          result.null_auc_se)
    result.data_warning = ev.data_warning(float(base), config.leak_baseline_auc, result.null_auc_se,
                                          ds.tie_rate)
    for warning in (result.leak_warning, result.data_warning):
        if warning:
            logger.warning(warning)
    if result.convergence_warnings:
        logger.warning("%d convergence warnings over %d folds (lbfgs stopped at max_iter; results are "
                       "usually still fine for standardised features)", result.convergence_warnings, len(done))
    paths = [run_dir / PREDICTIONS_DIR / p["file"] for p in state["predictions"]]
    from atheria_kit.ensemble.backtest import BacktestConfig
    from atheria_kit.ensemble.performance import bars_per_year

    result.money = money_view(
        ds, [folds[i].test for i in range(len(done))], paths, threshold=config.trade_threshold,
        costs=BacktestConfig(fee=config.fee, slippage=config.slippage), turnover=config.turnover,
        periods_per_year=bars_per_year(ohlcv.timeframe_to_timedelta(config.timeframe) / pd.Timedelta(minutes=1)))
    result.overfitting, result.overfitting_note = record_trials(config, mode, result.money)
    if result.overfitting is not None:
        logger.info("%s: is it real? %s", config.run_name(mode), result.overfitting.reading)
    from atheria_kit.walkforward.report import write_artifacts

    result.artifacts = write_artifacts(result, ds, folds, paths, config)
    return result


#: The trading rules of the money view recorded as trials of the study (``--out``): two ways to trade, two trials.
TRIAL_STRATEGIES: tuple[str, ...] = ("long_flat", "long_short")


def record_trials(config: WalkForwardConfig, mode: str, money: MoneyView) -> tuple[OverfittingSummary | None, str]:
    """Record the stage's daily after-cost returns (long/flat and long/short) in the trials ledger of ``--out``
    and judge long/flat among every trial recorded there: PSR, DSR with the real number of trials, and PBO
    once there are several. Re-running a configuration replaces its record, so nothing is counted twice.
    Returns the summary, or None and the reason (fewer than 2 days tested, a rule that never traded)."""
    daily = money.daily
    if len(daily) < 2:
        return None, f"the test period spans {len(daily)} day(s); the statistics need at least 2 days of returns"
    ledger = TrialsLedger(Path(config.out))
    params = json.loads(json.dumps(config.fingerprint() | {"mode": mode, "trade_threshold": config.trade_threshold,
                                                           "fee": config.fee, "slippage": config.slippage}))
    ids = {}
    for strategy in TRIAL_STRATEGIES:
        rec = ledger.record("walkforward", f"{config.run_name(mode)} {strategy}", params | {"strategy": strategy},
                            daily[strategy], metrics={k: v for k, v in money.whole[strategy].items()
                                                      if isinstance(v, (int, float)) and math.isfinite(v)})
        ids[strategy] = rec.id
    if not has_spread(daily["long_flat"].to_numpy()):
        return None, "long/flat never held a position (all daily returns are 0): its Sharpe ratio is undefined"
    return summarize_overfitting(ledger, ids["long_flat"], periods_per_year=365.0), ""


def run_walkforward(
    config: WalkForwardConfig,
    *,
    bars: pd.DataFrame | None = None,
    confirm: Callable[[GateVerdict], bool] | None = None,
    budget: Any | None = None,
    memory_guard: Callable[[], float] | None = _ram_fraction,
    available_memory: Callable[[], int] = _available_memory,
) -> list[StageResult]:
    """Run the configured mode; ``sequential`` runs quick, applies the gate, then full if confirmed.

    ``confirm(verdict)`` decides in sequential mode when ``config.confirm`` is None (the CLI asks on a terminal).
    ``available_memory()`` (bytes) feeds the ``out_of_core='auto'`` choice.
    """
    with _PackageLog() as log:  # the preparation's log lines go into each stage's log file
        ds = prepare_dataset(config, bars=bars, memory_guard=memory_guard, available_memory=available_memory)
        prep = list(log.held)
    del bars  # the stages need only the dataset; a frame loaded here can be freed
    try:
        return _run_stages(config, ds, confirm, budget, memory_guard, prep)
    finally:
        release_dataset(ds)


def _run_stages(config, ds, confirm, budget, memory_guard, prep) -> list[StageResult]:
    kw = {"dataset": ds, "budget": budget, "memory_guard": memory_guard, "earlier_logs": prep}
    if config.mode != "sequential":
        res = _run_stage(config, config.mode, **kw)
        res.gate = evaluate_gate(res.means, config.gate) if res.folds else None
        return [res]
    quick = _run_stage(config, "quick", **kw)
    quick.gate = evaluate_gate(quick.means, config.gate)
    if config.confirm is not None:
        go, how = config.confirm, "--yes" if config.confirm else "--no"
    elif confirm is not None:
        go = bool(confirm(quick.gate))
        how = "confirmed interactively" if go else "declined interactively"
    else:
        go, how = quick.gate.passed, "gate verdict (non-interactive)"
    if quick.status == "stopped":
        go, how = False, f"the quick stage did not complete ({quick.stop_reason}); run again with --resume"
    elif not go and how.startswith("gate verdict"):
        how += "; add --yes to run the full stage anyway"
    quick.decision = f"full stage {'run' if go else 'not run'} ({how})"
    from atheria_kit.walkforward.report import append_gate_verdict

    append_gate_verdict(quick, go, how)
    if not go:
        return [quick]
    full = _run_stage(config, "full", **kw)
    full.gate = evaluate_gate(full.means, config.gate) if full.folds else None
    return [quick, full]


def compare_shuffled_vs_walkforward(
    bars: pd.DataFrame, *, horizon: int = 8, n_splits: int = 5, model: str = "hgb", seed: int = 0
) -> dict[str, float]:
    """Mean AUC of shuffled K-fold (the common mistake) and of purged walk-forward on the same data.

    With overlapping ``horizon``-bar labels, shuffled K-fold puts near-duplicates of each test sample into
    train, so even a pure random walk looks predictable; the purged walk-forward does not. Rows whose label is
    a tie are left out of both.
    """
    from sklearn.model_selection import KFold

    ds = build_dataset(bars, horizon, memory_guard=None)
    lab = np.flatnonzero(~np.isnan(ds.y))
    X, y, times, resolved = ds.X[lab], ds.y[lab], ds.times[lab], ds.resolved_at[lab]
    out: dict[str, list[float]] = {"shuffled_kfold": [], "purged_walk_forward": []}
    shuffled = [(tr, te) for tr, te in KFold(n_splits, shuffle=True, random_state=seed).split(X)]
    wf = [(np.asarray(f.train), np.asarray(f.test)) for f in sp.walk_forward_splits(times, resolved, n_splits)]
    for name, pairs in (("shuffled_kfold", shuffled), ("purged_walk_forward", wf)):
        for tr, te in pairs:
            m = make_model(model, len(tr), seed=seed)
            fit_counting_warnings(m, X[tr], y[tr])
            out[name].append(ev.classification_metrics(y[te], m.predict_proba(X[te])[:, 1])["auc"])
    return {k: float(np.mean(v)) for k, v in out.items()}
