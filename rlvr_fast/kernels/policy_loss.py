"""Triton kernels for the clipped policy loss over [B, T] log-probs.

The forward writes per-row partial sums (loss, token count, clip counts, KL, ratio stats, entropy);
a few [B]-sized torch ops finish the aggregation, so every ``agg`` mode and every metric comes out of
one read of the inputs. The backward recomputes the per-token derivative (cheaper than storing it)
and writes d(logp) and d(entropy) in one pass. Formulas: ``rlvr_fast.ops.policy_loss``; the launchers
read the settings by name from a ``rlvr_fast.ops.policy_loss_reference.LossOptions``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._kernel_spec import KL_IDS, Partial
from ._launch import LAUNCH_OPTIONS, loadable_mask, on_tensor_device, tile_splits

# The KL modes and partial-sum columns as the tl.constexpr globals a jit function may read.
_K1 = tl.constexpr(KL_IDS["k1"])
_K2 = tl.constexpr(KL_IDS["k2"])
_ABS = tl.constexpr(KL_IDS["abs"])
_LOSS = tl.constexpr(Partial.LOSS.value)
_COUNT = tl.constexpr(Partial.COUNT.value)
_PG_LOSS = tl.constexpr(Partial.PG_LOSS.value)
_CLIPFRAC = tl.constexpr(Partial.CLIPFRAC.value)
_CLIPFRAC_LOWER = tl.constexpr(Partial.CLIPFRAC_LOWER.value)
_APPROX_KL = tl.constexpr(Partial.APPROX_KL.value)
_KL = tl.constexpr(Partial.KL.value)
_RATIO = tl.constexpr(Partial.RATIO.value)
_RATIO_MIN = tl.constexpr(Partial.RATIO_MIN.value)
_RATIO_MAX = tl.constexpr(Partial.RATIO_MAX.value)
_ENTROPY = tl.constexpr(Partial.ENTROPY.value)


@triton.jit
def _clamp(x, lo, hi):
    return tl.minimum(tl.maximum(x, lo), hi)


@triton.jit
def _load_row_tile(ptr, row, cols, stride_b, stride_t, inb, valid):
    # masked by bounds only (a data-dependent mask would break vector loads), then invalid lanes zeroed
    x = tl.load(ptr + row * stride_b + cols * stride_t, mask=inb, other=0.0).to(tl.float32)
    return tl.where(valid, x, 0.0)


@triton.jit
def _policy_loss_fwd_kernel(
    logp_ptr,
    old_ptr,
    adv_ptr,
    mask_ptr,
    ref_ptr,
    ent_ptr,
    out_ptr,
    T,
    s_lp_b,
    s_lp_t,
    s_old_b,
    s_old_t,
    s_adv_b,
    s_adv_t,
    s_m_b,
    s_m_t,
    s_ref_b,
    s_ref_t,
    s_ent_b,
    s_ent_t,
    clip_low,
    clip_high,
    dual_clip,
    kl_coef,
    kl_clamp,
    lrc,
    entropy_coef,
    DUAL: tl.constexpr,
    KL: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_ENT: tl.constexpr,
    N_OUT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    chunk_cols,
):
    row = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1) * chunk_cols  # this program's columns [c0, c1) of its row (forward_plan)
    c1 = tl.minimum(T, c0 + chunk_cols)
    acc_loss = tl.zeros([BLOCK_T], tl.float32)
    acc_n = tl.zeros([BLOCK_T], tl.float32)
    acc_pg = tl.zeros([BLOCK_T], tl.float32)
    acc_clip = tl.zeros([BLOCK_T], tl.float32)
    acc_low = tl.zeros([BLOCK_T], tl.float32)
    acc_akl = tl.zeros([BLOCK_T], tl.float32)
    acc_kl = tl.zeros([BLOCK_T], tl.float32)
    acc_r = tl.zeros([BLOCK_T], tl.float32)
    acc_rmin = tl.full([BLOCK_T], float("inf"), tl.float32)
    acc_rmax = tl.full([BLOCK_T], -float("inf"), tl.float32)
    acc_ent = tl.zeros([BLOCK_T], tl.float32)
    for t0 in range(c0, c1, BLOCK_T):
        cols = t0 + tl.arange(0, BLOCK_T)
        inb = cols < c1
        m = tl.load(mask_ptr + row * s_m_b + cols * s_m_t, mask=inb, other=0)
        valid = inb & (m != 0)
        mf = valid.to(tl.float32)
        lp = _load_row_tile(logp_ptr, row, cols, s_lp_b, s_lp_t, inb, valid)
        old = _load_row_tile(old_ptr, row, cols, s_old_b, s_old_t, inb, valid)
        A = _load_row_tile(adv_ptr, row, cols, s_adv_b, s_adv_t, inb, valid)
        neg_kl = _clamp(lp - old, -lrc, lrc)
        ratio = tl.exp(neg_kl)
        pg1 = -A * ratio
        pg2 = -A * _clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
        pg = tl.maximum(pg1, pg2)
        if DUAL:
            pg3 = -A * dual_clip
            acc_low += ((pg > pg3) & (A < 0)).to(tl.float32) * mf
            pg = tl.where(A < 0, tl.minimum(pg3, pg), pg)
        loss = pg
        if HAS_REF:
            ref = _load_row_tile(ref_ptr, row, cols, s_ref_b, s_ref_t, inb, valid)
            y = lp - ref
            if KL == _K1:
                kl = y
            elif KL == _ABS:
                kl = tl.abs(y)
            elif KL == _K2:
                kl = 0.5 * y * y
            else:
                k = _clamp(-y, -lrc, lrc)
                kl = _clamp(tl.exp(k) - k - 1.0, -kl_clamp, kl_clamp)
            loss += kl_coef * kl
            acc_kl += kl * mf
        if HAS_ENT:
            ent = _load_row_tile(ent_ptr, row, cols, s_ent_b, s_ent_t, inb, valid)
            loss -= entropy_coef * ent
            acc_ent += ent * mf
        acc_loss += loss * mf
        acc_n += mf
        acc_pg += pg * mf
        acc_clip += (pg2 > pg1).to(tl.float32) * mf
        acc_akl += -neg_kl * mf
        acc_r += ratio * mf
        acc_rmin = tl.minimum(acc_rmin, tl.where(valid, ratio, float("inf")))
        acc_rmax = tl.maximum(acc_rmax, tl.where(valid, ratio, -float("inf")))
    out = out_ptr + (row * tl.num_programs(1) + tl.program_id(1)) * N_OUT
    tl.store(out + _LOSS, tl.sum(acc_loss, axis=0))
    tl.store(out + _COUNT, tl.sum(acc_n, axis=0))
    tl.store(out + _PG_LOSS, tl.sum(acc_pg, axis=0))
    tl.store(out + _CLIPFRAC, tl.sum(acc_clip, axis=0))
    tl.store(out + _CLIPFRAC_LOWER, tl.sum(acc_low, axis=0))
    tl.store(out + _APPROX_KL, tl.sum(acc_akl, axis=0))
    tl.store(out + _KL, tl.sum(acc_kl, axis=0))
    tl.store(out + _RATIO, tl.sum(acc_r, axis=0))
    # finite sentinels, like the torch reference, so an empty row never yields inf in the min/max
    tl.store(out + _RATIO_MIN, tl.minimum(tl.min(acc_rmin, axis=0), 3.4028234663852886e38))
    tl.store(out + _RATIO_MAX, tl.maximum(tl.max(acc_rmax, axis=0), -3.4028234663852886e38))
    tl.store(out + _ENTROPY, tl.sum(acc_ent, axis=0))


@triton.jit
def _policy_loss_bwd_kernel(
    grad_ptr,
    w_ptr,
    logp_ptr,
    old_ptr,
    adv_ptr,
    mask_ptr,
    ref_ptr,
    glp_ptr,
    gent_ptr,
    B,
    T,
    s_lp_b,
    s_lp_t,
    s_old_b,
    s_old_t,
    s_adv_b,
    s_adv_t,
    s_m_b,
    s_m_t,
    s_ref_b,
    s_ref_t,
    clip_low,
    clip_high,
    dual_clip,
    kl_coef,
    kl_clamp,
    lrc,
    entropy_coef,
    DUAL: tl.constexpr,
    KL: tl.constexpr,
    HAS_REF: tl.constexpr,
    ENT_GRAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    inb = cols < T
    m = tl.load(mask_ptr + row * s_m_b + cols * s_m_t, mask=inb, other=0)
    valid = inb & (m != 0)
    scale = tl.load(grad_ptr).to(tl.float32) * tl.load(w_ptr + row)
    lp = _load_row_tile(logp_ptr, row, cols, s_lp_b, s_lp_t, inb, valid)
    old = _load_row_tile(old_ptr, row, cols, s_old_b, s_old_t, inb, valid)
    A = _load_row_tile(adv_ptr, row, cols, s_adv_b, s_adv_t, inb, valid)
    x = lp - old
    ratio = tl.exp(_clamp(x, -lrc, lrc))
    dratio = tl.where((x >= -lrc) & (x <= lrc), ratio, 0.0)
    pg1 = -A * ratio
    pg2 = -A * _clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    # torch.maximum/minimum split the gradient evenly on ties; torch.clamp passes it on [lo, hi]
    inside = ((ratio >= 1.0 - clip_low) & (ratio <= 1.0 + clip_high)).to(tl.float32)
    through = tl.where(pg1 > pg2, 1.0, tl.where(pg1 < pg2, inside, 0.5 * (1.0 + inside)))
    d = -A * through * dratio
    if DUAL:
        clip1 = tl.maximum(pg1, pg2)
        pg3 = -A * dual_clip
        through = tl.where(clip1 < pg3, 1.0, tl.where(clip1 == pg3, 0.5, 0.0))
        d = d * tl.where(A < 0, through, 1.0)
    if HAS_REF:
        ref = _load_row_tile(ref_ptr, row, cols, s_ref_b, s_ref_t, inb, valid)
        y = lp - ref
        if KL == _K1:
            dkl = tl.full([BLOCK_T], 1.0, tl.float32)
        elif KL == _ABS:
            dkl = tl.where(y > 0, 1.0, tl.where(y < 0, -1.0, 0.0))
        elif KL == _K2:
            dkl = y
        else:
            k = _clamp(-y, -lrc, lrc)
            kld = tl.exp(k) - k - 1.0
            live = (-y >= -lrc) & (-y <= lrc) & (kld >= -kl_clamp) & (kld <= kl_clamp)
            dkl = tl.where(live, -(tl.exp(k) - 1.0), 0.0)
        d += kl_coef * dkl
    s = tl.where(valid, scale, 0.0)
    tl.store(glp_ptr + row * T + cols, d * s, mask=inb)
    if ENT_GRAD:  # with entropy_coef == 0 the [B, T] d(entropy) would be a constant 0: not written
        tl.store(gent_ptr + row * T + cols, -entropy_coef * s, mask=inb)


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    if t is None:
        return 0, 0
    if t.dim() == 1:  # per-sequence values broadcast over tokens
        return t.stride(0), 0
    return t.stride(0), t.stride(1)


def _settings(opts) -> dict:
    """The loss settings as the kernels' scalar and mode arguments, by name (``kl_type`` "" is mode 0)."""
    return dict(
        clip_low=opts.clip_low,
        clip_high=opts.clip_high,
        dual_clip=0.0 if opts.dual_clip is None else opts.dual_clip,
        kl_coef=opts.kl_coef,
        kl_clamp=opts.kl_clamp,
        lrc=opts.log_ratio_clamp,
        entropy_coef=opts.entropy_coef,
        DUAL=opts.dual_clip is not None,
        KL=KL_IDS.get(opts.kl_type, 0),
    )


# Forward plan (issue 20): the kernel keeps 11 float32 accumulator vectors of BLOCK_T; at 1,024 with 4
# warps that is 88 live registers per thread for the accumulators alone (spills), and one program per
# row gave 16 CTAs at B = 16. Now BLOCK_T <= 256 (22 accumulator registers per thread) and each row is
# cut into chunks of whole tiles so that about FORWARD_PROGRAMS programs run; the [B, chunks, 11]
# partials are summed (min / max for the ratio extremes) by torch, a read of 44 bytes per chunk. The
# plan depends on (B, T) only: the same inputs always sum in the same order.
FORWARD_BLOCK_T = 256
FORWARD_PROGRAMS = 1024


def forward_plan(B: int, T: int) -> tuple[int, int, int]:
    """(BLOCK_T, chunks per row, columns per chunk) of the forward for a [B, T] batch."""
    block_t = max(16, min(triton.next_power_of_2(max(T, 1)), FORWARD_BLOCK_T))
    chunks, per = tile_splits(B, triton.cdiv(T, block_t), FORWARD_PROGRAMS)
    return block_t, chunks, per * block_t


@on_tensor_device
def policy_loss_forward(logp, old_logp, advantages, response_mask, ref_logp, entropy, opts):
    """Per-row partial sums, float32 [B, len(Partial)] (columns: ``rlvr_fast._kernel_spec.Partial``)."""
    B, T = logp.shape
    block_t, chunks, chunk_cols = forward_plan(B, T)
    out = torch.empty(B, chunks, len(Partial), dtype=torch.float32, device=logp.device)
    mask = loadable_mask(response_mask)
    has_ref = bool(opts.kl_type) and ref_logp is not None
    _policy_loss_fwd_kernel[(B, chunks)](
        logp,
        old_logp,
        advantages,
        mask,
        ref_logp if has_ref else logp,
        entropy if entropy is not None else logp,
        out,
        T,
        *_strides(logp),
        *_strides(old_logp),
        *_strides(advantages),
        *_strides(mask),
        *_strides(ref_logp if has_ref else None),
        *_strides(entropy),
        **_settings(opts),
        HAS_REF=has_ref,
        HAS_ENT=entropy is not None,
        N_OUT=len(Partial),
        BLOCK_T=block_t,
        chunk_cols=chunk_cols,
        **LAUNCH_OPTIONS,
    )
    if chunks == 1:
        return out[:, 0]
    rows = out.sum(1)
    rows[:, Partial.RATIO_MIN.value] = out[:, :, Partial.RATIO_MIN.value].amin(1)
    rows[:, Partial.RATIO_MAX.value] = out[:, :, Partial.RATIO_MAX.value].amax(1)
    return rows


@on_tensor_device
def policy_loss_backward(grad, row_w, logp, old_logp, advantages, response_mask, ref_logp, opts):
    """(d logp, d entropy), float32 [B, T] each, for the scalar upstream gradient ``grad``; d entropy is
    empty (0 elements, nothing written) when ``opts.entropy_coef == 0``."""
    B, T = logp.shape
    glp = torch.empty(B, T, dtype=torch.float32, device=logp.device)
    ent_grad = opts.entropy_coef != 0
    gent = torch.empty_like(glp) if ent_grad else glp.new_empty(0)
    mask = loadable_mask(response_mask)
    has_ref = bool(opts.kl_type) and ref_logp is not None and opts.kl_coef != 0
    block_t = max(16, min(triton.next_power_of_2(max(T, 1)), 1024))
    _policy_loss_bwd_kernel[(B, triton.cdiv(T, block_t))](
        grad.reshape(1).float(),
        row_w.float().contiguous(),
        logp,
        old_logp,
        advantages,
        mask,
        ref_logp if has_ref else logp,
        glp,
        gent if ent_grad else glp,
        B,
        T,
        *_strides(logp),
        *_strides(old_logp),
        *_strides(advantages),
        *_strides(mask),
        *_strides(ref_logp if has_ref else None),
        **_settings(opts),
        HAS_REF=has_ref,
        ENT_GRAD=ent_grad,
        BLOCK_T=block_t,
        **LAUNCH_OPTIONS,
    )
    return glp, gent
