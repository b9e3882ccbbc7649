# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv from nothing and installs the pinned dependencies; a
# second run with nothing changed only checks a stamp and takes seconds.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := examples/cifar10-sample
DEMO_OUT := runs/demo

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/imgclf inspect $(DEMO_DATA) --out $(DEMO_OUT)/inspect
	$(BIN)/imgclf preview-augment $(DEMO_DATA) --augment standard --out $(DEMO_OUT)/augment-preview.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check imgclf tests benchmarks

clean:
	rm -rf $(VENV) runs *.egg-info
