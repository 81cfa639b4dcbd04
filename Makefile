# The two quick-start targets (`make demo`, `make test`) work on a fresh machine with only Python
# and make: they create .venv if it is missing and install the pinned dependencies into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PACKAGES := orchestrator actors plans

.PHONY: demo test check format lint typecheck pytest bench serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The editable install finds our packages through a finder that setuptools appends to
# sys.meta_path, after the path-based one (pypa/setuptools#3557): a program run from a
# directory that holds a plans/ folder of its own would import that folder as a namespace
# package ("ImportError: cannot import name 'Plan' from 'plans'"). This .pth, processed after
# setuptools' own (.pth files are read in name order), moves the finder first.
EDITABLE_FIRST := import sys; sys.meta_path.sort(key=lambda finder: not str(getattr(finder, "__module__", "")).startswith("__editable___orchestrator_"))

$(STAMP): pyproject.toml constraints.txt Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,postgres,mcp]'
	printf '%s\n' '$(EDITABLE_FIRST)' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/orchestrator-editable-first.pth"
	@touch $@

demo: $(STAMP)
	$(BIN)/orchestrator run orchestrator/examples/trip/plan.toml

test: check pytest

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every figure of issue 6 and WebSocket mode against HTTP (issue 15: bench/transports.py), by
# bench/run_all.py, written to bench/RESULTS.md; about 23 minutes.
# `make bench BENCH_ARGS=--quick` is a 5-minute smoke run.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,postgres,mcp,bench]'
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

serve: $(STAMP)
	$(BIN)/orchestrator serve

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
