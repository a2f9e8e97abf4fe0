"""The end-of-run plots of a progressive-training run, each written as a PNG.

Rendered on ``matplotlib.figure.Figure`` objects (no pyplot global state), so plotting never pops up stray figures
in a notebook and works headless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atheria_kit.live import smooth


def _figure(width: float = 8, height: float = 3.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _integer_episodes(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_keys(metrics: Sequence[Mapping[str, Any]], loss_key: str = "loss") -> list[str]:
    """Every logged loss besides ``loss_key`` (``val_loss``, ``test_loss``...), in first-seen order."""
    keys: list[str] = []
    for m in metrics:
        for k, v in m.items():
            if k != loss_key and "loss" in k and isinstance(v, (int, float)) and k not in keys:
                keys.append(k)
    return keys


def plot_loss(metrics: Sequence[Mapping[str, Any]], path: Path, loss_key: str = "loss") -> Path:
    """Loss per episode, raw and smoothed, with every other logged loss (validation) on the same axis, so that
    overfitting (training loss falling while validation loss rises) is visible; session boundaries dashed."""
    fig = _figure()
    ax = fig.subplots()
    eps = [m["episode"] for m in metrics if loss_key in m]
    loss = [float(m[loss_key]) if m[loss_key] is not None else math.nan for m in metrics if loss_key in m]
    ax.plot(eps, loss, alpha=0.35, lw=1, color="tab:blue", label=f"{loss_key} (raw)")
    if len(loss) >= 3:
        ax.plot(eps, smooth(loss, max(3, len(loss) // 20)), lw=2, color="tab:blue", label=f"{loss_key} (smoothed)")
    for colour, key in zip(("tab:orange", "tab:red", "tab:purple", "tab:brown"), loss_keys(metrics, loss_key),
                           strict=False):
        pts = [(m["episode"], float(m[key])) for m in metrics if isinstance(m.get(key), (int, float))]
        ax.plot([e for e, _ in pts], [v for _, v in pts], lw=1.5, color=colour, label=key)
    for prev, cur in zip(metrics, metrics[1:], strict=False):
        if prev.get("session") != cur.get("session"):
            ax.axvline(cur["episode"], color="grey", ls="--", lw=1)
    ax.set_xlabel("episode")
    ax.set_ylabel(loss_key)
    ax.set_title("Loss evolution (dashed: a new session resumed here)")
    _integer_episodes(ax)
    ax.legend()
    return _save(fig, path)


def other_metric_keys(metrics: Sequence[Mapping[str, Any]], skip: Sequence[str] = ()) -> list[str]:
    """Logged numeric metrics that are not losses, not ``skip`` and not bookkeeping (episode, session, time)."""
    keys: list[str] = []
    for m in metrics:
        for k, v in m.items():
            if (k not in ("episode", "session", "time", *skip) and "loss" not in k
                    and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys):
                keys.append(k)
    return keys


def plot_metrics(metrics: Sequence[Mapping[str, Any]], keys: Sequence[str], path: Path) -> Path:
    """One small panel per logged metric (accuracy, learning rate, ...): every logged number has a plot."""
    cols = min(3, max(1, len(keys)))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(4 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        pts = [(m["episode"], float(m[key])) for m in metrics if isinstance(m.get(key), (int, float))]
        ax.plot([e for e, _ in pts], [v for _, v in pts], color="tab:green", lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("episode", fontsize=8)
        _integer_episodes(ax)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_metric(metrics: Sequence[Mapping[str, Any]], key: str, path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    pts = [(m["episode"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:green")
    ax.set_xlabel("episode")
    ax.set_ylabel(key)
    ax.set_title(f"Monitored metric: {key}")
    _integer_episodes(ax)
    return _save(fig, path)


def plot_checkpoint_timeline(saved: Sequence[Mapping[str, Any]], kept_steps: set[int], path: Path) -> Path:
    """When each checkpoint was saved and whether retention kept it."""
    fig = _figure(8, 2.6)
    ax = fig.subplots()
    kept = [s for s in saved if s["step"] in kept_steps]
    dropped = [s for s in saved if s["step"] not in kept_steps]
    ax.scatter([s["episode"] for s in dropped], [0] * len(dropped), marker="x", color="grey", label="deleted")
    ax.scatter([s["episode"] for s in kept], [0] * len(kept), marker="o", color="tab:blue", label="kept")
    ax.set_yticks([])
    ax.set_xlabel("episode")
    ax.set_title("Checkpoint timeline")
    _integer_episodes(ax)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_loss_distribution(metrics: Sequence[Mapping[str, Any]], path: Path, loss_key: str = "loss") -> Path:
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    vals = _finite([m.get(loss_key) for m in metrics])
    ax.hist(vals, bins=min(40, max(5, len(vals) // 5)), color="tab:blue", alpha=0.8)
    ax.set_xlabel(loss_key)
    ax.set_ylabel("episodes")
    ax.set_title("Loss distribution")
    return _save(fig, path)


def plot_resources(samples: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """RAM %, CPU % and (when present) GPU utilisation and memory over time."""
    fig = _figure(8, 3.5)
    ax = fig.subplots()
    if samples:
        t0 = samples[0].get("time", 0.0)
        t = [(s.get("time", t0) - t0) / 60 for s in samples]
        for key, label in (("ram_percent", "RAM %"), ("cpu_percent", "CPU %"),
                           ("gpu_util_percent", "GPU util %"), ("gpu_mem_percent", "GPU mem %")):
            ys = [s.get(key) for s in samples]
            if any(isinstance(y, (int, float)) for y in ys):
                ax.plot(t, [y if isinstance(y, (int, float)) else math.nan for y in ys], label=label)
        ax.legend(fontsize=8)
    ax.set_xlabel("minutes since the first sample (all sessions)")
    ax.set_ylim(0, 100)
    ax.set_title("Resource use")
    return _save(fig, path)
