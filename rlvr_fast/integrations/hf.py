"""Hugging Face causal LMs through the fused ops: response log-probs without the model's ``lm_head`` call.

    logp = response_logprobs(model, input_ids, attention_mask, response_length=R)
    loss, metrics = response_policy_loss(model, input_ids, attention_mask, R, old_logp, adv, response_mask)

The backbone (``model.base_model``: ``model.model`` for Llama / Qwen2 / Mistral, ``model.transformer``
for GPT-2) gives the last hidden state, final norm included; the output projection
(``model.get_output_embeddings()``, tied to the input embeddings or not, with or without bias) goes into
:func:`~rlvr_fast.ops.fused_linear_logprobs` with the hidden states of the positions that predict the
response tokens. The [B, R, V] logits never exist. Models that transform their logits after the
projection (Gemma-2's ``final_logit_softcapping``, Cohere's ``logit_scale``) are refused: the fused op
computes the plain ``softmax(h W^T + b)``.

Layout (as ``rlvr_fast.trainer.rollout``): ``input_ids`` [B, P + R] is prompt then response, left-padded
prompts allowed; position ids are ``cumsum(attention_mask) - 1`` unless given; position ``P - 1 + t``
predicts response token ``t``.
"""

from __future__ import annotations

import torch

from ..ops import fused_linear_logprobs, fused_linear_policy_loss

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def output_projection(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight [V, H], bias [V] | None)`` of a causal LM's head; raises for heads the fused op cannot
    reproduce (a logit transform after the projection, or a head that is not a linear layer)."""
    for name in _LOGIT_TRANSFORMS:
        value = getattr(model.config, name, None)
        if value not in (None, 1, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} applies config.{name}={value} to its logits; "
                "the fused op computes plain softmax(h W^T + b)"
            )
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise NotImplementedError(
            f"{type(model).__name__}'s output embeddings are {type(head).__name__}, not nn.Linear"
        )
    return head.weight, head.bias


def _head_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Hidden states and head in one dtype: the autocast dtype when autocast is on (what ``lm_head`` would
    compute in), else the head's dtype."""
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
    return hidden.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None


def response_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last hidden states [B, R, H] of the positions that predict the R response tokens (backbone only)."""
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and attention_mask: expected the same [B, L] shape, got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    R = int(response_length)
    if not 1 <= R < input_ids.shape[1]:
        raise ValueError(f"response_length: expected 1 <= R < L = {input_ids.shape[1]}, got {response_length}")
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
    out = model.base_model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids[:, :-1],
        use_cache=False,
    )
    return out.last_hidden_state[:, -R:]


def response_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    position_ids: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
):
    """float32 log-probs [B, R] of the response tokens ``input_ids[:, -R:]`` (and their entropy).

    Same numbers as ``token_logprobs(model(input_ids).logits[:, -R - 1:-1], input_ids[:, -R:])`` up to
    float rounding, without the logits. Gradients reach every parameter (backbone and head).

    Args:
        model: a Hugging Face ``*ForCausalLM`` (Llama, Qwen2, Mistral, GPT-2 families; tied or untied head).
        input_ids: int [B, P + R]; attention_mask: [B, P + R] (1 on real tokens).
        response_length: R.
        temperature, return_entropy, chunk_tokens, chunk_vocab: as :func:`~rlvr_fast.ops.fused_linear_logprobs`.
        position_ids: [B, P + R]; default ``cumsum(attention_mask) - 1``.
    """
    hidden = response_hidden(model, input_ids, attention_mask, response_length, position_ids)
    hidden, weight, bias = _head_inputs(hidden, *output_projection(model))
    return fused_linear_logprobs(
        hidden,
        weight,
        input_ids[:, -int(response_length) :],
        bias=bias,
        temperature=temperature,
        return_entropy=return_entropy,
        chunk_tokens=chunk_tokens,
        chunk_vocab=chunk_vocab,
    )


def response_policy_loss(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    **options,
):
    """The clipped policy loss of the response tokens through the backbone and
    :func:`~rlvr_fast.ops.fused_linear_policy_loss` (``options``: its keyword arguments)."""
    hidden = response_hidden(model, input_ids, attention_mask, response_length, position_ids)
    hidden, weight, bias = _head_inputs(hidden, *output_projection(model))
    return fused_linear_policy_loss(
        hidden, weight, input_ids[:, -int(response_length) :], old_logp, advantages, response_mask, bias=bias, **options
    )
