"""Per-bar loop reference implementations (plain Python, one bar at a time, as a live system would run).

They restate the rules of ``atheria_kit.ensemble`` independently of its vectorized code: the tests check that
both agree, and ``bench/bench_ensemble.py`` times the vectorized path against these loops.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import numpy as np
import pandas as pd

from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.ensemble.performance import PerformanceTracker
from atheria_kit.ensemble.regime import RegimeDetector

# ----------------------------------------------------------------------------------------------- backtest


def backtest_loop(bars: pd.DataFrame, signal, fee: float, slippage: float, initial_capital: float):
    """Bar by bar: returns (equity list, trades list of dicts) under next-open execution and per-side costs."""
    o = bars["open"].to_numpy(float).tolist()
    c = bars["close"].to_numpy(float).tolist()
    sig = [float(x) for x in signal]
    cost = fee + slippage
    equity = initial_capital
    pos = 0.0
    out = []
    trades = []
    open_trade = None  # [direction, entry_bar, value factor so far]
    for j in range(len(o)):
        new = sig[j - 1] if j > 0 else 0.0
        if j > 0 and pos != 0:  # gap from previous close to this open with the old position
            g = 1 + pos * (o[j] / c[j - 1] - 1)
            equity *= g
            open_trade[2] *= g
        if new != pos:
            if pos != 0:  # close the old position at this open
                equity *= 1 - cost
                open_trade[2] *= 1 - cost
                trades.append({"direction": int(pos), "entry_bar": open_trade[1], "exit_bar": j,
                               "return": open_trade[2] - 1, "closed": True})
                open_trade = None
            if new != 0:
                equity *= 1 - cost
                open_trade = [new, j, 1 - cost]
            pos = new
        if pos != 0:
            f = 1 + pos * (c[j] / o[j] - 1)
            equity *= f
            open_trade[2] *= f
        out.append(equity)
    if open_trade is not None:
        trades.append({"direction": int(open_trade[0]), "entry_bar": open_trade[1], "exit_bar": -1,
                       "return": open_trade[2] - 1, "closed": False})
    return out, trades


# --------------------------------------------------------------------------------------------- indicators


class _Wilder:
    """Wilder average seeded with the mean of the first ``n`` values."""

    def __init__(self, n: int):
        self.n, self.seed, self.value = n, [], None

    def update(self, x: float):
        if self.value is None:
            self.seed.append(x)
            if len(self.seed) == self.n:
                self.value = sum(self.seed) / self.n
        else:
            self.value += (x - self.value) / self.n
        return self.value


def indicator_loop(bars: pd.DataFrame, det: RegimeDetector, rsi_n=14, atr_n=14, fast=12, slow=26, sig_n=9):
    """All indicators bar by bar (TA-Lib recurrences); returns a dict of per-bar lists (None while undefined)."""
    h, lo, c = (bars[k].to_numpy(float).tolist() for k in ("high", "low", "close"))
    n = det.adx_period
    out = {k: [] for k in ("rsi", "atr", "adx", "macd_hist", "chop", "er", "vol_pct", "sma20")}
    gain, loss, atr_w = _Wilder(rsi_n), _Wilder(rsi_n), _Wilder(atr_n)
    sp = sm = st = 0.0
    dx_seed, adx_v = [], None
    ema_f = ema_s = None
    macd_hist_seed, sig_v = [], None
    closes = deque(maxlen=max(slow, 21, det.er_period + 1))
    trs = deque(maxlen=det.chop_period)
    highs, lows = deque(maxlen=det.chop_period), deque(maxlen=det.chop_period)
    rets = deque(maxlen=det.vol_window)
    vols = deque(maxlen=det.vol_lookback)
    for t in range(len(c)):
        closes.append(c[t])
        highs.append(h[t])
        lows.append(lo[t])
        r_rsi = a = adx_out = hist = chop = er = vp = None
        if t > 0:
            d = c[t] - c[t - 1]
            g, lss = gain.update(max(d, 0.0)), loss.update(max(-d, 0.0))
            if g is not None:
                r_rsi = 0.0 if g + lss == 0 else 100 * g / (g + lss)
            tr = max(h[t], c[t - 1]) - min(lo[t], c[t - 1])
            trs.append(tr)
            a = atr_w.update(tr)
            up, down = h[t] - h[t - 1], lo[t - 1] - lo[t]
            mdm = down if (down > 0 and up < down) else 0.0
            pdm = up if (not (down > 0 and up < down) and up > 0 and up > down) else 0.0
            if t < n:
                sp, sm, st = sp + pdm, sm + mdm, st + tr
            else:
                sp, sm, st = sp - sp / n + pdm, sm - sm / n + mdm, st - st / n + tr
                dx = None
                if st != 0:
                    pdi, mdi = 100 * sp / st, 100 * sm / st
                    if pdi + mdi != 0:
                        dx = 100 * abs(pdi - mdi) / (pdi + mdi)
                if adx_v is None:
                    dx_seed.append(dx or 0.0)
                    if len(dx_seed) == n:
                        adx_v = sum(dx_seed) / n
                elif dx is not None:
                    adx_v += (dx - adx_v) / n
                adx_out = adx_v
            rets.append(math.log(c[t] / c[t - 1]))
            if len(rets) == det.vol_window:
                vol = float(np.std(np.array(rets), ddof=1))
                vols.append(vol)
                if len(vols) == det.vol_lookback:
                    vp = 100.0 * sum(1 for v in vols if v <= vol) / det.vol_lookback
            if len(trs) == det.chop_period:
                rng = max(highs) - min(lows)
                chop = 100 * math.log10(sum(trs) / rng) / math.log10(det.chop_period) if rng > 0 else None
            if t >= det.er_period:
                cl = list(closes)[-(det.er_period + 1):]
                path = sum(abs(cl[i] - cl[i - 1]) for i in range(1, len(cl)))
                er = abs(cl[-1] - cl[0]) / path if path > 0 else 0.0
        if t == slow - 1:
            ema_f = sum(list(closes)[-fast:]) / fast
            ema_s = sum(list(closes)[-slow:]) / slow
        elif t >= slow:
            ema_f += (c[t] - ema_f) * 2 / (fast + 1)
            ema_s += (c[t] - ema_s) * 2 / (slow + 1)
        if ema_f is not None:
            m = ema_f - ema_s
            if sig_v is None:
                macd_hist_seed.append(m)
                if len(macd_hist_seed) == sig_n:
                    sig_v = sum(macd_hist_seed) / sig_n
            else:
                sig_v += (m - sig_v) * 2 / (sig_n + 1)
            if sig_v is not None:
                hist = m - sig_v
        out["rsi"].append(r_rsi)
        out["atr"].append(a)
        out["adx"].append(adx_out)
        out["macd_hist"].append(hist)
        out["chop"].append(chop)
        out["er"].append(er)
        out["vol_pct"].append(vp)
        out["sma20"].append(sum(list(closes)[-20:]) / 20 if t >= 19 else None)
    return out


def signals_and_regimes_loop(bars: pd.DataFrame, det: RegimeDetector):
    """Default strategies' (signal, confidence) and regime labels, bar by bar, from :func:`indicator_loop`."""
    ind = indicator_loop(bars, det)
    c = bars["close"].to_numpy(float).tolist()
    sigs = {"atr_breakout": [], "rsi_reversion": [], "macd_momentum": []}
    confs = {k: [] for k in sigs}
    regimes = []
    for t in range(len(c)):
        a, r, hist, mid = ind["atr"][t], ind["rsi"][t], ind["macd_hist"][t], ind["sma20"][t]
        s = cf = 0
        if a is not None and mid is not None and a > 0:
            if c[t] > mid + a:
                s, cf = 1, min(1.0, (c[t] - mid - a) / a)
            elif c[t] < mid - a:
                s, cf = -1, min(1.0, (mid - a - c[t]) / a)
        sigs["atr_breakout"].append(s)
        confs["atr_breakout"].append(cf)
        s = cf = 0
        if r is not None:
            if r < 30:
                s, cf = 1, min(1.0, (30 - r) / 30)
            elif r > 70:
                s, cf = -1, min(1.0, (r - 70) / 30)
        sigs["rsi_reversion"].append(s)
        confs["rsi_reversion"].append(cf)
        s = cf = 0
        if hist is not None and a is not None and hist != 0:
            s, cf = (1 if hist > 0 else -1), min(1.0, abs(hist) / (0.5 * a))
        sigs["macd_momentum"].append(s)
        confs["macd_momentum"].append(cf)
        adx, er, chop, vp = ind["adx"][t], ind["er"][t], ind["chop"][t], ind["vol_pct"][t]
        if vp is not None and vp > det.vol_pct:
            regimes.append("volatile")
        elif adx is not None and er is not None and adx > det.adx_trend and er >= det.er_trend:
            regimes.append("trending")
        elif chop is not None and chop > det.chop_choppy:
            regimes.append("choppy")
        else:
            regimes.append("ranging")
    return sigs, confs, regimes


# ----------------------------------------------------------------------------------------------- ensemble


def volatility_loop(close, window: int) -> list[float]:
    """Per bar, ``statistics.stdev`` of the last ``window`` log close-to-close returns (NaN before)."""
    logs = [math.log(x) for x in close]
    out = []
    for t in range(len(logs)):
        if t < window:
            out.append(math.nan)
        else:
            out.append(statistics.stdev([logs[i] - logs[i - 1] for i in range(t - window + 1, t + 1)]))
    return out


def ensemble_loop(ens: DynamicEnsemble, bars: pd.DataFrame, sigs, confs, regimes, fee, slippage, initial_capital):
    """The per-step ensemble API bar by bar, fed by each strategy's loop-backtest trades as they close, with the
    volatility of the cost-aware entry computed by :func:`volatility_loop`."""
    names = ens.names
    vol = volatility_loop(bars["close"].to_numpy(float).tolist(), ens.turnover.vol_window)
    trades = {}
    for name in names:
        _, tr = backtest_loop(bars, sigs[name], fee, slippage, initial_capital)
        trades[name] = [x for x in tr if x["closed"]]
    trackers = {name: PerformanceTracker(ens.adjustment.window) for name in names}
    cursor = dict.fromkeys(names, 0)
    signal, confidence, weights = [], [], []
    for t in range(len(bars)):
        for name in names:
            tr = trades[name]
            while cursor[name] < len(tr) and tr[cursor[name]]["exit_bar"] <= t:
                trackers[name].record_trade(tr[cursor[name]]["return"])
                cursor[name] += 1
        w = ens.update_weights(str(regimes[t]), trackers)
        s, cf = ens.get_weighted_signal({k: sigs[k][t] for k in names}, {k: confs[k][t] for k in names},
                                        volatility=vol[t])
        signal.append(s)
        confidence.append(cf)
        weights.append([w[k] for k in names])
    return signal, confidence, weights
