# The two commands of the README:
#   make test   sets up .venv from requirements-test.txt and runs the whole test suite.
#   make demo   sets up .venv from requirements.txt and runs the current main job (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-test.txt
	# The VQ-GAN oracle's modules need only torch and einops; its declared deps (pytorch-lightning,
	# omegaconf, ...) would be dead weight, so it is installed without them.
	$(BIN)/pip install -q --no-deps taming-transformers-rom1504==0.0.6
	touch $@

test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 --durations=15

demo: $(VENV)/.runtime
	$(BIN)/python tools/model_info.py --gin_file=gin/models/tiny.gin
	$(BIN)/python tools/model_info.py --gin_file=gin/models/cm3leon_7b.gin --mesh_fsdp=64

benchmark: $(VENV)/.test
	$(BIN)/python tools/benchmark.py decoder

clean:
	rm -rf $(VENV)
