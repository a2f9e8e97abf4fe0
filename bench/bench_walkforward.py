"""Walk-forward benchmark: 1-minute bars -> load, features, labels, 5-fold walk-forward logistic regression.

Every measurement runs in a fresh Python subprocess; wall time and peak RSS come from the operating system
(``os.wait4``), so interpreter start-up and imports are included for both sides.

1. One million bars: the kit (``load_bars`` + ``build_dataset`` + ``run_stage``, i.e. what
   ``atheria walkforward --mode count --n-splits 5`` runs, checkpoints and report included) next to a naive
   baseline measured in the same run: pandas features on the whole frame in float64, scikit-learn's
   ``TimeSeriesSplit(5)`` and a default ``LogisticRegression()``. Goals: <= 30 s and <= 1 GB peak RSS on
   2 cores, and faster and leaner than the baseline.
2. Scaling (in memory): the kit at 1, 2, 5 and 10 M bars, the baseline up to 5 M (it needs ~3.7 GB there). Time per million
   bars should stay about constant (linear time); the memory the feature stage needs beyond its float32 output
   (tracemalloc) should stay bounded by ``--chunk-size``, not grow with the data. The data itself (bars, feature
   matrix, one scaled train copy) is held in RAM, so total peak RSS grows by a fixed number of bytes per bar;
   that figure is printed too.

3. Scaling out of core (``--out-of-core on``, the same sizes): bars streamed from the Parquet file, features
   written to a float32 ``.npy`` on disk with the labels and times, an SGD logistic regression trained over
   chunks, each test fold evaluated block by block (exact AUC). Peak RSS should stay roughly flat (<= +20 % from
   the smallest to the largest size; the growth per bar is printed) and time linear.

Data: synthetic regime-switching 1-minute bars (``synthetic.synthetic_ohlcv``, seeded), or with ``--source real``
the real BTCUSDT 1-minute bars from ../shared/data repeated with shifted timestamps. The files are written as
Parquet before the timed runs (not timed).

Usage: .venv/bin/python bench/bench_walkforward.py [--quick] [--source synthetic|real]
  --quick: 1 M bars, scaling from 250 k to 2 M (about 45 s); default: scaling to 10 M (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MB = 2**20
GOAL_SECONDS = 30.0
GOAL_RSS_MB = 1024.0
N_SPLITS = 5


# ------------------------------------------------------------------------------------------- subprocess side


def _rss_now_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


def _peak_mb() -> float:
    from atheria_kit.walkforward.runner import _peak_rss  # free: the workers that call this have imported it

    return _peak_rss() / MB


def worker_make(path: str, n_bars: int, source: str) -> dict:
    """Write ``n_bars`` 1-minute bars to a Parquet file (synthetic, or real bars repeated)."""
    import numpy as np
    import pandas as pd

    from atheria_kit.market import ohlcv, synthetic

    if source == "synthetic":
        df = synthetic.synthetic_ohlcv(n_bars, timeframe="1m", seed=0)
    else:
        real = ohlcv.load_ohlcv(REPO.parent / "shared" / "data" / "BTCUSDT_1m.csv")
        reps = -(-n_bars // len(real))
        parts, scale = [], 1.0
        span = real.index[-1] - real.index[0] + pd.Timedelta(minutes=1)
        for i in range(reps):
            part = real * np.array([scale] * 4 + [1.0])  # chain copies so the price path has no jump
            part.index = real.index + i * span
            parts.append(part)
            scale *= float(real["close"].iloc[-1] / real["open"].iloc[0])
        df = pd.concat(parts).iloc[:n_bars]
        df.index.name = "timestamp"
    df.to_parquet(path)
    return {"bars": len(df)}


def worker_kit(path: str, out: str, chunk_size: int) -> dict:
    """The kit's pipeline, stage by stage (the same calls as ``run_walkforward``)."""
    t0 = time.perf_counter()
    from atheria_kit.walkforward.config import WalkForwardConfig
    from atheria_kit.walkforward.runner import build_dataset, load_bars, run_stage

    t_import = time.perf_counter()
    cfg = WalkForwardConfig(data=path, timeframe="1m", mode="count", n_splits=N_SPLITS, patience=N_SPLITS,
                            chunk_size=chunk_size, out=out)
    bars = load_bars(cfg)
    t_load = time.perf_counter()
    rss_loaded, peak_loaded = _rss_now_mb(), _peak_mb()
    ds = build_dataset(bars, cfg.horizon, chunk_size=chunk_size, memory_threshold=cfg.memory_threshold)
    t_feat = time.perf_counter()
    peak_feat = _peak_mb()
    del bars
    res = run_stage(cfg, "count", dataset=ds)
    t_train = time.perf_counter()
    return {
        "import_s": t_import - t0, "load_s": t_load - t_import, "features_s": t_feat - t_load,
        "train_s": t_train - t_feat, "folds": len(res.folds), "auc": res.means["auc"],
        "rss_loaded_mb": rss_loaded, "peak_loaded_mb": peak_loaded, "peak_features_mb": peak_feat,
        "features_out_mb": ds.X.nbytes / MB, "samples": len(ds.y),
        "convergence_warnings": res.convergence_warnings,
    }


def worker_ooc(path: str, out: str, chunk_size: int) -> dict:
    """The out-of-core pipeline (``--out-of-core on``): bars streamed, features on disk, SGD over chunks."""
    t0 = time.perf_counter()
    from atheria_kit.walkforward.config import WalkForwardConfig
    from atheria_kit.walkforward.runner import prepare_dataset, release_dataset, run_stage

    t_import = time.perf_counter()
    cfg = WalkForwardConfig(data=path, timeframe="1m", mode="count", n_splits=N_SPLITS, patience=N_SPLITS,
                            chunk_size=chunk_size, out=out, out_of_core="on")
    ds = prepare_dataset(cfg)
    t_feat = time.perf_counter()
    peak_feat = _peak_mb()
    res = run_stage(cfg, "count", dataset=ds)
    work = ds.X.path.parent
    disk_mb = sum(f.stat().st_size for f in work.iterdir()) / MB
    release_dataset(ds)
    t_train = time.perf_counter()
    return {
        "import_s": t_import - t0, "load_features_s": t_feat - t_import, "train_s": t_train - t_feat,
        "folds": len(res.folds), "auc": res.means["auc"], "peak_features_mb": peak_feat, "disk_mb": disk_mb,
        "samples": len(ds.y), "convergence_warnings": res.convergence_warnings,
    }


def worker_featmem(path: str, impl: str, chunk_size: int) -> dict:
    """Memory the feature computation needs beyond its output (tracemalloc sees numpy's allocations)."""
    import tracemalloc

    import pandas as pd

    from atheria_kit.market import ohlcv
    from atheria_kit.walkforward.features import compute_features

    bars = ohlcv.load_ohlcv(path) if impl == "kit" else pd.read_parquet(path)
    tracemalloc.start()
    t0 = time.perf_counter()
    out = compute_features(bars, chunk_size=chunk_size) if impl == "kit" else naive_features(bars)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept = out.to_numpy().nbytes
    return {"work_mb": (peak - kept) / MB, "out_mb": kept / MB, "seconds": seconds}


def naive_features(df):
    """The usual notebook approach: pandas rolling/ewm features on the whole frame, float64."""
    import numpy as np
    import pandas as pd

    o, h, lo, c, v = (df[k] for k in ("open", "high", "low", "close", "volume"))
    f = pd.DataFrame(index=df.index)
    logc = np.log(c)
    for k in (1, 2, 4, 8, 16, 32):
        f[f"ret_{k}"] = logc.diff(k)
    for w in (12, 48):
        f[f"rv_{w}"] = f["ret_1"].rolling(w).std()
    delta = c.diff()
    gain = delta.clip(lower=0).rolling(14).mean()
    loss = (-delta.clip(upper=0)).rolling(14).mean()
    f["rsi_14"] = 100 - 100 / (1 + gain / loss)
    macd = (c.ewm(span=12, adjust=False).mean() - c.ewm(span=26, adjust=False).mean()) / c
    f["macd"] = macd
    f["macd_hist"] = macd - macd.ewm(span=9, adjust=False).mean()
    tr = pd.concat([h - lo, (h - c.shift()).abs(), (lo - c.shift()).abs()], axis=1).max(axis=1)
    f["atr_14"] = tr.rolling(14).mean() / c
    f["range_hl"] = np.log(h / lo)
    f["body"] = np.log(c / o)
    lv = np.log1p(v)
    f["volume_z_48"] = (lv - lv.rolling(48).mean()) / lv.rolling(48).std()
    minutes = df.index.hour * 60 + df.index.minute
    f["hour_sin"], f["hour_cos"] = np.sin(2 * np.pi * minutes / 1440), np.cos(2 * np.pi * minutes / 1440)
    f["dow_sin"], f["dow_cos"] = np.sin(2 * np.pi * df.index.day_of_week / 7), np.cos(2 * np.pi * df.index.day_of_week / 7)
    f["target"] = (c.shift(-1) > c).astype(int)
    return f.replace([np.inf, -np.inf], np.nan).dropna()


def worker_naive(path: str) -> dict:
    """Baseline: pandas float64 features, TimeSeriesSplit, default LogisticRegression (no scaler, no purge)."""
    import warnings

    t0 = time.perf_counter()
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import TimeSeriesSplit

    t_import = time.perf_counter()
    df = pd.read_parquet(path)
    t_load = time.perf_counter()
    data = naive_features(df)
    X = data.drop(columns="target").to_numpy()
    y = data["target"].to_numpy()
    t_feat = time.perf_counter()
    aucs, n_warn = [], 0
    for train, test in TimeSeriesSplit(n_splits=N_SPLITS).split(X):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = LogisticRegression().fit(X[train], y[train])
        n_warn += len(caught)
        aucs.append(roc_auc_score(y[test], model.predict_proba(X[test])[:, 1]))
    t_train = time.perf_counter()
    return {"import_s": t_import - t0, "load_s": t_load - t_import, "features_s": t_feat - t_load,
            "train_s": t_train - t_feat, "folds": len(aucs), "auc": sum(aucs) / len(aucs),
            "convergence_warnings": n_warn}


# ---------------------------------------------------------------------------------------------- parent side


def measure(*worker_args: str) -> dict:
    """Run ``worker_args`` in a fresh interpreter; wall time and peak RSS of that process alone (wait4)."""
    cmd = [sys.executable, __file__, "--worker", *worker_args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    # read both pipes to EOF (the kit logs to stderr), then reap this child and get its own rusage
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {worker_args} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result.update(wall_s=wall, peak_mb=usage.ru_maxrss / 1024)
    return result


def make_data(directory: Path, n_bars: int, source: str) -> str:
    path = directory / f"bars_{n_bars}.parquet"
    if not path.exists():
        measure("make", str(path), str(n_bars), source)
    return str(path)


def verdict(ok: bool) -> str:
    return "goal met" if ok else "goal MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 M bars and scaling up to 2 M (about a minute)")
    parser.add_argument("--source", choices=("synthetic", "real"), default="synthetic")
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data and run directories")
    args = parser.parse_args()
    if args.quick:
        sizes, naive_sizes = [250_000, 500_000, 1_000_000, 2_000_000], [1_000_000, 2_000_000]
    else:
        sizes, naive_sizes = [1_000_000, 2_000_000, 5_000_000, 10_000_000], [1_000_000, 2_000_000, 5_000_000]

    tmp = Path(tempfile.mkdtemp(prefix="bench-walkforward-"))
    try:
        t_setup = time.perf_counter()
        paths = {n: make_data(tmp, n, args.source) for n in sizes}
        setup_s = time.perf_counter() - t_setup
        kit = {n: measure("kit", paths[n], str(tmp / f"run_{n}"), str(args.chunk_size)) for n in sizes}
        ooc = {n: measure("ooc", paths[n], str(tmp / f"ooc_{n}"), str(args.chunk_size)) for n in sizes}
        naive = {n: measure("naive", paths[n]) for n in naive_sizes}
        kit_fm = {n: measure("featmem", paths[n], "kit", str(args.chunk_size)) for n in sizes}
        naive_fm = {n: measure("featmem", paths[n], "naive", "0") for n in naive_sizes}
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"walk-forward benchmark: {args.source} 1-minute bars, {N_SPLITS}-fold walk-forward logistic regression, "
          f"chunk_size={args.chunk_size}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.2f}); "
          f"data written in {setup_s:.0f} s")
    print("each figure: a fresh subprocess; wall time and peak RSS from wait4 (interpreter start and imports included)")
    print()
    a, b = kit[1_000_000], naive[1_000_000]
    print("1) 1,000,000 bars: load + features + 5-fold walk-forward logistic regression")
    print(f"{'measure':<31}{'kit':>10}{'naive baseline':>16}{'baseline/kit':>14}{'goal':>10}  verdict")
    rows = [
        ("wall time (s)", a["wall_s"], b["wall_s"], f"<= {GOAL_SECONDS:.0f}",
         a["wall_s"] <= GOAL_SECONDS and a["wall_s"] < b["wall_s"]),
        ("peak RSS (MB)", a["peak_mb"], b["peak_mb"], f"<= {GOAL_RSS_MB:.0f}",
         a["peak_mb"] <= GOAL_RSS_MB and a["peak_mb"] < b["peak_mb"]),
    ]
    for name, x, y, goal, ok in rows:
        print(f"{name:<31}{x:>10.1f}{y:>16.1f}{y / x:>13.2f}x{goal:>10}  {verdict(ok)} (and below the baseline)")
    for key, name in (("import_s", "  imports (s)"), ("load_s", "  load (s)"), ("features_s", "  features + labels (s)"),
                      ("train_s", "  5 folds + artifacts (s)")):
        print(f"{name:<31}{a[key]:>10.2f}{b[key]:>16.2f}{b[key] / max(a[key], 1e-9):>13.2f}x")
    fa, fb = kit_fm[1_000_000], naive_fm[1_000_000]
    print(f"{'  feature working memory (MB)':<31}{fa['work_mb']:>10.0f}{fb['work_mb']:>16.0f}"
          f"{fb['work_mb'] / max(fa['work_mb'], 1e-9):>13.2f}x")
    print(f"{'  feature matrix (MB)':<31}{fa['out_mb']:>10.0f}{fb['out_mb']:>16.0f}{fb['out_mb'] / fa['out_mb']:>13.2f}x")
    print(f"{'  mean out-of-sample AUC':<31}{a['auc']:>10.4f}{b['auc']:>16.4f}")
    print(f"{'  warnings during fit':<31}{a['convergence_warnings']:>10d}{b['convergence_warnings']:>16d}")
    print("  kit: purging + 30-minute embargo, scaler fit per fold, baselines (majority, last bar), a checkpoint")
    print("  after every fold, report and plots. Baseline: no purge, no scaler, no checkpoints, no report.")
    print("  feature working memory = tracemalloc peak of the feature computation minus the matrix it returns.")
    print()
    print("2) scaling (kit; naive baseline where measured). work s = load + features + folds, without start-up")
    print(f"{'bars':>11}{'wall s':>8}{'work s':>8}{'work s/M':>10}{'peak MB':>9}{'loaded MB':>11}{'feat work MB':>14}"
          f"{'naive s':>9}{'naive MB':>10}{'naive feat MB':>15}{'baseline/kit t, RSS':>21}")
    work = {n: kit[n]["load_s"] + kit[n]["features_s"] + kit[n]["train_s"] for n in sizes}
    for n in sizes:
        k = kit[n]
        line = (f"{n:>11,}{k['wall_s']:>8.1f}{work[n]:>8.1f}{work[n] / (n / 1e6):>10.2f}{k['peak_mb']:>9.0f}"
                f"{k['peak_loaded_mb']:>11.0f}{kit_fm[n]['work_mb']:>14.0f}")
        if n in naive:
            m = naive[n]
            line += (f"{m['wall_s']:>9.1f}{m['peak_mb']:>10.0f}{naive_fm[n]['work_mb']:>15.0f}"
                     f"{m['wall_s'] / k['wall_s']:>14.2f}x, {m['peak_mb'] / k['peak_mb']:.2f}x")
        print(line)
    lo, hi = sizes[0], sizes[-1]
    growth_t = (work[hi] / work[lo]) / (hi / lo)
    growth_m = (kit[hi]["peak_mb"] - kit[lo]["peak_mb"]) * MB / (hi - lo)
    works = [kit_fm[n]["work_mb"] for n in sizes]
    print(f"work time x{work[hi] / work[lo]:.1f} for data x{hi / lo:.0f} ({lo:,} -> {hi:,} bars; growth ratio "
          f"{growth_t:.2f}, 1.0 = linear, below 1 = fixed costs amortised): {verdict(growth_t <= 1.3)}")
    print(f"feature working memory {min(works):.0f}..{max(works):.0f} MB from {lo:,} to {hi:,} bars "
          f"(bounded by chunk_size, not data size): {verdict(max(works) <= 1.5 * min(works) + 8)}")
    print(f"total peak RSS grows by {growth_m:.0f} bytes per added bar: the bars, the float32 feature matrix and one "
          "scaled train copy stay in RAM,")
    print("so total memory is linear in the data by design; only the feature stage's working memory is chunk-bounded.")
    print("'loaded MB' = peak RSS once the bars are loaded (imports, the frame, and what the loader and pyarrow keep).")
    print()
    print("3) out of core (--out-of-core on: bars streamed, features in a float32 .npy on disk, SGD logistic "
          "regression over chunks)")
    print(f"{'bars':>11}{'wall s':>8}{'work s':>8}{'work s/M':>10}{'peak MB':>9}{'features MB':>13}"
          f"{'disk MB':>9}{'in-memory MB':>14}{'in-mem/ooc RSS':>16}{'AUC ooc':>9}{'AUC in-mem':>12}")
    owork = {n: ooc[n]["load_features_s"] + ooc[n]["train_s"] for n in sizes}
    for n in sizes:
        o = ooc[n]
        print(f"{n:>11,}{o['wall_s']:>8.1f}{owork[n]:>8.1f}{owork[n] / (n / 1e6):>10.2f}{o['peak_mb']:>9.0f}"
              f"{o['peak_features_mb']:>13.0f}{o['disk_mb']:>9.0f}{kit[n]['peak_mb']:>14.0f}"
              f"{kit[n]['peak_mb'] / o['peak_mb']:>15.2f}x{o['auc']:>9.4f}{kit[n]['auc']:>12.4f}")
    o_growth_t = (owork[hi] / owork[lo]) / (hi / lo)
    o_growth = ooc[hi]["peak_mb"] / ooc[lo]["peak_mb"] - 1
    o_per_bar = (ooc[hi]["peak_mb"] - ooc[lo]["peak_mb"]) * MB / (hi - lo)
    print(f"out-of-core work time x{owork[hi] / owork[lo]:.1f} for data x{hi / lo:.0f} (growth ratio {o_growth_t:.2f}, "
          f"1.0 = linear): {verdict(o_growth_t <= 1.3)}")
    print(f"out-of-core peak RSS {ooc[lo]['peak_mb']:.0f} -> {ooc[hi]['peak_mb']:.0f} MB from {lo:,} to {hi:,} bars "
          f"(+{o_growth:.0%}; {o_per_bar:.0f} bytes per added bar, in memory {growth_m:.0f}): "
          f"roughly flat (<= +20 %): {verdict(o_growth <= 0.20)}")
    print("  in RAM: one chunk of bars and features, one block of test rows, the exact AUC's count tables, pyarrow's")
    print("  buffers for one Parquet row group (1 M rows in these files) and the plots' subsample; everything per bar")
    print("  (features, labels, times, predictions) is on disk ('disk MB': the work files, removed at the end).")
    a1, b = ooc[1_000_000], naive[1_000_000]  # 1 M bars is in both size lists
    ok_t = a1["wall_s"] <= GOAL_SECONDS and a1["wall_s"] < b["wall_s"]
    ok_m = a1["peak_mb"] <= GOAL_RSS_MB and a1["peak_mb"] < b["peak_mb"]
    print(f"1,000,000 bars out of core: {a1['wall_s']:.1f} s (baseline/ooc {b['wall_s'] / a1['wall_s']:.2f}x; "
          f"<= {GOAL_SECONDS:.0f} s and faster than the baseline: {verdict(ok_t)}), peak RSS {a1['peak_mb']:.0f} MB "
          f"(baseline/ooc {b['peak_mb'] / a1['peak_mb']:.2f}x; <= {GOAL_RSS_MB:.0f} MB and leaner: {verdict(ok_m)})")

if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "make":
            res = worker_make(rest[0], int(rest[1]), rest[2])
        elif kind == "kit":
            res = worker_kit(rest[0], rest[1], int(rest[2]))
        elif kind == "ooc":
            res = worker_ooc(rest[0], rest[1], int(rest[2]))
        elif kind == "featmem":
            res = worker_featmem(rest[0], rest[1], int(rest[2]))
        else:
            res = worker_naive(rest[0])
        print(json.dumps(res))
    else:
        main()
