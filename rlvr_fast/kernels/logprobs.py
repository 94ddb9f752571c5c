"""Triton kernels for token log-probs + entropy (forward) and d(logits) (backward).

Floor at N=16384, V=151936 bf16: the forward must read 4.98 GB of logits once -> ~1.65 ms at
3.0 TB/s; the backward reads them once more and writes the gradient once -> ~3.3 ms. One program
per row streams the vocabulary in BLOCK_V tiles with a running (max, sum-exp, sum p*x) in float32:
one exp per element, so the kernel stays memory-bound.

Rows are addressed as (row // inner) * stride_outer + (row % inner) * stride_inner, which reads views
such as ``logits[:, :-1]`` in place (see ``rlvr_fast.ops._rows``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._launch import LAUNCH_OPTIONS, on_tensor_device, tile_splits
from ._softmax import online_softmax_step


@triton.jit
def _row_base(ptr, row, inner, stride_outer, stride_inner):
    row = row.to(tl.int64)
    return ptr + (row // inner) * stride_outer + (row % inner) * stride_inner


# Autotuning (issue 20) covers only launch settings that leave the numerics alone: warps and the
# vocabulary loop's pipeline depth. BLOCK_V and the splits, which fix the summation order, stay a
# function of the shapes, so whichever config wins the bits are the same. Keyed on V and BLOCK_V (the
# autotuner adds every tensor's dtype); configs whose tile would leave a thread idle or give it more than
# 64 elements are pruned before timing. Under TRITON_INTERPRET the kernels run with the one fixed config.
TUNED = os.environ.get("TRITON_INTERPRET", "0") != "1"
TUNE_CONFIGS = [triton.Config({"STAGES": s}, num_warps=w) for w in (4, 8, 16) for s in (2, 3, 4)]


def prune_configs(configs, named_args, **kwargs):
    """The configs whose warps suit the tile: every thread holds 1..64 elements of BLOCK_V."""
    block_v = kwargs["BLOCK_V"]
    keep = [c for c in configs if 1 <= block_v // (32 * c.num_warps) <= 64]
    return keep or [min(configs, key=lambda c: (c.num_warps, c.kwargs["STAGES"]))]


def _tuned(restore: list[str] | None = None):
    def wrap(kernel):
        if not TUNED:
            return kernel
        return triton.autotune(
            TUNE_CONFIGS,
            key=["V", "BLOCK_V"],
            prune_configs_by={"early_config_prune": prune_configs},
            restore_value=restore,  # the backward may run in place: timing runs must not corrupt it
            cache_results=True,
        )(kernel)

    return wrap


def _launch_settings(block_v: int) -> dict:
    """What the launcher passes itself: nothing the autotuner picks, or the fixed config untuned."""
    return {} if TUNED else {"STAGES": _STAGES, "num_warps": _num_warps(block_v)}


@_tuned()
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
    part_ptr,
    split_cols,
    BLOCK_V: tl.constexpr,
    ENTROPY: tl.constexpr,
    STAGES: tl.constexpr,
    SPLIT: tl.constexpr,
):
    row = tl.program_id(0)
    base = _row_base(logits_ptr, row, inner, stride_outer, stride_inner)
    # this program's columns [c0, c1): the whole row, or with SPLIT one split of it (splits_for)
    c0 = tl.program_id(1) * split_cols
    c1 = tl.minimum(V, c0 + split_cols)
    if not SPLIT:
        # the chosen token's logit first: its two dependent loads overlap the stream instead of trailing it
        x_t, keep, in_range = _chosen_logit(base, ids_ptr, row, V, inv_temp, ignore_index)
    m = -float("inf")  # running max
    r = 0.0  # the shift actually used: m, or 0 while every logit so far is -inf
    s = 0.0  # sum exp(x - r)
    t = 0.0  # sum exp(x - r) * (x - r): relative to r, so the entropy never cancels against the max
    for v0 in tl.range(c0, c1, BLOCK_V, num_stages=STAGES):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < c1, other=-float("inf")).to(tl.float32) * inv_temp
        m, r, s, t = online_softmax_step(x, m, r, s, t, ENTROPY)
    if SPLIT:  # partial statistics for _combine_kernel
        out = part_ptr + (row.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * 3
        tl.store(out, r)
        tl.store(out + 1, s)
        tl.store(out + 2, t)
    else:
        _store_row(x_t, keep, in_range, r, s, t, logp_ptr, ent_ptr, lse_ptr, row, ENTROPY)


@triton.jit
def _chosen_logit(base, ids_ptr, row, V, inv_temp, ignore_index):
    """(scaled logit of the row's token, not ignored, id in range); an out-of-range id is never read."""
    tid = tl.load(ids_ptr + row)
    keep = tid != ignore_index
    in_range = (tid >= 0) & (tid < V)
    return tl.load(base + tid, mask=keep & in_range, other=0.0).to(tl.float32) * inv_temp, keep, in_range


@triton.jit
def _store_row(x_t, keep, in_range, r, s, t, logp_ptr, ent_ptr, lse_ptr, row, ENTROPY: tl.constexpr):
    """Store a row's log-prob, lse and entropy from its softmax statistics (shift r, sums s and t)."""
    lse = r + tl.log(s)
    # an id out of range (value checks disabled) yields NaN, never an out-of-bounds read
    logp = tl.where(keep, tl.where(in_range, x_t - lse, float("nan")), 0.0)
    tl.store(logp_ptr + row, logp)
    tl.store(lse_ptr + row, lse)
    if ENTROPY:
        tl.store(ent_ptr + row, tl.where(keep, tl.log(s) - t / s, 0.0))


@triton.jit
def _combine_kernel(
    logits_ptr,
    ids_ptr,
    logp_ptr,
    ent_ptr,
    lse_ptr,
    part_ptr,
    inner,
    stride_outer,
    stride_inner,
    V,
    inv_temp,
    ignore_index,
    SPLITS,
    BLOCK_S: tl.constexpr,
    ENTROPY: tl.constexpr,
):
    """Second stage of the split forward: merge a row's SPLITS partial (r_i, s_i, t_i) at the common
    shift r = max r_i over non-empty splits: s = sum s_i w_i, t = sum (t_i + s_i (r_i - r)) w_i with
    w_i = exp(r_i - r) (the online-softmax rescaling, applied once per split)."""
    row = tl.program_id(0)
    k = tl.arange(0, BLOCK_S)
    src = part_ptr + (row.to(tl.int64) * SPLITS + k) * 3
    used = k < SPLITS
    r_i = tl.load(src, mask=used, other=0.0)
    s_i = tl.load(src + 1, mask=used, other=0.0)
    t_i = tl.load(src + 2, mask=used, other=0.0)
    live = s_i > 0.0
    r_max = tl.max(tl.where(live, r_i, -float("inf")), axis=0)
    r = tl.where(r_max == -float("inf"), 0.0, r_max)
    w = tl.where(live, tl.exp(r_i - r), 0.0)
    s = tl.sum(s_i * w, axis=0)
    t = tl.sum(tl.where(live, (t_i + s_i * (r_i - r)) * w, 0.0), axis=0)
    base = _row_base(logits_ptr, row, inner, stride_outer, stride_inner)
    x_t, keep, in_range = _chosen_logit(base, ids_ptr, row, V, inv_temp, ignore_index)
    _store_row(x_t, keep, in_range, r, s, t, logp_ptr, ent_ptr, lse_ptr, row, ENTROPY)


@_tuned(restore=["dlogits_ptr"])
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
    split_cols,
    BLOCK_V: tl.constexpr,
    ENTROPY: tl.constexpr,
    STAGES: tl.constexpr,
):
    row = tl.program_id(0)
    c0 = tl.program_id(1) * split_cols  # this program's columns [c0, c1): every element is independent
    c1 = tl.minimum(V, c0 + split_cols)
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
    for v0 in tl.range(c0, c1, BLOCK_V, num_stages=STAGES):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < c1, other=0.0).to(tl.float32) * inv_temp
        logp = x - lse
        p = tl.exp(logp)
        d = tl.where(cols == tid, g, 0.0) - g * p
        if ENTROPY:  # p log p -> 0 where p underflows (also for -inf logits)
            d -= ge * p * (tl.where(p > 0, logp, 0.0) + H)
        d = tl.where(live, d, 0.0)
        tl.store(dbase + cols, d.to(dlogits_ptr.dtype.element_ty), mask=cols < c1)


def _block_v(V: int, element_size: int) -> int:
    cap = 8192 if element_size <= 2 else 4096
    return max(16, min(triton.next_power_of_2(V), cap))


def _num_warps(block_v: int) -> int:
    return 16 if block_v >= 8192 else 8 if block_v >= 2048 else 4


# Software-pipelined vocabulary loop (cp.async on sm_80+): keeps tiles in flight while one is reduced.
_STAGES = 3

# Split over V (issue 20): with one program per row, a few thousand rows cannot fill a GPU (132 SMs x
# several programs each) and each program walks a 150k-column row alone. Below SPLIT_PROGRAMS rows the
# vocabulary is cut into splits of whole BLOCK_V tiles so that about SPLIT_PROGRAMS programs run; the
# forward then reduces each split to partial softmax statistics (12 bytes) and a one-program-per-row
# combine merges them, the backward simply gives each program its columns. Traffic stays the floor plus
# 24 bytes per split per row. The split count is a function of (N, V, element size) only, so the
# summation order, hence the bits, never depend on the device.
SPLIT_PROGRAMS = 1024
MAX_SPLITS = 64


def splits_for(n_rows: int, V: int, block_v: int) -> tuple[int, int]:
    """(splits, columns per split) for ``n_rows`` rows of ``V`` columns in ``block_v`` tiles."""
    splits, per = tile_splits(n_rows, triton.cdiv(V, block_v), SPLIT_PROGRAMS, MAX_SPLITS)
    return splits, per * block_v


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
    splits, split_cols = splits_for(n, V, block_v)
    part = torch.empty(n * splits * 3 if splits > 1 else 0, dtype=torch.float32, device=logits.device)
    rows = (max(layout.inner, 1), layout.stride_outer, layout.stride_inner)
    _logprobs_fwd_kernel[(n, splits)](
        logits,
        ids,
        logp,
        ent if return_entropy else logp,
        lse,
        *rows,
        V,
        1.0 / temperature,
        ignore_index,
        part if splits > 1 else logp,
        split_cols,
        BLOCK_V=block_v,
        ENTROPY=return_entropy,
        SPLIT=splits > 1,
        **_launch_settings(block_v),
        **LAUNCH_OPTIONS,
    )
    if splits > 1:
        _combine_kernel[(n,)](
            logits,
            ids,
            logp,
            ent if return_entropy else logp,
            lse,
            part,
            *rows,
            V,
            1.0 / temperature,
            ignore_index,
            splits,
            BLOCK_S=triton.next_power_of_2(splits),
            ENTROPY=return_entropy,
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
    splits, split_cols = splits_for(n, V, block_v)
    _logprobs_bwd_kernel[(n, splits)](
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
        split_cols,
        BLOCK_V=block_v,
        ENTROPY=has_ent,
        **_launch_settings(block_v),
        **LAUNCH_OPTIONS,
    )
