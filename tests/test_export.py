"""Exports load in a fresh process and match the eager model; failures are reported, not raised."""

from __future__ import annotations

import pytest
import torch

from atheria_kit.export import export_model


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Untraceable(torch.nn.Module):
    """Data-dependent Python control flow and a non-tensor output: every exporter fails on it."""

    def forward(self, x: torch.Tensor):
        if x.sum().item() > 0:
            return {"pos": x}
        return {"neg": x}


@pytest.fixture
def model() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


def test_torchscript_and_torch_export_load_elsewhere_and_match(model, tmp_path):
    example = torch.randn(5, 6)
    results = {r.format: r for r in export_model(model, example, tmp_path, formats=("torchscript", "torch_export"))}

    for fmt in ("torchscript", "torch_export"):
        r = results[fmt]
        assert r.ok, r.message
        assert r.max_abs_err is not None and r.max_abs_err <= r.atol + r.rtol * 10
        assert (tmp_path / r.path.split("/")[-1]).stat().st_size == r.size_bytes
    assert results["torchscript"].method == "script"
    # TorchScript is deprecated in recent torch; the warning is captured into the result, not lost.
    if torch.__version__ >= "2.10":
        assert any("deprecated" in w for w in results["torchscript"].warnings)


def test_torch_export_accepts_another_batch_size(model, tmp_path):
    [r] = export_model(model, torch.randn(4, 6), tmp_path, formats=("torch_export",))
    loaded = torch.export.load(r.path).module()
    x = torch.randn(9, 6)
    torch.testing.assert_close(loaded(x), model(x))


def test_trace_fallback_when_scripting_fails(tmp_path):
    class NeedsTrace(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x, *extra):  # varargs cannot be scripted
            return self.lin(x)

    torch.manual_seed(1)
    [r] = export_model(NeedsTrace(), torch.randn(2, 3), tmp_path, formats=("torchscript",))
    assert r.ok and r.method == "trace"


def test_unexportable_model_is_reported_not_raised(tmp_path):
    results = export_model(Untraceable(), torch.randn(2, 3), tmp_path, formats=("torchscript", "torch_export"))
    assert [r.status for r in results] == ["failed", "failed"]
    assert all(r.message for r in results)


def test_model_state_is_left_as_it_was(model, tmp_path):
    model.train()
    export_model(model, torch.randn(2, 6), tmp_path, formats=("torchscript",))
    assert model.training


def test_unknown_format_is_a_clear_error(model, tmp_path):
    with pytest.raises(ValueError, match="formats="):
        export_model(model, torch.randn(2, 6), tmp_path, formats=("tflite",))


def test_onnx_is_skipped_with_a_reason_when_not_installed(model, tmp_path):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        pytest.skip("onnx is installed here; the skip path does not apply")
    [r] = export_model(model, torch.randn(2, 6), tmp_path, formats=("onnx",))
    assert r.status == "skipped" and "onnx" in r.message
