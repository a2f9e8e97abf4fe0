"""Configuration of a progressive-training session, from a notebook's parameters cell or a YAML file.

The seed notebook's upper-case names (``EXPERIMENT_NAME``, ``MAX_TRAINING_HOURS``, ...) are accepted as well as the
field names themselves, so a parameters cell can be passed straight in.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atheria_kit._io import read_yaml_mapping
from atheria_kit._validation import require_bool, require_choice, require_int, require_positive
from atheria_kit.say import say

EXPORT_FORMATS = ("torchscript", "torch_export", "onnx")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class SessionConfig:
    """What a progressive-training session does; every field has a default that works on any platform."""

    experiment_name: str = "experiment"
    #: Cap on this session's training time; the platform's own limit (Colab 12 h, Kaggle 12 h) applies too.
    max_training_hours: float = 10.0
    #: Exact cap in seconds, for short demos and tests; overrides ``max_training_hours`` when set.
    max_training_seconds: float | None = None
    total_episodes: int = 1000
    save_every_episodes: int = 10
    #: Sync to persistent storage every N episodes (0 = no remote: Kaggle's default, where /kaggle/working persists).
    drive_sync_every: int = 50
    sync_every_minutes: float = 30.0
    keep_best_n: int = 5
    auto_resume: bool = True
    monitor: str = "loss"
    mode: str = "min"
    #: Where checkpoints, logs and exports go; None = chosen by the platform.
    root: str | None = None
    #: Persistent copy: a directory or fsspec URL; None = Drive's MyDrive/atheria on Colab when mounted.
    remote: str | None = None
    nan_policy: str = "stop"
    max_nan_skips: int = 3
    live_view: str = "auto"
    plot_every: int = 10
    seed: int = 0
    export_formats: tuple[str, ...] = EXPORT_FORMATS
    export: str = "best"  # which weights to export: "best" checkpoint or the "final" model
    monitor_interval: float = 1.0
    handle_signals: bool = True
    #: Load checkpoints that need full pickle (can run arbitrary code). Off: such a file is skipped with a warning.
    allow_pickle: bool = False
    #: When the configured remote cannot be read at start-up (after retrying ``remote_retry_seconds``): "stop" the
    #: session with a message, or "ignore" it and resume from what is reachable (an explicit choice).
    remote_unavailable: str = "stop"
    remote_retry_seconds: float = 120.0
    #: Start a new run even though checkpoints exist: the old ones are kept under an archive name, never deleted.
    start_over: bool = False
    #: A second session on the same run folder refuses to start; a lease silent this long belongs to a dead VM.
    lease_timeout_seconds: float = 180.0
    take_over_lease: bool = False
    #: How long finish() waits for the final sync at most; None = derived from the measured upload time.
    final_sync_timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.experiment_name, str) or not _NAME_RE.match(self.experiment_name):
            raise ValueError(
                f"experiment_name={self.experiment_name!r} is invalid; expected 1-100 letters, digits, '.', '_' or '-'"
            )
        require_positive("max_training_hours", self.max_training_hours)
        if self.max_training_seconds is not None:
            require_positive("max_training_seconds", self.max_training_seconds)
        require_int("total_episodes", self.total_episodes, minimum=1)
        require_int("save_every_episodes", self.save_every_episodes, minimum=1)
        require_int("drive_sync_every", self.drive_sync_every, minimum=0)
        require_positive("sync_every_minutes", self.sync_every_minutes)
        require_int("keep_best_n", self.keep_best_n, minimum=1)
        require_bool("auto_resume", self.auto_resume)
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"monitor={self.monitor!r} is invalid; expected a metric name such as 'loss'")
        require_choice("mode", self.mode, ("min", "max"))
        require_choice("nan_policy", self.nan_policy, ("stop", "skip"))
        require_int("max_nan_skips", self.max_nan_skips, minimum=1)
        require_choice("live_view", self.live_view, ("auto", "widget", "text", "off"))
        require_int("plot_every", self.plot_every, minimum=1)
        require_int("seed", self.seed, minimum=0)
        self.export_formats = tuple(self.export_formats)
        for fmt in self.export_formats:
            require_choice("export_formats", fmt, EXPORT_FORMATS)
        require_choice("export", self.export, ("best", "final"))
        require_positive("monitor_interval", self.monitor_interval)
        for name in ("root", "remote"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name}={value!r} is invalid; expected a folder path or URL string (or None); "
                                 f"pass a sync target object as TrainingSession(remote=...)")
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
            elif isinstance(value, str) and not value.strip():
                raise ValueError(f"{name}={value!r} is invalid; expected a folder path or URL, or None")
        for name in ("allow_pickle", "start_over", "take_over_lease", "handle_signals"):
            require_bool(name, getattr(self, name))
        require_choice("remote_unavailable", self.remote_unavailable, ("stop", "ignore"))
        require_positive("remote_retry_seconds", self.remote_retry_seconds, allow_zero=True)
        require_positive("lease_timeout_seconds", self.lease_timeout_seconds)
        if self.final_sync_timeout is not None:
            require_positive("final_sync_timeout", self.final_sync_timeout)

    @property
    def budget_seconds(self) -> float:
        if self.max_training_seconds is not None:
            return float(self.max_training_seconds)
        return float(self.max_training_hours) * 3600.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **kwargs: Any) -> SessionConfig:
        """Build from a mapping and/or keywords; keys may be field names or the seed's upper-case names.

        Keys in ``params`` that are not settings (a notebook's other parameters such as ``SMOKE``, so that
        ``globals()`` can be passed) are ignored, except that a name one edit away from a setting
        (``TOTAL_EPISODE``) is reported as a likely typo; an unknown keyword is an error naming it.
        """
        merged: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for source, strict in ((params or {}, False), (kwargs, True)):
            for key, value in source.items():
                if not isinstance(key, str):
                    continue
                name = key.lower()
                if name in names:
                    merged[name] = value
                    continue
                near = near_miss(name, names)
                if strict:
                    hint = f"; did you mean {near!r}?" if near else f"; expected one of {sorted(names)}"
                    raise ValueError(f"{key}={value!r} is not a setting{hint}")
                # Only parameter-style names (upper case): a notebook's globals() also holds np, pd, In, Out...
                if near is not None and key.isupper() and near not in {str(k).lower() for k in source}:
                    say.warning(f"{key} is not a setting and is ignored; did you mean {near.upper()}?")
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SessionConfig:
        p = Path(path)
        data = read_yaml_mapping(p)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if str(k).lower() not in names]
        if unknown:
            raise ValueError(f"{p.name}: unknown settings {unknown}; expected some of {sorted(names)}")
        return cls.from_params(data, **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["export_formats"] = list(self.export_formats)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def near_miss(name: str, names: set[str]) -> str | None:
    """The setting ``name`` is one edit (insert, delete, replace or swap of neighbours) away from, if any."""
    for candidate in sorted(names):
        if candidate != name and _one_edit(name, candidate):
            return candidate
    return None


def _one_edit(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1:]


@dataclass
class SessionPaths:
    """``{root}/checkpoints/{experiment}``, ``{root}/logs/{experiment}``, ``{root}/exports/{experiment}``."""

    root: Path
    checkpoints: Path
    logs: Path
    exports: Path

    @classmethod
    def under(cls, root: Path, experiment: str) -> SessionPaths:
        return cls(root, root / "checkpoints" / experiment, root / "logs" / experiment, root / "exports" / experiment)

    @property
    def lease(self) -> Path:
        """The run folder's lease (outside the folders that ``start_over`` archives)."""
        return self.root / "leases" / f"{self.checkpoints.name}.json"
