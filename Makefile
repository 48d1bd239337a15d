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
	$(BIN)/pip install -e ".[models,dev,bench]"
	touch $@

setup: $(VENV)/.installed

# Index this repository's own documentation and source, then answer questions about it.
demo: setup
	rm -rf $(DEMO)
	$(BIN)/retriever build --config examples/minilm-flat.toml --input . --out $(DEMO)
	$(BIN)/retriever check $(DEMO)
	$(BIN)/retriever search $(DEMO) -k 3 \
		"how does a commit stay atomic if the writer is killed?" \
		"which faiss index types can a dense field use?" \
		"how do I evaluate a collection on a BEIR dataset?"

test: setup
	$(BIN)/python -m pytest -q

# Regenerate retriever/_proto/ from proto/retriever/v1/retriever.proto (a test fails when stale).
proto: setup
	$(BIN)/python scripts/gen_proto.py

bench: setup
	$(BIN)/python bench/dense.py

clean:
	rm -rf $(DEMO) .pytest_cache
