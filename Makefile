# Every target installs what it needs into .venv from nothing; only python3 (>= 3.11) is assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/streamnorm demo --out $(DEMO_DIR) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check streamnorm tests
	$(BIN)/ruff format --check streamnorm tests
	$(BIN)/mypy streamnorm

bench: $(STAMP)
	$(BIN)/streamnorm bench --out bench.json

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench.json .pytest_cache .mypy_cache .ruff_cache
