# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv from nothing and installs the pinned dependencies; a
# second run with nothing changed only checks a stamp and takes seconds.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := examples/cifar10-sample
DEMO_OUT := runs/demo

.PHONY: install browser demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,serve,tensorflow,track,openvino]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/imgclf inspect $(DEMO_DATA) --out $(DEMO_OUT)/inspect
	$(BIN)/imgclf preview-augment $(DEMO_DATA) --augment standard --out $(DEMO_OUT)/augment-preview.png
	$(BIN)/imgclf train $(DEMO_DATA) --out $(DEMO_OUT)/train --overwrite --time-budget 1m

# Headless Chromium for the browser tests (report.html, the web page). It comes from
# Debian's packages and needs root; without it those tests skip, except under CI=true.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (Debian package) for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium is not installed (apt-get install chromium, as root); browser tests will skip"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# ruff, then the layer contract in pyproject.toml ([tool.importlinter]); CI runs both test and lint
lint: $(STAMP)
	$(BIN)/ruff check imgclf tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs *.egg-info
