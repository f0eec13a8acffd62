# One command for the demo, one for the tests; both set up what is missing first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two cores here: more threads than cores only makes PyTorch slower.
export OMP_NUM_THREADS ?= 2

.PHONY: setup system-deps demo test lint format bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

# System tools with no Python package, for nerfstudio commands: ffmpeg (ns-render's videos),
# libusb-1.0 (open3d, imported by ns-export), chromium (the viewer screenshot test). Installed with
# apt when we are root; nothing else needs root: ilrm-process runs on pycolmap, installed into the
# venv from the package registry like every Python dependency.
system-deps:
	@if command -v ffmpeg >/dev/null && command -v chromium >/dev/null && ldconfig -p | grep -q libusb-1.0; then \
		true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg libusb-1.0-0 chromium; \
	else \
		echo "note: install ffmpeg (ns-render videos), libusb-1.0 (ns-export) and chromium (the viewer test) with your package manager; ilrm-process and ns-train need none of them"; \
	fi

setup: system-deps $(VENV)/.installed

demo: setup
	$(BIN)/ilrm-demo

# The whole check: lint and format (ruff), then the suite.
test: setup lint
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/bench_rasterizer.py

clean:
	rm -rf demo_output outputs .pytest_cache
