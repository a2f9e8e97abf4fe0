"""``AdaptiveTrainer``: mini-batch SGD with momentum, adaptive learning-rate decay, recency weights and early stopping.

Built from torch's own pieces (``torch.optim.SGD``, ``ReduceLROnPlateau`` / ``ExponentialLR``,
``clip_grad_norm_``, per-sample losses with ``reduction='none'``); the only hand-written state is the early-stopping
counter. Everything it holds goes into ``state_dict()`` (plain types and tensors, loadable with
``torch.load(weights_only=True)``), so a run that is stopped and resumed between epochs ends bit-identical to one that
never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau

from atheria_kit.trainers.config import TrainingConfig
from atheria_kit.trainers.early_stopping import EarlyStopping

logger = logging.getLogger(__name__)

STATE_FORMAT = "atheria-adaptive-trainer"
STATE_VERSION = 1


def _field(name: str, doc: str) -> property:
    def get(self: dict[str, Any]) -> Any:
        return self[name]

    return property(get, doc=doc)


class EpochMetrics(dict):
    """One epoch's metrics, readable both ways: as attributes (``m.loss``, ``m.learning_rate``) and as the dict
    earlier versions returned (``m["loss"]``, ``dict(m)``, ``"loss" in m``, ``m.get("loss")``, JSON)."""

    __slots__ = ()

    epoch = _field("epoch", "Index of the epoch (0-based).")
    loss = _field("loss", "Training loss, recency-weighted.")
    val_loss = _field("val_loss", "Validation loss, plain mean.")
    learning_rate = _field("learning_rate", "The rate used in this epoch.")
    grad_norm = _field("grad_norm", "Mean gradient norm over the batches, before clipping.")
    grad_norm_max = _field("grad_norm_max", "Largest gradient norm of a batch, before clipping.")
    clipped_batches = _field("clipped_batches", "Batches whose gradient was clipped.")
    batches = _field("batches", "Mini-batches in the epoch.")
    improved = _field("improved", "Whether the validation loss beat the best by more than the threshold.")
    best_val_loss = _field("best_val_loss", "Best validation loss so far.")
    bad_epochs = _field("bad_epochs", "Epochs since the last improvement.")
    seconds = _field("seconds", "Wall time of the epoch.")

    def __repr__(self) -> str:
        return f"EpochMetrics({', '.join(f'{k}={v!r}' for k, v in self.items())})"


def recency_weights(n: int, oldest: float) -> torch.Tensor:
    """Linear ramp from ``oldest`` (first, oldest sample) to 1 (last, newest), scaled to mean 1."""
    if n <= 0:
        raise ValueError(f"n={n!r} is invalid; expected an integer >= 1")
    w = torch.linspace(oldest, 1.0, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
    return w / w.mean()


class AdaptiveTrainer:
    """Train ``model`` epoch by epoch under a :class:`TrainingConfig`.

    ``model=None`` builds a linear model (``nn.Linear``) on the first call to :meth:`train_epoch`, sized from the
    data. Training data are taken in time order (oldest first): with ``sample_weights`` the newest samples weigh
    the most. ``clock`` times epochs (injectable for tests).
    """

    def __init__(
        self,
        config: TrainingConfig | None = None,
        model: nn.Module | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config if config is not None else TrainingConfig()
        if not isinstance(self.config, TrainingConfig):
            raise ValueError(f"config={config!r} is invalid; expected a TrainingConfig")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model={type(model).__name__} is invalid; expected a torch.nn.Module or None")
        self.model: nn.Module | None = model
        self._model_spec: dict[str, int] | None = None
        self._clock = clock
        self.optimizer: torch.optim.SGD | None = None
        self.scheduler: ReduceLROnPlateau | ExponentialLR | None = None
        self.early_stopping = EarlyStopping(self.config.early_stopping_patience, self.config.early_stopping_threshold)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.history: list[dict[str, Any]] = []
        self.epochs_trained = 0
        self._best_model: dict[str, torch.Tensor] | None = None
        if model is not None:
            self._build_optimization()

    # ------------------------------------------------------------------ set-up
    def _build_model(self, n_features: int, n_outputs: int) -> None:
        self._model_spec = {"in_features": int(n_features), "out_features": int(n_outputs)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)  # the default model's initial weights do not depend on global RNG
            self.model = nn.Linear(n_features, n_outputs)
        self._build_optimization()

    def _build_optimization(self) -> None:
        cfg = self.config
        assert self.model is not None
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters; expected at least one with requires_grad=True")
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.learning_rate_initial, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        if cfg.use_adaptive_lr:
            # An "improvement" means the same thing for the rate and for early stopping: more than the threshold.
            self.scheduler = ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=cfg.learning_rate_decay,
                patience=cfg.lr_plateau_patience,
                threshold=cfg.early_stopping_threshold,
                threshold_mode="abs",
                min_lr=cfg.learning_rate_min,
            )
        else:
            self.scheduler = ExponentialLR(self.optimizer, gamma=cfg.learning_rate_decay)

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        assert self.model is not None
        p = next(self.model.parameters())
        return p.device, p.dtype

    # ------------------------------------------------------------------ data at the boundary
    def _check_xy(self, name_x: str, X: Any, name_y: str, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        X = _to_tensor(name_x, X)
        y = _to_tensor(name_y, y)
        if X.ndim < 2:
            raise ValueError(f"{name_x} has shape {tuple(X.shape)}; expected (n_samples, n_features, ...)")
        if X.shape[0] == 0:
            raise ValueError(f"{name_x} has shape {tuple(X.shape)}; expected at least one sample")
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"{name_y} has shape {tuple(y.shape)}; expected ({X.shape[0]},) or ({X.shape[0]}, n_outputs) "
                f"to match {name_x}'s {X.shape[0]} samples"
            )
        if not torch.isfinite(X).all():
            raise ValueError(f"{name_x} contains NaN or infinite values; expected finite numbers")
        if not torch.isfinite(y).all():
            raise ValueError(f"{name_y} contains NaN or infinite values; expected finite numbers")
        if self.config.loss == "cross_entropy":
            if y.ndim != 1 or not torch.equal(y, y.round()) or (y < 0).any():
                raise ValueError(f"{name_y} must hold class indices 0..C-1 (1-D integers) for loss='cross_entropy'")
        return X, y

    def _prepare(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device, dtype = self._device_dtype()
        X = X.to(device=device, dtype=dtype)
        y = y.to(device=device, dtype=torch.long if self.config.loss == "cross_entropy" else dtype)
        return X, y

    def _per_sample_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.config.loss
        if loss == "cross_entropy":
            return F.cross_entropy(out, y, reduction="none")
        if y.ndim == 1 and out.ndim == 2 and out.shape[1] == 1:
            out = out.squeeze(1)
        if out.shape != y.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)}; expected {tuple(y.shape)} to match the targets")
        fn = F.mse_loss if loss == "mse" else F.binary_cross_entropy_with_logits
        per = fn(out, y, reduction="none")
        return per.reshape(per.shape[0], -1).mean(dim=1)

    # ------------------------------------------------------------------ training
    def train_epoch(self, X_train: Any, y_train: Any, X_val: Any, y_val: Any,
                    epoch: int | None = None) -> EpochMetrics:
        """One pass over the training data in shuffled mini-batches, then validation and the schedule's step.

        Returns the epoch's :class:`EpochMetrics` (attributes, or keys of the dict it also is): ``loss``
        (recency-weighted training loss), ``val_loss`` (plain mean), ``learning_rate`` (the rate used in this
        epoch), ``grad_norm`` / ``grad_norm_max`` (before clipping), ``clipped_batches``, ``batches``, ``improved``,
        ``best_val_loss``, ``bad_epochs``, ``seconds``, ``epoch``.
        """
        X_train, y_train = self._check_xy("X_train", X_train, "y_train", y_train)
        X_val, y_val = self._check_xy("X_val", X_val, "y_val", y_val)
        if X_val.shape[1:] != X_train.shape[1:]:
            raise ValueError(
                f"X_val has sample shape {tuple(X_val.shape[1:])}; expected {tuple(X_train.shape[1:])} like X_train"
            )
        if self.model is None:
            if X_train.ndim != 2:
                raise ValueError("X_train must be 2-D (n_samples, n_features) when the trainer builds its own model")
            n_out = int(y_train.max().item()) + 1 if self.config.loss == "cross_entropy" else (
                1 if y_train.ndim == 1 else y_train.shape[1])
            self._build_model(X_train.shape[1], n_out)
        assert self.model is not None and self.optimizer is not None and self.scheduler is not None
        epoch = self.epochs_trained if epoch is None else int(epoch)
        started = self._clock()
        X, y = self._prepare(X_train, y_train)
        Xv, yv = self._prepare(X_val, y_val)
        n = X.shape[0]
        cfg = self.config
        weights = (recency_weights(n, cfg.recency_weight_min) if cfg.sample_weights
                   else torch.ones(n, dtype=torch.float64)).to(device=X.device, dtype=X.dtype)
        lr_used = float(self.optimizer.param_groups[0]["lr"])
        max_norm = cfg.gradient_clip if cfg.gradient_clip is not None else math.inf
        params = [p for g in self.optimizer.param_groups for p in g["params"]]

        self.model.train()
        order = torch.randperm(n, generator=self.generator).to(X.device)
        weighted_sum = 0.0
        norms: list[float] = []
        clipped = 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            w = weights[idx]
            self.optimizer.zero_grad(set_to_none=True)
            per = self._per_sample_loss(self.model(X[idx]), y[idx])
            batch_loss = (per * w).sum() / w.sum()
            if not torch.isfinite(batch_loss):
                raise FloatingPointError(
                    f"training loss became {batch_loss.item()} at epoch {epoch}; lower learning_rate_initial "
                    f"({cfg.learning_rate_initial}) or check the data's scale"
                )
            batch_loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm))
            norms.append(norm)
            clipped += int(norm > max_norm)
            self.optimizer.step()
            weighted_sum += batch_loss.item() * w.sum().item()
        train_loss = weighted_sum / weights.sum().item()

        val_loss = self.evaluate(Xv, yv)
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()
            for group in self.optimizer.param_groups:  # ExponentialLR has no floor; it compounds from the clamped rate
                group["lr"] = max(group["lr"], cfg.learning_rate_min)
        improved = self.early_stopping.update(val_loss, epoch)
        if improved:
            self._best_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.epochs_trained += 1
        metrics = {
            "epoch": epoch,
            "loss": train_loss,
            "val_loss": val_loss,
            "learning_rate": lr_used,
            "grad_norm": float(np.mean(norms)),
            "grad_norm_max": float(np.max(norms)),
            "clipped_batches": clipped,
            "batches": len(norms),
            "improved": improved,
            "best_val_loss": self.early_stopping.best,
            "bad_epochs": self.early_stopping.bad_epochs,
            "seconds": self._clock() - started,
        }
        self.history.append(metrics)  # plain dicts: the state loads with torch.load(weights_only=True)
        logger.debug("epoch %d: loss=%.6g val_loss=%.6g lr=%.3g", epoch, train_loss, val_loss, lr_used)
        return EpochMetrics(metrics)

    @torch.no_grad()
    def evaluate(self, X: Any, y: Any) -> float:
        """Plain (unweighted) mean loss of the current model on ``(X, y)``."""
        if self.model is None:
            raise ValueError("model is not built yet; call train_epoch first or pass a model")
        if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
            X, y = self._check_xy("X", X, "y", y)
        X, y = self._prepare(X, y)
        was_training = self.model.training
        self.model.eval()
        try:
            return float(self._per_sample_loss(self.model(X), y).mean().item())
        finally:
            self.model.train(was_training)

    def should_stop(self) -> bool:
        """True once the validation loss has not improved by more than the threshold for ``patience`` epochs."""
        return self.early_stopping.should_stop

    def restore_best(self) -> None:
        """Load the weights of the best validation epoch into the model (no-op before the first epoch)."""
        if self.model is not None and self._best_model is not None:
            self.model.load_state_dict(self._best_model)

    def get_training_summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "epochs_trained": self.epochs_trained,
            "best_val_loss": self.early_stopping.best,
            "best_epoch": self.early_stopping.best_epoch,
            "final_loss": last.get("loss"),
            "final_val_loss": last.get("val_loss"),
            "final_learning_rate": float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else None,
            "stopped_early": self.should_stop(),
            "history": [dict(h) for h in self.history],
        }

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, scheduler, early stopping, shuffling RNG."""
        built = self.model is not None
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "model_spec": dict(self._model_spec) if self._model_spec else None,
            "model": self.model.state_dict() if built else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "early_stopping": self.early_stopping.state_dict(),
            "generator": self.generator.get_state(),
            "epochs_trained": self.epochs_trained,
            "history": [dict(h) for h in self.history],
            "best_model": self._best_model,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state is not an AdaptiveTrainer state; expected format={STATE_FORMAT!r}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version={state.get('version')!r} is not supported; expected {STATE_VERSION}")
        differing = sorted(k for k, v in state["config"].items() if getattr(self.config, k, v) != v)
        if differing:
            logger.warning("resuming with a different training config in %s; the run will not be identical", differing)
        if state["model"] is not None:
            if self.model is None:
                spec = state["model_spec"]
                if spec is None:
                    raise ValueError("state holds a custom model's weights; pass that model to AdaptiveTrainer")
                self._build_model(spec["in_features"], spec["out_features"])
            assert self.model is not None and self.optimizer is not None and self.scheduler is not None
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.generator.set_state(state["generator"])
        self.epochs_trained = int(state["epochs_trained"])
        self.history = [dict(h) for h in state["history"]]
        best = state.get("best_model")
        self._best_model = {k: v.clone() for k, v in best.items()} if best is not None else None


def _to_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} could not be read as an array ({exc}); expected a numpy array or tensor") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} has dtype {arr.dtype}; expected numbers (a numeric numpy array or tensor)")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"{name} has complex dtype {t.dtype}; expected real numbers")
    return t
