"""Pure-PyTorch reference of the clipped policy loss: the per-row partial sums, their aggregation and
the analytic backward (formulas: ``rlvr_fast.ops.policy_loss``).

Differentiable with plain autograd: the CPU fallback of the custom ops and, through autograd in
float64, the test oracle. :func:`finish` (partials -> loss and metrics) is shared by every backend.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._kernel_spec import Partial

# Metrics returned to the caller, in the order of the packed metrics vector.
METRICS = (
    "pg_loss",
    "clipfrac",
    "clipfrac_lower",
    "approx_kl",
    "kl",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
    "entropy",
    "n_tokens",
)


class LossOptions(NamedTuple):
    """The per-token settings of the loss, read by name by every backend (the Triton launchers too).

    They cross the custom ops' boundary as keyword-only arguments of the same names.
    """

    clip_low: float
    clip_high: float
    dual_clip: float | None
    kl_type: str  # "" for no KL term
    kl_coef: float
    kl_clamp: float
    log_ratio_clamp: float
    entropy_coef: float


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


def row_partials_ref(logp, old_logp, adv, mask, ref, entropy, opts: LossOptions):
    """Per-row partial sums [B, len(Partial)] (differentiable in ``logp`` and ``entropy``)."""
    dtype = torch.promote_types(logp.dtype, torch.float32)
    valid = mask != 0
    # select, never multiply: NaN/Inf under the mask must not reach a sum (0 * NaN = NaN)
    lp, old = _masked(logp, valid, dtype), _masked(old_logp, valid, dtype)
    A = _masked((adv[:, None] if adv.dim() == 1 else adv).expand_as(logp), valid, dtype)
    ref = None if ref is None else _masked(ref, valid, dtype)
    entropy = None if entropy is None else _masked(entropy, valid, dtype)
    m = valid.to(dtype)
    neg_kl = torch.clamp(lp - old, -opts.log_ratio_clamp, opts.log_ratio_clamp)
    ratio = torch.exp(neg_kl)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1 - opts.clip_low, 1 + opts.clip_high)
    pg = torch.maximum(pg1, pg2)
    clip_lower = torch.zeros_like(pg)
    if opts.dual_clip is not None:
        pg3 = -A * opts.dual_clip
        clip_lower = ((pg > pg3) & (A < 0)).to(dtype)
        pg = torch.where(A < 0, torch.minimum(pg3, pg), pg)
    loss = pg
    kl = torch.zeros_like(pg)
    if opts.kl_type and ref is not None:
        kl = _kl_torch(lp, ref.to(dtype), opts.kl_type, opts.kl_clamp, opts.log_ratio_clamp)
        if opts.kl_coef != 0:
            loss = loss + opts.kl_coef * kl
    ent = torch.zeros_like(pg) if entropy is None else entropy.to(dtype)
    if entropy is not None and opts.entropy_coef != 0:
        loss = loss - opts.entropy_coef * ent
    big = torch.finfo(dtype).max
    rdet = ratio.detach()

    def total(x):
        return torch.where(valid, x, 0.0).sum(1)

    cols = {
        Partial.LOSS: total(loss),
        Partial.COUNT: m.sum(1),
        Partial.PG_LOSS: total(pg),
        Partial.CLIPFRAC: total((pg2 > pg1).to(dtype)),
        Partial.CLIPFRAC_LOWER: total(clip_lower),
        Partial.APPROX_KL: total(-neg_kl.detach()),
        Partial.KL: total(kl.detach()),
        Partial.RATIO: total(rdet),
        Partial.RATIO_MIN: torch.where(valid, rdet, big).amin(1),
        Partial.RATIO_MAX: torch.where(valid, rdet, -big).amax(1),
        Partial.ENTROPY: total(ent.detach()),
    }
    return torch.stack([cols[c] for c in Partial], dim=1)


def _masked(x: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` with 0 wherever ``valid`` is False (a select: masked NaN/Inf never propagate)."""
    return torch.where(valid, x.to(dtype), 0.0)


def row_weights(counts: torch.Tensor, agg: str, norm_const: float | None, T: int) -> torch.Tensor:
    """Weight of each row's token sum in the loss, float [B] (``rlvr_fast.ops.policy_loss``'s table); 0 if no
    valid token."""
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
    """From row partials [B, len(Partial)] to ``(loss, metrics_vec, row_weight)`` (float32, no sync)."""

    def col(c: Partial) -> torch.Tensor:
        return partials[:, c]

    count = col(Partial.COUNT)
    w = row_weights(count.detach(), agg, norm_const, T)
    loss = (w * col(Partial.LOSS)).sum()
    n = count.sum()
    denom = n.clamp_min(1)

    def mean(c: Partial) -> torch.Tensor:
        return col(c).sum() / denom

    big = torch.finfo(partials.dtype).max
    if partials.shape[0]:
        rmin, rmax = col(Partial.RATIO_MIN).amin(), col(Partial.RATIO_MAX).amax()
    else:
        rmin, rmax = partials.new_tensor(big), partials.new_tensor(-big)
    any_tok = n > 0
    values = {
        "pg_loss": (w * col(Partial.PG_LOSS)).sum(),
        "clipfrac": mean(Partial.CLIPFRAC),
        "clipfrac_lower": mean(Partial.CLIPFRAC_LOWER),
        "approx_kl": mean(Partial.APPROX_KL),
        "kl": mean(Partial.KL),
        "ratio_mean": mean(Partial.RATIO),
        "ratio_min": torch.where(any_tok, rmin, 0.0),
        "ratio_max": torch.where(any_tok, rmax, 0.0),
        "entropy": mean(Partial.ENTROPY),
        "n_tokens": n,
    }
    return loss, torch.stack([values[name] for name in METRICS]).detach(), w


def policy_loss_ref(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts: LossOptions, agg, norm_const):
    """Reference of :func:`~rlvr_fast.ops.policy_loss`: the custom op's tensors, then its settings as
    ``opts`` (``kl_type`` "" for none), ``agg`` and ``norm_const``.

    Differentiable with plain autograd; computes in ``promote(logp.dtype, float32)``, so float64
    inputs give the float64 oracle. Returns ``(loss, metrics_vec, row_weight)``.
    """
    partials = row_partials_ref(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts)
    return finish(partials, agg, norm_const, logp.shape[1])


def policy_loss_backward_ref(
    grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, opts: LossOptions
) -> tuple[torch.Tensor, torch.Tensor]:
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
    lrc, kl_clamp = opts.log_ratio_clamp, opts.kl_clamp
    x = lp - old
    ratio = torch.exp(torch.clamp(x, -lrc, lrc))
    dratio = torch.where(x.abs() <= lrc, ratio, 0.0)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1 - opts.clip_low, 1 + opts.clip_high)
    # torch.maximum gives each side half the gradient on a tie; clamp passes it on [lo, hi]
    inside = ((ratio >= 1 - opts.clip_low) & (ratio <= 1 + opts.clip_high)).to(dtype)
    through = torch.where(pg1 > pg2, 1.0, torch.where(pg1 < pg2, inside, 0.5 * (1.0 + inside)))
    if opts.dual_clip is not None:
        clip1 = torch.maximum(pg1, pg2)
        pg3 = -A * opts.dual_clip
        lower = torch.where(clip1 < pg3, 1.0, torch.where(clip1 == pg3, 0.5, 0.0))
        through = through * torch.where(A < 0, lower, 1.0)
    d = -A * through * dratio
    if opts.kl_type and ref_logp is not None and opts.kl_coef != 0:
        y = lp - _masked(ref_logp, valid, dtype)
        if opts.kl_type == "k1":
            dkl = torch.ones_like(y)
        elif opts.kl_type == "abs":
            dkl = torch.sign(y)
        elif opts.kl_type == "k2":
            dkl = y
        else:
            kl = torch.clamp(-y, -lrc, lrc)
            kld = torch.exp(kl) - kl - 1
            in_kl = ((-y >= -lrc) & (-y <= lrc)).to(dtype)
            in_kld = ((kld >= -kl_clamp) & (kld <= kl_clamp)).to(dtype)
            dkl = -(torch.exp(kl) - 1) * in_kl * in_kld
        d = d + opts.kl_coef * dkl
    # with entropy_coef == 0, d(entropy) would be all zeros: empty instead (autograd takes None for it)
    ge = -opts.entropy_coef * scale if opts.entropy_coef != 0 else scale.new_empty(0)
    return torch.where(valid, d * scale, 0.0), ge
