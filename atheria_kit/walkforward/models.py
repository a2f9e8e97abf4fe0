"""Direction classifiers: scikit-learn logistic regression (default), histogram GBM, and torch logistic/MLP.

Each fold gets a fresh model from :func:`make_model`; the scaler inside the pipeline is fit on that fold's train
rows only, so no statistic of the test period leaks into training.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from atheria_kit._validation import require_choice

logger = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("logreg", "hgb", "torch_logreg", "torch_mlp")


def adaptive_max_iter(n_samples: int) -> int:
    """More lbfgs iterations for small data (cheap), fewer per sample for large data: 200..1000."""
    return int(min(1000, max(200, 2_000_000 // max(n_samples, 1))))


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression (``hidden=0``) or a one-hidden-layer MLP in torch, trained with AdamW on mini-batches.

    Runs on CUDA when ``device="auto"`` finds one; the batch size then scales with free GPU memory.
    Standardisation statistics come from the training rows only.
    """

    def __init__(self, hidden: int = 0, epochs: int = 5, lr: float = 1e-2, batch_size: int = 4096,
                 device: str = "auto", seed: int = 0) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _batch_size(self, device, n_features: int) -> int:
        import torch

        if device.type != "cuda":
            return self.batch_size
        free, _ = torch.cuda.mem_get_info(device)
        # a row costs ~ (features + hidden) * 4 bytes * ~8 (activations, grads, optimizer); use a quarter of free
        per_row = (n_features + max(self.hidden, 1)) * 4 * 8
        return int(max(self.batch_size, min(1 << 20, free // 4 // per_row)))

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchClassifier:
        import torch

        torch.manual_seed(self.seed)
        dev = self._device()
        X = np.asarray(X, dtype=np.float32)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-8
        Xt = torch.from_numpy((X - self.mean_) / self.scale_).to(dev)
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32)).to(dev)
        d = X.shape[1]
        layers = [torch.nn.Linear(d, 1)] if not self.hidden else [
            torch.nn.Linear(d, self.hidden), torch.nn.ReLU(), torch.nn.Linear(self.hidden, 1)]
        self.net_ = torch.nn.Sequential(*layers).to(dev)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=1e-4)
        bs = self._batch_size(dev, d)
        steps = self.epochs * math.ceil(len(Xt) / bs)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(steps, 1))
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        self.net_.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(Xt), generator=gen).to(dev)
            for i in range(0, len(Xt), bs):
                idx = order[i : i + bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(self.net_(Xt[idx]).squeeze(1), yt[idx])
                loss.backward()
                opt.step()
                sched.step()
        self.net_.eval().cpu()
        self.classes_ = np.array([0.0, 1.0])
        self.batch_size_used_ = bs
        self.device_used_ = str(dev)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            z = torch.from_numpy((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_)
            p = torch.sigmoid(self.net_(z).squeeze(1)).numpy().astype(np.float64)
        return np.column_stack([1 - p, p])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.float64)


def make_model(name: str, n_samples: int, *, seed: int = 0, use_gpu: bool = False):
    """A fresh, unfitted classifier for one fold."""
    require_choice("model", name, MODELS)
    if name == "logreg":
        return Pipeline([
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=1.0, max_iter=adaptive_max_iter(n_samples), random_state=seed)),
        ])
    if name == "hgb":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                              early_stopping=True, validation_fraction=0.1, random_state=seed)
    return TorchClassifier(hidden=0 if name == "torch_logreg" else 32, seed=seed,
                           device="auto" if use_gpu else "cpu")


def resolve_model(name: str, use_gpu: bool) -> tuple[str, str]:
    """The model to train and a sentence for the user: ``--use-gpu`` picks torch and says whether CUDA is there."""
    if not use_gpu:
        return name, f"model {name} on CPU"
    import torch

    torch_name = name if name.startswith("torch_") else "torch_logreg"
    if torch.cuda.is_available():
        return torch_name, f"--use-gpu: {torch_name} on CUDA ({torch.cuda.get_device_name(0)})"
    return torch_name, f"--use-gpu: no CUDA device found, {torch_name} runs on the CPU"


@dataclass
class FitResult:
    model: object
    convergence_warnings: int


def fit_counting_warnings(model, X: np.ndarray, y: np.ndarray) -> FitResult:
    """Fit and count ConvergenceWarnings instead of printing one per fold (reported in the summary)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y)
    n = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return FitResult(model, n)
