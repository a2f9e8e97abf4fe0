"""Models: the float32 scaler equals scikit-learn's, warnings are counted, the torch model learns on the CPU,
and ``--use-gpu`` picks torch, says when there is no CUDA, and sizes batches from free GPU memory."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from atheria_kit.walkforward import models as M


@pytest.fixture(scope="module")
def linear_data():
    """A learnable problem: y depends linearly on 6 features plus noise (train 3000 rows, test 1000)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 6)).astype(np.float32) * np.array([1, 5, 0.1, 2, 1, 3], dtype=np.float32) + 7
    w = np.array([1.0, -0.3, 8.0, 0.5, 0.0, 0.2])
    y = ((X - 7) @ w + rng.normal(scale=1.5, size=4000) > 0).astype(np.float32)
    return X[:3000], y[:3000], X[3000:], y[3000:]


@pytest.mark.parametrize("block_rows", [7, 65_536])
def test_float32_scaler_matches_sklearn_standard_scaler(block_rows):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(1001, 5)) * [1e-3, 1, 50, 1e4, 0] + [0, 1e5, -3, 7, 2]).astype(np.float32)
    ours = M.Float32Scaler(block_rows=block_rows).fit(X)
    ref = StandardScaler().fit(X.astype(np.float64))
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(ours.var_, ref.var_, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ours.scale_[4], 1.0)  # constant column: centred, not divided by ~0
    out = ours.transform(X)
    assert out.dtype == np.float32 and out.shape == X.shape
    np.testing.assert_allclose(out, ref.transform(X.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_float32_scaler_uses_train_statistics_and_checks_shapes():
    s = M.Float32Scaler().fit(np.array([[0.0], [2.0]], dtype=np.float32))
    # mean 1, std 1 (population): test rows are scaled with the train statistics, not their own
    np.testing.assert_array_equal(s.transform(np.array([[5.0], [1.0]])), np.array([[4.0], [0.0]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 3\); expected \(samples, 1\)"):
        s.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        M.Float32Scaler().fit(np.zeros((0, 3)))


def test_logreg_pipeline_matches_plain_sklearn_on_standardised_data(linear_data):
    X, y, Xt, _ = linear_data
    ours = M.make_model("logreg", len(X)).fit(X, y).predict_proba(Xt)[:, 1]
    sc = StandardScaler().fit(X.astype(np.float64))
    ref = LogisticRegression(max_iter=1000).fit(sc.transform(X), y).predict_proba(sc.transform(Xt))[:, 1]
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_adaptive_max_iter_bounds():
    assert M.adaptive_max_iter(100) == 1000 and M.adaptive_max_iter(10**7) == 200
    assert M.adaptive_max_iter(5_000) == 400


def test_convergence_warnings_are_counted_not_shown(linear_data):
    X, y, _, _ = linear_data
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        res = M.fit_counting_warnings(LogisticRegression(max_iter=1), X, y)
        ok = M.fit_counting_warnings(LogisticRegression(max_iter=1000), X, y)
    assert res.convergence_warnings == 1 and ok.convergence_warnings == 0
    assert not [w for w in shown if issubclass(w.category, ConvergenceWarning)]


def test_other_warnings_pass_through():
    class Noisy(LogisticRegression):
        def fit(self, X, y):
            warnings.warn("something else", UserWarning, stacklevel=1)
            return super().fit(X, y)

    with pytest.warns(UserWarning, match="something else"):
        M.fit_counting_warnings(Noisy(), np.eye(4), np.array([0, 1, 0, 1]))


@pytest.mark.parametrize("hidden", [0, 16])
def test_torch_classifier_learns_on_cpu_like_logistic_regression(linear_data, hidden):
    X, y, Xt, yt = linear_data
    clf = M.TorchClassifier(hidden=hidden, device="cpu", seed=3).fit(X, y)
    p = clf.predict_proba(Xt)
    assert p.shape == (1000, 2) and np.allclose(p.sum(axis=1), 1.0)
    ref = LogisticRegression(max_iter=1000).fit(StandardScaler().fit_transform(X), y)
    ref_auc = roc_auc_score(yt, ref.predict_proba(StandardScaler().fit(X).transform(Xt))[:, 1])
    auc = roc_auc_score(yt, p[:, 1])
    assert ref_auc > 0.9 and auc > ref_auc - 0.02  # the signal is there, and torch finds as much of it
    assert clf.device_used_ == "cpu" and set(clf.predict(Xt)) <= {0.0, 1.0}
    again = M.TorchClassifier(hidden=hidden, device="cpu", seed=3).fit(X, y).predict_proba(Xt)
    np.testing.assert_array_equal(again, p)  # seeded: a resumed fold reproduces its metrics


def test_torch_classifier_leaves_the_callers_random_state_and_threads_alone(linear_data):
    X, y, _, _ = linear_data
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    M.TorchClassifier(device="cpu", seed=9, min_steps=5).fit(X, y)
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


def test_torch_classifier_takes_enough_steps_when_one_batch_holds_everything(linear_data):
    X, y, _, _ = linear_data
    clf = M.TorchClassifier(device="cpu", batch_size=10**6, epochs=5, min_steps=300).fit(X, y)
    assert clf.batch_size_used_ == 3000 and clf.epochs_used_ == 300  # one step per epoch -> 300 epochs
    clf = M.TorchClassifier(device="cpu", batch_size=100, epochs=5, min_steps=300).fit(X, y)
    assert clf.epochs_used_ == 10  # 30 steps per epoch


def test_gpu_batch_size_scales_with_free_memory():
    # per row: (19 features + 1) * 4 bytes * 8 = 640 bytes; a quarter of the free memory is used
    assert M.gpu_batch_size(100_000_000, 19) == 100_000_000 // 4 // 640 == 39_062
    assert M.gpu_batch_size(16 * 2**30, 19) == 1 << 20  # capped
    assert M.gpu_batch_size(0, 19) == 256  # floor
    assert M.gpu_batch_size(100_000_000, 19, hidden=32) == 100_000_000 // 4 // ((19 + 32) * 32) == 15_318
    assert M.gpu_batch_size(2 * 100_000_000, 19) == 2 * 39_062 + 1  # proportional


def test_batch_size_reads_free_memory_on_cuda(monkeypatch):
    """No GPU here: fake only the CUDA memory query and check the classifier uses it."""
    calls = []

    def fake_mem_get_info(device=None):
        calls.append(device)
        return 100_000_000, 16 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", fake_mem_get_info)
    clf = M.TorchClassifier(batch_size=4096)
    assert clf._batch_size(torch.device("cuda"), 19) == 39_062 and len(calls) == 1
    assert clf._batch_size(torch.device("cpu"), 19) == 4096 and len(calls) == 1  # CPU: the configured size


def test_effective_model_and_resolve_without_cuda(caplog):
    assert M.effective_model("logreg", False) == "logreg"
    assert M.effective_model("logreg", True) == "torch_logreg"
    assert M.effective_model("hgb", True) == "torch_mlp"
    assert M.effective_model("torch_mlp", True) == "torch_mlp"
    with pytest.raises(ValueError, match="model='svm'"):
        M.effective_model("svm", True)
    assert M.resolve_model("hgb", False) == ("hgb", "model hgb on CPU")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-GPU message is not expected")
    with caplog.at_level(logging.WARNING, logger="atheria_kit"):
        name, note = M.resolve_model("logreg", True)
    assert name == "torch_logreg" and "no CUDA device found" in note
    assert "no CUDA device found; torch_logreg runs on the CPU" in caplog.text
    model = M.make_model(name, 100, use_gpu=True)
    assert isinstance(model, M.TorchClassifier) and model._device().type == "cpu"


def test_resolve_names_the_gpu_when_cuda_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla T4")
    assert M.resolve_model("logreg", True) == ("torch_logreg", "--use-gpu: torch_logreg on CUDA (Tesla T4)")


def test_small_fits_use_one_openmp_thread():
    from threadpoolctl import threadpool_info

    seen = []

    class Probe(LogisticRegression):
        def fit(self, X, y):
            seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"])
            return super().fit(X, y)

    M.fit_counting_warnings(Probe(), np.eye(4), np.array([0, 1, 0, 1]))
    assert seen[0] and set(seen[0]) == {1}
