"""The clipped policy-gradient loss of PPO/GRPO, from log-probs or straight from logits.

Top to bottom: the public functions (``policy_loss``, ``policy_loss_from_logits``), the pure-PyTorch
reference (differentiable: CPU fallback and, through autograd in float64, the test oracle), the
analytic backward used by the torch backend, and the ``rlvr_fast::policy_loss*`` custom ops. The
Triton kernels live in ``rlvr_fast.kernels.policy_loss``.

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
and zero gradients, never NaN. NaN/Inf at unmasked positions raise ValueError naming the argument: one
host sync per call, skipped with ``RLVR_FAST_CHECK_VALUES=0`` (then they propagate to the loss).
Gradients flow to ``logp`` (or ``logits``) and ``entropy``; ``old_logp``, ``advantages`` and
``ref_logp`` are treated as constants, as in every PPO implementation.
"""

from __future__ import annotations

import math

import torch

from .. import _checks as C
from .._dispatch import use_triton
from .logprobs import _check_temperature, logits_grad

KL_TYPES = (None, "k1", "k2", "k3", "abs")
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

# Columns of the per-row partial sums that the forward produces (torch and Triton alike).
PARTIALS = (
    "loss", "count", "pg_loss", "clipfrac", "clipfrac_lower", "approx_kl", "kl", "ratio", "ratio_min",
    "ratio_max", "entropy",
)  # fmt: skip
N_PARTIALS = len(PARTIALS)
# Metrics returned to the caller, in the order of the packed metrics vector.
METRICS = (
    "pg_loss", "clipfrac", "clipfrac_lower", "approx_kl", "kl", "ratio_mean", "ratio_min", "ratio_max",
    "entropy", "n_tokens",
)  # fmt: skip


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
    cfg = _loss_config(
        clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef, agg, norm_const
    )
    C.check_tensor("logp", logp, dtypes=C.FLOAT_DTYPES, ndim=2)
    _check_has_tokens("logp", logp.shape)
    _check_loss_inputs(logp.shape, logp, old_logp, advantages, response_mask, ref_logp, entropy, cfg)
    loss, metrics_vec, _ = torch.ops.rlvr_fast.policy_loss(
        logp, old_logp, advantages, response_mask, ref_logp, entropy, *cfg
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Selective log-softmax fused with :func:`policy_loss`: the [B, T, V] logits are read once forward,
    once backward, and d(logits) is written once, with no float32 copy of the logits.

    Forward: one pass over the logits computes log-probs and entropies (float32, online logsumexp),
    then the per-token loss. Backward: the loss's per-token gradients are folded into a single pass
    that writes ``d logits = (g_logp (onehot - p) - g_H p (log p + H)) / temperature``. Unlike Liger's
    ``grpo_loss`` this supports entropy, k1/k2/abs/k3 KL, dual-clip and the KL clamp.

    Args:
        logits: [B, T, V] float32/bf16/fp16, aligned with ``token_ids`` (pass ``logits[:, :-1]``; the
            view is read in place).
        token_ids: [B, T] int, ids in [0, V) or ``ignore_index`` (such positions also drop out of the
            loss, as if masked).
        temperature: rollout sampling temperature; logits are divided by it.
        inplace_backward: write d(logits) into the logits buffer (eager mode only).
        compute_entropy: compute per-token entropies in the same pass over the logits (for the
            ``entropy`` metric). Default: only when ``entropy_coef != 0``. On GPU the kernel is
            memory-bound and the entropy nearly free; on CPU it costs about a third more time.
        Other arguments: as :func:`policy_loss`.

    Returns:
        ``(loss, metrics)`` as :func:`policy_loss`, plus ``metrics["logp"]`` ([B, T] float32,
        detached) and, when entropies were computed, ``metrics["entropy_tokens"]``.
    """
    cfg = _loss_config(
        clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef, agg, norm_const
    )
    C.check_tensor("logits", logits, dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64), ndim=3)
    if logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape [B, T, V] with V >= 1, got {tuple(logits.shape)}")
    C.check_tensor("token_ids", token_ids, dtypes=C.INT_DTYPES)
    C.check_shape("token_ids", token_ids, logits.shape[:-1], "logits.shape[:-1]")
    C.check_same_device(logits=logits, token_ids=token_ids)
    _check_has_tokens("logits", logits.shape)
    _check_temperature(temperature)
    _check_loss_inputs(
        token_ids.shape, logits, old_logp, advantages, response_mask, ref_logp, None, cfg, entropy_required=False,
        like_name="logits",
    )
    with_entropy = bool(entropy_coef != 0 if compute_entropy is None else compute_entropy)
    if entropy_coef != 0 and not with_entropy:
        raise ValueError(f"compute_entropy: must not be False when entropy_coef={entropy_coef} != 0")
    loss, metrics_vec, logp, ent, _, _ = torch.ops.rlvr_fast.policy_loss_from_logits(
        logits, token_ids, old_logp, advantages, response_mask, ref_logp, *cfg,
        float(temperature), int(ignore_index), bool(inplace_backward), with_entropy,
    )  # fmt: skip
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


def _loss_config(clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef, agg,
                 norm_const) -> tuple:  # fmt: skip
    """Validate the scalar options; returns them in the custom ops' argument order."""
    C.check_choice("kl_type", kl_type, KL_TYPES)
    C.check_choice("agg", agg, AGG_MODES)
    for name, v in (("clip_low", clip_low), ("clip_high", clip_high), ("kl_clamp", kl_clamp),
                    ("log_ratio_clamp", log_ratio_clamp)):  # fmt: skip
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
    return (
        float(clip_low), float(clip_high), None if dual_clip is None else float(dual_clip), kl_type or "",
        float(kl_coef), float(kl_clamp), float(log_ratio_clamp), float(entropy_coef), agg,
        None if norm_const is None else float(norm_const),
    )  # fmt: skip


def _check_has_tokens(name: str, shape) -> None:
    """Refuse T = 0: a batch of empty responses has no token to average over (mask it out instead)."""
    if shape[1] == 0:
        raise ValueError(
            f"{name}: expected at least one token per row (T >= 1), got shape {tuple(shape)}; "
            "pad empty responses to T >= 1 and mask them out with response_mask"
        )


def _check_loss_inputs(
    shape, like, old_logp, advantages, response_mask, ref_logp, entropy, cfg, entropy_required=True, like_name="logp"
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
    kl_type, kl_coef = cfg[3], cfg[4]
    if ref_logp is not None:
        C.check_tensor("ref_logp", ref_logp, dtypes=C.FLOAT_DTYPES)
        C.check_shape("ref_logp", ref_logp, shape, "like the log-probs")
    elif kl_type and kl_coef != 0:
        raise ValueError(f"ref_logp: required when kl_type={kl_type!r} and kl_coef={kl_coef} != 0")
    if entropy is not None:
        C.check_tensor("entropy", entropy, dtypes=C.FLOAT_DTYPES)
        C.check_shape("entropy", entropy, shape, "like the log-probs")
    elif entropy_required and cfg[7] != 0:
        raise ValueError(f"entropy: required when entropy_coef={cfg[7]} != 0")
    C.check_same_device(
        **{like_name: like}, old_logp=old_logp, advantages=advantages, response_mask=response_mask,
        ref_logp=ref_logp, entropy=entropy,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def _kl_torch(logp, ref, kl_type, kl_clamp, log_ratio_clamp):
    x = logp - ref
    if kl_type == "k1":
        return x
    if kl_type == "abs":
        return x.abs()
    if kl_type == "k2":
        return 0.5 * x.square()
    kl = torch.clamp(-x, -log_ratio_clamp, log_ratio_clamp)  # k3 in verl's form: ref - logp
    return torch.clamp(torch.exp(kl) - kl - 1, -kl_clamp, kl_clamp)


def _row_partials_torch(logp, old_logp, adv, mask, ref, entropy, clip_low, clip_high, dual_clip, kl_type, kl_coef,
                        kl_clamp, log_ratio_clamp, entropy_coef):  # fmt: skip
    """Per-row partial sums [B, N_PARTIALS] (differentiable in ``logp`` and ``entropy``)."""
    dtype = torch.promote_types(logp.dtype, torch.float32)
    valid = mask != 0
    # select, never multiply: NaN/Inf under the mask must not reach a sum (0 * NaN = NaN)
    lp, old = _masked(logp, valid, dtype), _masked(old_logp, valid, dtype)
    A = _masked((adv[:, None] if adv.dim() == 1 else adv).expand_as(logp), valid, dtype)
    ref = None if ref is None else _masked(ref, valid, dtype)
    entropy = None if entropy is None else _masked(entropy, valid, dtype)
    m = valid.to(dtype)
    neg_kl = torch.clamp(lp - old, -log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(neg_kl)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.maximum(pg1, pg2)
    clip_lower = torch.zeros_like(pg)
    if dual_clip is not None:
        pg3 = -A * dual_clip
        clip_lower = ((pg > pg3) & (A < 0)).to(dtype)
        pg = torch.where(A < 0, torch.minimum(pg3, pg), pg)
    loss = pg
    kl = torch.zeros_like(pg)
    if kl_type and ref is not None:
        kl = _kl_torch(lp, ref.to(dtype), kl_type, kl_clamp, log_ratio_clamp)
        if kl_coef != 0:
            loss = loss + kl_coef * kl
    ent = torch.zeros_like(pg) if entropy is None else entropy.to(dtype)
    if entropy is not None and entropy_coef != 0:
        loss = loss - entropy_coef * ent
    big = torch.finfo(dtype).max
    rdet = ratio.detach()

    def total(x):
        return torch.where(valid, x, 0.0).sum(1)

    clipped = (pg2 > pg1).to(dtype)
    rmin, rmax = torch.where(valid, rdet, big).amin(1), torch.where(valid, rdet, -big).amax(1)
    cols = [
        total(loss), m.sum(1), total(pg), total(clipped), total(clip_lower), total(-neg_kl.detach()),
        total(kl.detach()), total(rdet), rmin, rmax, total(ent.detach()),
    ]  # fmt: skip
    return torch.stack(cols, dim=1)


def _masked(x: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` with 0 wherever ``valid`` is False (a select: masked NaN/Inf never propagate)."""
    return torch.where(valid, x.to(dtype), 0.0)


def row_weights(counts: torch.Tensor, agg: str, norm_const: float | None, T: int) -> torch.Tensor:
    """Weight of each row's token sum in the loss, float [B] (module docstring table); 0 if no valid token."""
    if agg == "token-mean":
        denom = counts.sum() if norm_const is None else torch.full_like(counts[:1].sum(), norm_const)
        w = torch.ones_like(counts) / denom
    else:
        n_seq = (counts > 0).sum().to(counts.dtype) if norm_const is None or agg == "seq-mean-token-sum-norm" else None
        seqs = n_seq if n_seq is not None else torch.full_like(counts[:1].sum(), norm_const)
        if agg == "seq-mean-token-sum":
            w = torch.ones_like(counts) / seqs
        elif agg == "seq-mean-token-mean":
            w = 1.0 / ((counts + 1e-8) * seqs)
        else:
            w = torch.ones_like(counts) / (seqs * (T if norm_const is None else norm_const))
    return torch.where(counts > 0, w, torch.zeros_like(w))


def finish(partials: torch.Tensor, agg: str, norm_const: float | None, T: int):
    """From row partials [B, N_PARTIALS] to ``(loss, metrics_vec, row_weight)`` (float32, no sync)."""
    count = partials[:, 1]
    w = row_weights(count.detach(), agg, norm_const, T)
    loss = (w * partials[:, 0]).sum()
    n = count.sum()
    denom = n.clamp_min(1)
    big = torch.finfo(partials.dtype).max
    if partials.shape[0]:
        rmin, rmax = partials[:, 8].amin(), partials[:, 9].amax()
    else:
        rmin, rmax = partials.new_tensor(big), partials.new_tensor(-big)
    any_tok = n > 0
    metrics = torch.stack([
        (w * partials[:, 2]).sum(), partials[:, 3].sum() / denom, partials[:, 4].sum() / denom,
        partials[:, 5].sum() / denom, partials[:, 6].sum() / denom, partials[:, 7].sum() / denom,
        torch.where(any_tok, rmin, 0.0), torch.where(any_tok, rmax, 0.0), partials[:, 10].sum() / denom, n,
    ]).detach()  # fmt: skip
    return loss, metrics, w


def policy_loss_ref(
    logp, old_logp, advantages, response_mask, ref_logp, entropy, clip_low, clip_high, dual_clip, kl_type, kl_coef,
    kl_clamp, log_ratio_clamp, entropy_coef, agg, norm_const,
):  # fmt: skip
    """Reference of :func:`policy_loss` (same arguments as the custom op; ``kl_type`` "" for none).

    Differentiable with plain autograd; computes in ``promote(logp.dtype, float32)``, so float64
    inputs give the float64 oracle. Returns ``(loss, metrics_vec, row_weight)``.
    """
    partials = _row_partials_torch(
        logp, old_logp, advantages, response_mask, ref_logp, entropy, clip_low, clip_high, dual_clip, kl_type,
        kl_coef, kl_clamp, log_ratio_clamp, entropy_coef,
    )  # fmt: skip
    return finish(partials, agg, norm_const, logp.shape[1])


def policy_loss_backward_ref(
    grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, clip_low, clip_high, dual_clip, kl_type,
    kl_coef, kl_clamp, log_ratio_clamp, entropy_coef,
):  # fmt: skip
    """Analytic d(loss)/d(logp) and d(loss)/d(entropy), [B, T] each, in ``promote(logp.dtype, float32)``;
    d(entropy) is empty (0 elements) when ``entropy_coef == 0``.

    Mirrors autograd through :func:`policy_loss_ref` exactly, ties included (``torch.maximum`` gives
    each side half the gradient on a tie; ``torch.clamp`` passes it on the closed interval).
    """
    dtype = torch.promote_types(logp.dtype, torch.float32)
    valid = response_mask != 0
    lp, old = _masked(logp, valid, dtype), _masked(old_logp, valid, dtype)
    A = _masked((advantages[:, None] if advantages.dim() == 1 else advantages).expand_as(logp), valid, dtype)
    scale = torch.where(valid, grad.to(dtype) * row_w.to(dtype)[:, None], 0.0)
    x = lp - old
    ratio = torch.exp(torch.clamp(x, -log_ratio_clamp, log_ratio_clamp))
    dratio = torch.where(x.abs() <= log_ratio_clamp, ratio, 0.0)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    # torch.maximum gives each side half the gradient on a tie; clamp passes it on [lo, hi]
    inside = ((ratio >= 1 - clip_low) & (ratio <= 1 + clip_high)).to(dtype)
    through = torch.where(pg1 > pg2, 1.0, torch.where(pg1 < pg2, inside, 0.5 * (1.0 + inside)))
    if dual_clip is not None:
        clip1 = torch.maximum(pg1, pg2)
        pg3 = -A * dual_clip
        lower = torch.where(clip1 < pg3, 1.0, torch.where(clip1 == pg3, 0.5, 0.0))
        through = through * torch.where(A < 0, lower, 1.0)
    d = -A * through * dratio
    if kl_type and ref_logp is not None and kl_coef != 0:
        y = lp - _masked(ref_logp, valid, dtype)
        if kl_type == "k1":
            dkl = torch.ones_like(y)
        elif kl_type == "abs":
            dkl = torch.sign(y)
        elif kl_type == "k2":
            dkl = y
        else:
            kl = torch.clamp(-y, -log_ratio_clamp, log_ratio_clamp)
            kld = torch.exp(kl) - kl - 1
            in_kl = ((-y >= -log_ratio_clamp) & (-y <= log_ratio_clamp)).to(dtype)
            in_kld = ((kld >= -kl_clamp) & (kld <= kl_clamp)).to(dtype)
            dkl = -(torch.exp(kl) - 1) * in_kl * in_kld
        d = d + kl_coef * dkl
    # with entropy_coef == 0, d(entropy) would be all zeros: empty instead (autograd takes None for it)
    ge = -entropy_coef * scale if entropy_coef != 0 else scale.new_empty(0)
    return torch.where(valid, d * scale, 0.0), ge


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


def _forward_partials(logp, old_logp, advantages, response_mask, ref_logp, entropy, cfg_tok):
    """Row partials on the chosen backend (float32 [B, N_PARTIALS])."""
    if use_triton("policy_loss", logp):
        from ..kernels import policy_loss as K

        return K.policy_loss_forward(logp, old_logp, advantages, response_mask, ref_logp, entropy, *cfg_tok)
    with torch.no_grad():
        return _row_partials_torch(logp, old_logp, advantages, response_mask, ref_logp, entropy, *cfg_tok).float()


def _backward_tokens(grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, cfg_tok):
    """(d logp, d entropy) float32 [B, T] on the chosen backend; d entropy has 0 elements when
    ``entropy_coef == 0`` (it would be all zeros: autograd takes None for it, so nothing is written)."""
    if use_triton("policy_loss_backward", logp):
        from ..kernels import policy_loss as K

        return K.policy_loss_backward(grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, *cfg_tok)
    gl, ge = policy_loss_backward_ref(grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, *cfg_tok)
    return gl.float(), ge.float()


@torch.library.custom_op("rlvr_fast::policy_loss", mutates_args=())
def _policy_loss_op(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    entropy: torch.Tensor | None,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    kl_type: str,
    kl_coef: float,
    kl_clamp: float,
    log_ratio_clamp: float,
    entropy_coef: float,
    agg: str,
    norm_const: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg_tok = (clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef)
    return _policy_loss_impl(logp, old_logp, advantages, response_mask, ref_logp, entropy, cfg_tok, agg, norm_const)


def _policy_loss_impl(
    logp, old_logp, advantages, response_mask, ref_logp, entropy, cfg_tok, agg, norm_const, logp_name="logp"
):
    """Eager forward of both loss ops: value checks, row partials, aggregation."""
    used_ref = ref_logp if cfg_tok[3] else None  # read for the KL term and metric only when kl_type is set
    hint = " (a NaN/Inf logit in a row makes its log-prob non-finite)" if logp_name == "logits" else ""
    # only positions that count are checked: whatever the mask hides is never read into the loss
    named = {logp_name: logp, "old_logp": old_logp, "advantages": advantages}
    named.update(ref_logp=used_ref, entropy=entropy)
    C.check_finite_where(response_mask != 0, "where response_mask is nonzero", hint, **named)
    partials = _forward_partials(logp, old_logp, advantages, response_mask, ref_logp, entropy, cfg_tok)
    loss, metrics, w = finish(partials, agg, norm_const, logp.shape[1])
    return loss, metrics, w


@_policy_loss_op.register_fake
def _(logp, old_logp, advantages, response_mask, ref_logp, entropy, *cfg):
    f32 = dict(dtype=torch.float32, device=logp.device)
    return torch.empty((), **f32), torch.empty(len(METRICS), **f32), torch.empty(logp.shape[0], **f32)


@torch.library.custom_op("rlvr_fast::policy_loss_backward", mutates_args=())
def _policy_loss_backward_op(
    grad: torch.Tensor,
    row_weight: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    kl_type: str,
    kl_coef: float,
    kl_clamp: float,
    log_ratio_clamp: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    cfg_tok = (clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef)
    return _backward_tokens(grad, row_weight, logp, old_logp, advantages, response_mask, ref_logp, cfg_tok)


@_policy_loss_backward_op.register_fake
def _(grad, row_weight, logp, *rest):
    f32 = dict(dtype=torch.float32, device=logp.device)
    entropy_coef = rest[-1]
    return torch.empty(logp.shape, **f32), torch.empty(logp.shape if entropy_coef != 0 else (0,), **f32)


def _pl_setup(ctx, inputs, output):
    logp, old_logp, advantages, response_mask, ref_logp, entropy, *cfg = inputs
    ctx.save_for_backward(logp, old_logp, advantages, response_mask, ref_logp, output[2])
    ctx.mark_non_differentiable(output[1], output[2])  # metrics and row weights
    ctx.cfg_tok = tuple(cfg[:8])
    ctx.dtypes = (logp.dtype, None if entropy is None else entropy.dtype)


def _pl_backward(ctx, grad_loss, _grad_metrics, _grad_w):
    logp, old_logp, advantages, response_mask, ref_logp, w = ctx.saved_tensors
    gl, ge = torch.ops.rlvr_fast.policy_loss_backward(
        grad_loss, w, logp, old_logp, advantages, response_mask, ref_logp, *ctx.cfg_tok
    )
    g_ent = None if ctx.dtypes[1] is None or ctx.cfg_tok[7] == 0 else ge.to(ctx.dtypes[1])
    return (gl.to(ctx.dtypes[0]), None, None, None, None, g_ent) + (None,) * 10


_policy_loss_op.register_autograd(_pl_backward, setup_context=_pl_setup)


@torch.library.custom_op("rlvr_fast::policy_loss_from_logits", mutates_args=())
def _policy_loss_from_logits_op(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    kl_type: str,
    kl_coef: float,
    kl_clamp: float,
    log_ratio_clamp: float,
    entropy_coef: float,
    agg: str,
    norm_const: float | None,
    temperature: float,
    ignore_index: int,
    inplace_backward: bool,
    compute_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    logp, ent, lse = torch.ops.rlvr_fast.token_logprobs.default(
        logits, token_ids, temperature, compute_entropy, ignore_index, inplace_backward
    )
    mask = (response_mask != 0) & (token_ids != ignore_index)
    cfg_tok = (clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef)
    loss, metrics, w = _policy_loss_impl(
        logp, old_logp, advantages, mask, ref_logp, ent if compute_entropy else None, cfg_tok, agg, norm_const,
        logp_name="logits",
    )
    return loss, metrics, logp, ent, lse, w


@_policy_loss_from_logits_op.register_fake
def _(logits, token_ids, *rest):
    f32 = dict(dtype=torch.float32, device=logits.device)
    compute_entropy = rest[-1]
    logp, lse = torch.empty(token_ids.shape, **f32), torch.empty(token_ids.shape, **f32)
    ent = torch.empty(token_ids.shape if compute_entropy else (0,), **f32)
    return torch.empty((), **f32), torch.empty(len(METRICS), **f32), logp, ent, lse, torch.empty(token_ids.shape[0], **f32)


def _plfl_setup(ctx, inputs, output):
    logits, token_ids, old_logp, advantages, response_mask, ref_logp, *cfg = inputs
    _, _, logp, ent, lse, w = output
    ctx.save_for_backward(logits, token_ids, old_logp, advantages, response_mask, ref_logp, logp, ent, lse, w)
    ctx.mark_non_differentiable(output[1], logp, ent, lse, w)  # only the loss carries a gradient
    ctx.cfg_tok = tuple(cfg[:8])
    ctx.temperature, ctx.ignore_index, ctx.inplace = cfg[10], cfg[11], cfg[12]
    ctx.set_materialize_grads(False)


def _plfl_backward(ctx, grad_loss, *_unused):
    logits, token_ids, old_logp, advantages, response_mask, ref_logp, logp, ent, lse, w = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 20
    mask = (response_mask != 0) & (token_ids != ctx.ignore_index)
    g_logp, g_ent = torch.ops.rlvr_fast.policy_loss_backward(
        grad_loss, w, logp, old_logp, advantages, mask, ref_logp, *ctx.cfg_tok
    )
    use_ent = ctx.cfg_tok[7] != 0
    dlogits = logits_grad(
        logits, token_ids, lse, ent if use_ent else None, g_logp, g_ent if use_ent else None, ctx.temperature,
        ctx.ignore_index, ctx.inplace,
    )  # fmt: skip
    return (dlogits,) + (None,) * 19


_policy_loss_from_logits_op.register_autograd(_plfl_backward, setup_context=_plfl_setup)
