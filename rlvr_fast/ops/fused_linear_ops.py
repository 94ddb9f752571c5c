"""The ``rlvr_fast::fused_linear_logprobs*`` custom ops behind :func:`~rlvr_fast.ops.fused_linear_logprobs`:
the tiled forward and backward (the formulas are in :mod:`rlvr_fast.ops.fused_linear`'s docstring), their
torch references, the backend choice per tile (the Triton tile kernels in ``rlvr_fast.kernels.fused_linear``
or torch), fake kernels and the autograd formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import _checks as C
from .._dispatch import select_backend

CPU_TILE_BUDGET = 64 << 20
CUDA_TILE_BUDGET = 1 << 30


def default_chunks(n_tokens: int, vocab: int, device: torch.device) -> tuple[int, int]:
    """(chunk_tokens, chunk_vocab) for ``n_tokens`` x ``vocab`` on ``device`` (:mod:`rlvr_fast.ops.fused_linear`'s docstring).

    A pure function of its arguments (only ``device.type`` matters): the summation order, and so the
    result bits, never depend on how much memory happens to be free.
    """
    chunk_tokens = max(1, min(n_tokens, 4096))
    budget = CUDA_TILE_BUDGET if torch.device(device).type == "cuda" else CPU_TILE_BUDGET
    per_column = 3 * 4 * chunk_tokens  # three float32 tiles
    chunk_vocab = max(256, (budget // per_column) // 256 * 256)
    return chunk_tokens, min(vocab, chunk_vocab)


def _tile(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Raw logits of one tile, h [n, H] @ w [v, H]^T (+ b [v]), in the inputs' dtype (one cuBLAS call)."""
    return torch.addmm(b, h, w.t()) if b is not None else h @ w.t()


_FLOAT32_OUT_GEMM: dict[str, bool] = {}  # device type -> whether addmm(..., out_dtype=float32) runs there


def _acc_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` for a float32 accumulator ``acc`` [m, n] and ``a`` [m, k], ``b`` [k, n] in the
    inputs' dtype, accumulated in float32 inside the GEMM (cuBLAS beta = 1, float32 C/D with bf16/fp16
    A/B: ``torch.addmm(..., out_dtype=float32, out=acc)``).

    Traffic per call, for a low-precision GEMM of an m x n result (e = 2 bytes): the unfused
    ``acc += (a @ b).float()`` writes the product (e m n), reads it and writes a float32 copy (e + 4),
    then reads the copy and ``acc`` and writes ``acc`` (12): 18 m n bytes besides the operands, with two
    temporaries of 6 m n bytes alive. Accumulating inside the GEMM reads and writes ``acc`` once: 8 m n,
    no temporary. At the fused-linear target (a 4,096-token x 21,760-vocab tile, H = 4,096) that is
    d_hidden 302 -> 134 MB and d_weight 1.60 -> 0.71 GB of traffic per tile, and no 0.5 GB temporaries.
    float32 operands use ``addmm_`` (the same single pass); CPU has no low-precision -> float32 GEMM
    (``aten::addmm.dtype`` is CUDA-only), so bf16 on CPU keeps the unfused form."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    kind = acc.device.type
    if _FLOAT32_OUT_GEMM.get(kind, kind == "cuda"):
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except (RuntimeError, NotImplementedError) as e:  # an older cuBLAS / torch build: say so once
            import warnings

            warnings.warn(f"float32-output GEMM unavailable on {kind} ({e}); accumulating through a copy")
            _FLOAT32_OUT_GEMM[kind] = False
    acc += (a @ b).float()


def _stats_torch(z, ids, r, s, t, picked, v0, temperature, entropy):
    """Torch twin of ``kernels.fused_linear.tile_stats``: update (r, s, t, picked) in place from tile z."""
    x = z.float()
    if temperature != 1.0:
        x = x / temperature
    v = x.shape[1]
    m = torch.where(s > 0, r, -float("inf"))
    m_new = torch.maximum(m, x.amax(1))
    r_new = torch.where(m_new == -float("inf"), 0.0, m_new)
    alpha = torch.exp(r - r_new)
    d = x - r_new[:, None]
    e = torch.exp(d)
    if entropy:
        t.copy_((t + s * (r - r_new)) * alpha + (e * torch.where(e > 0, d, 0.0)).sum(1))
    s.copy_(s * alpha + e.sum(1))
    r.copy_(r_new)
    local = ids.long() - v0
    inside = (local >= 0) & (local < v)
    got = x.gather(1, local.clamp(0, v - 1)[:, None])[:, 0]
    picked.copy_(torch.where(inside, got, picked))


def _grad_torch(z, dz, ids, g, ge, lse, mean, v0, temperature):
    """Torch twin of ``kernels.fused_linear.tile_grad``: d(logits) of tile z into dz."""
    x = z.float()
    if temperature != 1.0:
        x = x / temperature
    v = x.shape[1]
    p = torch.exp(x - lse[:, None])
    d = p * (-g[:, None])
    if ge is not None:
        d += p * torch.where(p > 0, mean[:, None] - x, 0.0) * ge[:, None]  # a -inf logit has p = 0
    local = ids.long() - v0
    inside = (local >= 0) & (local < v)
    d.scatter_add_(1, local.clamp(0, v - 1)[:, None], (g * inside)[:, None])
    live = (g != 0) if ge is None else (g != 0) | (ge != 0)
    d = torch.where(live[:, None], d, 0.0)  # rows without gradient: exactly 0 (their logits may overflow)
    if temperature != 1.0:
        d /= temperature
    dz.copy_(d)


class _TileSteps(NamedTuple):
    """The per-tile steps of the chunked passes (signatures: the torch twins above)."""

    stats: Callable
    grad: Callable


_TORCH_STEPS = _TileSteps(stats=_stats_torch, grad=_grad_torch)


def _tile_steps(device: torch.device) -> _TileSteps:
    """The Triton kernels when the dispatch picks them, else the torch twins."""
    if select_backend("fused_linear_logprobs", device) == "triton":
        from ..kernels.fused_linear import tile_grad, tile_stats

        return _TileSteps(stats=tile_stats, grad=tile_grad)
    return _TORCH_STEPS


def fused_linear_logprobs_ref(
    hidden, weight, bias, token_ids, temperature, return_entropy, ignore_index, chunk_tokens, chunk_vocab
):
    """Chunked forward: hidden [N, H], weight [V, H], bias [V] | None, token_ids [N] ->
    ``(logp, entropy, lse, mean_z)`` float32 [N] each (entropy and mean_z empty unless asked).
    Tiles go through the torch twins; :func:`_fused_forward` with the Triton steps is the CUDA path."""
    return _fused_forward(
        hidden,
        weight,
        bias,
        token_ids,
        temperature,
        return_entropy,
        ignore_index,
        chunk_tokens,
        chunk_vocab,
        _TORCH_STEPS,
    )


def _fused_forward(
    hidden,
    weight,
    bias,
    token_ids,
    temperature,
    return_entropy,
    ignore_index,
    chunk_tokens,
    chunk_vocab,
    steps: _TileSteps,
):
    N, V = hidden.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    r, s = torch.zeros(N, **f32), torch.zeros(N, **f32)
    t = torch.zeros(N, **f32)
    picked = torch.full((N,), float("nan"), **f32)
    ids = token_ids.contiguous()
    for v0 in range(0, V, chunk_vocab):
        v1 = min(V, v0 + chunk_vocab)
        w, b = weight[v0:v1], bias[v0:v1] if bias is not None else None
        for n0 in range(0, N, chunk_tokens):
            n1 = min(N, n0 + chunk_tokens)
            rows = slice(n0, n1)
            tile = _tile(hidden[rows], w, b)
            steps.stats(tile, ids[rows], r[rows], s[rows], t[rows], picked[rows], v0, temperature, return_entropy)
    log_s = s.log()
    lse = r + log_s
    keep = ids != ignore_index
    logp = torch.where(keep, picked - lse, 0.0)
    if not return_entropy:  # two distinct empties: a custom op's outputs may not alias
        return logp, torch.zeros(0, **f32), lse, torch.zeros(0, **f32)
    mean_z = r + t / s
    entropy = torch.where(keep, log_s - t / s, 0.0)
    return logp, entropy, lse, mean_z


def fused_linear_logprobs_backward_ref(
    grad_logp,
    grad_entropy,
    hidden,
    weight,
    bias,
    token_ids,
    lse,
    mean_z,
    temperature,
    ignore_index,
    chunk_tokens,
    chunk_vocab,
):
    """Chunked backward: ``(d_hidden [N, H], d_weight [V, H], d_bias [V] | None)`` in the inputs' dtypes.
    grad_entropy may be empty (no entropy requested). Tiles go through the torch twins."""
    return _fused_backward(
        grad_logp,
        grad_entropy,
        hidden,
        weight,
        bias,
        token_ids,
        lse,
        mean_z,
        temperature,
        ignore_index,
        chunk_tokens,
        chunk_vocab,
        _TORCH_STEPS,
    )


def _fused_backward(
    grad_logp,
    grad_entropy,
    hidden,
    weight,
    bias,
    token_ids,
    lse,
    mean_z,
    temperature,
    ignore_index,
    chunk_tokens,
    chunk_vocab,
    steps: _TileSteps,
):
    N, V = hidden.shape[0], weight.shape[0]
    ids = token_ids.contiguous()
    # rows that are ignored or get no upstream gradient (masked by a loss) contribute exactly 0 whatever
    # their hidden state holds: selected, never multiplied (0 * NaN = NaN, also inside the matmuls)
    g, ge = grad_logp.float(), grad_entropy.float() if grad_entropy.numel() else None
    active = (ids != ignore_index) & ((g != 0) if ge is None else ((g != 0) | (ge != 0)))
    g = torch.where(active, g, 0.0).contiguous()
    ge = torch.where(active, ge, 0.0).contiguous() if ge is not None else None
    lse = torch.where(active, lse, 0.0)
    mean_z = torch.where(active, mean_z, 0.0) if ge is not None else mean_z
    d_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    d_weight = torch.empty_like(weight)
    d_bias = torch.empty_like(bias) if bias is not None else None
    for v0 in range(0, V, chunk_vocab):
        v1 = min(V, v0 + chunk_vocab)
        w, b = weight[v0:v1], bias[v0:v1] if bias is not None else None
        dw = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        db = torch.zeros(v1 - v0, dtype=torch.float32, device=w.device) if bias is not None else None
        for n0 in range(0, N, chunk_tokens):
            n1 = min(N, n0 + chunk_tokens)
            rows = slice(n0, n1)
            h = torch.where(active[rows, None], hidden[rows], 0.0)
            # d(logits) in the inputs' dtype, as an unfused lm_head backward rounds it
            dz = torch.empty(n1 - n0, v1 - v0, dtype=h.dtype, device=h.device)
            steps.grad(
                _tile(h, w, b),
                dz,
                ids[rows],
                g[rows],
                ge[rows] if ge is not None else None,
                lse[rows],
                mean_z[rows] if ge is not None else None,
                v0,
                temperature,
            )
            _acc_mm(d_hidden[rows], dz, w)
            _acc_mm(dw, dz.t(), h)
            if db is not None:
                db += dz.sum(0, dtype=torch.float32)  # the float32 sum reads dz once, no float copy
        d_weight[v0:v1] = dw
        if d_bias is not None:
            d_bias[v0:v1] = db
    return d_hidden.to(hidden.dtype), d_weight, d_bias


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("rlvr_fast::fused_linear_logprobs", mutates_args=())
def _fused_linear_logprobs_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_ids: torch.Tensor,
    temperature: float,
    return_entropy: bool,
    ignore_index: int,
    chunk_tokens: int,
    chunk_vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    C.check_ids_in_range("token_ids", token_ids, weight.shape[0], ignore_index)
    chunk_tokens, chunk_vocab = _chunks(hidden, weight, chunk_tokens, chunk_vocab)
    with torch.no_grad():
        return _fused_forward(
            hidden,
            weight,
            bias,
            token_ids,
            temperature,
            return_entropy,
            ignore_index,
            chunk_tokens,
            chunk_vocab,
            _tile_steps(hidden.device),
        )


def _chunks(hidden, weight, chunk_tokens: int, chunk_vocab: int) -> tuple[int, int]:
    dt, dv = default_chunks(hidden.shape[0], weight.shape[0], hidden.device)
    return chunk_tokens or dt, chunk_vocab or dv


@_fused_linear_logprobs_op.register_fake
def _(hidden, weight, bias, token_ids, temperature, return_entropy, ignore_index, chunk_tokens, chunk_vocab):
    n = hidden.shape[0]
    f = dict(dtype=torch.float32, device=hidden.device)
    e = n if return_entropy else 0
    return hidden.new_empty(n, **f), hidden.new_empty(e, **f), hidden.new_empty(n, **f), hidden.new_empty(e, **f)


@torch.library.custom_op("rlvr_fast::fused_linear_logprobs_backward", mutates_args=())
def _fused_linear_backward_op(
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_ids: torch.Tensor,
    lse: torch.Tensor,
    mean_z: torch.Tensor,
    temperature: float,
    ignore_index: int,
    chunk_tokens: int,
    chunk_vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chunk_tokens, chunk_vocab = _chunks(hidden, weight, chunk_tokens, chunk_vocab)
    with torch.no_grad():
        steps = _tile_steps(hidden.device)
        dh, dw, db = _fused_backward(
            grad_logp,
            grad_entropy,
            hidden,
            weight,
            bias,
            token_ids,
            lse,
            mean_z,
            temperature,
            ignore_index,
            chunk_tokens,
            chunk_vocab,
            steps,
        )
    return dh, dw, db if db is not None else weight.new_empty(0)


@_fused_linear_backward_op.register_fake
def _(
    grad_logp,
    grad_entropy,
    hidden,
    weight,
    bias,
    token_ids,
    lse,
    mean_z,
    temperature,
    ignore_index,
    chunk_tokens,
    chunk_vocab,
):
    return (
        torch.empty_like(hidden),
        torch.empty_like(weight),
        weight.new_empty(bias.shape[0] if bias is not None else 0),
    )


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, token_ids, temperature, _ret_ent, ignore_index, chunk_tokens, chunk_vocab = inputs
    _, _, lse, mean_z = output
    ctx.save_for_backward(hidden, weight, bias, token_ids, lse, mean_z)
    ctx.temperature, ctx.ignore_index = temperature, ignore_index
    ctx.chunk_tokens, ctx.chunk_vocab = chunk_tokens, chunk_vocab


def _backward(ctx, grad_logp, grad_entropy, _grad_lse, _grad_mean_z):
    hidden, weight, bias, token_ids, lse, mean_z = ctx.saved_tensors
    if grad_logp is None:
        grad_logp = torch.zeros_like(lse)
    if grad_entropy is None or mean_z.numel() == 0:
        grad_entropy = lse.new_empty(0)
    dh, dw, db = torch.ops.rlvr_fast.fused_linear_logprobs_backward(
        grad_logp.contiguous(),
        grad_entropy.contiguous(),
        hidden,
        weight,
        bias,
        token_ids,
        lse,
        mean_z,
        temperature=ctx.temperature,
        ignore_index=ctx.ignore_index,
        chunk_tokens=ctx.chunk_tokens,
        chunk_vocab=ctx.chunk_vocab,
    )
    return dh, dw, (db if bias is not None else None), None, None, None, None, None, None


_fused_linear_logprobs_op.register_autograd(_backward, setup_context=_setup_context)
