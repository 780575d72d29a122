# The two commands of README.md: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?= --workdir runs/demo

.PHONY: demo test bench venv clean

# .[dev]: pytest plus the tfds and plot extras that the tests use; `make demo` needs only
# the core (the embedded dataset). The bench extra (torch) is never installed here.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxprotect demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=20 tests

# The side-by-side benchmark (python -m benchmarks, from this directory: benchmarks/ is not
# installed); it writes benchmarks/results.json and the tables of docs/BENCHMARKS.md. PyTorch
# rows need the bench extra (pip install -e '.[bench]'), else they are skipped.
# E.g. make bench BENCH_ARGS=--quick
bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs
