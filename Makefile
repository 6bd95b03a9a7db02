# The two commands of the README, and the fine-tuning stage that follows the demo:
#   make test   sets up .venv from requirements-test.txt and runs the whole test suite.
#   make demo   sets up .venv from requirements.txt and runs the main job, tools/quickstart.py:
#               synthetic data -> tokenizers -> store -> train the quickstart model -> report
#               (in $(QUICKSTART_DIR); running it again resumes where it stopped).
#   make sft-demo  then fine-tunes that model on instruction tasks and judges them
#               (tools/sft_quickstart.py, in the same folder).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
QUICKSTART_DIR ?= /tmp/cm3leon_quickstart
# The trainer and tools run on CPU here. The runtime set (requirements.txt, all `make demo` needs)
# has no libtpu; the test set adds it (tests/test_aot_compile.py compiles for TPU), and with it
# installed every JAX process would probe for a TPU and take libtpu's lockfile. One .venv serves
# both targets, so this holds for all of them (JAX_PLATFORMS= make demo lets JAX pick the device).
export JAX_PLATFORMS ?= cpu

.PHONY: test demo sft-demo benchmark clean java-runtime

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

# The COCO caption evaluation's PTB tokenizer, which tests/test_caption_metrics.py runs, needs Java.
java-runtime:
	@command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless)

test: $(VENV)/.test java-runtime
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

demo: $(VENV)/.runtime
	$(BIN)/python tools/quickstart.py --workdir=$(QUICKSTART_DIR)

# The fine-tuning stage, continuing from `make demo`'s workdir (run that first).
sft-demo: $(VENV)/.runtime
	$(BIN)/python tools/sft_quickstart.py --workdir=$(QUICKSTART_DIR)

benchmark: $(VENV)/.test
	$(BIN)/python tools/benchmark.py decoder

clean:
	rm -rf $(VENV)
