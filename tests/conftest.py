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
    """piqa, or skip. Its package __init__ imports torchvision (for LPIPS only) and there is no CPU
    build of torchvision here, so an empty stand-in module is registered when torchvision is absent;
    SSIM and PSNR never touch it."""
    import sys
    import types

    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        sys.modules["torchvision"] = types.ModuleType("torchvision")
    return pytest.importorskip("piqa")
