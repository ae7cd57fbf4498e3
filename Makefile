# Two commands do all the set-up on a fresh machine:
#   make demo   download -> prepare -> finetune -> evaluate -> predict on the SMS Spam Collection
#   make test   ruff + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Public hosts by default; ../shared/mirror (a local copy laid out by the mirror rule) where it exists.
MIRROR ?= $(if $(wildcard ../shared/mirror),../shared/mirror,)
MIRROR_FLAG := $(if $(MIRROR),--mirror $(MIRROR),)
# WEIGHTS=auto: the pretrained gpt2-small when it can be had (already in the gptclf cache, or
# downloadable from the mirror or the public hosts), else random weights, said in one line.
# WEIGHTS=pretrained fails if the weights cannot be downloaded; WEIGHTS=random never tries.
WEIGHTS ?= auto
DEMO_DIR ?= runs/demo
DEMO_FINETUNE = $(BIN)/gptclf finetune --data $(DEMO_DIR)-data --classes spam,ham --weights $$weights \
  --out $(DEMO_DIR) --force $(MIRROR_FLAG)

.PHONY: setup test lint demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,plot,onnx,serve,parquet,tune]'
	touch $@

setup: $(BIN)/.installed

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

# WEIGHTS=auto tries the mirror (if any), then the public hosts, one retry each (offline it gives up
# in seconds). The download's progress is shown but not its retry and error lines: on fallback their
# reasons go into the one "demo: ..." line instead.
demo: setup
	$(BIN)/gptclf download --dataset sms-spam $(MIRROR_FLAG) $(if $(filter pretrained,$(WEIGHTS)),--model gpt2-small,)
	$(BIN)/gptclf prepare --dataset sms-spam --classes spam,ham --no-stratify --out $(DEMO_DIR)-data --force $(MIRROR_FLAG)
	@weights='$(WEIGHTS)'; \
	if [ "$$weights" = auto ]; then \
	  weights=random; why=; log=$$(mktemp); \
	  for m in $(MIRROR) ''; do \
	    { $(BIN)/gptclf download --no-tokenizer --model gpt2-small --retries 1 $${m:+--mirror "$$m"} \
	      2>&1 >/dev/null; echo $$? >"$$log.rc"; } \
	      | tee "$$log" | grep --line-buffered -v -e '; retrying in ' -e '^gptclf: error: ' >&2; \
	    if [ "$$(cat "$$log.rc")" = 0 ]; then weights=pretrained; break; fi; \
	    why="$${why:+$$why; }$${m:-public hosts}: $$(sed -n 's/^gptclf: error: //p' "$$log" | tail -n 1 \
	      | sed -e 's/\. Hint: .*//' -e 's/; also tried .*//' -e 's/^could not download [^ ]*: //')"; \
	  done; \
	  rm -f "$$log" "$$log.rc"; \
	  [ "$$weights" = pretrained ] || echo "demo: pretrained gpt2-small could not be downloaded ($$why);" \
	    "training from random weights" >&2; \
	fi; \
	echo "$(DEMO_FINETUNE)"; \
	$(DEMO_FINETUNE)
	$(BIN)/gptclf evaluate $(DEMO_DIR) --split test
	printf '%s\n' "WINNER!! You have been selected to receive a 900 prize. Call 09061701461 now" \
	  "Are we still meeting for lunch at 1?" | $(BIN)/gptclf predict $(DEMO_DIR) - --format jsonl

# The finetuning benchmark's quick form (under 3 minutes); see README "Measured results".
bench: setup
	$(BIN)/python benchmarks/finetune_speed.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
