"""Triton kernels for the fused linear log-probs: the per-tile softmax statistics and the d(logits) tile.

The matmuls stay in cuBLAS (``h @ W_chunk^T`` in the inputs' dtype); these kernels replace the
elementwise passes torch would make over each [n, v] logits tile (upcast, scale, max, exp, sum, the
entropy product, the target gather; in the backward p, the entropy term and the one-hot), reading the
tile once and, in the backward, writing the d(logits) tile once in the matmul dtype.

Running statistics per token, float32, relative to the shift r (the running max, or 0 while every
logit so far is -inf) so the entropy never cancels against the max::

    s = sum e^(x - r),   t = sum e^(x - r) (x - r),   lse = r + log s,   E[x] = r + t / s
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._launch import LAUNCH_OPTIONS, on_tensor_device
from ._softmax import online_softmax_step


@triton.jit
def _tile_stats_kernel(
    z_ptr,
    stride_z,
    ids_ptr,
    r_ptr,
    s_ptr,
    t_ptr,
    picked_ptr,
    v,
    v0,
    inv_temp,
    BLOCK_V: tl.constexpr,
    ENTROPY: tl.constexpr,
):
    row = tl.program_id(0)
    base = z_ptr + row.to(tl.int64) * stride_z
    r = tl.load(r_ptr + row)
    s = tl.load(s_ptr + row)
    t = 0.0
    if ENTROPY:
        t = tl.load(t_ptr + row)
    local = tl.load(ids_ptr + row) - v0
    inside = (local >= 0) & (local < v)
    x_t = tl.load(base + local, mask=inside, other=0.0).to(tl.float32) * inv_temp
    tl.store(picked_ptr + row, x_t, mask=inside)
    m = tl.where(s > 0, r, -float("inf"))
    for c0 in range(0, v, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < v, other=-float("inf")).to(tl.float32) * inv_temp
        m, r, s, t = online_softmax_step(x, m, r, s, t, ENTROPY)
    tl.store(r_ptr + row, r)
    tl.store(s_ptr + row, s)
    if ENTROPY:
        tl.store(t_ptr + row, t)


@triton.jit
def _tile_grad_kernel(
    z_ptr,
    stride_z,
    dz_ptr,
    stride_dz,
    ids_ptr,
    g_ptr,
    ge_ptr,
    lse_ptr,
    mean_ptr,
    v,
    v0,
    inv_temp,
    BLOCK_V: tl.constexpr,
    ENTROPY: tl.constexpr,
):
    row = tl.program_id(0)
    base = z_ptr + row.to(tl.int64) * stride_z
    dbase = dz_ptr + row.to(tl.int64) * stride_dz
    g = tl.load(g_ptr + row) * inv_temp  # 0 for ignored rows (the launcher masks them)
    live = g != 0.0
    lse = tl.load(lse_ptr + row)
    local = tl.load(ids_ptr + row) - v0
    if ENTROPY:
        ge = tl.load(ge_ptr + row) * inv_temp
        live = live | (ge != 0.0)
        mean = tl.load(mean_ptr + row)
    for c0 in range(0, v, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < v, other=0.0).to(tl.float32) * inv_temp
        p = tl.exp(x - lse)
        d = tl.where(cols == local, g, 0.0) - g * p
        if ENTROPY:
            d += ge * p * tl.where(p > 0, mean - x, 0.0)  # a -inf logit has p = 0
        d = tl.where(live, d, 0.0)  # a row without gradient (masked) writes exact zeros, whatever it holds
        tl.store(dbase + cols, d.to(dz_ptr.dtype.element_ty), mask=cols < v)


def _block(v: int) -> int:
    return max(16, min(triton.next_power_of_2(v), 4096))


def _warps(block: int) -> int:
    return 8 if block >= 2048 else 4


@on_tensor_device
def tile_stats(z, ids, r, s, t, picked, v0, temperature, entropy):
    """Update the running ``(r, s, t)`` and ``picked`` (float32 [n]) in place from one raw logits tile
    ``z`` [n, v] (any float dtype, unit column stride); ``ids`` int [n] are global token ids."""
    n, v = z.shape
    block = _block(v)
    _tile_stats_kernel[(n,)](
        z,
        z.stride(0),
        ids,
        r,
        s,
        t if entropy else s,
        picked,
        v,
        v0,
        1.0 / temperature,
        BLOCK_V=block,
        ENTROPY=entropy,
        num_warps=_warps(block),
        **LAUNCH_OPTIONS,
    )


@on_tensor_device
def tile_grad(z, dz, ids, g, ge, lse, mean, v0, temperature):
    """Write d(logits) of one raw tile ``z`` [n, v] into ``dz`` [n, v] (the matmul dtype): ``g`` / ``ge``
    float32 [n] upstream gradients (zeroed on ignored rows; ``ge`` None without entropy)."""
    n, v = z.shape
    block = _block(v)
    ent = ge is not None
    _tile_grad_kernel[(n,)](
        z,
        z.stride(0),
        dz,
        dz.stride(0),
        ids,
        g,
        ge if ent else g,
        lse,
        mean if ent else lse,
        v,
        v0,
        1.0 / temperature,
        BLOCK_V=block,
        ENTROPY=ent,
        num_warps=_warps(block),
        **LAUNCH_OPTIONS,
    )


__all__ = ["tile_grad", "tile_stats"]
