# Every target does its own set-up on a fresh machine; repeated runs are quick.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Colab and Kaggle bring their own CUDA torch; here we install the CPU build only when torch is missing.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test lint run bench bench-long clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (atheria_kit)" >/dev/null
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check atheria_kit tests bench

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

run: setup
	ATHERIA_HEADLESS=1 $(PY) notebooks/run_demo.py --out runs/demo

bench: setup
	$(PY) -c "import lightning" 2>/dev/null || $(PY) -m pip install --quiet lightning
	@for f in bench/bench_*.py; do echo "=== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache runs artifacts
