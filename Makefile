# Fresh-machine entry points. Only Python is needed: the first run creates .venv and installs
# everything; later runs reuse it (the install is redone only when setup.py/pyproject.toml change).
PYTHON ?= python3
VENV ?= .venv
# torch==2.13.0 resolves to the local CPU build on the dev/CI machines; override for a CUDA build,
# e.g. `make test TORCH_SPEC="torch==2.11.0"` on a GPU box.
TORCH_SPEC ?= torch==2.13.0
VERL_SPEC ?= verl==0.9.1
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.rlvr_fast-installed
EXT_STAMP := $(VENV)/.rlvr_fast-ext-built
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.h)
PYTEST_ARGS ?=

.PHONY: test test-gpu check-cuda demo bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch first (a looser pin would pull several GB of CUDA wheels), then the package without build
# isolation so the build (and the extension rlvr_fast._C) sees that torch, then verl's core and piqa
# without their requirement lists (the test extra carries the few modules verl's core files import;
# piqa's torchvision requirement has no CPU build and would replace torch).
$(STAMP): setup.py pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)" ninja pybind11
	$(PIP) install -q --no-build-isolation -e ".[test]"
	$(PIP) install -q --no-deps "$(VERL_SPEC)" piqa==1.3.2
	@touch $@ $(EXT_STAMP)

# Rebuild rlvr_fast._C in place when its sources change (ninja recompiles only what changed).
$(EXT_STAMP): $(EXT_SOURCES) | $(STAMP)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

install: $(STAMP) $(EXT_STAMP)

## CPU test tier (Triton kernels run under TRITON_INTERPRET=1, set by tests/conftest.py)
test: $(STAMP) $(EXT_STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

## GPU test tier, on a machine with CUDA
test-gpu: $(STAMP) $(EXT_STAMP)
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
## WORLD=video: the sprite video world (tokenizer, MLE, GRPO on the pixel reward; rlvr_fast/configs/demo_video.yaml)
WORLD ?= text
demo: $(STAMP) $(EXT_STAMP)
	$(VENV)/bin/rlvr-fast demo --world $(WORLD) $(DEMO_ARGS)

## Benchmarks on this machine (small shapes on CPU; pass BENCH_ARGS="--shapes target" on a GPU)
BENCH_ARGS ?= --shapes small
bench: $(STAMP) $(EXT_STAMP)
	$(PIP) install -q matplotlib
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache rlvr_fast/_C*.so
