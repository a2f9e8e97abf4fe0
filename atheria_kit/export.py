"""Export a trained model for use outside training, and prove each export works.

Formats:
- TorchScript (``torch.jit.script``, falling back to ``torch.jit.trace`` with the example input): what the seed
  asks for; deprecated by PyTorch in favour of ``torch.export``.
- ``torch.export`` (``.pt2``): the format PyTorch now recommends; the batch dimension is exported as dynamic.
- ONNX, when ``onnx`` and ``onnxruntime`` are installed.

Each file is checked by loading it in a *fresh Python process* and comparing its outputs with the eager model's on
the example input (``rtol``/``atol`` stated in the result). Warnings raised while exporting (TorchScript's deprecation
among them) are captured into the result instead of spilling over the notebook.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from atheria_kit.session_config import EXPORT_FORMATS

log = logging.getLogger(__name__)

FORMATS = EXPORT_FORMATS
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6

# Run in a fresh interpreter: loads the exported file, runs it on the saved example input, prints the max error.
_VERIFY_SCRIPT = r"""
import json, sys
import torch

from atheria_kit.session_config import EXPORT_FORMATS
fmt, model_path, example_path, expected_path = sys.argv[1:5]
example = torch.load(example_path, weights_only=True)
expected = torch.load(expected_path, weights_only=True)
if fmt == "torchscript":
    out = torch.jit.load(model_path, map_location="cpu")(*example)
elif fmt == "torch_export":
    out = torch.export.load(model_path).module()(*example)
elif fmt == "onnx":
    import onnxruntime as ort
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), example)}
    out = torch.from_numpy(sess.run(None, feeds)[0])
else:
    raise SystemExit(f"unknown format {fmt}")
if isinstance(out, (tuple, list)):
    out = out[0]
out = out.detach().float()
diff = (out - expected.float()).abs()
rel = diff / expected.float().abs().clamp_min(1e-12)
print(json.dumps({"shape": list(out.shape), "max_abs_err": float(diff.max()) if diff.numel() else 0.0,
                  "max_rel_err": float(rel.max()) if rel.numel() else 0.0}))
"""


@dataclass
class ExportResult:
    """Outcome of one export: the file, whether it loaded and matched in a fresh process, and why not."""

    format: str
    path: str | None
    status: str  # "ok", "mismatch", "failed", "skipped"
    method: str = ""  # e.g. "script" or "trace" for TorchScript
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    seconds: float = 0.0
    size_bytes: int | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tuple(example: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, Sequence) and example and all(isinstance(t, torch.Tensor) for t in example):
        return tuple(example)
    raise ValueError(f"example_input={type(example).__name__} is invalid; expected a tensor or a sequence of tensors")


def _first_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _export_torchscript(model: torch.nn.Module, example: tuple, path: Path) -> str:
    try:
        scripted = torch.jit.script(model)
        method = "script"
    except Exception as exc:  # scripting fails on much dynamic Python; tracing works for fixed control flow
        log.info("torch.jit.script failed (%s); falling back to torch.jit.trace", exc.__class__.__name__)
        scripted = torch.jit.trace(model, example, check_trace=False)
        method = "trace"
    scripted.save(str(path))
    return method


def _export_pt2(model: torch.nn.Module, example: tuple, path: Path) -> str:
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} if t.dim() > 0 else None for t in example)
    try:
        program = torch.export.export(model, example, dynamic_shapes=dynamic)
        method = "dynamic batch"
    except Exception as exc:  # some models cannot have a symbolic batch size; a static export still works
        log.info("torch.export with a dynamic batch failed (%s); exporting static shapes", exc.__class__.__name__)
        program = torch.export.export(model, example)
        method = "static shapes"
    torch.export.save(program, str(path))
    return method


def _export_onnx(model: torch.nn.Module, example: tuple, path: Path) -> str:
    names = [f"input_{i}" for i in range(len(example))]
    torch.onnx.export(model, example, str(path), input_names=names, output_names=["output"],
                      dynamic_axes={n: {0: "batch"} for n in names})
    return "torch.onnx"


_EXPORTERS = {
    "torchscript": (_export_torchscript, ".pt"),
    "torch_export": (_export_pt2, ".pt2"),
    "onnx": (_export_onnx, ".onnx"),
}


def _verify_in_fresh_process(fmt: str, path: Path, example: tuple, expected: torch.Tensor,
                             timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="atheria-verify-") as tmp:
        ex_path, exp_path = Path(tmp) / "example.pt", Path(tmp) / "expected.pt"
        torch.save(list(example), ex_path)
        torch.save(expected, exp_path)
        proc = subprocess.run(
            [sys.executable, "-c", _VERIFY_SCRIPT, fmt, str(path), str(ex_path), str(exp_path)],
            capture_output=True, text=True, timeout=timeout,
        )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError("loading in a fresh process failed: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_model(
    model: torch.nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    out_dir: str | Path,
    *,
    name: str = "model",
    formats: Sequence[str] = FORMATS,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    verify_timeout: float = 300.0,
) -> list[ExportResult]:
    """Export ``model`` in each of ``formats`` into ``out_dir`` and verify each in a fresh process.

    The model is exported from CPU in eval mode (a copy's device is not changed: the model is moved back).
    Failures are reported in the results, never raised: an export must not lose a finished training run.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats={list(formats)!r} is invalid; expected a subset of {list(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = tuple(t.detach().cpu() for t in _as_tuple(example_input))

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model = model.cpu().eval()
    results: list[ExportResult] = []
    try:
        with torch.no_grad():
            expected = _first_output(model(*example))
        if not isinstance(expected, torch.Tensor):
            message = f"the model returns {type(expected).__name__}; export supports tensor outputs"
            log.warning("export skipped: %s", message)
            return [ExportResult(fmt, None, "failed", rtol=rtol, atol=atol, message=message) for fmt in formats]
        expected = expected.detach().float()
        for fmt in formats:
            exporter, suffix = _EXPORTERS[fmt]
            path = out / f"{name}{suffix}"
            if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
                results.append(ExportResult(fmt, None, "skipped", rtol=rtol, atol=atol,
                                            message="onnx and onnxruntime are not both installed"))
                continue
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    method = exporter(model, example, path)
                except Exception as exc:
                    results.append(ExportResult(fmt, None, "failed", rtol=rtol, atol=atol,
                                                seconds=time.perf_counter() - start,
                                                message=f"{exc.__class__.__name__}: {exc}"[:500],
                                                warnings=sorted({str(w.message) for w in caught})))
                    log.warning("export to %s failed: %s", fmt, exc)
                    continue
            result = ExportResult(fmt, str(path), "ok", method=method, rtol=rtol, atol=atol,
                                  size_bytes=path.stat().st_size,
                                  warnings=sorted({str(w.message).splitlines()[0] for w in caught}))
            try:
                check = _verify_in_fresh_process(fmt, path, example, expected, verify_timeout)
                result.max_abs_err, result.max_rel_err = check["max_abs_err"], check["max_rel_err"]
                if check["shape"] != list(expected.shape):
                    result.status, result.message = "mismatch", f"output shape {check['shape']} != {list(expected.shape)}"
                elif not (check["max_abs_err"] <= atol + rtol * float(expected.abs().max())):
                    result.status = "mismatch"
                    result.message = f"max abs error {check['max_abs_err']:.3g} exceeds atol + rtol*max|y|"
            except Exception as exc:
                result.status, result.message = "failed", str(exc)[:500]
            result.seconds = time.perf_counter() - start
            if result.status != "ok":
                log.warning("export %s: %s (%s)", fmt, result.status, result.message)
            results.append(result)
    finally:
        model.to(device)
        model.train(was_training)
    return results
