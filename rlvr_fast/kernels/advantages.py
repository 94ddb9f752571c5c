"""Triton kernels for group-relative advantages (launchers included; no policy here).

Floor (8192 groups x 16 samples, T = 1024, bool mask): read 128 Ki scores + 128 Mi mask bytes and
write 512 MiB of float32 token advantages -> ~0.64 GB, ~0.2 ms at 3 TB/s. One program per group
computes the statistics in registers and streams its rows' token advantages, so the whole op is one
launch that moves each byte once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._kernel_spec import Baseline
from ._launch import LAUNCH_OPTIONS, loadable_mask, on_tensor_device

# The baseline modes as the tl.constexpr globals a jit function may read.
_MEAN_STD = tl.constexpr(Baseline.MEAN_STD.value)
_LEAVE_ONE_OUT = tl.constexpr(Baseline.LEAVE_ONE_OUT.value)
# One block holds a whole group (BLOCK_N x BLOCK_T tile). Past 256 samples the tile spills registers
# on sm_90, so larger groups take the generic path (torch statistics + the broadcast kernel).
MAX_GROUP = 256


@triton.jit
def _contiguous_group_kernel(
    scores_ptr,
    adv_ptr,
    mask_ptr,
    tok_ptr,
    T,
    stride_mb,
    stride_mt,
    stride_ob,
    eps,
    GROUP,  # runtime: one compiled kernel per BLOCK_N bucket, not per group size
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BASELINE: tl.constexpr,  # a Baseline mode
    UNBIASED: tl.constexpr,
    SINGLETON_VERL: tl.constexpr,
    NAN_MISSING: tl.constexpr,
    WRITE_TOKENS: tl.constexpr,
):
    g = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    in_group = offs < GROUP
    rows = g.to(tl.int64) * GROUP + offs
    r = tl.load(scores_ptr + rows, mask=in_group, other=0.0).to(tl.float32)
    if NAN_MISSING:
        valid = in_group & (r == r)
    else:
        valid = in_group
    r = tl.where(valid, r, 0.0)
    vf = valid.to(tl.float32)
    n = tl.sum(vf, axis=0)
    # statistics of x = r / s, s the largest power of two <= max |r| (exponent bits; 1 for 0/subnormal):
    # exact scaling, so squares of scores up to 3e38 never overflow (the reference does the same)
    amax = tl.max(tl.abs(r), axis=0)
    scale = (amax.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    scale = tl.where(scale > 0.0, scale, 1.0)
    x = r / scale
    mean = tl.sum(x, axis=0) / tl.maximum(n, 1.0)
    dev = tl.where(valid, x - mean, 0.0)
    m2 = tl.sum(dev * dev, axis=0)
    if UNBIASED:
        var = m2 / tl.maximum(n - 1.0, 1.0)
    else:
        var = m2 / tl.maximum(n, 1.0)
    if BASELINE == _MEAN_STD:
        adv = dev / (tl.sqrt(var) + eps / scale)
    elif BASELINE == _LEAVE_ONE_OUT:
        adv = dev * n / tl.maximum(n - 1.0, 1.0) * scale
    else:  # Baseline.MEAN
        adv = dev * scale
    if SINGLETON_VERL:
        if BASELINE == _MEAN_STD:
            lone = r / (1.0 + eps)
        else:
            lone = r
        adv = tl.where(n == 1.0, lone, adv)
    else:
        adv = tl.where(n <= 1.0, 0.0, adv)
    adv = tl.where(valid, adv, 0.0)
    tl.store(adv_ptr + rows, adv, mask=in_group)
    if WRITE_TOKENS:
        # token tiles of ROWS x BLOCK_T (wide rows: coalesced even for a group of 256), the group's
        # advantages re-read from what this program just stored (the barrier makes them visible)
        tl.debug_barrier()
        for r0 in range(0, GROUP, ROWS):
            sub = r0 + tl.arange(0, ROWS)
            rows_c = g.to(tl.int64) * GROUP + sub
            a = tl.load(adv_ptr + rows_c, mask=sub < GROUP, other=0.0)
            for t0 in range(0, T, BLOCK_T):
                cols = t0 + tl.arange(0, BLOCK_T)
                tile = (sub < GROUP)[:, None] & (cols[None, :] < T)
                mk = tl.load(mask_ptr + rows_c[:, None] * stride_mb + cols[None, :] * stride_mt, mask=tile, other=0)
                val = tl.where(mk != 0, a[:, None], 0.0)
                tl.store(tok_ptr + rows_c[:, None] * stride_ob + cols[None, :], val, mask=tile)


@triton.jit
def _broadcast_kernel(
    adv_ptr,
    mask_ptr,
    out_ptr,
    B,
    T,
    stride_mb,
    stride_mt,
    stride_ob,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    tile = (rows[:, None] < B) & (cols[None, :] < T)
    a = tl.load(adv_ptr + rows, mask=rows < B, other=0.0)
    mk = tl.load(mask_ptr + rows[:, None] * stride_mb + cols[None, :] * stride_mt, mask=tile, other=0)
    tl.store(out_ptr + rows[:, None] * stride_ob + cols[None, :], tl.where(mk != 0, a[:, None], 0.0), mask=tile)


TILE_ELEMS = 4096  # elements of one token tile: 32 per thread at 4 warps


def token_tile(block_n: int, T: int) -> tuple[int, int]:
    """(ROWS, BLOCK_T) of the token-writing tiles: columns first, up to 1,024 (4 KiB of float32 per row
    segment, whole 128-byte lines), then as many of the group's rows as fit :data:`TILE_ELEMS`. The
    former single BLOCK_N x BLOCK_T tile shrank to 16 columns at a group of 256 (64-byte row segments,
    half of every line wasted on the write, a quarter on a bool mask's read)."""
    block_t = max(16, min(triton.next_power_of_2(max(T, 1)), 1024))
    return max(1, min(block_n, TILE_ELEMS // block_t)), block_t


@on_tensor_device
def contiguous_group_advantages(
    scores: torch.Tensor,
    group_size: int,
    response_mask: torch.Tensor | None,
    baseline: int,
    eps: float,
    unbiased_std: bool,
    singleton: str,
    nan_as_missing: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One launch: per-sample advantages [B] and, if ``response_mask`` [B, T] is given, token advantages.

    ``baseline``: a ``rlvr_fast._kernel_spec.Baseline`` mode (batch whitening, if any, is the caller's).
    """
    scores = scores.contiguous()  # the kernel reads scores[row] at unit stride
    batch = scores.shape[0]
    adv = torch.empty(batch, dtype=torch.float32, device=scores.device)
    block_n = triton.next_power_of_2(group_size)
    if response_mask is not None:
        mask = loadable_mask(response_mask)
        T = mask.shape[1]
        tok = torch.empty(mask.shape, dtype=torch.float32, device=scores.device)
        stride_mb, stride_mt, stride_ob = mask.stride(0), mask.stride(1), tok.stride(0)
    else:
        mask, tok, T, stride_mb, stride_mt, stride_ob = adv, None, 0, 0, 0, 0
    rows, block_t = token_tile(block_n, T)
    _contiguous_group_kernel[(batch // group_size,)](
        scores,
        adv,
        mask,
        tok if tok is not None else adv,
        T,
        stride_mb,
        stride_mt,
        stride_ob,
        eps,
        group_size,
        BLOCK_N=block_n,
        ROWS=rows,
        BLOCK_T=block_t,
        BASELINE=int(baseline),
        UNBIASED=unbiased_std,
        SINGLETON_VERL=singleton == "verl",
        NAN_MISSING=nan_as_missing,
        WRITE_TOKENS=tok is not None,
        **LAUNCH_OPTIONS,
    )
    return adv, tok


@on_tensor_device
def broadcast_to_tokens(adv: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """float32 [B, T] = ``adv[:, None]`` where ``response_mask != 0``, else 0."""
    mask = loadable_mask(response_mask)
    batch, T = mask.shape
    out = torch.empty(mask.shape, dtype=torch.float32, device=adv.device)
    block_b, block_t = 16, 256
    grid = (triton.cdiv(batch, block_b), triton.cdiv(T, block_t))
    _broadcast_kernel[grid](
        adv.float().contiguous(),
        mask,
        out,
        batch,
        T,
        mask.stride(0),
        mask.stride(1),
        out.stride(0),
        BLOCK_B=block_b,
        BLOCK_T=block_t,
        **LAUNCH_OPTIONS,
    )
    return out
