# `make demo` and `make test` each set up .venv themselves (torch==2.13.0, the CPU build, first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo train-demo train-student test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

train-demo: $(STAMP)
	$(BIN)/python scripts/demo.py --train

train-student: $(STAMP)
	$(BIN)/python scripts/distill.py

# One worker per core, a test file per worker at a time (module fixtures such as the Label server
# stay in one process); tests/conftest.py gives each worker's torch and subprocesses one thread.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests benchmarks/tests

clean:
	rm -rf $(VENV)
