"""Direction classifiers: scikit-learn logistic regression (default), histogram GBM, and torch logistic/MLP.

Each fold gets a fresh model from :func:`make_model`; the scaler inside the pipeline is fit on that fold's train
rows only, so no statistic of the test period leaks into training.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from atheria_kit._validation import require_choice

logger = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("logreg", "hgb", "torch_logreg", "torch_mlp")
#: The out-of-core counterpart of ``logreg`` (chosen by ``out_of_core``, not by ``--model``).
STREAMING_MODEL = "logreg_sgd"


def adaptive_max_iter(n_samples: int) -> int:
    """More lbfgs iterations for small data (cheap), fewer per sample for large data: 200..1000."""
    return int(min(1000, max(200, 2_000_000 // max(n_samples, 1))))


class Float32Scaler(TransformerMixin, BaseEstimator):
    """Standardise columns with statistics of the rows it is fit on; float32 out, no full-size float64 copy.

    Same result as scikit-learn's ``StandardScaler`` up to float rounding, but that one builds a float64 copy
    of the whole matrix to compute the variance (twice the float32 data); here float64 sums are accumulated
    over blocks of ``block_rows`` rows, so the only full-size allocation is the float32 output of ``transform``.
    """

    def __init__(self, block_rows: int = 65_536) -> None:
        self.block_rows = block_rows

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> Float32Scaler:
        X = np.asarray(X)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"X has shape {X.shape}; expected a non-empty 2-D (samples, features) matrix")
        n, b = len(X), int(self.block_rows)
        total = np.zeros(X.shape[1])
        for i in range(0, n, b):
            total += X[i : i + b].sum(axis=0, dtype=np.float64)
        mean = total / n
        squares = np.zeros(X.shape[1])
        for i in range(0, n, b):
            d = X[i : i + b].astype(np.float64) - mean
            squares += np.einsum("ij,ij->j", d, d)
        var = squares / n
        scale = np.sqrt(var)
        scale[scale < 10 * np.finfo(np.float64).eps] = 1.0  # constant column: leave it centred, do not blow it up
        self.mean_, self.var_, self.scale_ = mean, var, scale
        self.n_features_in_, self.n_samples_seen_ = X.shape[1], n
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "scale_")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}; expected (samples, {self.n_features_in_})")
        out = np.empty(X.shape, dtype=np.float32)
        b = int(self.block_rows)
        for i in range(0, len(X), b):
            out[i : i + b] = (X[i : i + b] - self.mean_) / self.scale_
        return out


def iter_row_chunks(X, rows: int):
    """``(start, stop, block)`` over ``X`` in blocks of ``rows`` rows: an array, or an out-of-core matrix view
    (anything with ``read(start, stop)``, e.g. :class:`atheria_kit.walkforward.disk.RowsView`)."""
    read = getattr(X, "read", None)
    for start in range(0, len(X), rows):
        stop = min(len(X), start + rows)
        yield start, stop, (read(start, stop) if read is not None else np.asarray(X[start:stop]))


class SGDLogisticRegression(ClassifierMixin, BaseEstimator):
    """L2 logistic regression trained by averaged SGD over row chunks: the model of the out-of-core path.

    ``fit`` reads ``X`` block by block (``chunk_rows`` rows): one pass for the scaler's mean and variance
    (``StandardScaler.partial_fit``, the fold's train rows only), then ``epochs`` passes of ``partial_fit`` in a
    seeded random order of blocks and of rows within a block. The penalty matches ``LogisticRegression(C)``
    (``alpha = 1 / (C * n)``), but the optimizer differs from lbfgs: results are close, not identical. Memory
    is a few blocks, whatever the size of ``X``; the block size is fixed so results do not depend on
    ``--chunk-size``.
    """

    def __init__(self, C: float = 1.0, epochs: int = 3, eta0: float = 0.01, chunk_rows: int = 65_536,
                 seed: int = 0) -> None:
        self.C = C
        self.epochs = epochs
        self.eta0 = eta0
        self.chunk_rows = chunk_rows
        self.seed = seed

    def fit(self, X, y: np.ndarray) -> SGDLogisticRegression:
        """Fit on the rows whose label is 0 or 1; a NaN label (an excluded tie) is skipped, in the scaler too."""
        # y stays as given (an array, or an on-disk column view) and is read block by block with X
        if len(X) != len(y) or not len(y):
            raise ValueError(f"X has {len(X)} rows and y {len(y)}; expected the same, non-zero number")
        scaler = StandardScaler()
        labelled = 0
        for start, stop, block in iter_row_chunks(X, self.chunk_rows):
            keep = ~np.isnan(np.asarray(y[start:stop], dtype=np.float64))
            labelled += int(keep.sum())
            if keep.any():
                scaler.partial_fit(block[keep])
        if not labelled:
            raise ValueError(f"all {len(y)} labels are NaN; expected rows labelled 0 or 1")
        # constant step with averaging (ASGD) came closest to lbfgs in our comparisons; "optimal" with the tiny
        # alpha of large data took steps that were too long and lost up to 0.015 AUC
        clf = SGDClassifier(loss="log_loss", alpha=1.0 / (self.C * labelled), learning_rate="constant",
                            eta0=self.eta0, average=True, random_state=self.seed)
        rng = np.random.default_rng(self.seed)
        starts = np.arange(0, len(y), self.chunk_rows)
        read = getattr(X, "read", None)
        classes = np.array([0.0, 1.0])
        for _ in range(self.epochs):
            for start in rng.permutation(starts):
                stop = min(len(y), int(start) + self.chunk_rows)
                block = read(int(start), stop) if read is not None else np.asarray(X[start:stop])
                order = rng.permutation(stop - int(start))
                labels = np.asarray(y[int(start) : stop], dtype=np.float64)[order]
                keep = ~np.isnan(labels)
                if keep.any():
                    clf.partial_fit(scaler.transform(block)[order][keep], labels[keep], classes=classes)
        self.scaler_, self.clf_, self.classes_ = scaler, clf, classes
        self.n_features_in_ = scaler.n_features_in_
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "clf_")
        out = np.empty((len(X), 2))
        for start, stop, block in iter_row_chunks(X, self.chunk_rows):
            out[start:stop] = self.clf_.predict_proba(self.scaler_.transform(block))
        return out

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.float64)


def gpu_batch_size(free_bytes: int, n_features: int, hidden: int = 0, *, minimum: int = 256,
                   maximum: int = 1 << 20) -> int:
    """Mini-batch rows for a GPU with ``free_bytes`` free: a quarter of it, at ~32 bytes per feature/unit.

    A row costs about ``(features + hidden units) * 4 bytes * 8`` (input, activations, gradients, optimizer
    state); the rest of the free memory is left to the CUDA allocator and other processes.
    """
    per_row = (n_features + max(hidden, 1)) * 4 * 8
    return int(max(minimum, min(maximum, int(free_bytes) // 4 // per_row)))


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression (``hidden=0``) or a one-hidden-layer MLP in torch, trained with AdamW on mini-batches.

    Runs on CUDA when ``device="auto"`` finds one; the batch size then scales with free GPU memory.
    Standardisation statistics come from the training rows only.
    """

    def __init__(self, hidden: int = 0, epochs: int = 5, lr: float = 1e-2, batch_size: int = 4096,
                 device: str = "auto", seed: int = 0, min_steps: int = 300) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.min_steps = min_steps

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
        return gpu_batch_size(free, n_features, self.hidden)

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchClassifier:
        import torch

        dev = self._device()
        threads = torch.get_num_threads()
        if dev.type == "cpu":
            # batches of a few thousand rows x a few dozen columns: one thread is as fast, and idle OpenMP
            # threads spinning against other processes on a busy 2-core machine cost seconds per fold
            torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):  # seeded weights without resetting the caller's generator
                torch.manual_seed(self.seed)
                return self._fit(dev, X, y)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, dev, X: np.ndarray, y: np.ndarray) -> TorchClassifier:
        import torch

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
        bs = min(self._batch_size(dev, d), len(Xt))
        per_epoch = math.ceil(len(Xt) / bs)
        # a GPU-sized batch can hold the whole train set; enough optimizer steps matter more than epochs
        epochs = max(self.epochs, math.ceil(self.min_steps / per_epoch))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=epochs * per_epoch)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        self.net_.train()
        for _ in range(epochs):
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
        self.batch_size_used_, self.epochs_used_ = bs, epochs
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
    """A fresh, unfitted classifier for one fold (``STREAMING_MODEL`` for the out-of-core path)."""
    if name == STREAMING_MODEL:
        return SGDLogisticRegression(seed=seed)
    require_choice("model", name, MODELS)
    if name == "logreg":
        return Pipeline([
            ("scale", Float32Scaler()),
            ("clf", LogisticRegression(C=1.0, max_iter=adaptive_max_iter(n_samples), random_state=seed)),
        ])
    if name == "hgb":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                              early_stopping=True, validation_fraction=0.1, random_state=seed)
    return TorchClassifier(hidden=0 if name == "torch_logreg" else 32, seed=seed,
                           device="auto" if use_gpu else "cpu")


def effective_model(name: str, use_gpu: bool) -> str:
    """The model actually trained: ``--use-gpu`` swaps scikit-learn models for their torch counterpart
    (logistic regression -> ``torch_logreg``, gradient boosting -> the non-linear ``torch_mlp``)."""
    require_choice("model", name, MODELS)
    if not use_gpu or name.startswith("torch_"):
        return name
    return "torch_logreg" if name == "logreg" else "torch_mlp"


def resolve_model(name: str, use_gpu: bool) -> tuple[str, str]:
    """The model to train and a sentence for the user: ``--use-gpu`` picks torch and says whether CUDA is there."""
    model = effective_model(name, use_gpu)
    if not use_gpu:
        return model, f"model {model} on CPU"
    import torch

    if torch.cuda.is_available():
        return model, f"--use-gpu: {model} on CUDA ({torch.cuda.get_device_name(0)})"
    logger.warning("--use-gpu: no CUDA device found; %s runs on the CPU (slower)", model)
    return model, f"--use-gpu: no CUDA device found, {model} runs on the CPU"


@dataclass
class FitResult:
    model: object
    convergence_warnings: int


# ``warnings.catch_warnings`` swaps process-global state, and torch seeds its global generator: fits that share a
# process (joblib's threading backend, a threaded dask worker) take turns so counts and results stay exact.
_FIT_LOCK = threading.Lock()


#: Below this many train rows a fit uses one OpenMP thread (scikit-learn's losses and histogram GBM).
SMALL_FIT_ROWS = 100_000


def fit_counting_warnings(model, X: np.ndarray, y: np.ndarray) -> FitResult:
    """Fit and count ConvergenceWarnings instead of printing one per fold (reported in the summary).

    Small fits run on one OpenMP thread: they gain nothing from more, and OpenMP threads waiting at barriers
    for a core that another process holds made a 0.3 s histogram-GBM fit take 20 s on a busy 2-core machine.
    """
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    threads = 1 if len(X) < SMALL_FIT_ROWS else None
    with _FIT_LOCK, threadpool_limits(limits=threads, user_api="openmp"), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y)
    n = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return FitResult(model, n)
