"""What a notebook shows while training: a progress bar, a live figure, a status line and visible alerts.

Why a display handle and not ``clear_output``: clearing wipes every other output of the cell (prints, warnings,
the user's own plots). The figure and the status line are each *one* output, updated in place.

Headless runs (papermill, Kaggle's "Save & Run All", ``ATHERIA_HEADLESS=1``, or no Jupyter kernel) get plain text
progress lines and a single final figure, so the saved notebook holds one figure, not hundreds.
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from atheria_kit._validation import require_choice, require_int
from atheria_kit.platform import in_jupyter_kernel

log = logging.getLogger(__name__)

MODES = ("auto", "widget", "text", "off")


def is_headless(environ: Mapping[str, str] | None = None) -> bool:
    """Whether no person is watching the widgets: batch runs and papermill."""
    env = os.environ if environ is None else environ
    if env.get("ATHERIA_HEADLESS", "").lower() in ("1", "true", "yes"):
        return True
    if env.get("KAGGLE_KERNEL_RUN_TYPE", "") == "Batch":  # Kaggle's "Save & Run All"
        return True
    return not in_jupyter_kernel()


def resolve_mode(mode: str, environ: Mapping[str, str] | None = None) -> str:
    require_choice("live_view", mode, MODES)
    if mode != "auto":
        return mode
    return "text" if is_headless(environ) else "widget"


@dataclass
class LivePoint:
    """One finished episode: its loss, the monitored metric (if not the loss) and every other logged number."""

    episode: int
    loss: float
    metric: float | None
    extra: dict[str, float] = field(default_factory=dict)


#: How a session ended, as the static progress bar shows it: a planned stop is neutral, not red.
OUTCOMES = {"done": ("#2e7d32", "finished"), "stopped": ("#1565c0", "stopped; resumes in the next session"),
            "error": ("#c62828", "stopped by an error")}


def static_progress_html(done: int, total: int | None, outcome: str, title: str = "", status: str = "") -> str:
    """A progress bar as plain HTML: what replaces the live widget when the session ends, so a reopened or shared
    notebook still shows where the run stood (a widget's state is not saved with the notebook)."""
    colour, label = OUTCOMES[require_choice("outcome", outcome, tuple(OUTCOMES))]
    pct = 100.0 * done / total if total else 0.0
    count = f"{done}/{total}" if total else f"{done}"
    name = html.escape(title or "training")
    tail = f'<div style="font-size:85%;color:#555">{html.escape(status)}</div>' if status else ""
    return (f'<div style="font-family:sans-serif;font-size:90%"><b>{name}</b>: episode {count} ({pct:.0f} %), '
            f"{label}<div style=\"background:#e0e0e0;width:100%;max-width:600px;height:10px;border-radius:3px\">"
            f'<div style="background:{colour};width:{min(100.0, pct):.1f}%;height:10px;border-radius:3px"></div>'
            f"</div>{tail}</div>")


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (causal), ignoring non-finite values."""
    out: list[float] = []
    buf: list[float] = []
    for v in values:
        if math.isfinite(v):
            buf.append(v)
        if len(buf) > window:
            buf.pop(0)
        out.append(sum(buf) / len(buf) if buf else float("nan"))
    return out


def _loss_series(points: Sequence[LivePoint]) -> list[str]:
    """Logged names that belong on the loss axis: validation and other losses next to the training loss."""
    names: list[str] = []
    for p in points:
        for k in p.extra:
            if "loss" in k and k not in names:
                names.append(k)
    return names


def render_training_figure(points: Sequence[LivePoint], metric_name: str | None, title: str = "") -> bytes:
    """PNG of the loss (raw and smoothed) with every other logged loss (``val_loss``: overfitting shows as the two
    curves parting) on one axis, and the monitored metric; rendered without pyplot's global state."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.2), dpi=90)
    axes = fig.subplots(1, 2 if metric_name else 1, squeeze=False)[0]
    eps = [p.episode for p in points]
    losses = [p.loss for p in points]
    axes[0].plot(eps, losses, color="tab:blue", alpha=0.35, lw=1, label="loss")
    if len(points) >= 3:
        axes[0].plot(eps, smooth(losses, max(3, len(points) // 20)), color="tab:blue", lw=2, label="loss (smoothed)")
    for colour, name in zip(("tab:orange", "tab:red", "tab:purple", "tab:brown"), _loss_series(points), strict=False):
        pts = [(p.episode, p.extra[name]) for p in points if name in p.extra]
        axes[0].plot([e for e, _ in pts], [v for _, v in pts], color=colour, lw=1.5, marker="." if len(pts) < 30
                     else None, label=name)
    axes[0].set_xlabel("episode")
    axes[0].set_title("loss")
    axes[0].legend(loc="upper right", fontsize=8)
    if metric_name:
        vals = [p.metric if p.metric is not None else float("nan") for p in points]
        axes[1].plot(eps, vals, color="tab:green", lw=1.5)
        axes[1].set_xlabel("episode")
        axes[1].set_title(metric_name)
    for ax in axes:  # episodes are whole numbers, also on a short run's axis
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class LiveView:
    """Progress, live figure, status line and alerts for one training session.

    ``display`` and ``stream`` are injectable so tests can see exactly what a notebook would show.
    """

    def __init__(
        self,
        total: int | None,
        *,
        initial: int = 0,
        mode: str = "auto",
        update_every: int = 10,
        metric_name: str | None = None,
        title: str = "",
        text_every: int | None = None,
        display: Callable[..., Any] | None = None,
        stream: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        require_int("update_every", update_every, minimum=1)
        self.mode = resolve_mode(mode, environ)
        self.total = total
        self.done = initial
        self.update_every = update_every
        self.metric_name = metric_name
        self.title = title
        self.points: list[LivePoint] = []
        self._stream = stream if stream is not None else sys.stdout
        # Text progress: about 20 lines per run (every 5 %), never one per episode.
        self._text_every = text_every or max(1, (total or 100) // 20)
        self._display = display
        self._figure_handle = None
        self._status_handle = None
        self._bar = None
        self._bar_handle = None
        self._alerts_shown: set[str] = set()
        self.figures_shown = 0
        if self.mode == "widget":
            self._display = self._display or _ipython_display()
            self._bar = _notebook_bar(total, initial, title or "training")
            if self._bar is not None and self._display is not None:
                # Displayed through our own handle, so that close() can replace the widget by static HTML.
                self._bar_handle = self._display(self._bar.container, display_id=True)

    # -- progress -----------------------------------------------------------------------------------------
    def update(self, episode: int, loss: float, metric: float | None = None, status: str = "",
               extra: Mapping[str, float] | None = None) -> None:
        """Record one finished episode; refresh what is on screen at the configured rhythm."""
        self.done = episode + 1
        self.points.append(LivePoint(episode, float(loss), None if metric is None else float(metric),
                                     {k: float(v) for k, v in (extra or {}).items()}))
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.update(self.done - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if self.mode == "text":
            if self.done % self._text_every == 0 or (self.total and self.done >= self.total):
                pct = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
                extra = f" {self.metric_name}={metric:.4g}" if metric is not None and self.metric_name else ""
                self._stream.write(f"[{self.title or 'training'}] episode {self.done}/{self.total or '?'}{pct}"
                                   f" loss={loss:.4g}{extra} | {status}\n")
                self._stream.flush()
            return
        if self.done % self.update_every == 0:
            self._show_figure()
            self._show_status(status)

    def _show_figure(self) -> None:
        if not self.points or self._display is None:
            return
        from IPython.display import Image

        img = Image(data=render_training_figure(self.points, self.metric_name, self.title), format="png")
        if self._figure_handle is None:
            self._figure_handle = self._display(img, display_id=True)
        else:
            self._figure_handle.update(img)
        self.figures_shown += 1

    def _show_status(self, status: str) -> None:
        if not status or self._display is None:
            return
        from IPython.display import Markdown

        md = Markdown(f"`{status}`")
        if self._status_handle is None:
            self._status_handle = self._display(md, display_id=True)
        else:
            self._status_handle.update(md)

    # -- alerts -------------------------------------------------------------------------------------------
    def alert(self, key: str, message: str) -> None:
        """Show an alert once per key (time at 90 %, RAM high, sync failing), loudly in every mode."""
        if key in self._alerts_shown:
            return
        self._alerts_shown.add(key)
        log.info("alert %s: %s", key, message)  # shown below; a WARNING record would reach stderr a second time
        if self.mode == "off":
            return
        if self.mode == "widget" and self._display is not None:
            from IPython.display import HTML

            self._display(HTML(f'<div style="background:#fff3cd;border-left:4px solid #e0a800;padding:4px 8px">'
                               f"<b>⚠ {key}</b>: {message}</div>"))
        else:
            self._stream.write(f"⚠ {message}\n")
            self._stream.flush()

    def rearm(self, key: str) -> None:
        self._alerts_shown.discard(key)

    # -- end ----------------------------------------------------------------------------------------------
    def close(self, status: str = "", outcome: str = "done") -> bytes | None:
        """Close the bar and show the final figure once (also in headless mode). Returns its PNG.

        ``outcome`` ("done", "stopped" for a planned stop, "error") colours the final bar: a stop at the time limit
        is part of the plan and is not shown in red. In a notebook the live widget is replaced by a static
        rendering of its final state, which survives saving, reopening and sharing the notebook.
        """
        require_choice("outcome", outcome, tuple(OUTCOMES))
        if self._bar is not None:
            self._bar.close()
            if self._bar_handle is not None:
                from IPython.display import HTML

                self._bar_handle.update(HTML(static_progress_html(self.done, self.total, outcome, self.title)))
        if self.mode == "off" or not self.points:
            return None
        png = render_training_figure(self.points, self.metric_name, self.title)
        if self.mode == "widget":
            self._show_figure()
            self._show_status(status)
        else:
            display = self._display or (_ipython_display() if in_jupyter_kernel() else None)
            if display is not None:
                from IPython.display import Image

                display(Image(data=png, format="png"))
                self.figures_shown += 1
            if status:
                self._stream.write(status + "\n")
                self._stream.flush()
        return png


def _notebook_bar(total: int | None, initial: int, desc: str) -> Any:
    """tqdm's notebook bar, not yet displayed (None where ipywidgets cannot run)."""
    try:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(total=total, initial=initial, desc=desc, unit="ep", display=False)
    except ImportError:  # ipywidgets missing: the figure and status line still show progress
        return None


def _ipython_display() -> Callable[..., Any] | None:
    try:
        from IPython.display import display
    except ImportError:  # IPython is a dependency of ipywidgets, but be tolerant
        return None
    return display
