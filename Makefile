# Quick start: `make demo` and `make test` each set up everything they need on a fresh machine.
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.omnizip-installed
# torch 2.14.1 + torchvision 0.29.1: transformers' Qwen2-VL video processor needs torchvision,
# and this pair is the one that installs (from local disk here) and loads together.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
SYSTEM_TOOLS := ffmpeg sox espeak-ng

.PHONY: setup system-deps test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Media tools the tests use to make real speech and video (Debian packages).
system-deps:
	@missing=""; for t in ffmpeg sox espeak-ng; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system tools:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_TOOLS) >/dev/null; \
	fi

setup: $(STAMP) system-deps

test: setup
	$(PY) -m pytest

# The CLI on its defaults: a random-weight Qwen2.5-Omni built in code and the bundled clip.
demo: setup
	$(VENV)/bin/omnizip run
	$(VENV)/bin/omnizip inspect -o out/demo-report

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
