"""World-model networks: the default tiny Llama-style config and loading of local Hugging Face models.

Nothing here downloads: ``model.path`` must be a local directory (``config.json`` + safetensors and a
tokenizer), or empty for a tiny Llama built from scratch around the task's own tokenizer.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def pick_attn_implementation(requested: str, device: torch.device) -> str:
    """``auto``: flash_attention_2 when flash-attn is importable and the model runs on CUDA, else sdpa."""
    if requested != "auto":
        if requested == "flash_attention_2" and (
            device.type != "cuda" or importlib.util.find_spec("flash_attn") is None
        ):
            raise ValueError("model.attn_implementation=flash_attention_2 needs CUDA and the flash-attn package")
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def tiny_llama(cfg, tokenizer, attn_implementation: str = "sdpa"):
    """A Llama-architecture causal LM built from scratch (random init from the global torch seed).

    cfg: :class:`rlvr_fast.trainer.config.ModelConfig` (hidden_size, num_layers, num_heads,
    intermediate_size, max_position_embeddings); the vocabulary and special ids come from ``tokenizer``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


def load_model(cfg, tokenizer: Any, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Return ``(model, tokenizer)`` on ``device`` in float32 (bf16 enters through autocast).

    ``cfg.path`` empty: :func:`tiny_llama` around ``tokenizer`` (which must then be given). Otherwise a
    local directory read with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (the task's tokenizer, if
    any, is ignored in favour of the model's own). A tokenizer without a pad token gets EOS as pad.
    """
    attn = pick_attn_implementation(cfg.attn_implementation, device)
    if not cfg.path:
        if tokenizer is None:
            raise ValueError("model.path is empty and the task ships no tokenizer: give a local model directory")
        model = tiny_llama(cfg, tokenizer, attn)
    else:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path {str(path)!r} is not a local Hugging Face model directory (no config.json)"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
