"""Triton kernels for token log-probs + entropy (forward) and d(logits) (backward).

Floor at N=16384, V=151936 bf16: the forward must read 4.98 GB of logits once -> ~1.65 ms at
3.0 TB/s; the backward reads them once more and writes the gradient once -> ~3.3 ms. One program
per row streams the vocabulary in BLOCK_V tiles with a running (max, sum-exp, sum p*x) in float32:
one exp per element, so the kernel stays memory-bound.

Rows are addressed as (row // inner) * stride_outer + (row % inner) * stride_inner, which reads views
such as ``logits[:, :-1]`` in place (see ``rlvr_fast.ops._rows``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import LAUNCH_OPTIONS, on_tensor_device
from ._softmax import online_softmax_step


@triton.jit
def _row_base(ptr, row, inner, stride_outer, stride_inner):
    row = row.to(tl.int64)
    return ptr + (row // inner) * stride_outer + (row % inner) * stride_inner


@triton.jit
def _logprobs_fwd_kernel(
    logits_ptr,
    ids_ptr,
    logp_ptr,
    ent_ptr,
    lse_ptr,
    inner,
    stride_outer,
    stride_inner,
    V,
    inv_temp,
    ignore_index,
    BLOCK_V: tl.constexpr,
    ENTROPY: tl.constexpr,
    STAGES: tl.constexpr,
):
    row = tl.program_id(0)
    base = _row_base(logits_ptr, row, inner, stride_outer, stride_inner)
    # the chosen token's logit first: its two dependent loads overlap the stream instead of trailing it
    tid = tl.load(ids_ptr + row)
    keep = tid != ignore_index
    in_range = (tid >= 0) & (tid < V)
    x_t = tl.load(base + tid, mask=keep & in_range, other=0.0).to(tl.float32) * inv_temp
    m = -float("inf")  # running max
    r = 0.0  # the shift actually used: m, or 0 while every logit so far is -inf
    s = 0.0  # sum exp(x - r)
    t = 0.0  # sum exp(x - r) * (x - r): relative to r, so the entropy never cancels against the max
    for v0 in tl.range(0, V, BLOCK_V, num_stages=STAGES):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32) * inv_temp
        m, r, s, t = online_softmax_step(x, m, r, s, t, ENTROPY)
    lse = r + tl.log(s)
    # an id out of range (value checks disabled) yields NaN, never an out-of-bounds read
    logp = tl.where(keep, tl.where(in_range, x_t - lse, float("nan")), 0.0)
    tl.store(logp_ptr + row, logp)
    tl.store(lse_ptr + row, lse)
    if ENTROPY:
        tl.store(ent_ptr + row, tl.where(keep, tl.log(s) - t / s, 0.0))


@triton.jit
def _logprobs_bwd_kernel(
    logits_ptr,
    dlogits_ptr,
    ids_ptr,
    glogp_ptr,
    gent_ptr,
    lse_ptr,
    ent_ptr,
    inner,
    stride_outer,
    stride_inner,
    d_inner,
    d_stride_outer,
    d_stride_inner,
    V,
    inv_temp,
    ignore_index,
    BLOCK_V: tl.constexpr,
    ENTROPY: tl.constexpr,
    STAGES: tl.constexpr,
):
    row = tl.program_id(0)
    base = _row_base(logits_ptr, row, inner, stride_outer, stride_inner)
    dbase = _row_base(dlogits_ptr, row, d_inner, d_stride_outer, d_stride_inner)
    tid = tl.load(ids_ptr + row)
    g = tl.load(glogp_ptr + row).to(tl.float32)
    live = g != 0.0
    if ENTROPY:
        ge = tl.load(gent_ptr + row).to(tl.float32)
        live = live | (ge != 0.0)
    # an ignored row, or one without upstream gradient (masked), writes exact zeros whatever its logits
    live = live & (tid != ignore_index)
    g = tl.where(live, g * inv_temp, 0.0)
    lse = tl.where(live, tl.load(lse_ptr + row), 0.0)
    if ENTROPY:
        ge = tl.where(live, ge * inv_temp, 0.0)
        H = tl.where(live, tl.load(ent_ptr + row), 0.0)
    # pipelined like the forward: the next tiles' loads are in flight while this one is written (they
    # read other columns, so an in-place backward, dlogits == logits, is still safe)
    for v0 in tl.range(0, V, BLOCK_V, num_stages=STAGES):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32) * inv_temp
        logp = x - lse
        p = tl.exp(logp)
        d = tl.where(cols == tid, g, 0.0) - g * p
        if ENTROPY:  # p log p -> 0 where p underflows (also for -inf logits)
            d -= ge * p * (tl.where(p > 0, logp, 0.0) + H)
        d = tl.where(live, d, 0.0)
        tl.store(dbase + cols, d.to(dlogits_ptr.dtype.element_ty), mask=cols < V)


def _block_v(V: int, element_size: int) -> int:
    cap = 8192 if element_size <= 2 else 4096
    return max(16, min(triton.next_power_of_2(V), cap))


def _num_warps(block_v: int) -> int:
    return 16 if block_v >= 8192 else 8 if block_v >= 2048 else 4


# Software-pipelined vocabulary loop (cp.async on sm_80+): keeps tiles in flight while one is reduced.
_STAGES = 3


@on_tensor_device
def logprobs_forward(logits, layout, token_ids, temperature, return_entropy, ignore_index):
    """Launch the forward: returns float32 ``(logp, entropy, lse)`` shaped like ``token_ids``.

    ``logits`` [..., V] must be addressable by ``layout`` (``rlvr_fast.ops._rows.as_rows``).
    """
    V = logits.shape[-1]
    ids = token_ids.reshape(-1).contiguous()  # the kernels read ids[row] at unit stride
    n = ids.shape[0]
    logp = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)
    ent = torch.empty(n if return_entropy else 0, dtype=torch.float32, device=logits.device)
    block_v = _block_v(V, logits.element_size())
    _logprobs_fwd_kernel[(n,)](
        logits,
        ids,
        logp,
        ent if return_entropy else logp,
        lse,
        max(layout.inner, 1),
        layout.stride_outer,
        layout.stride_inner,
        V,
        1.0 / temperature,
        ignore_index,
        BLOCK_V=block_v,
        ENTROPY=return_entropy,
        STAGES=_STAGES,
        num_warps=_num_warps(block_v),
        **LAUNCH_OPTIONS,
    )
    shape = token_ids.shape
    return logp.view(shape), ent.view(shape if return_entropy else (0,)), lse.view(shape)


@on_tensor_device
def logprobs_backward(
    logits, layout, dlogits, d_layout, token_ids, grad_logp, grad_entropy, lse, entropy, temperature, ignore_index
):
    """Launch the backward, writing d(logits) into ``dlogits`` (may be ``logits`` itself)."""
    V = logits.shape[-1]
    ids = token_ids.reshape(-1).contiguous()  # the kernels read ids[row] at unit stride
    n = ids.shape[0]
    has_ent = grad_entropy is not None
    g = grad_logp.reshape(-1).contiguous()
    ge = grad_entropy.reshape(-1).contiguous() if has_ent else g
    H = entropy.reshape(-1).contiguous() if has_ent else g
    block_v = _block_v(V, logits.element_size())
    _logprobs_bwd_kernel[(n,)](
        logits,
        dlogits,
        ids,
        g,
        ge,
        lse.reshape(-1).contiguous(),
        H,
        max(layout.inner, 1),
        layout.stride_outer,
        layout.stride_inner,
        max(d_layout.inner, 1),
        d_layout.stride_outer,
        d_layout.stride_inner,
        V,
        1.0 / temperature,
        ignore_index,
        BLOCK_V=block_v,
        ENTROPY=has_ent,
        STAGES=_STAGES,
        num_warps=_num_warps(block_v),
        **LAUNCH_OPTIONS,
    )
