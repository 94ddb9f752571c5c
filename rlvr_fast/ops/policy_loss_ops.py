"""The ``rlvr_fast::policy_loss*`` custom ops behind :func:`~rlvr_fast.ops.policy_loss` and
:func:`~rlvr_fast.ops.policy_loss_from_logits`: backend choice (the Triton kernels in
``rlvr_fast.kernels.policy_loss`` or the torch reference), fake kernels and autograd formulas.

The loss settings are keyword-only arguments named like :class:`LossOptions`' fields, in its order:
callers pass ``**opts._asdict()``, the ops bundle their arguments of those names back into one, and
the autograd contexts read them by name from ``keyword_only_inputs``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import _checks as C
from .._dispatch import use_triton
from .logprobs import logits_grad
from .policy_loss_reference import METRICS, LossOptions, finish, policy_loss_backward_ref, row_partials_ref


def _options_in(args: Mapping) -> LossOptions:
    """The :class:`LossOptions` among a custom op's keyword arguments."""
    return LossOptions(**{name: args[name] for name in LossOptions._fields})


def _forward_partials(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts: LossOptions):
    """Row partials on the chosen backend (float32 [B, len(Partial)])."""
    if use_triton("policy_loss", logp):
        from ..kernels import policy_loss as K

        return K.policy_loss_forward(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts)
    with torch.no_grad():
        return row_partials_ref(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts).float()


def _backward_tokens(grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, opts: LossOptions):
    """(d logp, d entropy) float32 [B, T] on the chosen backend; d entropy has 0 elements when
    ``entropy_coef == 0`` (it would be all zeros: autograd takes None for it, so nothing is written)."""
    if use_triton("policy_loss_backward", logp):
        from ..kernels import policy_loss as K

        return K.policy_loss_backward(grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, opts)
    gl, ge = policy_loss_backward_ref(grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, opts)
    return gl.float(), ge.float()


@torch.library.custom_op("rlvr_fast::policy_loss", mutates_args=())
def _policy_loss_op(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    entropy: torch.Tensor | None,
    *,
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
    opts = LossOptions(clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef)
    return _policy_loss_impl(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts, agg, norm_const)


def _policy_loss_impl(
    logp, old_logp, advantages, response_mask, ref_logp, entropy, opts: LossOptions, agg, norm_const, logp_name="logp"
):
    """Eager forward of both loss ops: value checks, row partials, aggregation."""
    used_ref = ref_logp if opts.kl_type else None  # read for the KL term and metric only when kl_type is set
    hint = " (a NaN/Inf logit in a row makes its log-prob non-finite)" if logp_name == "logits" else ""
    # only positions that count are checked: whatever the mask hides is never read into the loss
    named = {logp_name: logp, "old_logp": old_logp, "advantages": advantages}
    named.update(ref_logp=used_ref, entropy=entropy)
    C.check_finite_where(response_mask != 0, "where response_mask is nonzero", hint, **named)
    partials = _forward_partials(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts)
    return finish(partials, agg, norm_const, logp.shape[1])


@_policy_loss_op.register_fake
def _(logp, old_logp, advantages, response_mask, ref_logp, entropy, **settings):
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
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    kl_type: str,
    kl_coef: float,
    kl_clamp: float,
    log_ratio_clamp: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    opts = LossOptions(clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef)
    return _backward_tokens(grad, row_weight, logp, old_logp, advantages, response_mask, ref_logp, opts)


@_policy_loss_backward_op.register_fake
def _(grad, row_weight, logp, old_logp, advantages, response_mask, ref_logp, **opts):
    f32 = dict(dtype=torch.float32, device=logp.device)
    return torch.empty(logp.shape, **f32), torch.empty(logp.shape if opts["entropy_coef"] != 0 else (0,), **f32)


def _pl_setup(ctx, inputs, keyword_only_inputs, output):
    logp, old_logp, advantages, response_mask, ref_logp, entropy = inputs
    _, metrics, row_weight = output
    ctx.save_for_backward(logp, old_logp, advantages, response_mask, ref_logp, row_weight)
    ctx.mark_non_differentiable(metrics, row_weight)
    ctx.opts = _options_in(keyword_only_inputs)
    ctx.logp_dtype, ctx.entropy_dtype = logp.dtype, None if entropy is None else entropy.dtype


def _pl_backward(ctx, grad_loss, _grad_metrics, _grad_w):
    logp, old_logp, advantages, response_mask, ref_logp, w = ctx.saved_tensors
    gl, ge = torch.ops.rlvr_fast.policy_loss_backward(
        grad_loss, w, logp, old_logp, advantages, response_mask, ref_logp, **ctx.opts._asdict()
    )
    g_ent = None if ctx.entropy_dtype is None or ctx.opts.entropy_coef == 0 else ge.to(ctx.entropy_dtype)
    return gl.to(ctx.logp_dtype), None, None, None, None, g_ent


_policy_loss_op.register_autograd(_pl_backward, setup_context=_pl_setup)


@torch.library.custom_op("rlvr_fast::policy_loss_from_logits", mutates_args=())
def _policy_loss_from_logits_op(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    *,
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
    opts = LossOptions(clip_low, clip_high, dual_clip, kl_type, kl_coef, kl_clamp, log_ratio_clamp, entropy_coef)
    loss, metrics, w = _policy_loss_impl(
        logp,
        old_logp,
        advantages,
        mask,
        ref_logp,
        ent if compute_entropy else None,
        opts,
        agg,
        norm_const,
        logp_name="logits",
    )
    return loss, metrics, logp, ent, lse, w


@_policy_loss_from_logits_op.register_fake
def _(logits, token_ids, old_logp, advantages, response_mask, ref_logp, **settings):
    f32 = dict(dtype=torch.float32, device=logits.device)
    logp, lse = torch.empty(token_ids.shape, **f32), torch.empty(token_ids.shape, **f32)
    ent = torch.empty(token_ids.shape if settings["compute_entropy"] else (0,), **f32)
    loss, metrics, w = torch.empty((), **f32), torch.empty(len(METRICS), **f32), torch.empty(token_ids.shape[0], **f32)
    return loss, metrics, logp, ent, lse, w


def _plfl_setup(ctx, inputs, keyword_only_inputs, output):
    logits, token_ids, old_logp, advantages, response_mask, ref_logp = inputs
    _, metrics, logp, ent, lse, w = output
    ctx.save_for_backward(logits, token_ids, old_logp, advantages, response_mask, ref_logp, logp, ent, lse, w)
    ctx.mark_non_differentiable(metrics, logp, ent, lse, w)  # only the loss carries a gradient
    ctx.opts = _options_in(keyword_only_inputs)
    ctx.temperature = keyword_only_inputs["temperature"]
    ctx.ignore_index = keyword_only_inputs["ignore_index"]
    ctx.inplace = keyword_only_inputs["inplace_backward"]
    ctx.set_materialize_grads(False)


def _plfl_backward(ctx, grad_loss, *_unused):
    logits, token_ids, old_logp, advantages, response_mask, ref_logp, logp, ent, lse, w = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 6
    mask = (response_mask != 0) & (token_ids != ctx.ignore_index)
    g_logp, g_ent = torch.ops.rlvr_fast.policy_loss_backward(
        grad_loss, w, logp, old_logp, advantages, mask, ref_logp, **ctx.opts._asdict()
    )
    use_ent = ctx.opts.entropy_coef != 0
    dlogits = logits_grad(
        logits,
        token_ids,
        lse,
        ent if use_ent else None,
        g_logp,
        g_ent if use_ent else None,
        ctx.temperature,
        ctx.ignore_index,
        ctx.inplace,
    )
    return dlogits, None, None, None, None, None


_policy_loss_from_logits_op.register_autograd(_plfl_backward, setup_context=_plfl_setup)
