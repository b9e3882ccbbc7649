# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv from nothing and installs the pinned dependencies; a
# second run with nothing changed only checks a stamp and takes seconds.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := examples/cifar10-sample
DEMO_OUT := runs/demo

.PHONY: install browser postgres demo test test-fast lint docs docs-pages dist dist-check clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,serve,tensorflow,docs,track,openvino]"
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

# PostgreSQL for the prediction log's tests (a throwaway server each run: tests/postgres.py), installed as Chromium
# is; without it those tests skip, except under CI=true.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing postgresql (Debian package) for the prediction log tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "note: postgresql is not installed (apt-get install postgresql, as root); its tests will skip"; fi

test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q

# The inner loop: every test outside the tiers marked in pyproject.toml (slow, subprocess, browser, tensorflow,
# distributed; tests/conftest.py says how each is set). `make test` still runs everything, and CI runs that.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not (slow or subprocess or browser or tensorflow or distributed)"

# ruff, the layer contract in pyproject.toml ([tool.importlinter]), then the type checker ([tool.mypy]);
# CI runs both test and lint
lint: $(STAMP)
	$(BIN)/ruff check imgclf tests benchmarks scripts
	$(BIN)/lint-imports
	$(BIN)/mypy

# The docs site (docs/ -> site/): first the reference pages are checked against the code that declares them
# (a stale page fails: run `make docs-pages` and commit), then mkdocs builds strictly (a broken link fails).
docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site  # the tool choice: docs/developers/docs.md

docs-pages: $(STAMP)
	$(BIN)/python scripts/gen_docs.py

# An sdist, then a wheel built from it, in dist/; dist-check installs the wheel into a fresh environment (imgclf alone, its
# dependencies read from .venv's, so no 5 GB torch download) and runs it from outside the repository.
dist: $(STAMP)
	rm -rf dist build
	$(BIN)/python -m build --no-isolation --outdir dist .

dist-check: dist
	scripts/check_wheel.sh $(VENV) dist

clean:
	rm -rf $(VENV) runs site dist build *.egg-info
