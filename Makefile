# Two commands do all the set-up on a fresh machine:
#   make demo   download -> prepare -> finetune -> evaluate -> predict on the SMS Spam Collection
#   make test   ruff + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Public hosts by default; ../shared/mirror (a local copy laid out by the mirror rule) where it exists.
MIRROR ?= $(if $(wildcard ../shared/mirror),../shared/mirror,)
DEMO_DIR ?= runs/demo

.PHONY: setup test lint demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,plot]'
	touch $@

setup: $(BIN)/.installed

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
