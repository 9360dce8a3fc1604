# csdn — the two commands a newcomer needs are `make demo` and `make test`; both create .venv if missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# huggingface_hub reads this once at import: it must be in the environment before Python starts.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Notebooks run with the smoke profile under test, two at a time with one thread each (two threads per
# process on two cores spin-wait); a fresh artifact cache per test run keeps it honest.
NB_WORKERS ?= 2

.PHONY: setup demo test lint test-unit test-browser lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/csdn demo

test: setup lint
	@cache=$${CSDN_TEST_CACHE:-$$(mktemp -d -t csdn-test-cache.XXXXXX)}; \
	echo "artifact cache for this test run: $$cache"; \
	CSDN_CACHE=$$cache $(PY) -m pytest -q tests && \
	CSDN_CACHE=$$cache CSDN_PROFILE=smoke OMP_NUM_THREADS=1 $(PY) -m pytest -q --nbmake --nbmake-timeout=900 -n $(NB_WORKERS) notebooks/

# The lint gate (ruff: pyflakes, pycodestyle, isort, bugbear, pyupgrade; formatting; notebooks included), then
# the package's layers and no import circle (import-linter; the contracts are in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test-unit: setup
	$(PY) -m pytest -q tests

# The JupyterLab check of the inspector in headless Chromium (Debian's `chromium` package); it also runs
# inside `make test` whenever Chromium and Playwright are both installed, and skips otherwise.
test-browser: setup
	$(PY) -m pip install --quiet --disable-pip-version-check "playwright>=1.40"
	@command -v chromium >/dev/null || { echo "install Chromium first: apt-get install -y chromium"; exit 1; }
	$(PY) -m pytest -q -m browser tests

# JupyterLab refuses to run as root without --allow-root (e.g. in a container): pass it only then.
lab: setup
	$(VENV)/bin/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks/

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .import_linter_cache
