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

# The whole pipeline through kfp.local on a small synthetic set (smoke preset, CPU): prints the
# scores against the synthetic truth and the path of submission.csv. Data are made once.
demo: venv
	test -f $(DEMO_DIR)/data/eval_truth.csv || \
		$(VENV)/bin/maskpipe synth $(DEMO_DIR)/data --people $(or $(DEMO_PEOPLE),40) --eval-people 12
	$(PY) pipeline.py run-local --data $(DEMO_DIR)/data --preset smoke --output-dir $(DEMO_DIR)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
