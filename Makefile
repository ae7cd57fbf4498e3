# Two commands do all the set-up on a fresh machine:
#   make demo   download -> prepare -> finetune -> evaluate -> predict on the SMS Spam Collection
#   make test   ruff + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Public hosts by default; ../shared/mirror (a local copy laid out by the mirror rule) where it exists.
MIRROR ?= $(if $(wildcard ../shared/mirror),../shared/mirror,)
MIRROR_FLAG := $(if $(MIRROR),--mirror $(MIRROR),)
# No pretrained GPT-2 weights can be had on the machines this is built on: random by default here,
# `make demo WEIGHTS=pretrained` for the real thing.
WEIGHTS ?= random
DEMO_DIR ?= runs/demo

.PHONY: setup test lint demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,plot,onnx]'
	touch $@

setup: $(BIN)/.installed

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

demo: setup
	$(BIN)/gptclf download --dataset sms-spam $(MIRROR_FLAG) $(if $(filter pretrained,$(WEIGHTS)),--model gpt2-small,)
	$(BIN)/gptclf prepare --dataset sms-spam --classes spam,ham --no-stratify --out $(DEMO_DIR)-data --force $(MIRROR_FLAG)
	$(BIN)/gptclf finetune --data $(DEMO_DIR)-data --classes spam,ham --weights $(WEIGHTS) --out $(DEMO_DIR) --force $(MIRROR_FLAG)
	$(BIN)/gptclf evaluate $(DEMO_DIR) --split test
	printf '%s\n' "WINNER!! You have been selected to receive a 900 prize. Call 09061701461 now" \
	  "Are we still meeting for lunch at 1?" | $(BIN)/gptclf predict $(DEMO_DIR) - --format jsonl

# The finetuning benchmark's quick form (under 3 minutes); see README "Measured results".
bench: setup
	$(BIN)/python benchmarks/finetune_speed.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
