"""Checkpoints that are never lost: everything is written into a temporary directory which is then
renamed into place, so a crash mid-write leaves the previous checkpoint intact.

A checkpoint directory holds ``model.safetensors`` (weights), ``config.json`` and the tokenizer files
(so ``from_pretrained`` can load it), a task's own assets (video worlds: ``frame_tokenizer/``, the
frame tokenizer the model's tokens belong to), and ``trainer_state.pt``: optimizer, LR scheduler, RNG states
(python, numpy, torch CPU and CUDA), the data stream position, the step counters and the metric
history needed to continue exactly.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, model, tokenizer, state: dict[str, Any], weights: dict | None = None,
                    assets: Callable[[Path], Any] | None = None) -> Path:  # fmt: skip
    """Write ``model`` (an unwrapped HF model; ``weights`` overrides its state dict, e.g. the gathered
    FSDP one), ``tokenizer`` and ``state`` to ``path`` atomically; ``assets(dir)`` adds a task's own
    files (a video task's frame tokenizer) before the directory is renamed into place."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # clone: tied embeddings share storage, which safetensors refuses; contiguous for the file format
    weights = model.state_dict() if weights is None else weights
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if assets is not None:
        assets(tmp)
    torch.save(state, tmp / "trainer_state.pt")
    with open(tmp / "trainer_state.pt", "rb") as f:  # the rename below must not precede the data
        os.fsync(f.fileno())
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path, model, *, map_location="cpu") -> dict[str, Any]:
    """Load weights into ``model`` (strict) and return the trainer state dict."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "model.safetensors").is_file() or not (path / "trainer_state.pt").is_file():
        old = path.with_name(path.name + ".old")
        if (old / "trainer_state.pt").is_file():  # crashed between the two renames
            path = old
        else:
            raise FileNotFoundError(f"no checkpoint at {str(path)!r} (expected model.safetensors and trainer_state.pt)")
    weights = load_file(path / "model.safetensors", device=str(next(model.parameters()).device))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied weights are saved under both names; a missing tied name is fine, anything else is not
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {str(path)!r} does not match the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")  # fmt: skip
    return torch.load(path / "trainer_state.pt", map_location=map_location, weights_only=False)
