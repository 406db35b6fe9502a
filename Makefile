# Quick start: `make demo` (the whole pipeline on synthetic data, CPU-sized) and `make test`.
# In containers: `make image` builds the project image, `make demo-containers` runs the demo in it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=

.PHONY: demo demo-containers bench-inference image test venv clean

# One environment for every command, `maskpipe serve` included (the serve extra). It is
# rebuilt only when pyproject.toml changes (the stamp records the install); `pip check`
# fails the build on a conflict. The slim serving image has its own requirements
# (docker/serve-requirements.txt, no torch).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,serve]'
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# The whole pipeline through kfp.local on a synthetic set (smoke preset, CPU, ~5 min on 2 cores):
# prints the scores against the synthetic truth and the path of submission.csv. Data are made
# once per size (the folder name holds the people counts, so another DEMO_PEOPLE makes a new
# set instead of reusing the old one). Every person trains (val fraction 0): on 90 people a
# 20 % hold-out costs ~0.16 macro-F1 (docs/presets.md); scoring uses the unseen eval people.
DEMO_PEOPLE ?= 90
DEMO_EVAL_PEOPLE ?= 30
DEMO_DATA := $(DEMO_DIR)/data-$(DEMO_PEOPLE)-people-$(DEMO_EVAL_PEOPLE)-eval
DEMO_RUN := pipeline.py run-local --data $(DEMO_DATA) --preset smoke --val-fraction 0
$(DEMO_DATA)/eval_truth.csv: | venv
	$(VENV)/bin/maskpipe synth $(DEMO_DATA) --people $(DEMO_PEOPLE) --eval-people $(DEMO_EVAL_PEOPLE)

demo: venv $(DEMO_DATA)/eval_truth.csv
	$(PY) $(DEMO_RUN) --output-dir $(DEMO_DIR)

# benchmarks/inference.py on the last `make demo` run's trained checkpoints and 80 people they
# never saw (docs/benchmarks.md: where int8 reaches 5x; the untrained default run cannot).
UNSEEN_DATA := $(DEMO_DIR)/unseen-40-people-80-eval
$(UNSEEN_DATA)/eval_truth.csv: | venv
	$(VENV)/bin/maskpipe synth $(UNSEEN_DATA) --people 40 --eval-people 80 --seed 5

bench-inference: venv $(UNSEEN_DATA)/eval_truth.csv
	@run=$$(ls -d $(DEMO_DIR)/runs/*/train-model 2>/dev/null | tail -1 | xargs -r dirname); \
	test -n "$$run" || { echo "no demo run under $(DEMO_DIR)/runs: run make demo first" >&2; exit 1; }; \
	$(PY) benchmarks/inference.py --data $(UNSEEN_DATA) \
	    --mask $$run/train-model/model --gender $$run/train-model-2/model --age $$run/train-model-3/model

# The project image (docker/Dockerfile.gpu) with whichever engine is here, docker or podman;
# without a reachable registry it builds on a stand-in base first (docker/build-image.sh).
# No engine yet: `sudo docker/engine/setup-podman.sh`.
IMAGE_TAG ?= maskpipe:dev
image:
	docker/build-image.sh --tag $(IMAGE_TAG)

# The same demo with every step in the image (a warm `make image` takes seconds).
demo-containers: venv image $(DEMO_DATA)/eval_truth.csv
	$(PY) $(DEMO_RUN) --runner docker --image $(IMAGE_TAG) --output-dir $(DEMO_DIR)/containers

# The tests start `maskpipe serve` with $MASKPIPE_SERVE_PYTHON (default: this venv's python).
MASKPIPE_SERVE_PYTHON ?= $(abspath $(PY))
test: venv
	MASKPIPE_SERVE_PYTHON=$(MASKPIPE_SERVE_PYTHON) $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
