# Two commands do all the set-up: `make run` and `make test` each create .venv if needed
# and install the project into it (pip install -e ".[test]").
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

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
