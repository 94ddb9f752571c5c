"""Build script for rlvr_fast.

`kernels/` (Triton kernels) lives at the top level of the repository but installs as
`rlvr_fast.kernels`: a top-level `kernels` module would clash with Hugging Face's `kernels` package.

Install torch first (CPU or CUDA build), then build without isolation so that build uses it:
    pip install torch==2.13.0 && pip install --no-build-isolation -e ".[test]"
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

# Test oracles. verl's own requirement list pulls vLLM, Ray clusters, wandb, ...; we only import
# `verl.trainer.ppo.core_algos` and `verl.utils.torch_functional`, so the Makefile installs verl with
# --no-deps and these are exactly the modules those two files import.
VERL_CORE_DEPS = ["tensordict", "omegaconf", "hydra-core", "codetiming", "dill", "ray", "orjson", "pandas"]

extras = {
    "test": [
        "pytest>=8",
        "hypothesis>=6",
        "pytest-benchmark>=4",
        "trl==1.16.0",
        "pyarrow",
        *VERL_CORE_DEPS,
    ],
    "bench": ["pytest-benchmark>=4", "liger-kernel; platform_system == 'Linux'"],
    # RLVR-World's .parquet data files; TensorBoard logging
    "data": ["pyarrow"],
    "tensorboard": ["tensorboard"],
    "gpu": ["flash-attn"],
}

setup(
    name="rlvr_fast",
    version="0.1.0",
    description="Fast RL-from-verifiable-rewards post-training of world models: fused Triton/CUDA ops and a GRPO trainer",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rlvr_fast", "rlvr_fast.*"]) + ["rlvr_fast.kernels"],
    package_dir={"rlvr_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.11",
        "numpy",
        # the trainer, worlds and rewards
        "transformers>=4.56",
        "tokenizers",
        "safetensors",
        "pyyaml",
        "tqdm",
        "scipy",
        "matplotlib",
        # Triton is optional at import time; installed where wheels exist so the kernels (and their
        # CPU interpreter) are available.
        "triton>=3.6,<3.10; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require=extras,
    package_data={"rlvr_fast.configs": ["*.yaml"]},
    entry_points={"console_scripts": ["rlvr-fast = rlvr_fast.cli:main"]},
)
