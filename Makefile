# lungxray: `make demo` trains + evaluates the CPU default; `make test` runs the test suite.
# Both create .venv and install everything on a fresh machine by themselves.
PYTHON ?= python3
VENV   ?= .venv
DATA   ?= ../shared/data/chest_xray
RUN    ?= runs/cpu-default
OUTSIDE ?= ../shared/data/nih_sample/images
BIN    := $(VENV)/bin

.PHONY: install demo test test-slow test-browser lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	rm -rf $(RUN) $(RUN)-gate
	$(BIN)/lungxray train $(DATA) --config configs/cpu-default.yaml --out $(RUN)
	@# the population gate (docs/gate.md): flags films unlike the training population, if OUTSIDE exists
	if [ -d "$(OUTSIDE)" ]; then $(BIN)/lungxray train-gate $(DATA) --outside $(OUTSIDE) --out $(RUN)-gate \
		&& $(BIN)/lungxray attach-gate $(RUN) --gate $(RUN)-gate; fi
	$(BIN)/lungxray evaluate $(RUN) --split test

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
