"""Every notebook runs top to bottom under papermill in its smoke configuration, and is committed clean.

The checks on the committed files are cheap; the executions are marked ``notebook``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._paths import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
# Notebooks whose own test runs them in a more specific scenario (e.g. stop, then resume) are still
# executed here once in plain smoke mode: a notebook must never fail on its first "Run all".
EXECUTION_TIMEOUT_S = 240


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_a_parameters_cell_with_smoke(path: Path) -> None:
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    # Without the tag papermill injects at the top and the notebook's own values win.
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0]["cell_type"] == "code"
    assert "SMOKE" in "".join(tagged[0]["source"]), f"{path.name}: the parameters cell does not define SMOKE"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_requests_a_gpu_on_colab_and_kaggle(path: Path) -> None:
    meta = json.loads(path.read_text())["metadata"]
    assert meta.get("accelerator") == "GPU", f"{path.name}: Colab metadata does not request a GPU"
    assert meta.get("kaggle", {}).get("accelerator", "").startswith("gpu"), f"{path.name}: Kaggle metadata"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_smoke_mode(path: Path, tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    out = tmp_path / path.name
    papermill.execute_notebook(
        str(path),
        str(out),
        parameters={"SMOKE": True, "OUTPUT_ROOT": str(tmp_path / "runs")},
        kernel_name="python3",
        cwd=str(tmp_path),
        execution_timeout=EXECUTION_TIMEOUT_S,
        progress_bar=False,
    )
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: cell errors: {errors}"


BUILD_DIR = REPO_ROOT / "notebooks" / "build"
BUILD_SCRIPTS = sorted(p for p in BUILD_DIR.glob("*.py") if not p.name.startswith("_"))


def _cells(nb: dict) -> list[tuple[str, str, list[str]]]:
    return [(c["cell_type"], "".join(c["source"]), sorted(c.get("metadata", {}).get("tags", []))) for c in nb["cells"]]


@pytest.mark.parametrize("script", BUILD_SCRIPTS, ids=_ids(BUILD_SCRIPTS))
def test_committed_notebook_is_what_its_build_script_makes(script: Path, tmp_path: Path) -> None:
    # The build scripts write next to their parent folder; run a copy so the committed notebooks stay untouched.
    shutil.copytree(BUILD_DIR, tmp_path / "build", ignore=shutil.ignore_patterns("__pycache__"))
    copy = tmp_path / "build" / script.name
    subprocess.run([sys.executable, str(copy)], check=True, capture_output=True, cwd=tmp_path)
    [made] = list(tmp_path.glob("*.ipynb"))
    committed = REPO_ROOT / "notebooks" / made.name
    assert committed.is_file(), f"{script.name} makes {made.name}, which is not committed"
    assert _cells(json.loads(made.read_text())) == _cells(json.loads(committed.read_text())), (
        f"{committed.name} differs from what {script.name} makes: run the script and commit the result")
