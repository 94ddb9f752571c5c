"""The clipped policy-gradient loss of PPO/GRPO, from log-probs or straight from logits.

Here: the public functions (``policy_loss``, ``policy_loss_from_logits``) and their argument checks.
The ``rlvr_fast::policy_loss*`` custom ops (backend choice, autograd) are in
``rlvr_fast.ops.policy_loss_ops``, the pure-PyTorch reference and its analytic backward (the torch
backend) in ``rlvr_fast.ops.policy_loss_reference``, the Triton kernels in ``rlvr_fast.kernels.policy_loss``.

Per token, with ``d = clamp(logp - old_logp, -log_ratio_clamp, log_ratio_clamp)`` and ``r = exp(d)``
(verl ``compute_policy_loss_vanilla``, PPO arXiv 1707.06347, dual-clip arXiv 1912.09729)::

    pg   = max(-A r, -A clamp(r, 1 - clip_low, 1 + clip_high))
    pg   = where(A < 0, min(pg, -A dual_clip), pg)              # only with dual_clip
    loss = pg + kl_coef * KL(logp, ref_logp) - entropy_coef * entropy

KL estimators (Schulman, "Approximating KL divergence", 2020; verl ``kl_penalty``), x = logp - ref:
``k1 = x``; ``abs = |x|``; ``k2 = x^2 / 2``; ``k3 = clamp(exp(-x') + x' - 1, -kl_clamp, kl_clamp)``
with ``x' = clamp(x, +-log_ratio_clamp)``.

Aggregation (verl ``agg_loss``), with m the 0/1 mask, n_b valid tokens of row b and S the rows with
n_b > 0; ``norm_const`` replaces the batch-derived denominator named in the last column (use it to
normalise by global counts under data parallelism or gradient accumulation)::

    token-mean               sum_bt m l / sum_bt m                     norm_const -> sum_bt m
    seq-mean-token-sum       sum_b (sum_t m l) / S                     norm_const -> S
    seq-mean-token-mean      sum_b (sum_t m l / (n_b + 1e-8)) / S      norm_const -> S
    seq-mean-token-sum-norm  sum_b (sum_t m l) / (S * T)               norm_const -> T (Dr. GRPO constant)

Masked tokens contribute exactly 0 whatever they hold, NaN and Inf included (inputs are selected with
``where``, never multiplied by the mask), and get gradient exactly 0; an all-masked batch gives loss 0
and zero gradients, never NaN. NaN/Inf at unmasked positions raise ValueError naming the argument (one
host sync per call on CPU; a device-side assert on CUDA, ``rlvr_fast._checks``), skipped with
``RLVR_FAST_CHECK_VALUES=0`` (then they propagate to the loss).
Gradients flow to ``logp`` (or ``logits``) and ``entropy``; ``old_logp``, ``advantages`` and
``ref_logp`` are treated as constants, as in every PPO implementation.
"""

from __future__ import annotations

import math

import torch

from .. import _checks as C
from .._kernel_spec import KL_IDS
from . import policy_loss_ops  # noqa: F401  (registers torch.ops.rlvr_fast.policy_loss*)
from .logprobs import _check_temperature, check_ids_shape
from .policy_loss_reference import METRICS, LossOptions

KL_TYPES = (None, *KL_IDS)
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_type: str | None = None,
    kl_coef: float = 0.0,
    kl_clamp: float = 10.0,
    log_ratio_clamp: float = 20.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    agg: str = "token-mean",
    norm_const: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy loss with optional dual clip, KL penalty and entropy bonus (module docstring).

    Args:
        logp: [B, T] log-probs of the sampled tokens under the current policy (float32/bf16/fp16), T >= 1.
        old_logp: [B, T] log-probs under the rollout policy.
        advantages: [B, T] per-token advantages, or [B] per-sequence (broadcast over tokens).
        response_mask: [B, T] bool/int/float, nonzero = token counts.
        ref_logp: [B, T] reference-policy log-probs; required when ``kl_type`` is set and
            ``kl_coef != 0`` (with ``kl_coef == 0`` it is still used for the ``kl`` metric).
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's
            clip-higher when they differ).
        dual_clip: the constant c > 1 of dual-clip PPO (verl's ``clip_ratio_c``); None disables it.
        kl_type: None | "k1" | "k2" | "k3" | "abs".
        kl_coef: weight of the KL term in the loss.
        kl_clamp: k3 is clamped to [-kl_clamp, kl_clamp] (verl: 10).
        log_ratio_clamp: log-ratios are clamped to +-this before exp (verl: 20).
        entropy: [B, T] per-token entropy (e.g. from ``token_logprobs(..., return_entropy=True)``).
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        agg: aggregation mode (module docstring).
        norm_const: replaces the batch-derived denominator of ``agg`` (module docstring).

    Returns:
        ``(loss, metrics)``: ``loss`` is a float32 scalar; ``metrics`` maps names to float32 0-d
        tensors (no host sync beyond the value check of the module docstring): ``pg_loss`` (the aggregated
        clipped term alone), ``clipfrac``,
        ``clipfrac_lower`` (dual clip), ``approx_kl`` (mean of old - new log-prob, verl's ppo_kl),
        ``kl`` (mean KL estimate), ``ratio_mean|min|max``, ``entropy`` (mean; only when ``entropy``
        is given), ``n_tokens``. All means are over valid tokens; with no valid token they are 0.
    """
    opts, norm_const = _loss_options(
        clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef, agg, norm_const
    )
    C.check_tensor("logp", logp, dtypes=C.FLOAT_DTYPES, ndim=2)
    _check_has_tokens("logp", logp.shape)
    _check_loss_inputs(logp.shape, logp, old_logp, advantages, response_mask, ref_logp, entropy, opts)
    loss, metrics_vec, _ = torch.ops.rlvr_fast.policy_loss(
        logp,
        old_logp,
        advantages,
        response_mask,
        ref_logp,
        entropy,
        **opts._asdict(),
        agg=agg,
        norm_const=norm_const,
    )
    return loss, unpack_metrics(metrics_vec, entropy is not None)


def policy_loss_from_logits(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    ref_logp: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_type: str | None = None,
    kl_coef: float = 0.0,
    kl_clamp: float = 10.0,
    log_ratio_clamp: float = 20.0,
    entropy_coef: float = 0.0,
    agg: str = "token-mean",
    norm_const: float | None = None,
    ignore_index: int = -100,
    inplace_backward: bool = False,
    compute_entropy: bool | None = None,
    drop_last_position: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Selective log-softmax fused with :func:`policy_loss`: the [B, T, V] logits are read once forward,
    once backward, and d(logits) is written once, with no float32 copy of the logits.

    Forward: one pass over the logits computes log-probs and entropies (float32, online logsumexp),
    then the per-token loss. Backward: the loss's per-token gradients are folded into a single pass
    that writes ``d logits = (g_logp (onehot - p) - g_H p (log p + H)) / temperature``. Unlike Liger's
    ``grpo_loss`` this supports entropy, k1/k2/abs/k3 KL, dual-clip and the KL clamp.

    Args:
        logits: [B, T, V] float32/bf16/fp16 aligned with ``token_ids``, or with ``drop_last_position``
            a causal LM's [B, T + 1, V] (read as ``logits[:, :-1]`` in place, d(logits) written once in
            their layout with the last position's row 0: :func:`~rlvr_fast.ops.token_logprobs`).
        token_ids: [B, T] int, ids in [0, V) or ``ignore_index`` (such positions also drop out of the
            loss, as if masked).
        temperature: rollout sampling temperature; logits are divided by it.
        inplace_backward: write d(logits) into the logits buffer (eager mode only).
        drop_last_position: ``logits`` hold one more position than ``token_ids`` (above).
        compute_entropy: compute per-token entropies in the same pass over the logits (for the
            ``entropy`` metric). Default: only when ``entropy_coef != 0``. On GPU the kernel is
            memory-bound and the entropy nearly free; on CPU it costs about a third more time.
        Other arguments: as :func:`policy_loss`.

    Returns:
        ``(loss, metrics)`` as :func:`policy_loss`, plus ``metrics["logp"]`` ([B, T] float32,
        detached) and, when entropies were computed, ``metrics["entropy_tokens"]``.
    """
    opts, norm_const = _loss_options(
        clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef, agg, norm_const
    )
    C.check_tensor("logits", logits, dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64), ndim=3)
    if logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape [B, T, V] with V >= 1, got {tuple(logits.shape)}")
    C.check_tensor("token_ids", token_ids, dtypes=C.INT_DTYPES)
    check_ids_shape(token_ids, logits, drop_last_position)
    C.check_same_device(logits=logits, token_ids=token_ids)
    _check_has_tokens(*(("token_ids", token_ids.shape) if drop_last_position else ("logits", logits.shape)))
    _check_temperature(temperature)
    _check_loss_inputs(
        token_ids.shape,
        logits,
        old_logp,
        advantages,
        response_mask,
        ref_logp,
        None,
        opts,
        entropy_required=False,
        like_name="logits",
    )
    with_entropy = bool(entropy_coef != 0 if compute_entropy is None else compute_entropy)
    if entropy_coef != 0 and not with_entropy:
        raise ValueError(f"compute_entropy: must not be False when entropy_coef={entropy_coef} != 0")
    loss, metrics_vec, logp, ent, _, _ = torch.ops.rlvr_fast.policy_loss_from_logits(
        logits,
        token_ids,
        old_logp,
        advantages,
        response_mask,
        ref_logp,
        **opts._asdict(),
        agg=agg,
        norm_const=norm_const,
        temperature=float(temperature),
        ignore_index=int(ignore_index),
        inplace_backward=bool(inplace_backward),
        compute_entropy=with_entropy,
    )
    metrics = unpack_metrics(metrics_vec, with_entropy)
    metrics["logp"] = logp.detach()
    if with_entropy:
        metrics["entropy_tokens"] = ent.detach()
    return loss, metrics


def unpack_metrics(vec: torch.Tensor, has_entropy: bool = True) -> dict[str, torch.Tensor]:
    """Split the packed float32 metrics vector into named 0-d views (no copy, no sync).

    ``entropy`` is left out when no entropy was given or computed.
    """
    return {name: vec[i] for i, name in enumerate(METRICS) if has_entropy or name != "entropy"}


def _loss_options(
    clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef, agg, norm_const
) -> tuple[LossOptions, float | None]:
    """Validate the scalar settings; returns the per-token ones as the custom ops and every backend read
    them, and ``norm_const`` as a float (``agg`` passes as it is)."""
    C.check_choice("kl_type", kl_type, KL_TYPES)
    C.check_choice("agg", agg, AGG_MODES)
    for name, v in (
        ("clip_low", clip_low),
        ("clip_high", clip_high),
        ("kl_clamp", kl_clamp),
        ("log_ratio_clamp", log_ratio_clamp),
    ):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    if clip_low >= 1:
        raise ValueError(f"clip_low: expected a value < 1 (the ratio's lower bound is 1 - clip_low), got {clip_low}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip: expected None or a constant > 1 (dual-clip PPO), got {dual_clip!r}")
    for name, v in (("kl_coef", kl_coef), ("entropy_coef", entropy_coef)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if norm_const is not None and not norm_const > 0:
        raise ValueError(f"norm_const: expected None or a positive number, got {norm_const!r}")
    opts = LossOptions(
        clip_low=float(clip_low),
        clip_high=float(clip_high),
        dual_clip=None if dual_clip is None else float(dual_clip),
        kl_type=kl_type or "",
        kl_coef=float(kl_coef),
        kl_clamp=float(kl_clamp),
        log_ratio_clamp=float(log_ratio_clamp),
        entropy_coef=float(entropy_coef),
    )
    return opts, None if norm_const is None else float(norm_const)


def _check_has_tokens(name: str, shape) -> None:
    """Refuse T = 0: a batch of empty responses has no token to average over (mask it out instead)."""
    if shape[1] == 0:
        raise ValueError(
            f"{name}: expected at least one token per row (T >= 1), got shape {tuple(shape)}; "
            "pad empty responses to T >= 1 and mask them out with response_mask"
        )


def _check_loss_inputs(
    shape, like, old_logp, advantages, response_mask, ref_logp, entropy, opts, entropy_required=True, like_name="logp"
) -> None:
    """Shapes, dtypes and devices of the per-token inputs; ``like`` is the main input (logp or logits)."""
    B = shape[0]
    C.check_tensor("old_logp", old_logp, dtypes=C.FLOAT_DTYPES)
    C.check_shape("old_logp", old_logp, shape, "like the log-probs")
    C.check_tensor("advantages", advantages, dtypes=C.FLOAT_DTYPES, ndim=(1, 2))
    if tuple(advantages.shape) not in (tuple(shape), (B,)):
        raise ValueError(f"advantages: expected shape {tuple(shape)} or ({B},), got {tuple(advantages.shape)}")
    C.check_tensor("response_mask", response_mask)
    C.check_shape("response_mask", response_mask, shape, "like the log-probs")
    if ref_logp is not None:
        C.check_tensor("ref_logp", ref_logp, dtypes=C.FLOAT_DTYPES)
        C.check_shape("ref_logp", ref_logp, shape, "like the log-probs")
    elif opts.kl_type and opts.kl_coef != 0:
        raise ValueError(f"ref_logp: required when kl_type={opts.kl_type!r} and kl_coef={opts.kl_coef} != 0")
    if entropy is not None:
        C.check_tensor("entropy", entropy, dtypes=C.FLOAT_DTYPES)
        C.check_shape("entropy", entropy, shape, "like the log-probs")
    elif entropy_required and opts.entropy_coef != 0:
        raise ValueError(f"entropy: required when entropy_coef={opts.entropy_coef} != 0")
    C.check_same_device(
        **{like_name: like},
        old_logp=old_logp,
        advantages=advantages,
        response_mask=response_mask,
        ref_logp=ref_logp,
        entropy=entropy,
    )
