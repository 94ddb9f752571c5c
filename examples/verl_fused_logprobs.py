"""verl's actor with rlvr_fast's fused linear log-probs: response log-probs without the [B, R, V] logits.

verl's ``DataParallelPPOActor._forward_micro_batch`` (``verl/workers/actor/dp_actor.py``) runs the model,
slices the response logits, divides them by the temperature and calls ``logprobs_from_logits`` (and
``entropy_from_logits``). ``forward_micro_batch`` below takes the same micro-batch dict (``input_ids``,
``attention_mask``, ``position_ids``, ``responses``) and returns the same ``(entropy, log_probs)`` pair,
computed from the backbone's hidden states with ``fused_linear_logprobs``. To use it, bind it in place of
the method for padded (non-remove-padding) batches::

    from examples.verl_fused_logprobs import forward_micro_batch
    actor._forward_micro_batch = lambda mb, temperature, calculate_entropy=False: forward_micro_batch(
        actor.actor_module, mb, temperature, calculate_entropy)

verl's ``use_remove_padding`` / sequence-parallel paths and its fused-kernel options are not covered.

    python examples/verl_fused_logprobs.py     # compares with verl's logprobs_from_logits on a tiny Llama
"""

from __future__ import annotations

import torch

from rlvr_fast.integrations.hf import response_logprobs


def forward_micro_batch(module, micro_batch: dict, temperature: float, calculate_entropy: bool = False):
    """(entropy [B, R] or None, log_probs [B, R]) for verl's padded micro-batch layout."""
    responses = micro_batch["responses"]
    R = responses.shape[-1]
    logp, ent = response_logprobs(
        module,
        micro_batch["input_ids"],
        micro_batch["attention_mask"],
        R,
        temperature=temperature,
        return_entropy=True,
        position_ids=micro_batch["position_ids"],
    )
    return (ent if calculate_entropy else None), logp


def verl_reference(module, micro_batch: dict, temperature: float):
    """What verl's padded path computes: logits of the response positions, / temperature, then its helpers."""
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    R = micro_batch["responses"].shape[-1]
    out = module(
        input_ids=micro_batch["input_ids"],
        attention_mask=micro_batch["attention_mask"],
        position_ids=micro_batch["position_ids"],
        use_cache=False,
    )
    logits = out.logits[:, -R - 1 : -1, :] / temperature
    return entropy_from_logits(logits), logprobs_from_logits(logits, micro_batch["responses"])


def demo_batch(vocab: int = 97, seed: int = 0):
    """A tiny random Llama and a left-padded micro-batch in verl's layout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
        )
    ).eval()
    ids = torch.randint(1, vocab, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    ids[0, :4] = 0
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
        "responses": ids[:, -5:],
    }
    return model, batch


def main() -> float:
    model, batch = demo_batch()
    ent, logp = forward_micro_batch(model, batch, temperature=0.8, calculate_entropy=True)
    ent_ref, logp_ref = verl_reference(model, batch, temperature=0.8)
    diff = max((logp - logp_ref).abs().max().item(), (ent - ent_ref).abs().max().item())
    print(f"max |fused - verl| over log-probs and entropies: {diff:.2e}")
    return diff


if __name__ == "__main__":
    main()
