"""Test-tier setup. Runs before any kernel module is imported.

Without CUDA, Triton's interpreter is switched on so the CPU tier runs the real kernels on CPU
tensors (float32, small shapes). With CUDA the kernels compile for the GPU.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
# The device the Triton backend runs on in this tier: the GPU, or the CPU through the interpreter.
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"
BACKENDS = ["torch", "triton"] if HAS_TRITON else ["torch"]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the test once per backend, forcing it through RLVR_FAST_BACKEND (the one dispatch point)."""
    monkeypatch.setenv("RLVR_FAST_BACKEND", request.param)
    return request.param


@pytest.fixture
def device(backend):
    """Device for the op under test: the kernel device for triton, CPU for the torch reference."""
    return KERNEL_DEVICE if backend == "triton" else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def import_piqa():
    """piqa, or skip. One place knows how to import it without torchvision (no CPU build exists):
    benchmarks/common.py's ``import_piqa``, loaded here under a private name."""
    import sys
    from pathlib import Path

    name = "_rlvr_fast_bench_common"
    common = sys.modules.get(name)
    if common is None:
        path = Path(__file__).resolve().parent.parent / "benchmarks" / "common.py"
        spec = importlib.util.spec_from_file_location(name, path)
        common = importlib.util.module_from_spec(spec)
        sys.modules[name] = common  # registered before exec: its dataclasses look their module up
        spec.loader.exec_module(common)
    try:
        return common.import_piqa()
    except ImportError as e:
        pytest.skip(f"piqa is not installed: {e}")
