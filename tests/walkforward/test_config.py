"""Configuration: defaults < YAML < ATHERIA_* variables < flags; bad values name the setting and the expectation."""

from __future__ import annotations

import pytest

from atheria_kit.walkforward.config import WalkForwardConfig, load_config


def test_precedence_yaml_then_environment_then_overrides(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("horizon: 4\nn_splits: 7\nmodel: hgb\nembargo_minutes: 15\n")
    env = {"ATHERIA_N_SPLITS": "9", "ATHERIA_EMBARGO_MINUTES": "0", "ATHERIA_USE_GPU": "yes", "OTHER": "x"}
    cfg = load_config(path, environ=env, overrides={"embargo_minutes": 45.0, "model": None})
    assert cfg.horizon == 4  # YAML over the default
    assert cfg.n_splits == 9  # environment over YAML
    assert cfg.embargo_minutes == 45.0  # flag over both
    assert cfg.model == "hgb"  # a flag left at None does not override
    assert cfg.use_gpu is True and cfg.mode == "quick"  # env bool; untouched default


def test_environment_values_are_typed_and_bad_ones_named():
    cfg = load_config(environ={"ATHERIA_START": "2024-01-01", "ATHERIA_BUDGET_SECONDS": "none",
                               "ATHERIA_CONFIRM": "false"})
    assert cfg.start == "2024-01-01" and cfg.budget_seconds is None and cfg.confirm is False
    with pytest.raises(ValueError, match=r"ATHERIA_HORIZON='four' is invalid; expected an integer"):
        load_config(environ={"ATHERIA_HORIZON": "four"})
    with pytest.raises(ValueError, match=r"ATHERIA_RESUME='maybe' is invalid; expected true/false"):
        load_config(environ={"ATHERIA_RESUME": "maybe"})


def test_bad_files_and_unknown_settings(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_config(tmp_path / "missing.yaml", environ={})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a YAML mapping"):
        load_config(tmp_path / "list.yaml", environ={})
    (tmp_path / "typo.yaml").write_text("horizn: 3\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['horizn'\]"):
        load_config(tmp_path / "typo.yaml", environ={})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("horizon", 0, "horizon=0"),
    ("mode", "fast", "mode='fast'"),
    ("memory_threshold", 1.5, "memory_threshold=1.5"),
    ("model", "svm", "model='svm'"),
    ("backend", "dask", "scheduler=None is invalid with backend='dask'"),
    ("jobs", 0, "jobs=0 is invalid; expected a number of parallel runs >= 1, or -1"),
    ("gate_auc", 2.0, "GateCriteria.auc=2.0"),
])
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WalkForwardConfig(**{field: value})


def test_run_name_names_the_model_actually_trained():
    assert WalkForwardConfig().run_name() == "BTCUSDT_1h_H1_logreg_quick"
    assert WalkForwardConfig(use_gpu=True, horizon=4).run_name("full") == "BTCUSDT_1h_H4_torch_logreg_full"
    assert WalkForwardConfig(model="hgb", use_gpu=True).run_name() == "BTCUSDT_1h_H1_torch_mlp_quick"


def test_fingerprint_ignores_settings_that_do_not_change_results():
    a = WalkForwardConfig(out="a", jobs=2, chunk_size=1000, resume=True).fingerprint()
    assert a == WalkForwardConfig().fingerprint()
    assert WalkForwardConfig(seed=1).fingerprint() != a and WalkForwardConfig(embargo_minutes=0).fingerprint() != a


def test_time_split_settings_override_the_mode_preset():
    assert WalkForwardConfig().split_params("quick") == {
        "test_span_days": 365, "window": "rolling", "train_window_days": 180, "test_period_days": 60,
        "min_train_days": 180}
    cfg = load_config(environ={"ATHERIA_TEST_PERIOD_DAYS": "30", "ATHERIA_WINDOW": "rolling",
                               "ATHERIA_TRAIN_WINDOW_DAYS": "90"})
    assert cfg.split_params("full") == {"test_span_days": None, "window": "rolling", "train_window_days": 90.0,
                                        "test_period_days": 30.0, "min_train_days": 120}
    with pytest.raises(ValueError, match="window='weekly'"):
        WalkForwardConfig(window="weekly")
    with pytest.raises(ValueError, match="min_train_days=0 is invalid; expected a finite number > 0"):
        WalkForwardConfig(min_train_days=0)
