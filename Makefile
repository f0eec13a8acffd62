# One command for the demo, one for the tests; both set up what is missing first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two cores here: more threads than cores only makes PyTorch slower.
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/ilrm-demo

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/bench_rasterizer.py

clean:
	rm -rf demo_output outputs .pytest_cache
