"""Log-probs, entropy and the policy loss straight from hidden states: ``lm_head`` fused with the
log-softmax, so the [tokens x vocab] logits never exist in memory.

For a policy with hidden states ``h`` [N, H] and an output projection ``W`` [V, H] (+ bias ``b``), the
logits ``z = (h W^T + b) / T`` are only ever held one tile of ``chunk_tokens x chunk_vocab`` at a time:

forward, per tile (online logsumexp over vocabulary chunks, float32 statistics per token)::

    m' = max(m, max_j z_j);  s = s e^(m - m') + sum_j e^(z_j - m');  t = (t + s (m - m')) e^(m - m') + sum_j e^(z_j - m') (z_j - m')
    lse = m + log s;  logp = z_y - lse;  entropy = log s - t / s;  E_p[z] = m + t / s

backward, per tile (the tile is recomputed: one more ``h W^T``)::

    dz_j = g_logp (1[j = y] - p_j) + g_H p_j (E_p[z] - z_j),   p_j = e^(z_j - lse)
    d h += (dz / T) W_chunk;   d W_chunk += (dz / T)^T h;   d b_chunk += sum_tokens dz / T

Why recompute instead of computing the gradient in the forward (Liger's choice for its fused losses):
the log-probs are an intermediate whose upstream gradient is unknown in the forward (it comes from
whatever loss is applied to them, the policy loss, a KL term, an entropy bonus), so the d(logits) tile
cannot be formed then. The price is one extra ``N x H x V`` matmul (four instead of three); the gain is
one op that composes with any loss, and nothing of size [N, V] or an early [V, H] gradient held
between forward and backward. :func:`fused_linear_policy_loss` is this op followed by
:func:`~rlvr_fast.ops.policy_loss` on the [B, T] log-probs, so it has exactly the same gradients as
``policy_loss_from_logits(h @ W.T + b, ...)``.

Memory: beyond the inputs and outputs, the forward holds O(N) float32 statistics and ~3 float32 tiles;
the backward a float32 ``d h`` [N, H] (cast to ``h``'s dtype at the end), one float32 ``d W`` chunk
[chunk_vocab, H] and ~3 tiles. All matmuls run in the inputs' dtype (cuBLAS on GPU, with its float32
accumulation), as a model's ``lm_head`` and its backward would; the softmax statistics and the
d(logits) tile are float32 (the tile is rounded to the inputs' dtype for the gradient matmuls, as an
unfused backward rounds d(logits)).

Default chunk sizes (:func:`~rlvr_fast.ops.fused_linear_ops.default_chunks`): ``chunk_tokens = min(N, 4096)`` and ``chunk_vocab`` the
largest multiple of 256 (at most V) whose three float32 tiles fit a fixed budget: 64 MiB on CPU, 1 GiB on
CUDA. The tiles are a function of N, V and the device type only, never of the free memory at the time of
the call, so two identical calls sum in the same order and give the same bits. On a GPU with little
memory, pass a smaller ``chunk_vocab``.
"""

from __future__ import annotations

import torch

from .. import _checks as C
from . import fused_linear_ops  # noqa: F401  (registers torch.ops.rlvr_fast.fused_linear_logprobs*)
from .policy_loss import policy_loss


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
):
    """Log-probs (and entropy) of ``token_ids`` under ``softmax((hidden @ weight.T + bias) / temperature)``
    without materialising the logits (module docstring for the algorithm and memory).

    Args:
        hidden: [..., H] float32 / bfloat16 / float16 (e.g. a model's last hidden state, [B, T, H]).
        weight: [V, H] the output projection (``lm_head.weight``; tied embeddings work the same), same
            dtype and device as ``hidden``.
        token_ids: int [...] = ``hidden.shape[:-1]``; ids in [0, V) or ``ignore_index``.
        bias: optional [V] (GPT-2 style heads have none; some do).
        temperature: positive; the logits are divided by it.
        return_entropy: also return the entropy of each row.
        ignore_index: positions with this id give log-prob 0, entropy 0 and no gradient.
        chunk_tokens, chunk_vocab: tile sizes; default :func:`default_chunks`.

    Returns:
        float32 log-probs of shape ``token_ids.shape``, or ``(logp, entropy)`` with ``return_entropy``.
        Gradients flow to ``hidden``, ``weight`` and ``bias``.

    Source: the online logsumexp of Milakov & Gimelshein (arXiv 1805.02867), chunked over tokens and
    vocabulary as in Liger-Kernel's fused linear cross entropy (arXiv 2410.10989).
    """
    C.check_tensor("hidden", hidden, dtypes=(torch.float32, torch.bfloat16, torch.float16))
    C.check_tensor("weight", weight, dtypes=(hidden.dtype,), ndim=2)
    C.check_tensor("token_ids", token_ids, dtypes=C.INT_DTYPES)
    if hidden.dim() < 1 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight: expected [V, {hidden.shape[-1]}] (hidden is {tuple(hidden.shape)}), got {tuple(weight.shape)}"
        )
    V = weight.shape[0]
    if V < 1:
        raise ValueError(f"weight: expected V >= 1 rows, got shape {tuple(weight.shape)}")
    C.check_shape("token_ids", token_ids, hidden.shape[:-1], "hidden.shape[:-1]")
    if bias is not None:
        C.check_tensor("bias", bias, dtypes=(hidden.dtype,), ndim=1)
        C.check_shape("bias", bias, (V,), "[V] like weight's rows")
    C.check_same_device(hidden=hidden, weight=weight, token_ids=token_ids, bias=bias)
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature: expected a positive finite number, got {temperature!r}")
    for name, value in (("chunk_tokens", chunk_tokens), ("chunk_vocab", chunk_vocab)):
        if value is not None:
            C.check_positive(name, value)
    h = hidden.reshape(-1, hidden.shape[-1])
    # 0 = the default, resolved inside the op from the shapes (default_chunks)
    logp, entropy, _, _ = torch.ops.rlvr_fast.fused_linear_logprobs(
        h,
        weight,
        bias,
        token_ids.reshape(-1),
        float(temperature),
        bool(return_entropy),
        int(ignore_index),
        int(chunk_tokens or 0),
        int(chunk_vocab or 0),
    )
    shape = token_ids.shape
    return (logp.view(shape), entropy.view(shape)) if return_entropy else logp.view(shape)


def fused_linear_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    entropy_coef: float = 0.0,
    **loss_options,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy loss (:func:`~rlvr_fast.ops.policy_loss`) straight from hidden states.

    Args:
        hidden: [B, T, H] hidden states that predict ``token_ids`` (position t predicts token t).
        weight, bias, temperature, chunk_tokens, chunk_vocab: as :func:`fused_linear_logprobs`.
        token_ids: int [B, T] the sampled response tokens.
        old_logp, advantages, response_mask: as :func:`~rlvr_fast.ops.policy_loss` ([B, T]; advantages
            [B, T] or [B]).
        entropy_coef: entropy bonus weight; the entropy is computed in the same pass when non-zero.
        **loss_options: ``ref_logp``, ``clip_low``, ``clip_high``, ``dual_clip``, ``kl_type``, ``kl_coef``,
            ``kl_clamp``, ``log_ratio_clamp``, ``agg``, ``norm_const`` of :func:`~rlvr_fast.ops.policy_loss`.

    Returns:
        ``(loss, metrics)`` as :func:`~rlvr_fast.ops.policy_loss_from_logits` (with ``metrics["logp"]``, the
        detached [B, T] log-probs, and ``metrics["entropy_tokens"]`` when computed); gradients reach
        hidden, weight and bias.
        Masked positions still get a log-prob (their loss weight is 0); use ``response_mask``, not
        ``ignore_index``, to exclude tokens.
    """
    out = fused_linear_logprobs(
        hidden,
        weight,
        token_ids,
        bias=bias,
        temperature=temperature,
        return_entropy=entropy_coef != 0,
        chunk_tokens=chunk_tokens,
        chunk_vocab=chunk_vocab,
    )
    logp, entropy = out if entropy_coef != 0 else (out, None)
    try:
        loss_options.update(entropy=entropy, entropy_coef=entropy_coef)
        loss, metrics = policy_loss(logp, old_logp, advantages, response_mask, **loss_options)
    except ValueError as e:  # the log-probs are computed here: name the argument they come from
        name, _, rest = str(e).partition(": ")
        if name not in ("logp", "entropy"):
            raise
        raise ValueError(f"hidden: {rest} (the {name} computed from hidden, weight and bias)") from None
    metrics["logp"] = logp.detach()
    if entropy is not None:
        metrics["entropy_tokens"] = entropy.detach()
    return loss, metrics


# ----------------------------------------------------------------------------------------------
# The chunked algorithm: one driver, per-tile steps in torch (CPU, reference) or Triton (CUDA)
# ----------------------------------------------------------------------------------------------
