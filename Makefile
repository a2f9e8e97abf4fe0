# Every target does its own set-up on a fresh machine; repeated runs are quick.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Colab and Kaggle bring their own CUDA torch; here we install the CPU build only when torch is missing.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-slow test-ui lint run dist bench bench-long clean

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

# The whole suite except the tests marked slow (kills at more instants, cold-started processes): ~10 min on 2 cores.
test: setup lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The slow ones alone (CI runs them after `make test`).
test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

run: setup
	ATHERIA_HEADLESS=1 $(PY) notebooks/run_demo.py --out runs/demo

# The wheel and the source distribution, in dist/: what Colab, Kaggle and other machines install.
# --no-isolation: the build backend (setuptools, a dev dependency) comes from the venv, so this works offline.
dist: setup
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .
	@echo "built:"; ls -1 dist

# The browser test: notebook 01 in a real JupyterLab driven by Debian's Chromium; screenshots in runs/ui/.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-ui: setup
	command -v chromium >/dev/null || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet -e ".[ui]"
	ATHERIA_UI_TEST=1 $(PY) -m pytest tests/ui -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	@for f in bench/bench_*.py; do echo "=== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache runs artifacts
