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
PYTEST_ARGS ?=

.PHONY: test test-gpu demo bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch first (a looser pin would pull several GB of CUDA wheels), then the package without build
# isolation so the build sees that torch, then verl's core without its heavy requirement list
# (the test extra carries the few modules its core files import).
$(STAMP): setup.py pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-build-isolation -e ".[test]"
	$(PIP) install -q --no-deps "$(VERL_SPEC)"
	@touch $@

install: $(STAMP)

## CPU test tier (Triton kernels run under TRITON_INTERPRET=1, set by tests/conftest.py)
test: $(STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

## GPU test tier, on a machine with CUDA
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

## The main job on the built-in default: MLE then GRPO of a tiny text-game world model (rlvr_fast/configs/demo.yaml)
demo: $(STAMP)
	$(VENV)/bin/rlvr-fast demo $(DEMO_ARGS)

## Benchmarks on this machine (small shapes on CPU; pass BENCH_ARGS="--shapes target" on a GPU)
BENCH_ARGS ?= --shapes small
bench: $(STAMP)
	$(PIP) install -q matplotlib
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
