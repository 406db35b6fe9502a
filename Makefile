# Quick start: `make demo` (the whole pipeline on synthetic data, CPU-sized) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=

.PHONY: demo test venv clean

# The venv is rebuilt only when pyproject.toml changes (the stamp records the install).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m maskpipe.demo --out $(DEMO_DIR)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
