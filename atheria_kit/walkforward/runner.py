"""Walk-forward training: data -> features -> labels -> purged splits -> one model per fold -> metrics and artifacts.

Every fold is a unit of work: it is checked against the time budget before it starts, and a checkpoint holding
all fold results so far is written after it (``CheckpointManager``). The fold's test predictions go to
``predictions/fold_NNN.npy`` beside it (the checkpoint records their SHA-256, checked on resume), so a
checkpoint stays a few kilobytes however large the folds. ``resume=True`` continues after the last
completed fold; each fold is deterministic given the seed, so a resumed run reports exactly the metrics of an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import joblib
import numpy as np
import pandas as pd
import psutil

from atheria_kit import _io, ohlcv
from atheria_kit.walkforward import evaluation as ev
from atheria_kit.walkforward import features as feats
from atheria_kit.walkforward import splits as sp
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.disk import DiskColumn, DiskMatrix
from atheria_kit.walkforward.gate import GateVerdict, evaluate_gate
from atheria_kit.walkforward.labels import direction_labels, last_bar_up
from atheria_kit.walkforward.models import STREAMING_MODEL, fit_counting_warnings, make_model, resolve_model

logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Model-ready samples: rows with complete features and a label, in time order."""

    # in memory: numpy arrays; out of core (:mod:`.streaming`): a DiskMatrix and DiskColumns with the same values
    X: np.ndarray | DiskMatrix  # float32 (m, n_features)
    y: np.ndarray | DiskColumn  # float32 0/1
    times: np.ndarray | DiskColumn  # int64 ns, bar open time
    resolved_at: np.ndarray | DiskColumn  # int64 ns, when the label is known
    last_up: np.ndarray | DiskColumn  # bool, direction of the sample's own bar (for the last-bar baseline)
    feature_names: tuple[str, ...]
    source: str
    synthetic: bool
    gaps: int


@dataclass
class StageResult:
    """Outcome of one stage (quick, full or count)."""

    mode: str
    run_dir: Path
    folds: list[dict[str, Any]]
    summary: pd.DataFrame
    status: str  # "finished" | "stopped"
    stop_reason: str | None = None
    convergence_warnings: int = 0
    leak_warning: str | None = None
    peak_rss_bytes: int = 0
    best_fold: int | None = None
    gate: GateVerdict | None = None
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def means(self) -> dict[str, float]:
        return self.summary.loc["model"].to_dict() if "model" in self.summary.index else {}


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _ram_fraction() -> float:
    return psutil.virtual_memory().percent / 100.0


def load_bars(config: WalkForwardConfig) -> pd.DataFrame:
    """The bars named by the config: a file, the shipped sample, or synthetic (``data="synthetic"``)."""
    if config.data == "synthetic":
        df = ohlcv.synthetic_ohlcv(config.synthetic_bars, timeframe=config.timeframe, seed=config.seed)
        return ohlcv.select_range(df, start=config.start, end=config.end, max_bars=config.max_bars)
    df = ohlcv.load_ohlcv(config.data_path(), start=config.start, end=config.end, max_bars=0)
    if ohlcv.infer_interval(df) != ohlcv.timeframe_to_timedelta(config.timeframe):
        df = ohlcv.resample_ohlcv(df, config.timeframe)
    return ohlcv.select_range(df, max_bars=config.max_bars) if config.max_bars else df


def _available_memory() -> int:
    return int(psutil.virtual_memory().available)


def prepare_dataset(
    config: WalkForwardConfig, *, bars: pd.DataFrame | None = None,
    memory_guard: Callable[[], float] | None = _ram_fraction, available_memory: Callable[[], int] = _available_memory,
) -> Dataset:
    """The run's dataset, in memory or out of core (``config.out_of_core``; ``auto`` decides from the estimated
    peak and ``available_memory()``); the choice and its reason are logged. Free it with :func:`release_dataset`."""
    from atheria_kit.walkforward import streaming

    n_bars = streaming.estimate_bars(config, bars)
    use, why = streaming.choose_out_of_core(config, n_bars, available_memory())
    logger.info("%s: %s", config.run_name(), why)
    if use:
        return streaming.build_dataset_out_of_core(config, bars=bars, memory_guard=memory_guard)
    bars = load_bars(config) if bars is None else bars
    return build_dataset(bars, config.horizon, chunk_size=config.chunk_size, memory_threshold=config.memory_threshold,
                         memory_guard=memory_guard)


def release_dataset(ds: Dataset) -> None:
    """Delete an out-of-core dataset's work files (nothing to do for an in-memory one)."""
    from atheria_kit.walkforward import streaming

    streaming.release(ds)


def take_rows(a: np.ndarray, rows: np.ndarray | range) -> np.ndarray:
    """``a[rows]`` for sorted, unique ``rows`` (an array or a ``range``); a view (no copy) when contiguous.

    Train and test sets of walk-forward folds usually are, and copying a large feature matrix per fold would
    double its memory.
    """
    if isinstance(rows, range) and rows.step == 1:
        return a[rows.start : rows.stop]
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return a[int(rows[0]) : int(rows[-1]) + 1]
    return a[np.asarray(rows)]


def build_dataset(
    df: pd.DataFrame, horizon: int, *, chunk_size: int = 50_000, memory_threshold: float = 0.85,
    memory_guard: Callable[[], float] | None = _ram_fraction,
) -> Dataset:
    """Features (chunked, causal) and labels; keeps rows with complete features and a label."""
    ohlcv.validate_ohlcv(df)
    f = feats.compute_features(df, chunk_size=chunk_size, memory_guard=memory_guard, memory_threshold=memory_threshold)
    lab = direction_labels(df, horizon)
    X = f.to_numpy()
    names = tuple(f.columns)
    del f
    keep = lab.valid & np.isfinite(X).all(axis=1)
    last_up = last_bar_up(df["close"].to_numpy())
    return Dataset(
        X=take_rows(X, np.flatnonzero(keep)), y=lab.y[keep], times=df.index.as_unit("ns").asi8[keep],
        resolved_at=lab.resolved_at[keep], last_up=last_up[keep], feature_names=names,
        source=str(df.attrs.get("source", "in-memory frame")), synthetic=bool(df.attrs.get("synthetic", False)),
        gaps=int(df.attrs.get("gaps", 0)),
    )


def make_folds(ds: Dataset, config: WalkForwardConfig, mode: str) -> list[sp.Fold]:
    if mode == "count":
        return sp.walk_forward_splits(ds.times, ds.resolved_at, config.n_splits, embargo_ns=config.embargo_ns)
    return sp.time_splits(ds.times, ds.resolved_at, embargo_ns=config.embargo_ns, **config.split_params(mode))


#: Out-of-sample predictions of each fold, in the stage's run directory: ``predictions/fold_000.npy``, ...
PREDICTIONS_DIR = "predictions"


def _evaluate_in_memory(model, ds: Dataset, fold: sp.Fold, predictions: IO[bytes]) -> dict[str, float]:
    """The fold's metrics (model and both baselines); the test predictions go to ``predictions`` (float32 .npy)."""
    proba = model.predict_proba(take_rows(ds.X, fold.test))[:, 1]
    np.save(predictions, proba.astype(np.float32))
    y_tr, y_te = take_rows(ds.y, fold.train), take_rows(ds.y, fold.test)
    rec = ev.classification_metrics(y_te, proba)
    maj = ev.majority_baseline(y_tr, len(y_te))
    rec.update({f"majority_{k}": v for k, v in ev.classification_metrics(y_te, maj).items()})
    last = ev.last_bar_baseline(y_tr, take_rows(ds.last_up, fold.train), take_rows(ds.last_up, fold.test))
    rec.update({f"last_bar_{k}": v for k, v in ev.classification_metrics(y_te, last).items()})
    return rec


def _fold_record(i: int, fold: sp.Fold, ds: Dataset, metrics: dict[str, float], seconds: float,
                 conv: int) -> dict[str, Any]:
    return {
        "fold": i,
        "train_size": int(len(fold.train)),
        "test_size": int(len(fold.test)),
        "test_start": pd.Timestamp(int(ds.times[fold.test[0]]), tz="UTC").isoformat(),
        "test_end": pd.Timestamp(int(ds.times[fold.test[-1]]), tz="UTC").isoformat(),
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
    as many rows as the fold has now, else a clear error. Temporary files of a fold killed while writing are
    removed."""
    directory = run_dir / PREDICTIONS_DIR
    _io.remove_stale_temp_files(directory)
    if "proba" in state:
        _convert_legacy_predictions(directory, state)
    for i, entry in enumerate(state["predictions"]):
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


class _LogToFile:
    """Send this package's log records to ``logs/walkforward.log`` for the duration of a run.

    Only records of the thread that opened it go to the file: runs sharing a process (joblib's threading
    backend, a dask worker with several threads) each keep their own log. The package logger's level is lowered
    to INFO while any run is active and restored when the last one ends.
    """

    _lock = threading.Lock()
    _active = 0
    _saved_level = logging.NOTSET

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        thread = threading.get_ident()
        self.handler.addFilter(lambda record: record.thread == thread)
        self.logger = logging.getLogger("atheria_kit")

    def __enter__(self) -> _LogToFile:
        cls = type(self)
        with cls._lock:
            if cls._active == 0:
                cls._saved_level = self.logger.level
                if self.logger.getEffectiveLevel() > logging.INFO:
                    self.logger.setLevel(logging.INFO)
            cls._active += 1
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()
        cls = type(self)
        with cls._lock:
            cls._active -= 1
            if cls._active == 0:
                self.logger.setLevel(cls._saved_level)


def _open_runlog(run_dir: Path, total: int, resume: bool, clock: Callable[[], float] = time.monotonic):
    """The shared progress log (progress.json + metrics.jsonl) that ``atheria monitor`` reads; its ETA is the one
    logged."""
    from atheria_kit.runlog import RunLog

    return RunLog(run_dir, kind="walkforward", total=total, unit="fold", resume=resume, clock=clock)


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
    from atheria_kit.checkpoint import CheckpointManager

    run_dir = Path(config.out) / "direction" / config.run_name(mode)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _LogToFile(run_dir / "logs" / "walkforward.log"):
        model_name, device_note = resolve_model(config.model, config.use_gpu)  # logs a missing GPU to the file
        logger.info("%s: %s", config.run_name(mode), device_note)
        _io.atomic_write_json(run_dir / "config.json", config.to_dict())
        owned = dataset is None
        ds = prepare_dataset(config, bars=bars, memory_guard=memory_guard) if owned else dataset
        from atheria_kit.walkforward.streaming import is_out_of_core

        if is_out_of_core(ds):
            model_name = STREAMING_MODEL
            device_note = f"out of core: {model_name} (SGD logistic regression over chunks, features on disk) on CPU"
            logger.info("%s: %s", config.run_name(mode), device_note)
        if ds.synthetic:
            logger.warning("data is SYNTHETIC (%s): metrics say nothing about real markets", ds.source)
        folds = make_folds(ds, config, mode)
        logger.info("%d samples, %d features, %d folds (%s)", len(ds.y), ds.X.shape[1], len(folds), mode)

        if not config.resume:
            # starting over: an earlier run's checkpoints would outrank this run's first ones (higher steps) on a
            # later --resume, and its predictions are not this run's
            if (run_dir / "checkpoints").is_dir():
                logger.warning("no --resume: removing the previous run's checkpoints and predictions in %s; "
                               "starting over", run_dir)
            _io.remove_tree(run_dir / "checkpoints")
            _io.remove_tree(run_dir / PREDICTIONS_DIR)
        mgr = CheckpointManager(run_dir / "checkpoints", monitor="best_auc", mode="max", keep_best=1,
                                async_save=False, budget=budget)
        fingerprint = json.loads(json.dumps(config.fingerprint() | {"mode": mode, "model": model_name}))
        state: dict[str, Any] = {"fingerprint": fingerprint, "folds": [], "predictions": [], "best_auc": -1.0,
                                 "best_fold": None, "since_best": 0, "stopped_early": False}
        if config.resume:
            loaded = mgr.load("latest")
            if loaded is not None:
                if loaded.state.get("fingerprint") != fingerprint:
                    raise ValueError(
                        f"--resume: the checkpoint in {run_dir / 'checkpoints'} was made with different settings "
                        f"({loaded.state.get('fingerprint')}); use the same settings or a different --out"
                    )
                state = dict(loaded.state)
                _check_predictions(run_dir, state, folds)
                logger.info("resuming after fold %d of %d", len(state["folds"]) - 1, len(folds))

        runlog = _open_runlog(run_dir, len(folds), config.resume, clock)
        runlog.update(done=len(state["folds"]), message=f"{mode}: {len(folds)} folds, {device_note}")
        try:
            status, reason = _fold_loop(config, mode, ds, folds, state, mgr, runlog, run_dir, model_name, budget,
                                        clock, memory_guard)
        except BaseException as exc:
            runlog.finish("error", message=f"{type(exc).__name__}: {exc}")
            mgr.close()
            raise
        mgr.close()
        runlog.finish(status, message=reason or f"{len(state['folds'])} folds done")
        try:
            return _finish_stage(config, mode, ds, folds, state, run_dir, status, reason)
        finally:
            if owned:
                release_dataset(ds)


def _fold_loop(config, mode, ds, folds, state, mgr, runlog, run_dir, model_name, budget, clock, memory_guard):
    """Train and evaluate the remaining folds; returns (status, stop reason)."""
    from atheria_kit.walkforward.streaming import evaluate_fold, is_out_of_core

    status, reason, reported_tenths = "finished", None, 0
    for i in range(len(state["folds"]), len(folds)):
        if state["stopped_early"]:
            break
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
        fit = fit_counting_warnings(model, take_rows(ds.X, fold.train), take_rows(ds.y, fold.train))
        pred_path = run_dir / PREDICTIONS_DIR / f"fold_{i:03d}.npy"
        with _io.atomic_open(pred_path) as fh:
            metrics = (evaluate_fold if is_out_of_core(ds) else _evaluate_in_memory)(fit.model, ds, fold, fh)
        rec = _fold_record(i, fold, ds, metrics, clock() - t0, fit.convergence_warnings)
        if budget is not None:
            budget.end_unit()
        state["folds"].append(rec)
        state["predictions"].append(_prediction_entry(pred_path, len(fold.test)))
        auc = rec["auc"] if math.isfinite(rec["auc"]) else -1.0
        if auc > state["best_auc"]:
            state.update(best_auc=float(auc), best_fold=i, since_best=0)
            with _io.atomic_open(run_dir / "best_model.joblib") as fh:
                joblib.dump(fit.model, fh)
        else:
            state["since_best"] += 1
            if state["since_best"] >= config.patience:
                state["stopped_early"] = True
                logger.info("early stop: AUC has not improved for %d folds (best: fold %d, %.4f)",
                            config.patience, state["best_fold"], state["best_auc"])
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
    return status, reason


def _finish_stage(config, mode, ds, folds, state, run_dir, status, reason) -> StageResult:
    result = StageResult(
        mode=mode, run_dir=run_dir, folds=state["folds"], summary=ev.summarize(state["folds"]),
        status=status, stop_reason=reason,
        convergence_warnings=sum(f["convergence_warnings"] for f in state["folds"]),
        peak_rss_bytes=_peak_rss(), best_fold=state["best_fold"],
    )
    if result.folds:
        last_bar = result.summary.loc["last_bar"].to_dict() if "last_bar" in result.summary.index else {}
        result.leak_warning = ev.leak_warning(float(result.means.get("auc", math.nan)), config.leak_auc,
                                              baseline_auc=float(last_bar.get("auc", math.nan)))
        if result.leak_warning:
            logger.warning(result.leak_warning)
        if result.convergence_warnings:
            logger.warning("%d convergence warnings over %d folds (lbfgs stopped at max_iter; results are "
                           "usually still fine for standardised features)", result.convergence_warnings,
                           len(result.folds))
        from atheria_kit.walkforward.report import write_artifacts

        paths = [run_dir / PREDICTIONS_DIR / p["file"] for p in state["predictions"]]
        result.artifacts = write_artifacts(result, ds, folds, paths, config)
    return result


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
    ds = prepare_dataset(config, bars=bars, memory_guard=memory_guard, available_memory=available_memory)
    del bars  # the stages need only the dataset; a frame loaded here can be freed
    try:
        return _run_stages(config, ds, confirm, budget, memory_guard)
    finally:
        release_dataset(ds)


def _run_stages(config, ds, confirm, budget, memory_guard) -> list[StageResult]:
    if config.mode != "sequential":
        res = run_stage(config, config.mode, dataset=ds, budget=budget, memory_guard=memory_guard)
        res.gate = evaluate_gate(res.means, config.gate) if res.folds else None
        return [res]
    quick = run_stage(config, "quick", dataset=ds, budget=budget, memory_guard=memory_guard)
    quick.gate = evaluate_gate(quick.means, config.gate)
    if config.confirm is not None:
        go, how = config.confirm, "--yes" if config.confirm else "--no"
    elif confirm is not None:
        go = bool(confirm(quick.gate))
        how = "confirmed interactively" if go else "declined interactively"
    else:
        go, how = quick.gate.passed, "gate verdict (non-interactive)"
    from atheria_kit.walkforward.report import append_gate_verdict

    append_gate_verdict(quick, go, how)
    if not go or quick.status != "finished":
        return [quick]
    full = run_stage(config, "full", dataset=ds, budget=budget, memory_guard=memory_guard)
    full.gate = evaluate_gate(full.means, config.gate) if full.folds else None
    return [quick, full]


def compare_shuffled_vs_walkforward(
    bars: pd.DataFrame, *, horizon: int = 8, n_splits: int = 5, model: str = "hgb", seed: int = 0
) -> dict[str, float]:
    """Mean AUC of shuffled K-fold (the common mistake) and of purged walk-forward on the same data.

    With overlapping ``horizon``-bar labels, shuffled K-fold puts near-duplicates of each test sample into
    train, so even a pure random walk looks predictable; the purged walk-forward does not.
    """
    from sklearn.model_selection import KFold

    ds = build_dataset(bars, horizon, memory_guard=None)
    out: dict[str, list[float]] = {"shuffled_kfold": [], "purged_walk_forward": []}
    shuffled = [(tr, te) for tr, te in KFold(n_splits, shuffle=True, random_state=seed).split(ds.X)]
    wf = [(np.asarray(f.train), np.asarray(f.test)) for f in sp.walk_forward_splits(ds.times, ds.resolved_at, n_splits)]
    for name, pairs in (("shuffled_kfold", shuffled), ("purged_walk_forward", wf)):
        for tr, te in pairs:
            m = make_model(model, len(tr), seed=seed)
            fit_counting_warnings(m, ds.X[tr], ds.y[tr])
            out[name].append(ev.classification_metrics(ds.y[te], m.predict_proba(ds.X[te])[:, 1])["auc"])
    return {k: float(np.mean(v)) for k, v in out.items()}
